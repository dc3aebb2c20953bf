"""Curation quality: the run's rater on held-out good pairs and planted bad copies of them.

Rated exactly as curation rates (`curate.rate_pairs`, the run's curation config, the run's
first-iteration rater from `curate.choose_rater`). Reported: ROC AUC of the score for good vs bad
(Mann-Whitney, ties count 1/2), precision and recall of "kept" for "good" at the run's threshold
and at 1..5 (as the paper's Table 7), mean score per corruption kind, and the parse-failure rate.
An unscored pair counts as score 0 for the AUC and is never kept.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.curate import choose_rater, curation_stats, rate_pairs
from selfalign.evaluate.corruptions import CORRUPTION_KINDS, GOOD, eval_pairs
from selfalign.evaluate.stats import precision_recall, roc_auc
from selfalign.generation import Engine
from selfalign.io import DataError
from selfalign.records import RatedPair, SeedPair

REPORT_THRESHOLDS = (1.0, 2.0, 3.0, 4.0, 4.5, 5.0)


def rater_spec(cfg: Config, run_dir: Path) -> tuple[str, Path | None, str]:
    """(model spec, adapter, name) of the run's first-iteration rater; its adapter must exist."""
    spec, adapter, name = choose_rater(cfg.models, Path(run_dir), 1)
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise DataError(f"{adapter}: the {name} rater adapter is missing (models.rater={cfg.models.rater})")
    return spec, adapter, name


def curation_metrics(rated: Sequence[RatedPair], threshold: float) -> dict[str, Any]:
    """AUC, precision/recall, per-kind mean scores and failure rates of rated eval pairs."""
    labels = [r.source == GOOD for r in rated]
    scores = [r.score for r in rated]
    auc = roc_auc(labels, [s if s is not None else 0.0 for s in scores])
    kinds: dict[str, dict[str, Any]] = {}
    for kind in (GOOD, *CORRUPTION_KINDS):
        rows = [r for r in rated if r.source == kind]
        if not rows:
            continue
        got = [r.score for r in rows if r.score is not None]
        kinds[kind] = {"n": len(rows), "mean_score": round(statistics.mean(got), 3) if got else None,
                       "unscored": len(rows) - len(got),
                       "kept": sum(1 for s in got if s >= threshold - 1e-9)}
    stats = curation_stats(list(rated), threshold)
    thresholds = sorted({*REPORT_THRESHOLDS, threshold})
    return {
        "n_good": sum(labels),
        "n_bad": len(labels) - sum(labels),
        "roc_auc": round(auc, 4) if auc is not None else None,
        "threshold": threshold,
        "at_threshold": precision_recall(labels, scores, threshold),
        "by_threshold": [precision_recall(labels, scores, t) for t in thresholds],
        "by_kind": kinds,
        "unscored": stats["unscored"],
        "unscored_rate": round(stats["unscored"] / len(rated), 4) if rated else 0.0,
        "parse_failure_rate": stats["parse_failure_rate"],
        "histogram": stats["histogram"],
    }


def evaluate_curation(cfg: Config, engine: Engine, heldout: Sequence[SeedPair], out_path: Path) -> dict[str, Any]:
    """Rate held-out good + planted bad pairs as curation does; records go to `out_path`."""
    out_path = Path(out_path)
    out_path.unlink(missing_ok=True)  # a fresh measurement, never resumed from stale records
    pairs = eval_pairs(heldout, cfg.run.seed)
    rated = rate_pairs(engine, pairs, cfg.curation, out_path, cfg.run.seed, cfg.curation.max_response_tokens)
    return curation_metrics(rated, cfg.curation.threshold)
