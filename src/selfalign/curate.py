"""Self-curation: a rater scores each (instruction, response) pair 1-5; good pairs are kept.

Five modes (`curation.mode`):

- `generate`: the paper's Table 1 rating prompt (templates/rating_prompt.txt) with k worked
  examples before it; the rater writes reasoning then "Score: N"; generation stops at that line,
  it is parsed robustly, re-sampled on failure, and optionally forced (see `_force_scores`).
- `logprob`: the same prompt, one forward pass: the expected score from the rater's next-token
  probabilities of 1..5 after "Score:".
- `likelihood`: no rating prompt; two forward passes of the response (`likelihood.py`), with and
  without the instruction. The value is 1 - IFD, the share of the response's NLL per token that the
  instruction explains (Li et al. 2024): near 0 for a response the instruction does not explain.
- `combined`: four likelihood signals, each a robust z-score among the pairs rated together
  ((x - median) / (1.4826 x median absolute deviation)); the value is the sum of their negative
  parts, so a pair loses for every signal on which it is worse than the typical pair and gains
  nothing for doing better. The signals (`COMBINED_SIGNALS`): log(1 - IFD) (a response the
  instruction does not explain: a mismatched pair), log p(the response ends where it ends) (a
  truncated one), minus the worst segment's NLL ratio (a part the instruction does not explain:
  appended boilerplate) and the instruction's role margin (it reads as a user's request, not as
  an answer: what an untrained backward model writes). Chosen by measurement on three draws of
  OASST1 pairs, see the README ("Curation modes").
- `quality`: the combined value plus two signals of the response itself as full z-scores
  (`QUALITY_SIGNALS`): fluency (minus its NLL per token given the instruction) and length. It
  trades catching bad pairs for ranking good replies as people do: at SmolLM2-135M it is the only
  mode level with the length baseline on OASST1's human ranks (above it by 0.004-0.038 on three
  draws, within noise), and worse than `combined` on planted bad pairs (README, "Curation modes").

The likelihood modes have no 1-5 scale of their own: a pair's score is 1 + 4 x its rank fraction
among the pairs rated together (`rank_scores`: lowest 1, highest 5, ties share a rank), so a
threshold of 4 keeps the top quarter. Their records carry `parts` (the NLLs, IFD, end
log-probability, worst segment ratio, role margin, the combined or quality mode's z-scores and
the value), so a user can see why a pair was kept.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from selfalign.cards import dataset_card
from selfalign.config import ConfigError, CurationConfig, ModelsConfig
from selfalign.generation import (
    Engine,
    GenParams,
    context_limit,
    generate,
    next_token_probs,
    overlong_prompts,
)
from selfalign.io import atomic_write_text, write_jsonl
from selfalign.likelihood import pair_likelihoods
from selfalign.prompts import (
    PromptTooLong,
    fit_prompt,
    rating_messages,
    render_prompt,
)
from selfalign.record_log import RecordLog
from selfalign.records import AugmentedPair, RatedPair

MODES = ("generate", "logprob", "likelihood", "combined", "quality")
RANKED_MODES = ("likelihood", "combined", "quality")  # scored by rank among the pairs rated together
_LIKELIHOOD_CHUNK = 32  # pairs per logged chunk (an interruption loses at most one)
# sequences per forward pass: full-vocabulary logits of every position are float32 (batch x length x
# vocabulary: 8 x 300 x 49k = 0.5 GB for SmolLM2); larger batches only add memory traffic on a CPU
_LIKELIHOOD_BATCH = 8

_NUM = r"(\d+(?:\.\d+)?)"
# "Score: 4", "score: 4/5", "**Score:** 5", "Score = 4.5", "Rating: 3"
_SCORE_RE = re.compile(
    r"(?:score|rating)\s*\**\s*[:=\-]?\s*\**\s*(?:is\s+|of\s+)?" + _NUM + r"\s*(?:/\s*(\d+))?",
    re.IGNORECASE,
)
# A bare number on the last non-empty line: "4", "4/5", "4.", "(5)"
_TRAILING_RE = re.compile(r"^\W{0,3}" + _NUM + r"\s*(?:/\s*(\d+))?\W{0,3}$")
# Generate mode stops at the score line, so that a rater does not spend its token budget past it:
# the score forms of _SCORE_RE that are cheap to list, with the digit (vLLM and the HF engine
# both stop on plain strings). Caveat: "Score: 10/10" or "Score: 4.5" would stop at "Score: 1" /
# "Score: 4"; the rating prompt asks for a 1-5 score, which is what raters write.
RATING_STOPS = tuple(f"{form}{i}" for form in ("Score: ", "Score:", "Score:** ") for i in range(1, 6))


def parse_score_detail(text: str) -> tuple[float | None, str]:
    """(score, status): status is ok, no_score or out_of_range. Never raises."""
    if not isinstance(text, str):
        return None, "no_score"
    matches = list(_SCORE_RE.finditer(text))
    m = matches[-1] if matches else None
    if m is None:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        m = _TRAILING_RE.match(lines[-1]) if lines else None
    if m is None:
        return None, "no_score"
    try:
        value = float(m.group(1))
    except ValueError:
        return None, "no_score"
    scale = m.group(2)
    if scale and scale not in ("5",):
        try:
            denom = float(scale)
        except ValueError:
            denom = 0.0
        if denom in (10.0, 100.0):
            value = value / denom * 5
        else:
            return None, "out_of_range"
    if not 1.0 <= value <= 5.0:
        return None, "out_of_range"
    return value, "ok"


def parse_score(text: str) -> float | None:
    return parse_score_detail(text)[0]


def reasoning_of(text: str) -> str:
    """The rater's reasoning: its output without the final score line."""
    lines = text.strip().splitlines()
    while lines and (_SCORE_RE.search(lines[-1]) or _TRAILING_RE.match(lines[-1].strip())):
        lines.pop()
    return "\n".join(lines).strip()


