"""Statistics of the evaluation: ROC AUC, precision/recall of "kept", Wilson intervals, lengths."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def roc_auc(labels: Sequence[bool | int], scores: Sequence[float]) -> float | None:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2.

    Mann-Whitney U from average ranks; None when a class is empty.
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1  # ranks are 1-based; tied scores share their average rank
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def precision_recall(
    labels: Sequence[bool | int], scores: Sequence[float | None], threshold: float
) -> dict[str, Any]:
    """Precision and recall of "kept" (score >= threshold; None is never kept) for the positives."""
    kept = [s is not None and s >= threshold - 1e-9 for s in scores]
    tp = sum(1 for k, y in zip(kept, labels, strict=True) if k and y)
    fp = sum(1 for k, y in zip(kept, labels, strict=True) if k and not y)
    fn = sum(1 for k, y in zip(kept, labels, strict=True) if not k and y)
    return {
        "threshold": threshold,
        "kept": tp + fp,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
    }


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def length_stats(texts: Sequence[str]) -> dict[str, Any]:
    lens = [len(t) for t in texts]
    return {
        "n": len(lens),
        "mean_chars": round(statistics.mean(lens), 1) if lens else None,
        "median_chars": statistics.median(lens) if lens else None,
        "empty": sum(1 for t in texts if not t.strip()),
    }


def bootstrap_nll(
    nll: dict[str, Sequence[Sequence[float]]],
    tokens: Sequence[int],
    baseline: str,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Mean NLL per token of each arm, its interval, and its difference with `baseline`.

    `nll[arm][s][i]`: summed NLL of held-out pair i under the arm's model of training seed s;
    `tokens[i]`: its number of target tokens (the same for every model). An arm's value is the
    mean over its seeds of (summed NLL / summed tokens over the pairs).

    Interval: two-level percentile bootstrap. Each resample draws the held-out pairs with
    replacement (the same draw for every arm, so differences are paired over pairs), then each
    arm's seeds with replacement (independently per arm: seeds are not shared across arms).
    With one seed only the pairs vary.
    """
    import numpy as np

    if baseline not in nll:
        raise ValueError(f"baseline arm {baseline!r} has no measurement")
    tok = np.asarray(tokens, dtype=float)
    n_pairs = len(tok)
    if n_pairs == 0 or tok.sum() <= 0:
        raise ValueError("no held-out target tokens to average over")
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, n_pairs))
    np.add.at(weights, (np.arange(n_boot)[:, None], rng.integers(0, n_pairs, (n_boot, n_pairs))), 1.0)
    tok_b = weights @ tok  # (n_boot,)
    draws: dict[str, Any] = {}
    point: dict[str, float] = {}
    for arm, per_seed in nll.items():
        m = np.asarray(per_seed, dtype=float)  # (seeds, pairs)
        if m.ndim != 2 or m.shape[1] != n_pairs or m.shape[0] == 0:
            raise ValueError(f"arm {arm!r}: expected (seeds, {n_pairs}) NLL values, got shape {m.shape}")
        point[arm] = float((m.sum(1) / tok.sum()).mean())
        by_seed = (weights @ m.T) / np.maximum(tok_b, 1e-12)[:, None]  # (n_boot, seeds)
        picks = rng.integers(0, m.shape[0], (n_boot, m.shape[0]))
        draws[arm] = np.take_along_axis(by_seed, picks, axis=1).mean(1)
    lo_q, hi_q = 50 * (1 - confidence), 50 * (1 + confidence)
    out: dict[str, dict[str, Any]] = {}
    for arm, d in draws.items():
        diff = d - draws[baseline]
        out[arm] = {
            "nll_per_token": round(point[arm], 4),
            "ci95": [round(float(np.percentile(d, lo_q)), 4), round(float(np.percentile(d, hi_q)), 4)],
            "delta": round(point[arm] - point[baseline], 4),
            "delta_ci95": [round(float(np.percentile(diff, lo_q)), 4), round(float(np.percentile(diff, hi_q)), 4)],
            "n_seeds": len(nll[arm]),
        }
    return out


def _resampled_aucs(pos: Any, neg: Any) -> Any:
    """ROC AUC (ties 1/2) of each row of resampled positive and negative scores, (n_boot, n) each."""
    return (pos[:, :, None] > neg[:, None, :]).mean((1, 2)) + (pos[:, :, None] == neg[:, None, :]).mean((1, 2)) / 2


def auc_interval(labels: Sequence[bool | int], scores: Sequence[float], n_boot: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> list[float] | None:
    """Percentile-bootstrap interval of `roc_auc`: positives and negatives resampled apart (their
    numbers stay fixed); None when a class is empty. With 40 good and 40 bad pairs it is about
    +-0.08 wide around an AUC of 0.8: the evaluation's sets are small."""
    import numpy as np

    pos = np.asarray([s for s, y in zip(scores, labels, strict=True) if y], dtype=float)
    neg = np.asarray([s for s, y in zip(scores, labels, strict=True) if not y], dtype=float)
    if not len(pos) or not len(neg):
        return None
    rng = np.random.default_rng(seed)
    aucs = _resampled_aucs(pos[rng.integers(0, len(pos), (n_boot, len(pos)))],
                           neg[rng.integers(0, len(neg), (n_boot, len(neg)))])
    return [round(float(np.percentile(aucs, 50 * (1 - confidence))), 4),
            round(float(np.percentile(aucs, 50 * (1 + confidence))), 4)]


def paired_comparison(good: Sequence[float], bad: Sequence[float], other_good: Sequence[float] | None = None,
                      other_bad: Sequence[float] | None = None, n_boot: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Two views of a set of (good, bad) pairs of items, one pair per prompt (the human set):

    - `win_rate`: the share of prompts whose good item scores above its bad one (ties 1/2), with a
      Wilson interval: the within-prompt view, free of how prompts differ from one another;
    - with a second scorer (`other_good`, `other_bad`, e.g. the length baseline): `auc_delta`, this
      scorer's ROC AUC minus the other's over the same items, with a percentile-bootstrap interval
      that resamples prompts (both items of a prompt together, the same draw for both scorers).
    """
    import numpy as np

    if len(good) != len(bad):
        raise ValueError("good and bad differ in length (one pair per prompt)")
    n = len(good)
    wins = sum(1.0 if g > b else 0.5 if g == b else 0.0 for g, b in zip(good, bad, strict=True))
    lo, hi = wilson_interval(round(wins), n, confidence)
    out: dict[str, Any] = {"n_prompts": n, "win_rate": round(wins / n, 4) if n else None,
                           "win_rate_ci95": [round(lo, 4), round(hi, 4)]}
    if other_good is None or other_bad is None or not n:
        return out
    if not len(other_good) == len(other_bad) == n:
        raise ValueError("the other scorer's items differ in number")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))  # prompts; both items of a prompt, both scorers, the same draw

    def aucs(g: Sequence[float], b: Sequence[float]) -> Any:
        return _resampled_aucs(np.asarray(g, dtype=float)[idx], np.asarray(b, dtype=float)[idx])

    diff = aucs(good, bad) - aucs(other_good, other_bad)
    point = roc_auc([True] * n + [False] * n, [*good, *bad]) - roc_auc([True] * n + [False] * n,
                                                                        [*other_good, *other_bad])
    out["auc_delta"] = round(point, 4)
    out["auc_delta_ci95"] = [round(float(np.percentile(diff, 50 * (1 - confidence))), 4),
                             round(float(np.percentile(diff, 50 * (1 + confidence))), 4)]
    return out
