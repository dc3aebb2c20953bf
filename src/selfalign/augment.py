"""Self-augmentation: the backward model writes an instruction for each unlabelled response."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfalign.config import ConfigError
from selfalign.generation import Engine, GenParams, context_limit, generate, overlong_prompts
from selfalign.prompts import PromptTooLong, backward_prompt, request_words
from selfalign.record_log import RecordLog
from selfalign.records import AugmentedPair, UnlabelledResponse

# Template pieces a weak backward model sometimes echoes at the start of its output.
_ECHO_PREFIX = re.compile(
    r"^\s*(?:#+\s*)?(?:human|user|instruction|prompt|question|task)\s*[:\-]\s*", re.IGNORECASE
)
# Markers after which the model has started a new turn: cut there.
_STOP_MARKERS = ("### Assistant", "### Human", "<|im_start|>", "<|im_end|>", "[/INST]", "[INST]", "\nResponse:", "\nAnswer:")


# Marks before an instruction's first word that do not change what it is: markdown headings,
# emphasis, quotes, list bullets and numbers ("### ", "**", "> ", "1. ", "- ", '"').
_LEAD_MARKS = re.compile(r"^[\s#>*_`~\"'\u201c\u201d\u2018\u2019\-\u2022\d.):(\[\]]+")
_WORD = re.compile(r"[\w']+")  # Unicode letters and digits: "écrivez" is one word
COPY_NGRAM = 3  # word n-grams compared with the response start
COPY_MIN_NGRAMS = 4  # shorter instructions (< 6 words) are judged by their form alone
COPY_SLACK = 10  # the response start: as many words as the instruction has, plus these
COPY_SHARE = 0.6  # at least this share of the instruction's n-grams found there: a copy, not a request


def words(text: str) -> list[str]:
    """Lowercased word tokens (runs of Unicode letters, digits, "_" and apostrophes): the unit of
    the request check and of `evaluate.recovery.rouge_l_f1`."""
    return _WORD.findall(text.lower())


def _ngrams(w: list[str]) -> set[tuple[str, ...]]:
    return {tuple(w[i : i + COPY_NGRAM]) for i in range(len(w) - COPY_NGRAM + 1)}


def copies_response(instruction: str, response: str) -> bool:
    """True when the instruction mostly repeats the response's start: it has at least
    COPY_MIN_NGRAMS word 3-grams and at least COPY_SHARE of them occur among the 3-grams of the
    response's first (instruction length + COPY_SLACK) words. The window is the start, not the
    first paragraph: a human prompt that the answer restates a few sentences in is not a copy."""
    w = words(instruction)
    grams = _ngrams(w)
    if len(grams) < COPY_MIN_NGRAMS:
        return False
    start = _ngrams(words(response)[: len(w) + COPY_SLACK])
    return len(grams & start) >= COPY_SHARE * len(grams)


def reads_as_request(instruction: str, response: str) -> bool:
    """Whether a generated instruction reads as a request for `response`, by three visible signs
    and one counter-sign (no model, no tuning on outputs):

    - it holds a "?" (ASCII or fullwidth), or
    - its first word, after markdown marks, list numbers and quotes are stripped, is one of
      `templates/request_words.json` (imperatives such as write, explain, list; question words
      such as how, what, can), or
    - it holds the word "please";
    - but not when it mostly copies the response's start (`copies_response`): a paraphrase that
      continues the response is not a request even when it holds a "?".

    English-only: other languages pass only through a "?" ("Wie spät ist es?"), so an imperative
    in French or a statement in any language is not a request. The paper's seed data is English.
    """
    if copies_response(instruction, response):
        return False
    if "?" in instruction or "\uff1f" in instruction:
        return True
    w = words(_LEAD_MARKS.sub("", instruction))
    return bool(w) and (w[0] in request_words() or "please" in w)


def clean_instruction(raw: str, response: str, max_chars: int, require_request: bool = True) -> tuple[str, str]:
    """(instruction, status): status is ok, empty, too_long, echo (copied the response) or, with
    `require_request`, not_request (does not read as a request: `reads_as_request`)."""
    text = raw
    for marker in _STOP_MARKERS:
        k = text.find(marker)
        if k >= 0:
            text = text[:k]
    text = _ECHO_PREFIX.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if not text:
        return "", "empty"
    if len(text) > max_chars:
        return text, "too_long"
    if len(text) > 40 and response.strip().startswith(text[: min(len(text), 200)]):
        return text, "echo"
    if require_request and not reads_as_request(text, response):
        return text, "not_request"
    return text, "ok"


STATUSES = ("ok", "empty", "too_long", "echo", "not_request", "error")


def status_counts(pairs: list[AugmentedPair]) -> dict[str, int]:
    """How many generated instructions have each status (only `ok` ones go on to curation)."""
    return {s: sum(p.status == s for p in pairs) for s in STATUSES}


def backward_prompts(
    engine: Engine, responses: list[UnlabelledResponse], max_prompt_tokens: int, max_new_tokens: int = 0
) -> tuple[list[str], list[bool]]:
    """The backward prompt of each response, and whether the response was cut: to
    `max_prompt_tokens`, and further so that the prompt and `max_new_tokens` fit the context."""
    limit = context_limit(engine, max_new_tokens)
    prompts, was_cut = [], []
    for r in responses:  # a long response is cut to fit the prompt budget and the context; the record says so
        try:
            prompt, c = backward_prompt(engine.tokenizer, r.response, max_prompt_tokens, limit)
        except PromptTooLong as e:
            raise ConfigError(f"augment: {e}; lower generation.instruction.max_new_tokens") from None
        prompts.append(prompt)
        was_cut.append(c)
    return prompts, was_cut


def generation_settings(engine: Engine, params: GenParams) -> dict[str, Any]:
    return {"temperature": params.temperature, "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens, "seed": params.seed, "model": engine.name}


def make_pair(r: UnlabelledResponse, text: str, settings: dict[str, Any], cut: bool,
              max_instruction_chars: int, require_request: bool = True) -> AugmentedPair:
    instruction, status = clean_instruction(text, r.response, max_instruction_chars, require_request)
    return AugmentedPair(instruction, r.response, r.source_id, r.source, text, status, settings, cut)


def error_pair(r: UnlabelledResponse, settings: dict[str, Any], reason: str, cut: bool = False) -> AugmentedPair:
    """The record of a response no instruction could be generated for (kept, never dropped)."""
    return AugmentedPair("", r.response, r.source_id, r.source, "", "error", settings, cut, reason)


def augment_batch(
    engine: Engine,
    responses: list[UnlabelledResponse],
    params: GenParams,
    max_prompt_tokens: int = 768,
    max_instruction_chars: int = 1000,
    require_request: bool = True,
) -> list[AugmentedPair]:
    """One record per response, in order: the Ray executor's step (the same functions as
    `augment`). A prompt longer than the model's context, or a row the engine fails on, gives a
    record with status error and the reason; the other rows of the batch are unaffected."""
    settings = generation_settings(engine, params)
    prompts, was_cut = backward_prompts(engine, responses, max_prompt_tokens, params.max_new_tokens)
    errors = overlong_prompts(engine, prompts, params.max_new_tokens)
    run = [i for i, e in enumerate(errors) if not e]
    texts: dict[int, str] = {}
    try:
        texts.update(zip(run, generate(engine, [prompts[i] for i in run], params, progress=False), strict=True))
    except Exception:  # noqa: BLE001 - one row at a time, so that a bad row fails alone
        for i in run:
            try:
                texts[i] = generate(engine, [prompts[i]], params, progress=False)[0]
            except Exception as e:  # noqa: BLE001 - recorded on the row
                errors[i] = f"engine_error: {type(e).__name__}: {e}"[:500]
    return [error_pair(r, settings, errors[i], was_cut[i]) if errors[i]
            else make_pair(r, texts[i], settings, was_cut[i], max_instruction_chars, require_request)
            for i, r in enumerate(responses)]


def augment(
    engine: Engine,
    responses: list[UnlabelledResponse],
    params: GenParams,
    out_path: Path,
    max_prompt_tokens: int = 768,
    max_instruction_chars: int = 1000,
    require_request: bool = True,
) -> list[AugmentedPair]:
    """Generate one instruction per response; records are appended to `out_path` as they finish.

    Re-running after an interruption skips the responses already in the log: no duplicate,
    no lost record. A prompt longer than the model's context gives a record with status error.
    Returns all records in the order of `responses`.
    """
    log = RecordLog(out_path)
    done = log.done_keys("source_id")
    todo = list(responses)  # all of them: batches and seeds must match an uninterrupted run
    settings = generation_settings(engine, params)
    prompts, was_cut = backward_prompts(engine, todo, max_prompt_tokens, params.max_new_tokens)
    errors = overlong_prompts(engine, prompts, params.max_new_tokens)
    runnable = [i for i, e in enumerate(errors) if not e]
    skip = {k for k, i in enumerate(runnable) if todo[i].source_id in done}

    def save(k: int, text: str) -> None:
        i = runnable[k]
        log.append(asdict(make_pair(todo[i], text, settings, was_cut[i], max_instruction_chars, require_request)))

    try:
        for i, e in enumerate(errors):
            if e and todo[i].source_id not in done:
                log.append(asdict(error_pair(todo[i], settings, e, was_cut[i])))
        if len(skip) < len(runnable):
            generate(engine, [prompts[i] for i in runnable], params, on_result=save, desc="augment", skip=skip)
    finally:
        log.close()
    by_id = {rec["source_id"]: rec for rec in log.records}
    return [AugmentedPair(**by_id[r.source_id]) for r in responses if r.source_id in by_id]