def choose_rater(models: ModelsConfig, run_dir: Path, iteration: int = 1) -> tuple[str, Path | None, str]:
    """(model spec, adapter folder or None, name) of the rater of curation iteration `iteration`.

    Iteration 2 is rated by the forward model M1 (`forward_1/`); iteration 1 by `models.rater`,
    where "m0" is the forward model trained on the seed data only (`m0/`).
    """
    if iteration == 2:
        return models.base, Path(run_dir) / "forward_1", "M1 (forward model of iteration 1)"
    if models.rater == "m0":
        return models.base, Path(run_dir) / "m0", "M0 (forward model trained on seed only)"
    return models.rater, None, models.rater


def _fit_rating_prompt(engine: Engine, p: AugmentedPair, shots: int, max_response_tokens: int,
                       limit: int | None) -> tuple[str, bool]:
    """The rating prompt of one pair, its response cut to fit (see `prompts.fit_prompt`)."""
    return fit_prompt(engine.tokenizer, lambda r: render_prompt(engine.tokenizer, rating_messages(p.instruction, r, shots)),
                      p.response, max_response_tokens, limit)


def rating_prompts(
    engine: Engine, pairs: list[AugmentedPair], shots: int, max_response_tokens: int, max_new_tokens: int = 0
) -> tuple[list[str], list[bool]]:
    """The rating prompt of each pair, and whether its response was cut: to `max_response_tokens`,
    and further where the prompt and `max_new_tokens` would not fit the model's context."""
    limit = context_limit(engine, max_new_tokens)
    out, cut = [], []
    for p in pairs:
        try:
            prompt, c = _fit_rating_prompt(engine, p, shots, max_response_tokens, limit)
        except PromptTooLong as e:
            raise ConfigError(f"curation: {e} (pair {p.source_id}, instruction of {len(p.instruction)} characters); "
                              "lower curation.shots, curation.max_new_tokens or generation.instruction.max_new_tokens"
                              ) from None
        out.append(prompt)
        cut.append(c)
    return out, cut


def build_rating_prompts(
    engine: Engine, pairs: list[AugmentedPair], shots: int, max_response_tokens: int
) -> list[str]:
    return rating_prompts(engine, pairs, shots, max_response_tokens)[0]


def _score_suffix(tokenizer: Any) -> tuple[str, list[str]]:
    """What to append to the prompt, and the candidate strings whose next token is read."""
    base = tokenizer("Score:", add_special_tokens=False)["input_ids"]
    full = tokenizer("Score: 4", add_special_tokens=False)["input_ids"]
    if full[: len(base)] == base and len(full) - len(base) == 1:
        return "Score:", [f" {i}" for i in range(1, 6)]
    return "Score: ", [str(i) for i in range(1, 6)]


