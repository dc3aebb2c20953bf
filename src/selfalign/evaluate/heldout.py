"""Held-out (instruction, response) pairs: real pairs the run never trained on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.evaluate.corruptions import normalized
from selfalign.io import DataError
from selfalign.records import SeedPair


def load_heldout(
    cfg: Config, run_dir: Path, n: int, source: str = "auto", oasst1_val: str | Path | None = None
) -> tuple[list[SeedPair], dict[str, Any]]:
    """Up to `n` real (instruction, response) pairs the run did not train on, and where from.

    `source`: "auto" (the OASST1 validation seed `oasst1_val` if that file exists, else the unused
    rows of the run's seed data), "oasst1" (`oasst1_val`, an error when it is missing or None),
    "seed" (unused rows of `cfg.data.seed`, or the shipped sample when it is absent), or a path /
    Hub id of seed data. `oasst1_val` is the config's `evaluate.oasst1_val` (None: no such file;
    a relative path is looked up as data paths are: the working directory, then the config file's
    folder). Pairs whose source id or instruction is in `<run>/seed/pairs.jsonl` are skipped.
    The order is a seeded hash of the source id, the same on every machine.
    """
    from selfalign.log import say
    from selfalign.seed import load_seed
    from selfalign.sources import local_file, resolve_data

    d = cfg.data
    val = local_file(str(oasst1_val), cfg) if oasst1_val is not None else None
    if source == "auto" and val is None:
        why = f"{oasst1_val} not found" if oasst1_val is not None else "no OASST1 validation file (evaluate.oasst1_val)"
        say(f"evaluate: {why}: held-out pairs are the unused rows of the run's seed data")
        source = "seed"
    if source in ("auto", "oasst1"):
        if val is None:
            what = f"{oasst1_val}: not found" if oasst1_val is not None else "evaluate.oasst1_val is not set"
            raise DataError(f"{what} (held-out source oasst1); set evaluate.oasst1_val or pass the file with --heldout PATH")
        src, split, label = str(val), "train", "oasst1"
    elif source == "seed":
        src, split, label = resolve_data(d.seed, "seed.jsonl", cfg), d.seed_split, "seed"
    else:
        src, split, label = source, d.seed_split, "custom"
    pool = load_seed(src, split, d.seed_english_only, None)
    used_ids: set[str] = set()
    used_ins: set[str] = set()
    seed_file = Path(run_dir) / "seed" / "pairs.jsonl"
    if seed_file.is_file():
        for line in seed_file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            used_ids.add(str(row["source_id"]))
            used_ins.add(normalized(row["instruction"]))
    fresh = [p for p in pool if p.source_id not in used_ids and normalized(p.instruction) not in used_ins]

    def key(p: SeedPair) -> str:
        return hashlib.sha256(f"{cfg.run.seed}:{p.source_id}:{p.instruction}".encode()).hexdigest()

    picked = sorted(fresh, key=key)[:n]
    if len(picked) < 2:
        raise DataError(f"{src}: only {len(picked)} held-out pairs not used in training (need >= 2)")
    info = {"source": label, "path": src, "pool": len(pool), "excluded_as_trained": len(pool) - len(fresh),
            "n": len(picked)}
    return picked, info
