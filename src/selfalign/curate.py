"""Self-curation: every generated (instruction, response) pair is scored 1-5; pairs at or above
`curation.threshold` are kept (`select`) and written as a dataset with a card (`write_curated`).

Five modes (`curation.mode`; docs/curation-modes.md):

- `generate`: the paper's Table 1 rating prompt (templates/rating_prompt.txt) with k worked
  examples before it; the rater writes reasoning then "Score: N"; generation stops at that line,
  it is parsed robustly (`scoring.py`), re-sampled on failure, and optionally forced
  (`curation.force_score`, see `_force_scores`).
- `logprob`: the same prompt, one forward pass: the expected score from the rater's next-token
  probabilities of 1..5 after "Score:".
- `likelihood`, `combined`, `quality`: no rating prompt; pairs are ranked by likelihood signals
  (`rank.py`).

`RateStep` is the prompt-based modes' step, `rank.RankStep` the ranked modes'; `make_step` picks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfalign.cards import dataset_card
from selfalign.config import Config, ConfigError, CurationConfig, ModelsConfig
from selfalign.generation import Engine, GenParams, context_limit, generate, overlong_prompts
from selfalign.io import atomic_write_text, write_jsonl
from selfalign.log import say
from selfalign.prompts import PromptTooLong, Templates, fit_prompt, shipped
from selfalign.rank import RANKED_MODES, RankStep, error_rated, pair_of_row
from selfalign.records import AugmentedPair, RatedPair
from selfalign.scoring import (
    RATING_STOPS,
    expected_score,
    force_score_prompt,
    parse_score,
    parse_score_detail,
    reasoning_of,
    score_suffix,
)
from selfalign.steps import Prepared, Request, Step, row_seed, seeded

MODES = ("generate", "logprob", *RANKED_MODES)


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


def rating_prompts(
    engine: Engine, pairs: list[AugmentedPair], shots: int, max_response_tokens: int, max_new_tokens: int = 0,
    templates: Templates | None = None,
) -> tuple[list[str], list[bool]]:
    """The rating prompt of each pair, and whether its response was cut: to `max_response_tokens`,
    and further where the prompt and `max_new_tokens` would not fit the model's context."""
    tpl = templates or shipped()
    limit = context_limit(engine, max_new_tokens)
    out, cut = [], []
    for p in pairs:
        try:
            prompt, c = _fit(tpl, engine, p, shots, max_response_tokens, limit)
        except PromptTooLong as e:
            raise ConfigError(f"curation: {e} (pair {p.source_id}, instruction of {len(p.instruction)} characters); "
                              "lower curation.shots, curation.max_new_tokens or generation.instruction.max_new_tokens"
                              ) from None
        out.append(prompt)
        cut.append(c)
    return out, cut


def _fit(tpl: Templates, engine: Engine, p: AugmentedPair, shots: int, max_response_tokens: int,
         limit: int | None) -> tuple[str, bool]:
    """The rating prompt of one pair, its response cut to fit (see `prompts.fit_prompt`)."""
    return fit_prompt(engine.tokenizer,
                      lambda r: tpl.render_prompt(engine.tokenizer, tpl.rating_messages(p.instruction, r, shots)),
                      p.response, max_response_tokens, limit)