def force_score_prompt(tokenizer: Any, prompt: str, output: str) -> str:
    """The rating prompt, the rater's unfinished output and a score line to complete: the
    `_score_suffix` of logprob mode, on a new line."""
    return f"{prompt}{output.rstrip()}\n{_score_suffix(tokenizer)[0]}"


def error_rated(p: AugmentedPair, reason: str, cut: bool = False) -> RatedPair:
    """The record of a pair that could not be rated (kept with its reason, never dropped)."""
    return RatedPair(p.instruction, p.response, p.source_id, p.source, None, "", [], [], 0, cut, "error", reason)


def _rating_inputs(
    engine: Engine, pairs: list[AugmentedPair], cur: CurationConfig, max_response_tokens: int
) -> tuple[list[str], list[bool], list[str]]:
    """Prompts (with "Score:" appended in logprob mode), whether each response was cut, and for
    each pair "" or why its prompt cannot run (longer than the model's context)."""
    suffix = _score_suffix(engine.tokenizer)[0] if cur.mode == "logprob" else ""
    # room after the prompt: the generated reasoning and score, or "Score:" and one token
    new = cur.max_new_tokens if cur.mode == "generate" else \
        len(engine.tokenizer(suffix, add_special_tokens=False)["input_ids"]) + 1
    limit = context_limit(engine, new)
    prompts, cut, too_long = [], [], []
    for p in pairs:  # the response is cut to fit; a pair whose prompt cannot fit even so is an error row
        try:
            prompt, c = _fit_rating_prompt(engine, p, cur.shots, max_response_tokens, limit)
        except PromptTooLong as e:
            prompt, c = "", True
            too_long.append(f"prompt_too_long: {e}")
        else:
            too_long.append("")
        prompts.append(prompt + suffix)
        cut.append(c)
    over = overlong_prompts(engine, prompts, 1 if suffix else new)
    return prompts, cut, [t or o for t, o in zip(too_long, over, strict=True)]


def rate_pairs(
    engine: Engine,
    pairs: list[AugmentedPair],
    cur: CurationConfig,
    out_path: Path,
    seed: int = 0,
    max_response_tokens: int = 512,
) -> list[RatedPair]:
    """Rate every pair; records are appended to `out_path` as they finish (resumable).

    A pair whose rating prompt is longer than the model's context gets a record with status error."""
    if cur.mode in RANKED_MODES:
        return _rate_likelihood(engine, pairs, cur, Path(out_path), max_response_tokens)
    log = RecordLog(out_path)
    done = log.done_keys("source_id")
    try:
        if any(p.source_id not in done for p in pairs):
            # all pairs: chunks and seeds must match an uninterrupted run; done pairs are skipped
            prompts, cut, errors = _rating_inputs(engine, pairs, cur, max_response_tokens)
            for p, c, e in zip(pairs, cut, errors, strict=True):
                if e and p.source_id not in done:
                    log.append(asdict(error_rated(p, e, c)))
            run = [i for i, e in enumerate(errors) if not e]
            ok, prompts, cut = [pairs[i] for i in run], [prompts[i] for i in run], [cut[i] for i in run]
            if cur.mode == "generate":
                _rate_generate(engine, ok, prompts, cut, cur, seed, log, done)
            else:
                todo = [i for i, p in enumerate(ok) if p.source_id not in done]
                if todo:
                    for rec in score_logprob(engine, [ok[i] for i in todo], [prompts[i] for i in todo],
                                             [cut[i] for i in todo]):
                        log.append(asdict(rec))
    finally:
        log.close()
    by_id = {r["source_id"]: r for r in log.records}
    return [RatedPair(**by_id[p.source_id]) for p in pairs if p.source_id in by_id]


