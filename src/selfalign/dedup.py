"""Near-duplicates within and across the seed and the augmented data, and the diversity rule of a
budgeted selection.

- exact duplicates: equal normalised instructions (`hygiene.normalise`), by hash;
- near duplicates: MinHash of word 3-gram shingles, candidates from an LSH index (`datasketch`),
  kept when the estimated Jaccard similarity is >= `hygiene.minhash_threshold`;
- `select_diverse`: with a budget (`curation.max_kept`), pairs are taken by score, best first
  (ties in a seeded random order), and a pair whose instruction is too close to one already
  taken is skipped (DEITA's rule: cosine >= `hygiene.diversity_threshold` of the embeddings, or
  MinHash Jaccard >= `hygiene.minhash_threshold` without embeddings).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from selfalign.hygiene import Flag, Item, words

if TYPE_CHECKING:
    import numpy as np
    from datasketch import MinHash

SHINGLE = 3  # words per shingle: short instructions still get several


def shingles(text: str, k: int = SHINGLE) -> list[bytes]:
    w = words(text)
    if len(w) <= k:
        return [" ".join(w).encode()] if w else [b""]
    return sorted({" ".join(w[i:i + k]).encode() for i in range(len(w) - k + 1)})


def minhashes(texts: Sequence[str], num_perm: int) -> list[MinHash]:
    from datasketch import MinHash

    return MinHash.bulk([shingles(t) for t in texts], num_perm=num_perm, seed=1)


def exact_duplicates(items: Sequence[Item]) -> list[Flag]:
    """Each item whose normalised text equals an earlier item's (the first one kept as `match`)."""
    first: dict[str, Item] = {}
    out = []
    for it in items:
        h = hashlib.sha1(" ".join(words(it.text)).encode()).hexdigest()
        if h in first:
            f = first[h]
            out.append(Flag(it.source_id, it.set, "duplicate", "exact", f.set, f.text, 1.0, f.source_id))
        else:
            first[h] = it
    return out


def near_duplicates(items: Sequence[Item], threshold: float, num_perm: int = 128) -> list[Flag]:
    """Each item with an estimated Jaccard >= threshold to an earlier item (not an exact one),
    flagged once with its closest earlier item."""
    from datasketch import MinHashLSH

    exact = {(f.set, f.source_id) for f in exact_duplicates(items)}
    mhs = minhashes([it.text for it in items], num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    out = []
    for i, (it, mh) in enumerate(zip(items, mhs, strict=True)):
        if (it.set, it.source_id) not in exact:
            best = max(((mh.jaccard(mhs[j]), -j) for j in lsh.query(mh)), default=None)
            if best is not None and best[0] >= threshold - 1e-9:
                f = items[-best[1]]
                out.append(Flag(it.source_id, it.set, "near_duplicate", "minhash", f.set, f.text,
                                round(float(best[0]), 4), f.source_id))
        lsh.insert(i, mh)
    return out


def duplicate_counts(flags: Sequence[Flag], checked: dict[str, int]) -> dict[str, Any]:
    """Per set: items checked, exact and near duplicates of an item of the same or the other set."""
    out: dict[str, Any] = {}
    for s, n in checked.items():
        rows = [f for f in flags if f.set == s and f.flag in ("duplicate", "near_duplicate")]
        by: dict[str, int] = defaultdict(int)
        for f in rows:
            by[f"{f.flag} of {f.benchmark}"] += 1
        out[s] = {"checked": n, **dict(sorted(by.items()))}
    return out


def closeness(cfg: Any, texts: Sequence[str], vectors: dict[str, np.ndarray] | None) -> Callable[[int, list[int]], float]:
    """similar(i, chosen): the largest similarity of text i to the chosen texts."""
    import numpy as np

    if vectors is not None:
        mat = np.stack([vectors[t] for t in texts]) if texts else np.zeros((0, 1))
        return lambda i, chosen: float((mat[chosen] @ mat[i]).max()) if chosen else -1.0
    mhs = minhashes(texts, cfg.hygiene.minhash_perm)
    return lambda i, chosen: max((mhs[i].jaccard(mhs[j]) for j in chosen), default=-1.0)


def select_diverse(kept: Sequence[Any], budget: int, seed: int, similar: Callable[[int, list[int]], float],
                   threshold: float) -> tuple[list[Any], list[tuple[Any, float]]]:
    """(chosen, skipped with its similarity): up to `budget` of `kept` (objects with `.score`) by
    score, best first, ties in an order seeded by `seed`; a pair >= `threshold` similar to one
    already chosen is skipped. The chosen keep the order of `kept`."""
    rng = random.Random(seed)
    tie = list(range(len(kept)))
    rng.shuffle(tie)
    order = sorted(range(len(kept)), key=lambda i: (-(kept[i].score or 0.0), tie[i]))
    chosen: list[int] = []
    skipped: list[tuple[Any, float]] = []
    for i in order:
        if len(chosen) >= budget:
            break
        sim = similar(i, chosen)
        if sim >= threshold - 1e-9:
            skipped.append((kept[i], round(sim, 4)))
            continue
        chosen.append(i)
    return [kept[i] for i in sorted(chosen)], skipped


def budget_of(max_kept: float | int | None, n: int) -> int | None:
    """curation.max_kept as a number of pairs: an int, or a share (0 < x < 1) of `n`."""
    if max_kept is None:
        return None
    if isinstance(max_kept, float) and max_kept < 1:
        return max(1, round(max_kept * n))
    return int(max_kept)
