"""Curation quality: every curation mode, side by side, on planted bad pairs and a human-judged set.

Rated exactly as curation rates (`curate.rate_pairs`, the run's curation config with `mode` set
to each of `curate.MODES`, the run's first-iteration rater from `curate.choose_rater`, one engine
load for all modes). Two sets:

- **planted**: held-out good pairs and one bad copy of each (`corruptions.py`; the kinds whose
  inputs exist: `base_instruction` needs the untrained base model's instructions, generated here;
  `other_language` needs non-English responses from the run's seed data, else it is skipped and
  the results say so);
- **human** (`human.py`): best- vs last-ranked OASST1 replies to the same prompt.

Per mode: ROC AUC good vs all bad (Mann-Whitney, ties count 1/2, an unscored pair counts as 0),
AUC good vs each corruption kind, AUC on the human set, precision/recall of "kept" at the run's
threshold; plus a response-length baseline (score = response length in characters; "Long Is More
for Alignment", Zhao et al. 2024). For the run's own mode also precision/recall at 1..5 (as the
paper's Table 7), mean score per kind and the parse-failure rate.

Records: `eval/rated_<set>_<mode>.jsonl` (`record_log.RecordLog`, resumed when its fingerprint matches,
see `resume.py`); base-model instructions in `eval/base_instructions.json`.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfalign import curate
from selfalign.config import Config, CurationConfig
from selfalign.curate import choose_rater, curation_stats, rate_pairs
from selfalign.evaluate.corruptions import (
    CORRUPTION_KINDS,
    GOOD,
    TEXT_KINDS,
    assign_kinds,
    eval_pairs,
)
from selfalign.evaluate.human import HUMAN_BAD, HUMAN_GOOD
from selfalign.evaluate.resume import cached, fingerprint_matches, fingerprinted_log, texts_hash
from selfalign.evaluate.stats import auc_interval, paired_comparison, precision_recall, roc_auc
from selfalign.executors import finish
from selfalign.generation import Engine
from selfalign.io import DataError
from selfalign.rank import RANKED_MODES, SCORING_VERSION, RankStep, revalue
from selfalign.records import AugmentedPair, RatedPair, SeedPair

REPORT_THRESHOLDS = (1.0, 2.0, 3.0, 4.0, 4.5, 5.0)
LENGTH = "length"  # the response-length baseline, reported as one more row of the modes table


def eval_modes() -> tuple[str, ...]:
    """The curation modes to compare: `curate.MODES` (all modes the installed curate has)."""
    return curate.MODES


def rater_spec(cfg: Config, run_dir: Path) -> tuple[str, Path | None, str]:
    """(model spec, adapter, name) of the run's first-iteration rater; its adapter must exist."""
    spec, adapter, name = choose_rater(cfg.models, Path(run_dir), 1)
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise DataError(f"{adapter}: the {name} rater adapter is missing (models.rater={cfg.models.rater})")
    return spec, adapter, name


# ---------------------------------------------------------------------------------- inputs


def is_prose(text: str, min_chars: int = 40, min_letters: float = 0.6) -> bool:
    """At least `min_chars` non-space characters, mostly letters (any script): the English filter
    also rejects code, tables and symbols, which are not "another language"."""
    chars = [c for c in text if not c.isspace()]
    return len(chars) >= min_chars and sum(c.isalpha() for c in chars) / len(chars) >= min_letters


def foreign_responses(cfg: Config, n: int) -> tuple[list[str], dict[str, Any]]:
    """Up to `n` real non-English responses: first assistant turns of the rows of the run's seed
    data (`cfg.data.seed`) that the English filter (`seed.is_english`) rejects, whose response
    alone is not English either and is prose (`is_prose`); ordered by sha256(seed, source id)."""
    from selfalign.seed import is_english, load_seed
    from selfalign.sources import resolve_data

    src = resolve_data(cfg.data.seed, "seed.jsonl", cfg)
    try:
        rows = load_seed(src, cfg.data.seed_split, english_only=False)
    except DataError as e:
        return [], {"path": src, "n": 0, "note": str(e)}
    other = [p for p in rows if not is_english(p.instruction + " " + p.response) and not is_english(p.response)
             and is_prose(p.response)]
    other.sort(key=lambda p: hashlib.sha256(f"{cfg.run.seed}:{p.source_id}".encode()).hexdigest())
    return [p.response for p in other[:n]], {"path": src, "rows": len(rows), "non_english": len(other),
                                               "n": min(n, len(other))}