def rate_batch(
    engine: Engine, pairs: list[AugmentedPair], cur: CurationConfig, seed: int = 0, max_response_tokens: int = 512
) -> list[RatedPair]:
    """One record per pair, in order: the Ray executor's step (the same functions as
    `rate_pairs`). A prompt longer than the model's context, or a pair the engine fails on, gives a
    record with status error and the reason; the other pairs of the batch are unaffected."""
    if cur.mode in RANKED_MODES:  # unranked: the driver ranks the whole set (`rank_scores`)
        prompts, cut = [""] * len(pairs), [False] * len(pairs)
        errors = [""] * len(pairs)
    else:
        prompts, cut, errors = _rating_inputs(engine, pairs, cur, max_response_tokens)

    def rate(idx: list[int]) -> list[RatedPair]:
        ps, pr, c = [pairs[i] for i in idx], [prompts[i] for i in idx], [cut[i] for i in idx]
        if cur.mode in RANKED_MODES:
            return score_likelihood(engine, ps, cur, max_response_tokens, progress=False)
        if cur.mode == "generate":
            return rate_chunk(engine, ps, pr, c, cur, seed, progress=False)
        return score_logprob(engine, ps, pr, c, progress=False)

    run = [i for i, e in enumerate(errors) if not e]
    out: dict[int, RatedPair] = {}
    try:
        out.update(zip(run, rate(run), strict=True))
    except Exception:  # noqa: BLE001 - one pair at a time, so that a bad pair fails alone
        for i in run:
            try:
                out[i] = rate([i])[0]
            except Exception as e:  # noqa: BLE001 - recorded on the pair
                errors[i] = f"engine_error: {type(e).__name__}: {e}"[:500]
    return [error_rated(p, errors[i], cut[i]) if errors[i] else out[i] for i, p in enumerate(pairs)]


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
    engine: Engine, pairs: list[AugmentedPair], cur: CurationConfig, max_response_tokens: int, progress: bool = True,
    role_cache: dict[str, tuple[float, float]] | None = None,
) -> list[RatedPair]:
    """Records of the likelihood modes: `parts` and the value, score None until `rank_scores`.
    `role_cache`: instructions whose role NLLs are known (`likelihood.instruction_roles`)."""
    model = getattr(engine, "model", None)
    if model is None:
        raise ConfigError(f"curation.mode={cur.mode} reads the model's token probabilities: it needs "
                          "generation.backend=hf")
    res = pair_likelihoods(model, engine.tokenizer, [(p.instruction, p.response) for p in pairs],
                           max_response_tokens, batch_size=max(1, min(_LIKELIHOOD_BATCH, getattr(engine, "batch_size", 8))),
                           progress=progress, roles=True, role_cache=role_cache)
    out = []
    for p, r in zip(pairs, res, strict=True):
        parts = {k: (v if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in asdict(r).items()}
        parts["value"] = _likelihood_value(cur.mode, r.ifd)
        why = (f"IFD {parts['ifd']} (NLL {parts['nll_conditional']} with the instruction, "
               f"{parts['nll_unconditional']} without), log p(end) {parts['end_logprob']}, worst segment "
               f"{parts['worst_segment_ratio']}, role margin {parts['role_margin']}")
        out.append(RatedPair(p.instruction, p.response, p.source_id, p.source, None, why, [], [], 0, r.cut,
                             parts=parts))
    return out


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


def finish_ranked(rated: list[RatedPair], out_path: Path, mode: str) -> list[RatedPair]:
    """Rank the likelihood-mode records of one rating run and rewrite its file with the scores."""
    ranked = rank_scores(rated, mode)
    write_jsonl(Path(out_path), [asdict(r) for r in ranked])
    return ranked


def _rate_likelihood(
    engine: Engine, pairs: list[AugmentedPair], cur: CurationConfig, out_path: Path, max_response_tokens: int
) -> list[RatedPair]:
    """The likelihood modes: chunks of pairs logged as they finish (resumable), then ranked. An
    instruction's role NLLs are computed once per run (pairs that share an instruction, as
    evaluate's planted copies and human-judged replies do, often fall in different chunks)."""
    log = RecordLog(out_path)
    done = log.done_keys("source_id")
    todo = [p for p in pairs if p.source_id not in done]
    roles = {r["instruction"]: (r["parts"]["nll_instruction_user"], r["parts"]["nll_instruction_assistant"])
             for r in log.records if (r.get("parts") or {}).get("nll_instruction_user") is not None
             and r["parts"].get("nll_instruction_assistant") is not None}
    bar = tqdm(total=len(todo), desc=f"rate ({cur.mode})", unit="pair", disable=not todo)
    try:
        for start in range(0, len(todo), _LIKELIHOOD_CHUNK):
            chunk = todo[start : start + _LIKELIHOOD_CHUNK]
            for rec in score_likelihood(engine, chunk, cur, max_response_tokens, progress=False, role_cache=roles):
                log.append(asdict(rec))
            bar.update(len(chunk))
    finally:
        bar.close()
        log.close()
    by_id = {r["source_id"]: r for r in log.records}
    rated = [RatedPair(**by_id[p.source_id]) for p in pairs if p.source_id in by_id]
    return finish_ranked(rated, out_path, cur.mode)


def score_logprob(
    engine: Engine, pairs: list[AugmentedPair], prompts: list[str], cut: list[bool], progress: bool = True
) -> list[RatedPair]:
    """Expected score from the next-token probabilities of 1..5 after "Score:" (one pass);
    `prompts` end with "Score:" (see `_rating_inputs`)."""
    cands = _score_suffix(engine.tokenizer)[1]
    probs = next_token_probs(engine, prompts, cands, desc="rate (logprob)", progress=progress)
    out = []
    for p, pr, c in zip(pairs, probs, cut, strict=True):
        total = sum(pr)
        score = sum((i + 1) * x for i, x in enumerate(pr)) / total if total > 0 else None
        dist = ", ".join(f"{i + 1}:{x / total:.2f}" for i, x in enumerate(pr)) if total else ""
        out.append(RatedPair(p.instruction, p.response, p.source_id, p.source, score,
                             f"next-token probabilities {dist}", [score] if score else [], [], 0, c))
    return out


def _rate_generate(
    engine: Engine, pairs: list[AugmentedPair], prompts: list[str], cut: list[bool], cur: CurationConfig, seed: int,
    log: RecordLog, done: set[str],
) -> None:
    """Rate in chunks of a few batches; each chunk's records are logged when it is done, so an
    interruption loses at most one chunk of work. Chunks are formed over all pairs, so a resumed
    run rates exactly as an uninterrupted one; chunks already logged are skipped."""
    chunk = max(8, getattr(engine, "batch_size", 8))  # one batch (a few for small batches)
    order = sorted(range(len(pairs)), key=lambda i: (len(prompts[i]), i))  # similar lengths batch together
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        if all(pairs[i].source_id in done for i in idx):
            continue
        recs = rate_chunk(engine, [pairs[i] for i in idx], [prompts[i] for i in idx], [cut[i] for i in idx], cur,
                          seed + start, f"{start + 1}-{min(start + chunk, len(pairs))}/{len(pairs)}")
        for rec in recs:
            if rec.source_id not in done:
                log.append(asdict(rec))


def rate_chunk(
    engine: Engine, todo: list[AugmentedPair], prompts: list[str], cut: list[bool], cur: CurationConfig, seed: int,
    where: str = "", progress: bool = True,
) -> list[RatedPair]:
    """Rate pairs in generate mode: greedy (or n sampled ratings), then retries of unparsable ones."""
    n = len(todo)
    outputs: list[list[str]] = [[] for _ in range(n)]
    scores: list[list[float]] = [[] for _ in range(n)]
    failures = [0] * n

    def take(indices: list[int], texts: list[str]) -> None:
        for i, text in zip(indices, texts, strict=True):
            outputs[i].append(text)
            s, _ = parse_score_detail(text)
            if s is None:
                failures[i] += 1
            else:
                scores[i].append(s)

    # First pass: greedy for a single rating, sampled when averaging n ratings. Every pass stops
    # at the score line (RATING_STOPS).
    stop, budget = RATING_STOPS, cur.max_new_tokens
    sampled = GenParams(cur.temperature, 0.9, budget, seed, stop)
    first = GenParams(0.0, 1.0, budget, seed, stop) if cur.n_samples == 1 else sampled
    rounds = [first] + [GenParams(cur.temperature, 0.9, budget, seed + k + 1, stop) for k in range(cur.n_samples - 1)]
    for k, params in enumerate(rounds):
        take(list(range(n)), generate(engine, prompts, params, desc=f"rate {where} ({k + 1}/{len(rounds)})",
                                      progress=progress))
    for attempt in range(cur.retries):
        retry = [i for i in range(n) if not scores[i]]
        if not retry:
            break
        params = GenParams(cur.temperature, 0.9, budget, seed + 1000 + attempt, stop)
        take(retry, generate(engine, [prompts[i] for i in retry], params, desc=f"retry {attempt + 1} {where}",
                             progress=progress))
    forced = _force_scores(engine, prompts, outputs, scores, seed, where, progress) if cur.force_score else set()
    out = []
    for i, p in enumerate(todo):
        score = sum(scores[i]) / len(scores[i]) if scores[i] else None
        explained = next((o for o in outputs[i] if parse_score(o) is not None), outputs[i][0])
        out.append(RatedPair(p.instruction, p.response, p.source_id, p.source, score,
                             reasoning_of(explained), scores[i], outputs[i], failures[i], cut[i],
                             forced_score=i in forced))
    return out


def _force_scores(engine: Engine, prompts: list[str], outputs: list[list[str]], scores: list[list[float]],
                  seed: int, where: str, progress: bool) -> set[int]:
    """curation.force_score: each pair still without a score after the retries (its rater ran out
    of tokens before the score line, or wrote none) gets one greedy pass over the rating prompt +
    its first output + "\nScore:", of a few tokens; a parsable score there is its score. The
    forced output is appended to the pair's outputs and is not a parse failure. Returns the
    indices of the pairs forced (a prompt that would not fit the model's context is not)."""
    todo = [i for i in range(len(prompts)) if not scores[i]]
    if not todo:
        return set()
    new = 3  # the digit, with its space and a newline where the tokenizer splits them
    asked = [force_score_prompt(engine.tokenizer, prompts[i], outputs[i][0]) for i in todo]
    fits = [i for i, why in zip(todo, overlong_prompts(engine, asked, new), strict=True) if not why]
    asked = [a for i, a in zip(todo, asked, strict=True) if i in fits]
    if not fits:
        return set()
    suffix = _score_suffix(engine.tokenizer)[0]
    texts = generate(engine, asked, GenParams(0.0, 1.0, new, seed, RATING_STOPS), desc=f"force score {where}",
                     progress=progress)
    for i, text in zip(fits, texts, strict=True):
        line = f"{suffix.rstrip()} {text.strip().split(chr(10))[0]}"  # "Score: 4"
        outputs[i].append(f"{outputs[i][0].rstrip()}\n{line}")
        s, _ = parse_score_detail(line)
        if s is not None:
            scores[i].append(s)
    return set(fits)


def select(rated: list[RatedPair], threshold: float) -> list[RatedPair]:
    """Pairs with a score at or above the threshold (unscored pairs are never kept)."""
    return [r for r in rated if r.score is not None and r.score >= threshold - 1e-9]


def curation_stats(rated: list[RatedPair], threshold: float) -> dict[str, Any]:
    scored = [r.score for r in rated if r.score is not None]
    hist = {str(i): sum(1 for s in scored if int(s + 0.5) == i) for i in range(1, 6)}  # half up
    n_out = sum(len(r.raw_outputs) - r.forced_score for r in rated)  # generated, not forced
    n_fail = sum(r.parse_failures for r in rated)
    return {
        "rated": len(rated),
        "scored": len(scored),
        "unscored": len(rated) - len(scored),
        "kept": len(select(rated, threshold)),
        "threshold": threshold,
        "mean_score": round(sum(scored) / len(scored), 3) if scored else None,
        "histogram": hist,
        "parse_failure_rate": round(n_fail / n_out, 3) if n_out else 0.0,
        # curation.force_score: pairs given the forced score line, and those that got a score so
        "forced_score": sum(r.forced_score for r in rated),
        "forced_scored": sum(r.forced_score and r.score is not None for r in rated),
        "response_cut": sum(r.response_cut for r in rated),  # cut to fit the rating prompt
    }


def write_curated(kept: list[RatedPair], out_dir: Path, provenance: dict[str, Any]) -> Path:
    """A dataset folder (data.jsonl + README.md card, `cards.dataset_card`) that
    `datasets.load_dataset` reads."""
    out_dir = Path(out_dir)
    rows = [
        {"instruction": r.instruction, "response": r.response, "score": r.score,
         "reasoning": r.reasoning, "source": r.source, "source_id": r.source_id, "ratings": r.ratings}
        for r in kept
    ]
    write_jsonl(out_dir / "data.jsonl", rows)
    atomic_write_text(out_dir / "README.md", dataset_card(provenance, len(rows)))
    # provenance.json sits beside the folder: a second JSON file inside would be read as data
    atomic_write_text(out_dir.with_name(out_dir.name + ".provenance.json"), json.dumps(provenance, indent=2))
    return out_dir
