#!/usr/bin/env python
"""How the `combined` curation mode was designed: AUC of candidate likelihood signals on SmolLM2.

    python benchmarks/curation_signals.py [--n 60] [--n-human 60] [--max-response-tokens 384]

Data (OASST1 and Guanaco, Apache-2.0, from ../shared/data): n OASST1 validation first-turn pairs
(good; a seeded shuffle, `random.Random(0)`), one planted bad copy of each
(`evaluate.corruptions.plant_corruptions`: swapped instruction, truncated, unrelated response,
boilerplate), 20 "other language" pairs (an English instruction with a non-English Guanaco
response), and a human-judged set (best- vs last-ranked OASST1 sibling replies, the first
n-human prompts in file order). Every pair gets the parts of `likelihood.pair_likelihoods`;
the script prints the ROC AUC of each signal and of a few combinations, per corruption kind and
on the human set, beside the response-length baseline. It is a design probe, not the
evaluation: `selfalign evaluate` measures the modes on a separate draw of held-out pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "data"


def _english(text: str) -> bool:
    words = re.findall(r"[a-zA-Z']+", text.lower())
    common = {"the", "and", "is", "to", "of", "a", "in", "that", "it", "you"}
    return bool(words) and sum(w in common for w in words) / len(words) > 0.08


def pairs(n: int, n_human: int) -> list[tuple[str, str, str]]:
    from selfalign.evaluate.corruptions import plant_corruptions

    rows = [json.loads(x) for x in open(DATA / "oasst1" / "seed_en_val_first_turn.jsonl", encoding="utf-8")]
    random.Random(0).shuffle(rows)
    good = [(r["instruction"], r["output"]) for r in rows[:n]]
    guanaco = [json.loads(x) for x in open(DATA / "guanaco" / "guanaco_llama2_1k.jsonl", encoding="utf-8")]
    foreign = [g["messages"][1]["content"] for g in guanaco
               if len(g["messages"]) >= 2 and len(g["messages"][1]["content"]) > 200
               and not _english(g["messages"][1]["content"])]
    other = [(ins, foreign[i % len(foreign)], "other_language") for i, (ins, _) in enumerate(good[:20])]
    msgs = [json.loads(x) for x in open(DATA / "oasst1" / "en_validation_messages.jsonl", encoding="utf-8")]
    by_id = {m["message_id"]: m for m in msgs}
    replies: dict[str, list[dict]] = {}
    for m in msgs:
        if m["role"] == "assistant" and m["parent_id"] in by_id and m["rank"] is not None and not m["deleted"]:
            replies.setdefault(m["parent_id"], []).append(m)
    human = []
    for pid, ks in replies.items():
        if len(ks) >= 2 and len(human) < 2 * n_human:
            ks.sort(key=lambda m: m["rank"])
            human += [(by_id[pid]["text"], ks[0]["text"], "human_best"), (by_id[pid]["text"], ks[-1]["text"], "human_worst")]
    return [(i, r, "good") for i, r in good] + plant_corruptions(good, 0) + other + human


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--n-human", type=int, default=60)
    ap.add_argument("--max-response-tokens", type=int, default=384)
    ap.add_argument("--out", type=Path, default=None, help="write the per-pair parts as JSON")
    args = ap.parse_args()
    import torch

    from selfalign.config import ModelsConfig
    from selfalign.evaluate.stats import roc_auc
    from selfalign.likelihood import pair_likelihoods
    from selfalign.models import load_model, resolve_model

    torch.set_num_threads(2)
    items = pairs(args.n, args.n_human)
    model, tok = load_model(resolve_model("smollm2", "~/.cache/selfalign"), ModelsConfig(), device="cpu")
    t = time.perf_counter()
    res = pair_likelihoods(model, tok, [(i, r) for i, r, _ in items], args.max_response_tokens, batch_size=8)
    print(f"{len(items)} pairs scored in {time.perf_counter() - t:.0f}s")
    rows = [dict(kind=k, chars=len(r), **vars(x)) for (_, r, k), x in zip(items, res, strict=True)]
    if args.out:
        args.out.write_text(json.dumps(rows))

    def f(x: float, default: float) -> float:
        return x if isinstance(x, float) and math.isfinite(x) else default

    def explained(r: dict) -> float:
        return 1 - f(r["ifd"], 1.0)

    signals = {
        "1 - IFD (likelihood mode)": explained,
        "log p(end)": lambda r: f(r["end_logprob"], -10.0),
        "-worst segment ratio": lambda r: -f(r["worst_segment_ratio"], 1.0),
        "log p(end) + log(1 - IFD) (combined mode)": lambda r: f(r["end_logprob"], -10.0) + math.log(max(explained(r), 1e-4)),
        "combined + log n_tokens": lambda r: f(r["end_logprob"], -10.0) + math.log(max(explained(r), 1e-4))
        + math.log(max(1, r["n_tokens"])),
        "length (characters)": lambda r: r["chars"],
    }
    kinds = [k for k in dict.fromkeys(r["kind"] for r in rows) if k not in ("good", "human_best", "human_worst")]
    good = [r for r in rows if r["kind"] == "good"]
    print("| signal | planted (4 kinds) | " + " | ".join(kinds) + " | human |")
    print("|---|" + "---|" * (len(kinds) + 2))
    for name, fn in signals.items():
        def auc(g: list[dict], b: list[dict], fn=fn) -> str:
            return f"{roc_auc([True] * len(g) + [False] * len(b), [fn(r) for r in g + b]):.3f}"
        planted = [r for r in rows if r["kind"] in kinds and r["kind"] != "other_language"]
        cells = [auc(good, planted)] + [auc(good, [r for r in rows if r["kind"] == k]) for k in kinds]
        cells.append(auc([r for r in rows if r["kind"] == "human_best"], [r for r in rows if r["kind"] == "human_worst"]))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
