"""Self-augmentation: the backward model writes an instruction for each unlabelled response."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from selfalign.config import ConfigError
from selfalign.generation import Engine, GenParams, context_limit, generate
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


STATUSES = ("ok", "empty", "too_long", "echo")


def status_counts(pairs: list[AugmentedPair]) -> dict[str, int]:
    """How many generated instructions have each status (only `ok` ones go on to curation)."""
    return {s: sum(p.status == s for p in pairs) for s in STATUSES}


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
    no lost record. Returns all records in the order of `responses`.
    """
    log = RecordLog(out_path)
    done = log.done_keys("source_id")
    todo = list(responses)  # all of them: batches and seeds must match an uninterrupted run
    skip = {i for i, r in enumerate(todo) if r.source_id in done}
    settings = {"temperature": params.temperature, "top_p": params.top_p,
                "max_new_tokens": params.max_new_tokens, "seed": params.seed, "model": engine.name}
    prompts, was_cut = [], []
    limit = context_limit(engine, params.max_new_tokens)
    for r in todo:  # a long response is cut to fit the prompt budget and the context; the record says so
        try:
            prompt, c = backward_prompt(engine.tokenizer, r.response, max_prompt_tokens, limit)
        except PromptTooLong as e:
            raise ConfigError(f"augment: {e}; lower generation.instruction.max_new_tokens") from None
        prompts.append(prompt)
        was_cut.append(c)

    def save(i: int, text: str) -> None:
        r = todo[i]
        instruction, status = clean_instruction(text, r.response, max_instruction_chars)
        rec = AugmentedPair(instruction, r.response, r.source_id, r.source, text, status, settings, was_cut[i])
        log.append(asdict(rec))

    try:
        if len(skip) < len(todo):
            generate(engine, prompts, params, on_result=save, desc="augment", skip=skip)
    finally:
        log.close()
    by_id = {rec["source_id"]: rec for rec in log.records}
    return [AugmentedPair(**by_id[r.source_id]) for r in responses if r.source_id in by_id]