def base_instructions(cfg: Config, responses: dict[int, str], path: Path) -> dict[int, str]:
    """Instructions the untrained base model (no adapter) writes for `responses` (by pair index),
    with the run's backward prompt, greedy; cached in `path` while the inputs match."""
    from selfalign.augment import clean_instruction
    from selfalign.generation import GenParams, generate, load_engine
    from selfalign.prompts import Templates

    g = cfg.generation
    tpl = Templates.for_config(cfg)
    fp = {"base": cfg.models.base, "models": cfg.models.model_dump(), "template": tpl.sections["backward"],
          "max_prompt_tokens": g.max_prompt_tokens, "max_new_tokens": g.instruction.max_new_tokens,
          "max_instruction_chars": g.max_instruction_chars, "seed": cfg.run.seed,
          "responses": texts_hash(sorted(responses.items()))}

    def compute() -> dict[str, str]:
        if not responses:
            return {}
        engine = load_engine(cfg, cfg.models.base, adapter=None, name="base (no adapter)")
        idx = sorted(responses)
        prompts = [tpl.backward_prompt(engine.tokenizer, responses[i], g.max_prompt_tokens)[0] for i in idx]
        outs = generate(engine, prompts, GenParams(0.0, 1.0, g.instruction.max_new_tokens, cfg.run.seed),
                        desc="base-model instructions")
        del engine
        # the cleaned instruction; the raw text when cleaning leaves nothing (still the base model's)
        return {str(i): clean_instruction(o, responses[i], g.max_instruction_chars, words_=tpl.request_words)[0]
                or o.strip()
                for i, o in zip(idx, outs, strict=True)}

    got, _ = cached(path, fp, compute)
    return {int(k): v for k, v in got.items()}


def planted_set(cfg: Config, heldout: Sequence[SeedPair], ev: Path) -> tuple[list[AugmentedPair], dict[str, Any]]:
    """Held-out good pairs + one planted bad pair each, with every kind whose inputs exist."""
    from selfalign.log import say

    kinds = list(CORRUPTION_KINDS)
    skipped: dict[str, str] = {}
    n_other = sum(1 for k in assign_kinds(len(heldout), cfg.run.seed, kinds) if k == "other_language")
    foreign, foreign_info = foreign_responses(cfg, max(n_other, 1) * 4)
    if not foreign:
        kinds.remove("other_language")
        skipped["other_language"] = (f"no non-English prose response in the run's seed data {foreign_info['path']} "
                                     "(rows the English filter rejects); kind skipped")
        say(f"evaluate: {skipped['other_language']}")
    assigned = assign_kinds(len(heldout), cfg.run.seed, kinds)
    need = {i: heldout[i].response for i, k in enumerate(assigned) if k == "base_instruction"}
    base = base_instructions(cfg, need, ev / "base_instructions.json")
    pairs = eval_pairs(heldout, cfg.run.seed, kinds, base, foreign)
    info = {"kinds": kinds, "skipped_kinds": skipped, "foreign_responses": foreign_info,
            "base_instructions": len(base), "text_kinds": list(TEXT_KINDS)}
    return pairs, info


# ---------------------------------------------------------------------------------- rating


