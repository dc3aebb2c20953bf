"""The ranked curation modes (`likelihood`, `combined`, `quality`): no rating prompt; two forward
passes of each response, with and without its instruction, and two short ones of each distinct
instruction (`likelihood.py`) give each pair its `parts`; a value is computed from them, and a
pair's score is 1 + 4 x its rank fraction among the pairs rated together (`rank_scores`: lowest 1,
highest 5, ties share a rank), so a threshold of 4 keeps the top quarter.

- `likelihood`: the value is 1 - IFD, the share of the response's NLL per token that the
  instruction explains (Li et al. 2024): near 0 for a response the instruction does not explain.
- `combined`: four signals (`COMBINED_SIGNALS`), each a robust z-score among the pairs rated
  together ((x - median) / (1.4826 x median absolute deviation)); the value is the sum of their
  negative parts, so a pair loses for every signal on which it is worse than the typical pair and
  gains nothing for doing better: log(1 - IFD) (a mismatched pair), log p(the response ends where
  it ends) (a truncated one), minus the worst segment's NLL ratio (appended boilerplate), and the
  instruction's role margin (it reads as a user's request, not as an answer).
- `quality`: the combined value plus the full z-scores of two signals of the response itself
  (`QUALITY_SIGNALS`): fluency and length. It trades catching bad pairs for ranking plausible
  replies by quality (docs/curation-modes.md).

Records carry `parts` (the NLLs, IFD, end log-probability, worst segment ratio, role margin, the
z-scores and the value), so a user can see why a pair was kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from selfalign.config import ConfigError
from selfalign.generation import Engine
from selfalign.likelihood import pair_likelihoods
from selfalign.prompts import Templates
from selfalign.records import AugmentedPair, RatedPair
from selfalign.steps import Prepared, Step

RANKED_MODES = ("likelihood", "combined", "quality")  # scored by rank among the pairs rated together
CHUNK = 32  # pairs per logged chunk (an interruption loses at most one)
# sequences per forward pass: full-vocabulary logits of every position are float32 (batch x length x
# vocabulary: 8 x 300 x 49k = 0.5 GB for SmolLM2); larger batches only add memory traffic on a CPU
_LIKELIHOOD_BATCH = 8

SCORING_VERSION = 2  # what the likelihood modes' parts and values mean; in evaluate's fingerprints

# The combined mode's signals: name -> the signal of a record's parts, higher better. A part that
# is missing or not finite counts as a poor value (IFD 1, log p(end) -15, worst segment ratio 1)
# or, for the role margin, as no evidence either way (0).
COMBINED_SIGNALS: dict[str, Any] = {
    "explained": lambda p: math.log(max(1.0 - _finite(p.get("ifd"), 1.0), 1e-4)),  # log(1 - IFD)
    "end": lambda p: max(_finite(p.get("end_logprob"), -15.0), -15.0),  # log p(end), floored
    "segments": lambda p: -_finite(p.get("worst_segment_ratio"), 1.0),
    "role": lambda p: _finite(p.get("role_margin"), 0.0),
}


# The quality mode adds two signals of the response itself (higher better), as full robust
# z-scores (rewards and penalties) on top of the combined mode's penalties: fluency, minus the
# response's NLL per token given its instruction (a missing one counts as 20 nats), and its
# length, log(1 + characters), the baseline of "Long Is More for Alignment" (Zhao et al. 2024).
QUALITY_SIGNALS: dict[str, Any] = {
    "fluency": lambda p, response: -_finite(p.get("nll_conditional"), 20.0),
    "length": lambda p, response: math.log1p(len(response)),
}


def _finite(x: Any, default: float) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else default


def robust_z(values: list[float]) -> list[float]:
    """(x - median) / scale, scale = 1.4826 x the median absolute deviation (the standard deviation
    for normal data, unmoved by a few outliers); the mean absolute deviation x 1.2533 when over half
    the values are equal; all 0 when every value is."""
    if not values:
        return []
    srt = sorted(values)
    n = len(srt)
    med = (srt[(n - 1) // 2] + srt[n // 2]) / 2
    dev = sorted(abs(v - med) for v in values)
    scale = 1.4826 * (dev[(n - 1) // 2] + dev[n // 2]) / 2 or 1.2533 * sum(dev) / n
    return [(v - med) / scale if scale > 0 else 0.0 for v in values]


def combined_values(parts: list[dict[str, Any]]) -> list[tuple[float, dict[str, float]]]:
    """The combined mode's (value, z-scores) of each record's parts, among all of them."""
    z = {name: robust_z([fn(p) for p in parts]) for name, fn in COMBINED_SIGNALS.items()}
    return [(sum(min(0.0, z[name][k]) for name in z), {name: round(z[name][k], 4) for name in z})
            for k in range(len(parts))]


def quality_values(parts: list[dict[str, Any]], responses: list[str]) -> list[tuple[float, dict[str, float]]]:
    """The quality mode's (value, z-scores): the combined value plus the robust z-scores of
    `QUALITY_SIGNALS` among all the records."""
    z = {name: robust_z([fn(p, r) for p, r in zip(parts, responses, strict=True)])
         for name, fn in QUALITY_SIGNALS.items()}
    return [(value + sum(z[name][k] for name in z), {**zc, **{name: round(z[name][k], 4) for name in z}})
            for k, (value, zc) in enumerate(combined_values(parts))]


def _likelihood_value(mode: str, ifd: float) -> float | None:
    """The value of one pair in `likelihood` mode (1 - IFD); None when not finite, and always
    None in the `combined` and `quality` modes (a value among the set: `combine`)."""
    value = 1.0 - ifd if mode == "likelihood" else float("nan")
    return value if math.isfinite(value) else None


def combine(rated: list[RatedPair], mode: str = "combined") -> list[RatedPair]:
    """The combined (or quality) mode's values (`combined_values`, `quality_values`) of the
    records with likelihood parts, in their `parts` with the z-scores; records without parts
    (errors) are unchanged."""
    idx = [i for i, r in enumerate(rated) if r.parts.get("n_tokens")]
    parts = [rated[i].parts for i in idx]
    values = quality_values(parts, [rated[i].response for i in idx]) if mode == "quality" else combined_values(parts)
    out = list(rated)
    for i, (value, z) in zip(idx, values, strict=True):
        out[i] = RatedPair(**{**asdict(rated[i]), "parts": {**rated[i].parts, "z": z, "value": round(value, 6)}})
    return out


def score_likelihood(
    engine: Engine, pairs: Sequence[AugmentedPair], mode: str, max_response_tokens: int, templates: Templates,
    progress: bool = True, role_cache: dict[str, tuple[float, float]] | None = None,
) -> list[RatedPair]:
    """Records of the likelihood modes: `parts` and the value, score None until `rank_scores`.
    `role_cache`: instructions whose role NLLs are known (`likelihood.instruction_roles`)."""
    model = getattr(engine, "model", None)
    if model is None:
        raise ConfigError(f"curation.mode={mode} reads the model's token probabilities: it needs "
                          "generation.backend=hf")
    res = pair_likelihoods(model, engine.tokenizer, [(p.instruction, p.response) for p in pairs],
                           max_response_tokens, batch_size=max(1, min(_LIKELIHOOD_BATCH, getattr(engine, "batch_size", 8))),
                           progress=progress, roles=True, role_cache=role_cache, templates=templates)
    out = []
    for p, r in zip(pairs, res, strict=True):
        parts = {k: (v if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in asdict(r).items()}
        parts["value"] = _likelihood_value(mode, r.ifd)
        why = (f"IFD {_g(parts['ifd'], '.3f')} (NLL {_g(parts['nll_conditional'], '.2f')} with the instruction, "
               f"{_g(parts['nll_unconditional'], '.2f')} without), log p(end) {_g(parts['end_logprob'], '.2f')}, "
               f"worst segment {_g(parts['worst_segment_ratio'], '.2f')}, role margin {_g(parts['role_margin'], '+.2f')}")
        out.append(RatedPair.of(p, reasoning=why, response_cut=r.cut, parts=parts))
    return out


def _g(x: float | None, spec: str) -> str:
    """A signal rounded to what it means (the record's `parts` keep full precision)."""
    if x is None:
        return "n/a"
    text = format(x, spec)
    return format(0.0, spec) if float(text) == 0 else text  # no "-0.00"


def revalue(rated: list[RatedPair], mode: str) -> list[RatedPair]:
    """Likelihood-mode records re-valued for `mode` from their parts (the ranked modes read the
    same parts, so one pass serves all). Unranked; `combined` and `quality` values come with `rank_scores`."""
    out = []
    for r in rated:
        p = r.parts
        if p.get("n_tokens"):
            p = {k: v for k, v in p.items() if k != "z"}
            p["value"] = _likelihood_value(mode, p["ifd"]) if p.get("ifd") is not None else None
        out.append(RatedPair(**{**asdict(r), "parts": p, "score": None, "ratings": []}))
    return out


def rank_scores(rated: list[RatedPair], mode: str | None = None) -> list[RatedPair]:
    """Scores 1-5 of likelihood-mode records from their values: 1 + 4 x rank fraction among the
    records with a value (ties share the mean rank; a single record scores 5). Others unchanged.
    In the `combined` and `quality` modes the values are first computed among the set (`combine`)."""
    if mode in ("combined", "quality"):
        rated = combine(rated, mode)
    valued = [i for i, r in enumerate(rated) if r.parts.get("value") is not None]
    order = sorted(valued, key=lambda i: rated[i].parts["value"])
    ranks: dict[int, float] = {}
    k = 0
    while k < len(order):
        j = k
        while j + 1 < len(order) and rated[order[j + 1]].parts["value"] == rated[order[k]].parts["value"]:
            j += 1
        for m in range(k, j + 1):
            ranks[order[m]] = (k + j) / 2
        k = j + 1
    n = len(order)
    out = []
    for i, r in enumerate(rated):
        if i in ranks:
            score = round(1 + 4 * ranks[i] / (n - 1), 4) if n > 1 else 5.0
            r = RatedPair(**{**asdict(r), "score": score, "ratings": [score]})
        out.append(r)
    return out


@dataclass
class RankStep(Step):
    """The ranked modes' step: each chunk of pairs is scored by likelihood (`score_likelihood`),
    unranked; `finish` ranks the whole set. An instruction's role NLLs are computed once per rating
    run (pairs that share an instruction often fall in different chunks), also across a resume."""

    templates: Templates
    mode: str
    max_response_tokens: int = 256
    roles: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)  # instruction -> role NLLs

    name = "rank"

    @property
    def desc(self) -> str:  # type: ignore[override]
        return f"rate ({self.mode})"

    def item_id(self, item: AugmentedPair) -> str:
        return item.source_id

    def from_row(self, row: dict[str, Any]) -> tuple[AugmentedPair | None, str]:
        return pair_of_row(row)

    def chunks(self, items: list[AugmentedPair]) -> list[list[AugmentedPair]]:
        return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]

    def resume(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            p = r.get("parts") or {}
            if p.get("nll_instruction_user") is not None and p.get("nll_instruction_assistant") is not None:
                self.roles[r["instruction"]] = (p["nll_instruction_user"], p["nll_instruction_assistant"])

    def prepare(self, engine: Engine, items: Sequence[AugmentedPair]) -> list[Prepared]:
        return [Prepared(p, None) for p in items]  # no prompt: the pairs are scored as they are

    def run(self, engine: Engine, items: Sequence[AugmentedPair], on_record: Any = None, progress: bool = True,
            isolate: bool = False) -> list[RatedPair]:
        preps, out, emit = self.begin(engine, items, on_record)

        def score(idx: list[int], bar: bool) -> None:
            recs = score_likelihood(engine, [preps[i].item for i in idx], self.mode, self.max_response_tokens,
                                    self.templates, progress=False, role_cache=self.roles)
            for i, rec in zip(idx, recs, strict=True):
                emit(i, rec)

        self.guarded(list(range(len(preps))), score, preps, out, emit, isolate, progress)
        return out

    def error_record(self, item: AugmentedPair, reason: str, cut: bool = False) -> RatedPair:
        return error_rated(item, reason, cut)

    def load(self, rec: dict[str, Any]) -> RatedPair:
        return RatedPair(**rec)

    def finish(self, records: list[RatedPair]) -> list[RatedPair]:
        return rank_scores(records, self.mode)


def error_rated(p: AugmentedPair, reason: str, cut: bool = False) -> RatedPair:
    """The record of a pair that could not be rated (kept with its reason, never dropped)."""
    return RatedPair.of(p, response_cut=cut, status="error", error=reason)


def pair_of_row(row: dict[str, Any]) -> tuple[AugmentedPair | None, str]:
    """An augmented record as the pair to rate; None for a record that is not rated (status not ok)."""
    if row.get("status") != "ok":
        return None, ""
    fields = AugmentedPair.__dataclass_fields__
    return AugmentedPair(**{k: v for k, v in row.items() if k in fields}), ""
