"""The planner against a finished run: each stage's planned memory and estimated time beside the
peak memory and seconds the run measured (manifest.json: `peak_rss_gib` per stage, VmHWM reset at
the stage's start, and `seconds`).

    python benchmarks/plan_vs_measured.py RUN_DIR [--markdown]

The plan is made from the run's own config (RUN_DIR/config.yaml) for the device the run used
(`cpu` unless --gpu names one). Ratios are planned / measured: 1.30 = the planner 30% over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MANIFEST_NAMES = {"train-backward": "train-backward", "augment": "augment", "curate": "curate-1",
                  "train-forward": "train-forward-1", "responses": "responses"}


def rows(run_dir: Path, gpu: str | None) -> list[dict]:
    from selfalign.config import load_config
    from selfalign.memory import plan_run, read_shape, read_tokenizer
    from selfalign.memory_estimate import GiB
    from selfalign.models import resolve_model
    from selfalign.plan_time import pick_device, stage_seconds

    cfg = load_config(run_dir / "config.yaml")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    dev = pick_device(cfg, gpu or "cpu")
    path = resolve_model(cfg.models.base, cfg.models.cache_dir)
    shape, tok = read_shape(cfg.models.base, path), read_tokenizer(path, cfg.models.trust_remote_code)
    out = []
    for stage, plan in plan_run(cfg):
        st = manifest["stages"].get(MANIFEST_NAMES[stage.split(" ")[0]], {})
        planned_s = stage_seconds(shape, cfg, stage, dev, tok) if shape is not None else None
        out.append({"stage": stage, "planned_gib": plan.total / GiB if plan else None,
                    "measured_gib": st.get("peak_rss_gib"), "planned_s": planned_s,
                    "measured_s": st.get("seconds"), "device": dev.name})
    return out


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def fmt(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--gpu", default=None, help="the device the run used (default: cpu)")
    args = ap.parse_args(argv)
    if not (args.run_dir / "manifest.json").is_file():
        print(f"error: {args.run_dir}/manifest.json not found", file=sys.stderr)
        return 2
    table = rows(args.run_dir, args.gpu)
    print(f"| stage | planned GiB | measured peak GiB | ratio | estimated s ({table[0]['device']}) | measured s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['stage']} | {fmt(r['planned_gib'], '.2f')} | {fmt(r['measured_gib'], '.2f')} | "
              f"{ratio(r['planned_gib'], r['measured_gib'])} | {fmt(r['planned_s'], '.0f')} | "
              f"{fmt(r['measured_s'], '.0f')} | {ratio(r['planned_s'], r['measured_s'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