def rating_fingerprint(cfg: Config, cur: CurationConfig, rater: tuple[str, Path | None], pairs: Sequence[AugmentedPair]
                       ) -> dict[str, Any]:
    """What a rated record depends on: rater, models settings, curation settings but the
    threshold (selection only), rating templates, seed and the rated texts."""
    from selfalign.prompts import Templates

    tpl = Templates.for_config(cfg)
    return {"rater": rater[0], "adapter": str(rater[1] or ""), "models": cfg.models.model_dump(),
            "curation": cur.model_dump(exclude={"threshold", "iterations"}), "seed": cfg.run.seed,
            "templates": texts_hash([tpl.file("rating_prompt.txt"), tpl.file("rating_fewshot.json"),
                                     tpl.file("templates.json")]),
            "scoring": SCORING_VERSION,
            "pairs": texts_hash([(p.source_id, p.source, p.instruction, p.response) for p in pairs])}


def rate_set(
    cfg: Config, engine: Engine, pairs: list[AugmentedPair], mode: str, path: Path, rater: tuple[str, Path | None]
) -> list[RatedPair]:
    """Rate `pairs` with `mode`; records in `path`, resumed when the fingerprint matches. The
    likelihood modes share their parts: when the other one's complete records of the same pairs
    are there, they are re-valued (`rank.revalue`) instead of computed again."""
    from selfalign.prompts import Templates

    cur = cfg.curation.model_copy(update={"mode": mode})
    fingerprinted_log(path, rating_fingerprint(cfg, cur, rater, pairs))
    if mode in RANKED_MODES:
        for other in RANKED_MODES:
            src = path.with_name(path.name.replace(f"_{mode}.jsonl", f"_{other}.jsonl"))
            if other == mode or not fingerprint_matches(
                    src, rating_fingerprint(cfg, cfg.curation.model_copy(update={"mode": other}), rater, pairs)):
                continue
            recs = [RatedPair(**json.loads(x)) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
            if [r.source_id for r in recs] == [p.source_id for p in pairs]:
                tpl = Templates.for_config(cfg)
                return finish(RankStep(tpl, mode, cur.max_response_tokens), revalue(recs, mode), path)
    return rate_pairs(engine, pairs, cur, path, cfg.run.seed, cfg.curation.max_response_tokens,
                      Templates.for_config(cfg))


def length_scores(pairs: Sequence[AugmentedPair | RatedPair]) -> list[float]:
    """The length baseline's score: response length in characters."""
    return [float(len(p.response)) for p in pairs]


def _auc(labels: Sequence[bool], scores: Sequence[float | None]) -> float | None:
    auc = roc_auc(labels, [s if s is not None else 0.0 for s in scores])
    return round(auc, 4) if auc is not None else None


def mode_metrics(
    planted: Sequence[AugmentedPair | RatedPair], planted_scores: Sequence[float | None],
    human: Sequence[AugmentedPair | RatedPair], human_scores: Sequence[float | None],
    kinds: Sequence[str], threshold: float | None,
) -> dict[str, Any]:
    """One row of the modes table: AUC overall, per kind and on the human set; P/R at `threshold`
    (None for a score that has no threshold, e.g. the length baseline)."""
    labels = [p.source == GOOD for p in planted]
    by_kind = {}
    for kind in kinds:
        idx = [i for i, p in enumerate(planted) if p.source in (GOOD, kind)]
        by_kind[kind] = _auc([labels[i] for i in idx], [planted_scores[i] for i in idx])
    hl = [p.source == HUMAN_GOOD for p in human]
    zero = [s if s is not None else 0.0 for s in planted_scores]
    out: dict[str, Any] = {"auc": _auc(labels, planted_scores), "auc_ci95": auc_interval(labels, zero),
                           "auc_by_kind": by_kind,
                           "human_auc": _auc(hl, human_scores) if human else None,
                           "human_auc_ci95": auc_interval(hl, [s if s is not None else 0.0 for s in human_scores])
                           if human else None,
                           "unscored": sum(s is None for s in planted_scores) + sum(s is None for s in human_scores)}
    if threshold is not None:
        out["at_threshold"] = precision_recall(labels, planted_scores, threshold)
        out["human_at_threshold"] = precision_recall(hl, human_scores, threshold) if human else None
    return out


def human_by_prompt(human: Sequence[AugmentedPair | RatedPair], scores: Sequence[float | None]
                    ) -> tuple[list[float], list[float]]:
    """The scores of the human set as (good, bad) lists, one entry per prompt in the same order:
    items are matched by source id (`human-<message id>-good|bad`); unscored counts as 0."""
    by: dict[str, dict[str, float]] = {}
    for p, s in zip(human, scores, strict=True):
        if p.source in (HUMAN_GOOD, HUMAN_BAD):
            by.setdefault(p.source_id.rsplit("-", 1)[0], {})[p.source] = s if s is not None else 0.0
    both = [v for v in by.values() if len(v) == 2]
    return [v[HUMAN_GOOD] for v in both], [v[HUMAN_BAD] for v in both]


def curation_metrics(rated: Sequence[RatedPair], threshold: float) -> dict[str, Any]:
    """AUC, precision/recall, per-kind mean scores and failure rates of rated eval pairs (one mode)."""
    labels = [r.source == GOOD for r in rated]
    scores = [r.score for r in rated]
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
        "roc_auc": _auc(labels, scores),
        "threshold": threshold,
        "at_threshold": precision_recall(labels, scores, threshold),
        "by_threshold": [precision_recall(labels, scores, t) for t in thresholds],
        "by_kind": kinds,
        "unscored": stats["unscored"],
        "unscored_rate": round(stats["unscored"] / len(rated), 4) if rated else 0.0,
        "parse_failure_rate": stats["parse_failure_rate"],
        "histogram": stats["histogram"],
    }