@dataclass
class RateStep(Step):
    """The prompt-based modes' step (`generate`, `logprob`): the few-shot rating prompt of each
    pair, its response cut to fit; a pair whose prompt cannot fit even so is an error record."""

    templates: Templates
    cur: CurationConfig
    seed: int = 0

    name = "rate"

    @property
    def desc(self) -> str:  # type: ignore[override]
        return f"rate ({self.cur.mode})"

    def item_id(self, item: AugmentedPair) -> str:
        return item.source_id

    def from_row(self, row: dict[str, Any]) -> tuple[AugmentedPair | None, str]:
        return pair_of_row(row)

    def first_pass(self) -> GenParams:
        """The first rating of every pair: greedy for a single rating, sampled when averaging n."""
        c = self.cur
        if c.n_samples == 1:
            return GenParams(0.0, 1.0, c.max_new_tokens, self.seed, RATING_STOPS)
        return GenParams(c.temperature, 0.9, c.max_new_tokens, self.seed, RATING_STOPS)

    def prepare(self, engine: Engine, items: Sequence[AugmentedPair]) -> list[Prepared]:
        cur = self.cur
        suffix = score_suffix(engine.tokenizer)[0] if cur.mode == "logprob" else ""
        cands = tuple(score_suffix(engine.tokenizer)[1]) if cur.mode == "logprob" else ()
        # room after the prompt: the generated reasoning and score, or "Score:" and one token
        new = cur.max_new_tokens if cur.mode == "generate" else \
            len(engine.tokenizer(suffix, add_special_tokens=False)["input_ids"]) + 1
        limit = context_limit(engine, new)
        params = self.first_pass()
        out = []
        for p in items:  # the response is cut to fit; a pair whose prompt cannot fit even so is an error row
            try:
                prompt, c = _fit(self.templates, engine, p, cur.shots, cur.max_response_tokens, limit)
                why = ""
            except PromptTooLong as e:
                prompt, c, why = "", True, f"prompt_too_long: {e}"
            out.append(Prepared(p, Request(prompt + suffix, seeded(params, p.source_id), cands), why, c))
        over = overlong_prompts(engine, [p.request.prompt for p in out], 1 if suffix else new)
        for p, o in zip(out, over, strict=True):
            p.error = p.error or o
        return out

    def record(self, prep: Prepared, output: Any) -> RatedPair:
        """The record of one rating pass: the next-token probabilities of "1".."5" (logprob), or
        the rater's text (generate: one greedy rating, as a vLLM processor gives)."""
        p, c = prep.item, prep.cut
        if self.cur.mode == "logprob":
            score, why = expected_score(list(output))
            return RatedPair.of(p, score=score, reasoning=why, ratings=[score] if score else [], response_cut=c)
        from selfalign.prompts import cut_at_stop

        text = cut_at_stop(str(output), RATING_STOPS).strip()
        score, _ = parse_score_detail(text)
        return RatedPair.of(p, score=score, reasoning=reasoning_of(text), ratings=[score] if score is not None else [],
                            raw_outputs=[text], parse_failures=int(score is None), response_cut=c)

    def error_record(self, item: AugmentedPair, reason: str, cut: bool = False) -> RatedPair:
        return error_rated(item, reason, cut)

    def load(self, rec: dict[str, Any]) -> RatedPair:
        return RatedPair(**rec)

    def run(self, engine: Engine, items: Sequence[AugmentedPair], on_record: Any = None, progress: bool = True,
            isolate: bool = False) -> list[RatedPair]:
        if self.cur.mode != "generate":
            return super().run(engine, items, on_record, progress, isolate)
        # generate: greedy (or n sampled) ratings, retries and forced scores, in chunks of a few
        # batches over pairs of similar prompt length; each chunk's records go out when it is done
        preps, out, emit = self.begin(engine, items, on_record)
        run = [i for i, p in enumerate(preps) if not p.error]
        chunk = max(8, getattr(engine, "batch_size", 8))  # one batch (a few for small batches)
        order = sorted(run, key=lambda i: (len(preps[i].request.prompt), i))  # similar lengths batch together
        for start in range(0, len(order), chunk):
            where = f"{start + 1}-{min(start + chunk, len(order))}/{len(order)}"

            def rate(ix: list[int], bar: bool, where: str = where) -> None:
                recs = rate_chunk(engine, [preps[i].item for i in ix], [preps[i].request.prompt for i in ix],
                                  [preps[i].cut for i in ix], self.cur, self.seed, where, bar)
                for i, rec in zip(ix, recs, strict=True):
                    emit(i, rec)

            self.guarded(order[start : start + chunk], rate, preps, out, emit, isolate, progress)
        return out

def make_step(cur: CurationConfig, templates: Templates, seed: int = 0) -> Step:
    """The step of `cur.mode`: RankStep for the ranked modes, else RateStep."""
    if cur.mode in RANKED_MODES:
        return RankStep(templates, cur.mode, cur.max_response_tokens)
    return RateStep(templates, cur, seed)


def step_for(cfg: Config, templates: Templates) -> Step:
    return make_step(cfg.curation, templates, cfg.run.seed)


def rate_pairs(
    engine: Engine,
    pairs: list[AugmentedPair],
    cur: CurationConfig,
    out_path: Path,
    seed: int = 0,
    max_response_tokens: int = 512,
    templates: Templates | None = None,
) -> list[RatedPair]:
    """Rate every pair with the local executor; records are appended to `out_path` as they finish
    (resumable), in the ranked modes ranked at the end. Responses are cut to `max_response_tokens`
    in the rating prompt (the stage passes `curation.max_response_tokens`)."""
    from selfalign.executors import run_local

    cur = cur.model_copy(update={"max_response_tokens": max_response_tokens})
    return run_local(make_step(cur, templates or shipped(), seed), engine, pairs, Path(out_path))


