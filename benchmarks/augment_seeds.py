"""How far the augmentation's status counts move with the sampling seed alone.

The run's backward model writes an instruction for each of the run's sampled responses, once per
seed in --seeds (run.seed), with the run's config; prints the status counts (ok, not_request, ...)
per seed and their mean and spread. It calls `augment.augment(engine, responses, params, out, ...)`,
whose signature is the same before and after per-row seeding, so running it with another
checkout's `src/` on PYTHONPATH measures that code on the same model and responses.

    python benchmarks/augment_seeds.py --run runs/default --seeds 0 1 2 3 --out /tmp/seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/default"), help="a finished run directory")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--out", type=Path, required=True, help="where the records of each seed go")
    a = ap.parse_args()

    from selfalign.augment import augment, status_counts
    from selfalign.config import load_config
    from selfalign.generation import GenParams, load_engine
    from selfalign.records import UnlabelledResponse

    cfg = load_config(a.run / "config.yaml")
    g = cfg.generation
    responses = [UnlabelledResponse(**json.loads(x))
                 for x in (a.run / "augment" / "sample.jsonl").read_text(encoding="utf-8").splitlines()]
    engine = load_engine(cfg, cfg.models.base, adapter=a.run / "backward", name="backward", stage="augment")
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in a.seeds:
        out = a.out / f"seed{seed}.jsonl"
        out.unlink(missing_ok=True)
        pairs = augment(engine, responses, GenParams.from_config(g.instruction, seed), out, g.max_prompt_tokens,
                        g.max_instruction_chars, g.require_request)
        counts = {k: v for k, v in status_counts(pairs).items() if v}
        rows.append(counts)
        print(f"seed {seed}: {counts}", flush=True)
    ok = [r.get("ok", 0) for r in rows]
    spread = f"sd {statistics.stdev(ok):.1f}" if len(ok) > 1 else "one seed"
    print(f"ok over {len(ok)} seeds: mean {statistics.mean(ok):.1f}, min {min(ok)}, max {max(ok)}, {spread}")


if __name__ == "__main__":
    main()
