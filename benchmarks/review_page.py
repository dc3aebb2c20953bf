"""Benchmark: review.html with many synthetic pairs in headless Chromium.

Prints the time to load the page (navigation start to the first frame with the table painted; bound: 2 s at 10,000
pairs) and to apply each filter (set the control, filter, sort and draw the page of rows, with the
layout forced; bound: 200 ms), the median of `--repeats` loads. Needs selenium and Debian's
chromium + chromium-driver (see docs/review.md).

    python benchmarks/review_page.py                 # 10,000 pairs, 3 loads
    python benchmarks/review_page.py --n 50000 --out review-bench.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from review_browser import chromium, open_page, wait, why_no_browser  # noqa: E402

from selfalign.review import page_rows, render_page  # noqa: E402

WORDS = ("the model data answer question python function recipe history science water energy music "
         "travel health garden write explain compare list summary example code error table paper").split()


def synthetic(n: int, seed: int = 0) -> list[dict]:
    """`n` rated pairs of a ranked mode: LIMA-like lengths (responses 200-6,000 characters)."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k // 6 + 1))[:k]

    rows = []
    for i in range(n):
        value = rng.random()
        rows.append({"instruction": text(rng.randint(30, 300)), "response": text(int(rng.lognormvariate(7.3, 0.7)) + 200),
                     "source_id": f"lima-{i}", "source": rng.choice(("lima", "lima", "oasst1")),
                     "score": 1 + 4 * value, "reasoning": "", "response_cut": rng.random() < 0.2,
                     "parts": {"value": value, "ifd": rng.random(), "instruction_nll": rng.random() * 4,
                               "response_nll": rng.random() * 4, "role_margin": rng.random() - 0.5}})
    return rows


# (name, JS that changes one control); each is undone before the next
FILTERS = [
    ("search 'python recipe'", "q", "python recipe", "input"),
    ("score from 4.5", "min", "4.5", "input"),
    ("rater kept", "rater", "kept", "change"),
    ("flag response cut", "flag", "response cut", "change"),
    ("sort by response length", "sort", "resp-desc", "change"),
]
TIMED = """
const [id, value, ev] = arguments;
const e = document.getElementById(id), before = e.value;
const t = performance.now();
e.value = value; e.dispatchEvent(new Event(ev));
document.body.offsetHeight;  // layout of the new rows
const ms = performance.now() - t;
const shown = document.getElementById('counts').textContent;
e.value = before; e.dispatchEvent(new Event(ev));
return [ms, shown];
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="synthetic pairs")
    ap.add_argument("--repeats", type=int, default=3, help="page loads; the median is printed")
    ap.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    a = ap.parse_args()
    why = why_no_browser()
    if why:
        sys.exit(f"review_page benchmark: {why}")
    tmp = Path(tempfile.mkdtemp(prefix="review-bench-"))
    rows = page_rows(synthetic(a.n), [], 4.0)
    page = tmp / "review.html"
    page.write_text(render_page({"title": f"benchmark: {a.n} synthetic pairs", "key": f"bench-{time.time()}",
                                 "n": len(rows), "mode": "combined", "threshold": 4.0, "iteration": 1}, rows),
                    encoding="utf-8")
    size_mb = page.stat().st_size / 1e6
    driver = chromium(tmp)
    loads, scripts, filters = [], [], {name: [] for name, *_ in FILTERS}
    try:
        for _ in range(a.repeats):
            open_page(driver, page, timeout=120)
            ready = wait(lambda: driver.execute_script("return window.__review.paintedAt"), 60, "the first paint")
            loads.append(ready)
            scripts.append(driver.execute_script("return window.__review.loadMs"))
            for name, cid, value, ev in FILTERS:
                ms, shown = driver.execute_script(TIMED, cid, value, ev)
                filters[name].append(ms)
    finally:
        driver.quit()
    med = {name: statistics.median(v) for name, v in filters.items()}
    out = {"n": a.n, "page_mb": round(size_mb, 1), "repeats": a.repeats,
           "load_ms": round(statistics.median(loads)), "script_ms": round(statistics.median(scripts)),
           "filter_ms": {k: round(v, 1) for k, v in med.items()},
           "load_ok": statistics.median(loads) < 2000, "filter_ok": max(med.values()) < 200}
    print(f"review.html: {a.n} pairs, {size_mb:.1f} MB, median of {a.repeats} loads in headless Chromium")
    print(f"  load (navigation start -> table painted): {out['load_ms']} ms (bound 2000; of it the page's script "
          f"{out['script_ms']} ms)")
    for k, v in med.items():
        print(f"  filter {k}: {v:.1f} ms (bound 200)")
    print("  within bounds" if out["load_ok"] and out["filter_ok"] else "  OUT OF BOUNDS")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