def rate_chunk(
    engine: Engine, todo: list[AugmentedPair], prompts: list[str], cut: list[bool], cur: CurationConfig, seed: int,
    where: str = "", progress: bool = True,
) -> list[RatedPair]:
    """Rate pairs in generate mode: greedy (or n sampled ratings), then retries of unparsable ones.
    Each pair's sampled passes are seeded from `row_seed(seed, its id)`: the same in any chunk."""
    n = len(todo)
    own = [row_seed(seed, p.source_id) for p in todo]
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
    sampled = GenParams(cur.temperature, 0.9, budget, 0, stop)
    first = GenParams(0.0, 1.0, budget, 0, stop) if cur.n_samples == 1 else sampled
    rounds = [first] + [sampled] * (cur.n_samples - 1)
    for k, params in enumerate(rounds):  # round k: each pair's seed + k
        take(list(range(n)), generate(engine, prompts, params, desc=f"rate {where} ({k + 1}/{len(rounds)})",
                                      progress=progress, seeds=[s + k for s in own]))
    for attempt in range(cur.retries):
        retry = [i for i in range(n) if not scores[i]]
        if not retry:
            break
        take(retry, generate(engine, [prompts[i] for i in retry], sampled, desc=f"retry {attempt + 1} {where}",
                             progress=progress, seeds=[own[i] + 1000 + attempt for i in retry]))
    forced = _force_scores(engine, prompts, outputs, scores, seed, where, progress) if cur.force_score else set()
    out = []
    for i, p in enumerate(todo):
        score = sum(scores[i]) / len(scores[i]) if scores[i] else None
        explained = next((o for o in outputs[i] if parse_score(o) is not None), outputs[i][0])
        out.append(RatedPair.of(p, score=score, reasoning=reasoning_of(explained), ratings=scores[i],
                                raw_outputs=outputs[i], parse_failures=failures[i], response_cut=cut[i],
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
    suffix = score_suffix(engine.tokenizer)[0]
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


def select_round(c: Config, rated: list[RatedPair], run_dir: Path, iteration: int, templates: Templates,
                 rater: str, generated: int, generated_ok: int) -> dict[str, Any]:
    """A curation round's selection, redone on every run: the threshold, then a person's labels
    (labels.py: they overrule the rater), then the hygiene drops and the budget (hygiene_stage.py:
    a label cannot re-admit a benchmark prompt); writes `curated_<iteration>/` and returns the
    round's counts for the manifest."""
    from selfalign import hygiene_stage
    from selfalign.labels import apply_labels

    stats = curation_stats(rated, c.curation.threshold)
    kept = select(rated, c.curation.threshold)
    kept, human = apply_labels(rated, kept, c.curation.labels, c.curation.threshold)
    stats.update(human)
    kept, hygiene = hygiene_stage.curate_filter(c, run_dir, kept, iteration)
    prov = {**stats, "base": c.models.base, "backward": str(run_dir / "backward"), "rater": rater,
            "unlabelled": c.data.unlabelled, "seed": c.data.seed, "mode": c.curation.mode,
            "n_samples": c.curation.n_samples, "shots": c.curation.shots, "iteration": iteration,
            "generated": generated, "generated_ok": generated_ok, "hygiene": hygiene_stage.card_text(hygiene)}
    write_curated(kept, run_dir / f"curated_{iteration}", prov, templates)
    say(f"curate (iteration {iteration}): {stats['rated']} rated, {stats['unscored']} unscored, "
        f"{stats['kept']} kept at >= {stats['threshold']}; histogram {stats['histogram']}; "
        f"parse-failure rate {stats['parse_failure_rate']}; {stats['response_cut']} responses cut to "
        f"{c.curation.max_response_tokens} tokens (or to fit the model's context) in the prompt")
    return stats


def write_curated(kept: list[RatedPair], out_dir: Path, provenance: dict[str, Any],
                  templates: Templates | None = None) -> Path:
    """A dataset folder (data.jsonl + README.md card, `cards.dataset_card`) that
    `datasets.load_dataset` reads."""
    out_dir = Path(out_dir)
    rows = [
        {"instruction": r.instruction, "response": r.response, "score": r.score,
         "reasoning": r.reasoning, "source": r.source, "source_id": r.source_id, "ratings": r.ratings}
        | ({"human": r.human} if any(k.human for k in kept) else {})  # labels.py: a person's decision
        for r in kept
    ]
    write_jsonl(out_dir / "data.jsonl", rows)
    atomic_write_text(out_dir / "README.md", dataset_card(provenance, len(rows), templates=templates))
    # provenance.json sits beside the folder: a second JSON file inside would be read as data
    atomic_write_text(out_dir.with_name(out_dir.name + ".provenance.json"), json.dumps(provenance, indent=2))
    return out_dir

