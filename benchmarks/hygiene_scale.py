"""Scale of the hygiene check: N training pairs against M benchmark prompts (synthetic texts).

Times, apart: the contamination check without embeddings (exact + n-gram), the MinHash
near-duplicate pass over the training instructions, and (with --embed-sample K) the embedding
pass of the base model on K texts, extrapolated to N + M. Prints peak memory (max RSS).
Planted copies of benchmark prompts (1 in 1,000 pairs, half edited) must all be found.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/hygiene_scale.py            # 100k x 10k
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/hygiene_scale.py --embed-sample 512
"""

from __future__ import annotations

import argparse
import random
import resource
import time

from selfalign.config import load_config
from selfalign.dedup import near_duplicates
from selfalign.hygiene import Item, check


def synthetic(n: int, rng: random.Random, vocab: list[str], weights: list[float], prefix: str) -> list[Item]:
    out = []
    for i in range(n):
        k = rng.randint(5, 60)
        out.append(Item(prefix, f"{prefix}-{i}", " ".join(rng.choices(vocab, weights, k=k)) + "?"))
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--benchmark", type=int, default=10_000)
    ap.add_argument("--embed-sample", type=int, default=0, help="also time the embedding pass on this many texts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    vocab = [f"w{i}" for i in range(20_000)]
    weights = [1 / (r + 1) for r in range(len(vocab))]  # Zipf-like: common words are shared
    bench = synthetic(args.benchmark, rng, vocab, weights, "bench")
    train = synthetic(args.pairs, rng, vocab, weights, "train")
    planted = {}
    for i in range(0, args.pairs, 1000):  # a benchmark prompt, copied or edited
        b = bench[rng.randrange(len(bench))]
        text = b.text if i % 2000 == 0 else "Please answer: " + b.text + " Thanks"
        train[i] = Item("train", train[i].source_id, text)
        planted[train[i].source_id] = b.source_id
    cfg = load_config(None, ["hygiene.embeddings=none"])
    print(f"{args.pairs:,} pairs x {args.benchmark:,} benchmark prompts; {cfg.hygiene.ngram}-grams, "
          f"threshold {cfg.hygiene.ngram_threshold}; peak before: {peak_mb():.0f} MB", flush=True)
    t0 = time.perf_counter()
    flags = check(train, bench, cfg, "contaminated")
    t_check = time.perf_counter() - t0
    found = {f.source_id: f.match_id for f in flags}
    missed = [s for s, b in planted.items() if found.get(s) != b]
    print(f"contamination check (exact + n-gram): {t_check:.1f}s; {len(found)} pairs flagged, "
          f"{len(planted) - len(missed)}/{len(planted)} planted found; peak {peak_mb():.0f} MB", flush=True)
    t0 = time.perf_counter()
    dups = near_duplicates(train, cfg.hygiene.minhash_threshold, cfg.hygiene.minhash_perm)
    t_dup = time.perf_counter() - t0
    print(f"MinHash near-duplicates of the {args.pairs:,} instructions: {t_dup:.1f}s, {len(dups)} found; "
          f"peak {peak_mb():.0f} MB", flush=True)
    print(f"total without embeddings: {t_check + t_dup:.1f}s (limit 300 s)")
    if args.embed_sample:
        from selfalign.embed import Embedder

        emb = Embedder(load_config(None, ["run.threads=1"]))
        texts = [it.text for it in (*train[:args.embed_sample // 2], *bench[:args.embed_sample // 2])]
        emb.vectors(texts[:8], progress=False)  # the model load, not timed
        t0 = time.perf_counter()
        emb.vectors(texts[8:])
        dt = time.perf_counter() - t0
        n = len(texts) - 8
        print(f"embedding pass ({cfg.models.base}, layer {cfg.hygiene.embedding_layer}, <= "
              f"{cfg.hygiene.embedding_max_tokens} tokens): {n} texts in {dt:.1f}s = {n / dt:.1f} texts/s; "
              f"{args.pairs + args.benchmark:,} texts would take ~{(args.pairs + args.benchmark) / (n / dt) / 60:.0f} min; "
              f"peak {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
