"""Recall and false-positive rate of the contamination check on planted sets (docs/hygiene.md).

Benchmarks: the real AlpacaEval prompts and LIMA test (../shared/data, read at run time).
Planted positives, all of AlpacaEval prompts (the 186 OASST1 validation roots are AlpacaEval's
`oasst` prompts):
- near copies: each of the 186 edited by a seeded rule (a word dropped, two words swapped, a
  prefix or suffix added, a typo), at most 2 edits;
- paraphrases: 30 rewritten by hand (tests/data/hygiene_paraphrases.jsonl).
Negatives, never AlpacaEval or LIMA test prompts:
- LIMA train prompts (1,000): the embedding threshold is chosen here, as the lowest one that
  flags at most 1% of them (`--fp-target`);
- Guanaco 1k English first turns (393, less the 3 the check finds with exact/n-gram matches,
  which are real ones): the false-positive rate is reported on these.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/hygiene_planted.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from selfalign.config import load_config
from selfalign.hygiene import Item, NgramIndex, read_benchmark

PREFIXES = ["Please answer: ", "Quick question. ", "Hey, ", "I was wondering: "]
SUFFIXES = [" Thanks!", " Please be brief.", " Explain simply.", " Thank you in advance."]


def near_copy(text: str, rng: random.Random) -> str:
    """A near copy: 1-2 seeded edits of `text` (word drop, swap, prefix/suffix, typo)."""
    for _ in range(rng.choice([1, 2])):
        w = text.split()
        op = rng.choice(["drop", "swap", "prefix", "suffix", "typo"])
        if op == "drop" and len(w) > 3:
            del w[rng.randrange(len(w))]
        elif op == "swap" and len(w) > 3:
            i = rng.randrange(len(w) - 1)
            w[i], w[i + 1] = w[i + 1], w[i]
        elif op == "prefix":
            w = PREFIXES[rng.randrange(len(PREFIXES))].split() + w
        elif op == "suffix":
            w = w + SUFFIXES[rng.randrange(len(SUFFIXES))].split()
        else:
            i = rng.randrange(len(w))
            if len(w[i]) > 3:
                j = rng.randrange(len(w[i]) - 1)
                w[i] = w[i][:j] + w[i][j + 1] + w[i][j] + w[i][j + 2:]
        text = " ".join(w)
    return text


def planted(data: Path, repo: Path, seed: int = 0) -> dict[str, list[Item]]:
    rows = [json.loads(x) for x in (data / "oasst1/seed_en_val_first_turn.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    near = [Item("near_copy", f"oasst-{i}", near_copy(r["instruction"], rng)) for i, r in enumerate(rows)]
    para = [Item("paraphrase", f"oasst-{p['row']}", p["paraphrase"]) for p in
            map(json.loads, (repo / "tests/data/hygiene_paraphrases.jsonl").read_text().splitlines())]
    lima = [Item("lima_train", f"lima-{i}", json.loads(x)["conversations"][0])
            for i, x in enumerate((data / "lima/train.jsonl").read_text().splitlines())]
    from selfalign.seed import load_seed

    guanaco = [Item("guanaco", p.source_id, p.instruction) for p in
               load_seed(str(data / "guanaco/guanaco_llama2_1k.jsonl"), "train", True, None)]
    return {"near_copy": near, "paraphrase": para, "lima_train": lima, "guanaco": guanaco}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--fp-target", type=float, default=0.01)
    ap.add_argument("--no-embeddings", action="store_true")
    args = ap.parse_args()
    data, repo = Path(args.data), Path(__file__).resolve().parents[1]
    cfg = load_config(None, ["run.threads=1"])
    h = cfg.hygiene
    bench = (read_benchmark("alpaca_eval", str(data / "benchmarks/alpaca_eval_prompts.jsonl"), "test")
             + read_benchmark("lima_test", str(data / "lima/test.jsonl"), "test"))
    sets = planted(data, repo)
    index = NgramIndex(bench, h.ngram, h.min_words, h.ngram_threshold)
    lexical = {name: [{m for _, m, _ in index.matches(it.text)} for it in items] for name, items in sets.items()}
    real = {it.source_id for it, m in zip(sets["guanaco"], lexical["guanaco"], strict=True) if m}
    keep = [i for i, it in enumerate(sets["guanaco"]) if it.source_id not in real]
    sets["guanaco"] = [sets["guanaco"][i] for i in keep]
    lexical["guanaco"] = [lexical["guanaco"][i] for i in keep]
    print(f"benchmarks: {len(bench)} prompts; Guanaco first turns found by exact/n-gram (real hits, "
          f"left out of the negatives): {sorted(real)}")
    print(f"exact + {h.ngram}-gram >= {h.ngram_threshold} (min_words {h.min_words}):")
    for name, hits in lexical.items():
        n = sum(bool(m) for m in hits)
        print(f"  {name:11} {n:4}/{len(hits):4} flagged ({n / len(hits):.1%}); exact {sum('exact' in m for m in hits)}")
    if args.no_embeddings:
        return
    from selfalign.embed import Embedder

    emb = Embedder(cfg)
    t0 = time.perf_counter()
    texts = [it.text for items in sets.values() for it in items]
    vec = emb.vectors(texts, ref=[b.text for b in bench])
    print(f"embeddings: layer {h.embedding_layer} of {cfg.models.base}, {len(texts) + len(bench)} texts "
          f"in {time.perf_counter() - t0:.1f}s (1 thread)")
    b_mat = np.stack([vec[b.text] for b in bench])
    best = {name: np.array([float((b_mat @ vec[it.text]).max()) for it in items]) for name, items in sets.items()}
    ths = np.round(np.arange(0.30, 1.0001, 0.02), 2)
    fp_dev = {t: float((best["lima_train"] >= t).mean()) for t in ths}
    chosen = min(t for t in ths if fp_dev[t] <= args.fp_target)
    print(f"embedding threshold chosen on LIMA train (FP <= {args.fp_target:.0%}): {chosen}")
    print("  threshold  " + "  ".join(f"{n:>11}" for n in sets))
    for t in ths[::2] if len(ths) > 20 else ths:
        print(f"  {t:9.2f}  " + "  ".join(f"{(best[n] >= t).mean():11.1%}" for n in sets))
    print(f"at {chosen}: " + ", ".join(f"{n} {(best[n] >= chosen).mean():.1%}" for n in sets))
    both = {n: [bool(m) or s >= chosen for m, s in zip(lexical[n], best[n], strict=True)] for n in sets}
    print("all three methods: " + ", ".join(f"{n} {np.mean(v):.1%}" for n, v in both.items()))


if __name__ == "__main__":
    sys.exit(main())
