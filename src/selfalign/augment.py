"""Self-augmentation: the backward model writes an instruction for each unlabelled response."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfalign.config import ConfigError
from selfalign.generation import Engine, GenParams, context_limit, generate, overlong_prompts
from selfalign.io import RecordLog
from selfalign.prompts import PromptTooLong, backward_prompt
from selfalign.records import AugmentedPair, UnlabelledResponse

# Template pieces a weak backward model sometimes echoes at the start of its output.
_ECHO_PREFIX = re.compile(
    r"^\s*(?:#+\s*)?(?:human|user|instruction|prompt|question|task)\s*[:\-]\s*", re.IGNORECASE
)
# Markers after which the model has started a new turn: cut there.
_STOP_MARKERS = ("### Assistant", "### Human", "<|im_start|>", "<|im_end|>", "[/INST]", "[INST]", "\nResponse:", "\nAnswer:")


def clean_instruction(raw: str, response: str, max_chars: int) -> tuple[str, str]:
    """(instruction, status): status is ok, empty, too_long or echo (copied the response)."""
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
    return text, "ok"


STATUSES = ("ok", "empty", "too_long", "echo", "error")


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
              max_instruction_chars: int) -> AugmentedPair:
    instruction, status = clean_instruction(text, r.response, max_instruction_chars)
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
            else make_pair(r, texts[i], settings, was_cut[i], max_instruction_chars)
            for i, r in enumerate(responses)]


def augment(
    engine: Engine,
    responses: list[UnlabelledResponse],
    params: GenParams,
    out_path: Path,
    max_prompt_tokens: int = 768,
    max_instruction_chars: int = 1000,
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
        log.append(asdict(make_pair(todo[i], text, settings, was_cut[i], max_instruction_chars)))

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
