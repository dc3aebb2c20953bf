#!/usr/bin/env python
"""How the `combined` curation mode was designed: AUC of candidate likelihood signals on SmolLM2.

    python benchmarks/curation_signals.py [--n 90] [--n-human 80] [--out parts.json]
    python benchmarks/curation_signals.py --after 90 80 --n 56 --n-human 295   # fresh data

Data (OASST1 and Guanaco, Apache-2.0, from ../shared/data), drawn apart from `selfalign
evaluate`'s pairs so that the design is not fitted to the evaluation:

- good: n OASST1 validation first-turn pairs (`random.Random(1)` shuffle) whose instruction is
  not among the 40 held-out pairs `selfalign evaluate` draws with the default config;
- bad: one planted copy of each, every kind of `evaluate.corruptions` (seed 1): swapped
  instruction, truncated, unrelated response, boilerplate, an instruction written by the
  untrained base model, a response in another language;
- human: n-human OASST1 prompts (best- vs last-ranked reply, order seed 7), none of them among
  evaluate's held-out pairs or its 40 human-judged prompts.

Every pair gets the parts of `likelihood.pair_likelihoods` (with the role margin); the script
prints the ROC AUC of each signal and of each design, per corruption kind and on the human set,
beside the response-length baseline, then each one's 95% intervals and its comparison with
length on the human set prompt by prompt:

- the two-signal design, log p(end) + log(1 - IFD) (the `combined` mode until 2026-12-03);
- four signals (1 - IFD, log p(end), the worst segment ratio, the role margin), each a
  percentile rank within the rated set, value = sum of the logs; also without each signal
  (measured, not adopted);
- the same four as robust z-scores within the rated set, value = the sum of their negative
  parts: the shipped `combined` mode (`curate.combined_values`, called here);
- the two-signal value as a robust z-score plus the negative parts of the worst segment's and
  the role margin's ("penalties"; measured, not adopted);
- the shipped `quality` mode: the combined value plus the full robust z-scores of fluency
  (-NLL of the response given its instruction) and log length (`curate.quality_values`); and
  the same quality term without the combined value (measured, not adopted).

About 7 minutes on 2 cores. It is a design probe, not the evaluation: `selfalign evaluate`
measures the modes on its own draw. `--eval-run runs/default` scores that run's evaluation
pairs (the records `selfalign evaluate` wrote in eval/) with the same parts instead (3.5
minutes), and `--after N N_HUMAN` draws data that neither the probe of that size nor evaluate
uses, for a check on data no design step saw; see the README for what came out.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "data"


def draw(n: int, n_human: int, tmp: Path, after: tuple[int, int] | None = None) -> list[tuple[str, str, str]]:
    """(instruction, response, kind) of the good, planted bad and human-judged pairs.

    `after` = (n, n_human) of an earlier draw: take the pairs and prompts that come after it (none
    of that draw's, none of evaluate's), for a check on data the design never saw."""
    from selfalign.config import load_config
    from selfalign.evaluate.corruptions import (
        CORRUPTION_KINDS,
        assign_kinds,
        eval_pairs,
        normalized,
    )
    from selfalign.evaluate.heldout import load_heldout
    from selfalign.evaluate.human import load_human_pairs
    from selfalign.evaluate.rater_eval import base_instructions, foreign_responses
    from selfalign.records import SeedPair

    cfg = load_config(None, [])
    messages = DATA / "oasst1" / "en_validation_messages.jsonl"
    ev_held, _ = load_heldout(cfg, tmp / "no-run", 40, oasst1_val=DATA / "oasst1" / "seed_en_val_first_turn.jsonl")
    ev_ins = {normalized(p.instruction) for p in ev_held}
    rows = [json.loads(x) for x in open(DATA / "oasst1" / "seed_en_val_first_turn.jsonl", encoding="utf-8")]
    pool = [r for r in rows if normalized(r["instruction"]) not in ev_ins]
    random.Random(1).shuffle(pool)
    skip = after[0] if after else 0
    good = [SeedPair(r["instruction"], r["output"], f"probe-{i}") for i, r in enumerate(pool[skip : skip + n])]
    kinds = list(CORRUPTION_KINDS)
    need = {i: good[i].response for i, k in enumerate(assign_kinds(len(good), 1, kinds)) if k == "base_instruction"}
    base = base_instructions(cfg, need, tmp / "base_instructions.json")
    foreign, _ = foreign_responses(cfg, 4 * n)
    planted = eval_pairs(good, 1, kinds, base, foreign)
    ev_human, _ = load_human_pairs(messages, 40, cfg.run.seed, ev_ins)
    seen = ev_ins | {normalized(p.instruction) for p in ev_human}
    if after:  # the earlier draw's prompts (goods first, then bads with the same prompts)
        earlier, _ = load_human_pairs(messages, after[1], 7, seen)
        seen |= {normalized(p.instruction) for p in earlier}
    human, _ = load_human_pairs(messages, n_human, 7, seen)
    return [(p.instruction, p.response, p.source) for p in planted + human]


def eval_items(run: Path) -> list[tuple[str, str, str]]:
    """(instruction, response, kind) of the pairs `selfalign evaluate` rated in `run` (planted and
    human; read from the combined mode's records, which every evaluation writes)."""
    items = []
    for name in ("rated_planted_combined.jsonl", "rated_human_combined.jsonl"):
        path = run / "eval" / name
        if not path.is_file():
            raise SystemExit(f"{path}: not found; run `selfalign evaluate` on {run} first")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                items.append((r["instruction"], r["response"], r["source"]))
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=90)
    ap.add_argument("--n-human", type=int, default=80)
    ap.add_argument("--max-response-tokens", type=int, default=256, help="curation.max_response_tokens")
    ap.add_argument("--out", type=Path, default=None, help="write the per-pair parts as JSON")
    ap.add_argument("--parts", type=Path, default=None, help="analyse parts written by --out (no model)")
    ap.add_argument("--after", type=int, nargs=2, default=None, metavar=("N", "N_HUMAN"),
                    help="draw what comes after the draw of --n N --n-human N_HUMAN (a check on fresh data)")
    ap.add_argument("--eval-run", type=Path, default=None,
                    help="score the pairs that `selfalign evaluate` rated in this run (its eval/ records)")
    args = ap.parse_args()
    import torch

    from selfalign.config import ModelsConfig
    from selfalign.curate import (
        COMBINED_SIGNALS,
        QUALITY_SIGNALS,
        combined_values,
        quality_values,
        robust_z,
    )
    from selfalign.evaluate.stats import roc_auc
    from selfalign.likelihood import finite_or, pair_likelihoods
    from selfalign.models import load_model, resolve_model

    rows: list[dict[str, Any]]
    if args.parts:
        rows = json.loads(args.parts.read_text())
    else:
        torch.set_num_threads(2)
        if args.eval_run:
            items = eval_items(args.eval_run)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                items = draw(args.n, args.n_human, Path(tmp), tuple(args.after) if args.after else None)
        model, tok = load_model(resolve_model("smollm2", "~/.cache/selfalign"), ModelsConfig(), device="cpu")
        t = time.perf_counter()
        res = pair_likelihoods(model, tok, [(i, r) for i, r, _ in items], args.max_response_tokens, batch_size=8,
                               roles=True)
        print(f"{len(items)} pairs scored in {time.perf_counter() - t:.0f}s")
        rows = [dict(kind=k, chars=len(r), **vars(x)) for (_, r, k), x in zip(items, res, strict=True)]
    if args.out:
        args.out.write_text(json.dumps(rows))
    human_kinds = ("human_good", "human_bad")
    sets = [[r for r in rows if r["kind"] not in human_kinds], [r for r in rows if r["kind"] in human_kinds]]

    # the four-signal design: name -> (part, sign), higher signed values better
    four = {"explained": ("ifd", -1.0), "end": ("end_logprob", 1.0), "segments": ("worst_segment_ratio", -1.0),
            "role": ("role_margin", 1.0)}

    def percentiles(values: list[float | None]) -> list[float]:
        """Mid-rank percentile in (0, 1] of each value (ties share; None ranks lowest)."""
        order = sorted(range(len(values)), key=lambda i: (values[i] is not None, values[i] or 0.0))
        out, k = [0.0] * len(values), 0
        while k < len(order):
            j = k
            while j + 1 < len(order) and values[order[j + 1]] == values[order[k]]:
                j += 1
            for m in range(k, j + 1):
                out[order[m]] = ((k + j) / 2 + 1) / len(values)
            k = j + 1
        return out

    for rs in sets:  # percentiles within each rated set, as curation ranks within the pairs rated together
        for ex in (None, *four):
            pct = [percentiles([sign * r[part] if math.isfinite(r[part]) else None for r in rs])
                   for name, (part, sign) in four.items() if name != ex]
            for k, r in enumerate(rs):
                r[f"four{'' if ex is None else '-' + ex}"] = sum(math.log(p[k]) for p in pct)

    signed = COMBINED_SIGNALS  # the shipped mode's signals, read from a row of parts as from a record's
    for rs in sets:  # robust z-scores within each rated set
        z = {name: robust_z([fn(r) for r in rs]) for name, fn in signed.items()}
        two = robust_z([signed["explained"](r) + signed["end"](r) for r in rs])
        for r, (value, _) in zip(rs, combined_values(rs), strict=True):
            r["combined"] = value  # the shipped mode, from curate
        stand_ins = [" " * r["chars"] for r in rs]  # the rows keep the responses' lengths, not their text
        for r, (value, zr) in zip(rs, quality_values(rs, stand_ins), strict=True):
            r["quality"] = value
            r["quality_only"] = sum(zr[name] for name in QUALITY_SIGNALS)  # its two added z-scores
        for k, r in enumerate(rs):
            r["penalties"] = two[k] + min(0.0, z["segments"][k]) + min(0.0, z["role"][k])

    def design(r: dict[str, Any], ex: str | None = None) -> float:
        return r[f"four{'' if ex is None else '-' + ex}"]

    def f(x: float, default: float) -> float:
        return finite_or(x, default)

    signals: dict[str, Callable[[dict[str, Any]], float]] = {
        "1 - IFD (likelihood mode)": lambda r: 1 - f(r["ifd"], 1.0),
        "log p(end)": lambda r: f(r["end_logprob"], -10.0),
        "-worst segment ratio": lambda r: -f(r["worst_segment_ratio"], 1.0),
        "role margin": lambda r: f(r["role_margin"], 0.0),
        "log p(end) + log(1 - IFD) (combined mode until 2026-12-03)": lambda r: f(r["end_logprob"], -10.0)
        + math.log(max(1 - f(r["ifd"], 1.0), 1e-4)),
        "four signals, sum of log percentiles (not adopted)": design,
        **{f"four signals without {ex}": partial(design, ex=ex) for ex in four},
        "four signals, sum of negative robust z (combined mode, shipped)": lambda r: r["combined"],
        "two-signal + penalties (segments, role; not adopted)": lambda r: r["penalties"],
        "combined + z(fluency) + z(log length) (quality mode, shipped)": lambda r: r["quality"],
        "z(fluency) + z(log length) alone (not adopted)": lambda r: r["quality_only"],
        "length (characters)": lambda r: r["chars"],
    }
    kinds = [k for k in dict.fromkeys(r["kind"] for r in rows) if k not in ("good", *human_kinds)]
    good = [r for r in rows if r["kind"] == "good"]
    print("| signal | planted (all kinds) | " + " | ".join(kinds) + " | human |")
    print("|---|" + "---|" * (len(kinds) + 2))
    for name, fn in signals.items():
        def auc(g: list[dict], b: list[dict], fn: Callable = fn) -> str:
            return f"{roc_auc([True] * len(g) + [False] * len(b), [fn(r) for r in g + b]):.3f}"
        cells = [auc(good, [r for r in rows if r["kind"] in kinds])] + \
            [auc(good, [r for r in rows if r["kind"] == k]) for k in kinds]
        cells.append(auc([r for r in rows if r["kind"] == "human_good"], [r for r in rows if r["kind"] == "human_bad"]))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"good {len(good)}, bad {sum(r['kind'] in kinds for r in rows)}, human prompts "
          f"{sum(r['kind'] == 'human_good' for r in rows)}")

    # intervals, and each signal against length on the human set prompt by prompt (the human
    # rows hold the goods then the bads, in the same prompt order)
    from selfalign.evaluate.stats import auc_interval, paired_comparison

    hg = [r for r in rows if r["kind"] == "human_good"]
    hb = [r for r in rows if r["kind"] == "human_bad"]
    bad = [r for r in rows if r["kind"] in kinds]
    length = signals["length (characters)"]
    print("\n| signal | AUC planted [95%] | AUC human [95%] | human AUC minus length's [95%] | "
          "best reply above the last [95%] |\n|---|---|---|---|---|")
    for name, fn in signals.items():
        ci = auc_interval([True] * len(good) + [False] * len(bad), [fn(r) for r in good + bad])
        hci = auc_interval([True] * len(hg) + [False] * len(hb), [fn(r) for r in hg + hb])
        pc = paired_comparison([fn(r) for r in hg], [fn(r) for r in hb], [length(r) for r in hg],
                               [length(r) for r in hb])
        def iv(pair: Any) -> str:
            return f"[{pair[0]:.3f}, {pair[1]:.3f}]" if pair else "–"

        print(f"| {name} | {iv(ci)} | {iv(hci)} | {pc['auc_delta']:+.3f} {iv(pc['auc_delta_ci95'])} | "
              f"{pc['win_rate']:.3f} {iv(pc['win_rate_ci95'])} |")


if __name__ == "__main__":
    main()