def evaluate_curation(
    cfg: Config, engine: Engine, planted: list[AugmentedPair], human: list[AugmentedPair], ev: Path,
    rater: tuple[str, Path | None], kinds: Sequence[str], modes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Rate the planted and the human set with every mode (one engine); the run's mode in detail.

    Returns `curation_metrics` of the run's mode (records path in "records") plus "modes": one
    `mode_metrics` row per mode and the length baseline."""
    from selfalign.log import say

    modes = tuple(modes or eval_modes())
    ev = Path(ev)
    threshold = cfg.curation.threshold
    rows: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    lengths = human_by_prompt(human, length_scores(human))  # the baseline, prompt by prompt
    for mode in modes:
        rp = rate_set(cfg, engine, planted, mode, ev / f"rated_planted_{mode}.jsonl", rater)
        rh = rate_set(cfg, engine, human, mode, ev / f"rated_human_{mode}.jsonl", rater) if human else []
        rows[mode] = mode_metrics(rp, [r.score for r in rp], rh, [r.score for r in rh], kinds, threshold)
        if human:  # against the length baseline (see `stats.paired_comparison`)
            rows[mode]["human_paired"] = paired_comparison(*human_by_prompt(rh, [r.score for r in rh]), *lengths,
                                                           seed=cfg.run.seed)
        both = curation_stats([*rp, *rh], threshold)
        rows[mode]["parse_failure_rate"] = both["parse_failure_rate"]  # generated outputs without a score line
        rows[mode]["unscored_pairs_rate"] = round(both["unscored"] / both["rated"], 4) if both["rated"] else 0.0
        rows[mode]["forced_score"] = both["forced_score"]  # generate mode with curation.force_score
        say(f"evaluate: mode {mode}: AUC {rows[mode]['auc']} planted, {rows[mode]['human_auc']} human")
        if mode == cfg.curation.mode:
            detail = {**curation_metrics(rp, threshold), "records": str(ev / f"rated_planted_{mode}.jsonl")}
    rows[LENGTH] = mode_metrics(planted, length_scores(planted), human, length_scores(human), kinds, None)
    if human:
        rows[LENGTH]["human_paired"] = paired_comparison(*lengths)
    if not detail:  # the run's mode is not among those compared: the first one in detail
        rp = rate_set(cfg, engine, planted, modes[0], ev / f"rated_planted_{modes[0]}.jsonl", rater)
        detail = {**curation_metrics(rp, threshold), "records": str(ev / f"rated_planted_{modes[0]}.jsonl")}
    return {**detail, "mode": cfg.curation.mode, "modes": rows, "kinds": list(kinds),
            "length_baseline": "score = response length in characters (Zhao et al. 2024, Long Is More for Alignment)"}
