"""benchmarks/bench.py --quick: every row is measured, positive, has a ratio; greedy outputs compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROWS = {"augmentation", "curation_generate", "curation_logprob", "curation_shots", "training_backward",
        "training_forward"}


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x > 0


@pytest.mark.slow  # over ~10 s
def test_quick_benchmark_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    # one thread: stable and fast on a busy 2-core machine; the cache keeps tiny-random out of $HOME
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--threads", "1",
         "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) == ROWS, f"rows {sorted(rows)} != {sorted(ROWS)}"
    for rid, r in rows.items():
        assert _positive(r["ratio"]), rid
        assert r["ratio"] == r["ours"]["value"] / r["baseline"]["value"], rid
        for side in ("ours", "baseline"):
            v = r[side]
            for key in ("value", "fraction_of_peak", "peak_rss_mb"):
                assert _positive(v[key]), (rid, side, key, v.get(key))
            assert v["seconds"] and all(_positive(s) for s in v["seconds"]), (rid, side)
            assert all(_positive(w) for w in v["work_units"]), (rid, side)

    aug = rows["augmentation"]["extra"]
    assert aug["greedy_compared"] == report["meta"]["sizes"]["aug_prompts"] > 0
    assert 0 <= aug["greedy_identical"] <= aug["greedy_compared"]
    # both sides generated the same number of tokens when all greedy outputs agree
    if aug["greedy_identical"] == aug["greedy_compared"]:
        assert rows["augmentation"]["ours"]["work_units"] == rows["augmentation"]["baseline"]["work_units"]
    assert "outputs_identical" in rows["curation_generate"]["extra"]
    # same examples and steps for both training variants: the same non-pad tokens
    for kind in ("training_backward", "training_forward"):
        assert rows[kind]["ours"]["work_units"] == rows[kind]["baseline"]["work_units"]
    # the shots row excludes the prefix, which is measured and reported next to it
    shots = rows["curation_shots"]
    assert all(p > 0 for p in shots["extra"]["prefix_seconds_kshot"])
    assert all(v < t for v, t in zip(shots["ours"]["values"], shots["ours"]["seconds"], strict=True))
    assert _positive(report["meta"]["peak_flops"]) and _positive(report["meta"]["n_params"])
    # the table is printed with a ratio column
    assert "ratio" in proc.stdout and "curation_shots" in proc.stdout
