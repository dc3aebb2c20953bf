"""Self-augmentation: the backward model writes an instruction for each unlabelled response."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfalign.config import Config, ConfigError
from selfalign.generation import Engine, GenParams, context_limit, overlong_prompts
from selfalign.prompts import PromptTooLong, Templates, shipped
from selfalign.records import AugmentedPair, UnlabelledResponse
from selfalign.steps import Prepared, Request, Step, row_seed, seeded

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


def reads_as_request(instruction: str, response: str, words_: frozenset[str] | None = None) -> bool:
    """Whether a generated instruction reads as a request for `response`, by three visible signs
    and one counter-sign (no model, no tuning on outputs):

    - it holds a "?" (ASCII or fullwidth), or
    - its first word, after markdown marks, list numbers and quotes are stripped, is one of
      `words_` (`templates/request_words.json` of the run's templates; the shipped ones by default) (imperatives such as write, explain, list; question words
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
    return bool(w) and (w[0] in (words_ if words_ is not None else shipped().request_words) or "please" in w)


def clean_instruction(raw: str, response: str, max_chars: int, require_request: bool = True,
                      words_: frozenset[str] | None = None) -> tuple[str, str]:
    """(instruction, status): status is ok, empty, too_long, echo (copied the response) or, with
    `require_request`, not_request (does not read as a request: `reads_as_request` with `words_`)."""
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
    if require_request and not reads_as_request(text, response, words_):
        return text, "not_request"
    return text, "ok"


STATUSES = ("ok", "empty", "too_long", "echo", "not_request", "error")


def status_counts(pairs: list[AugmentedPair]) -> dict[str, int]:
    """How many generated instructions have each status (only `ok` ones go on to curation)."""
    return {s: sum(p.status == s for p in pairs) for s in STATUSES}


@dataclass
class AugmentStep(Step):
    """Self-augmentation: the backward model's prompt for each unlabelled response (cut to
    `max_prompt_tokens` and to fit the model's context), and the record of what it wrote
    (`clean_instruction`). A prompt that cannot fit even so gives a record with status error."""

    templates: Templates
    params: GenParams  # instruction sampling; its seed is the run's
    max_prompt_tokens: int = 768
    max_instruction_chars: int = 1000
    require_request: bool = True
    model: str = ""  # the engine's name, in each record's generation settings

    name = "augment"
    desc = "augment"

    @classmethod
    def from_config(cls, cfg: Config, templates: Templates, model: str) -> AugmentStep:
        g = cfg.generation
        return cls(templates, GenParams.from_config(g.instruction, cfg.run.seed), g.max_prompt_tokens,
                   g.max_instruction_chars, g.require_request, model)

    def item_id(self, item: UnlabelledResponse) -> str:
        return item.source_id

    def from_row(self, row: dict[str, Any]) -> tuple[UnlabelledResponse, str]:
        from selfalign.unlabelled import response_of

        source = row.get("source") if isinstance(row.get("source"), str) else ""
        try:
            return UnlabelledResponse(response_of(row), str(row["source_id"]), source), ""
        except ValueError as e:
            text = row.get("response") if isinstance(row.get("response"), str) else ""
            return UnlabelledResponse(text, str(row["source_id"]), source), f"bad_row: {e}"

    def settings(self, item: UnlabelledResponse) -> dict[str, Any]:
        p = self.params
        return {"temperature": p.temperature, "top_p": p.top_p, "max_new_tokens": p.max_new_tokens,
                "seed": row_seed(p.seed, item.source_id), "model": self.model}

    def prepare(self, engine: Engine, items: Sequence[UnlabelledResponse]) -> list[Prepared]:
        limit = context_limit(engine, self.params.max_new_tokens)
        out = []
        for r in items:  # a long response is cut to fit the prompt budget and the context; the record says so
            try:
                prompt, cut = self.templates.backward_prompt(engine.tokenizer, r.response, self.max_prompt_tokens, limit)
            except PromptTooLong as e:
                raise ConfigError(f"augment: {e}; lower generation.instruction.max_new_tokens") from None
            out.append(Prepared(r, Request(prompt, seeded(self.params, r.source_id)), cut=cut))
        for p, why in zip(out, overlong_prompts(engine, [p.request.prompt for p in out], self.params.max_new_tokens),
                          strict=True):
            p.error = why
        return out

    def record(self, prep: Prepared, output: str) -> AugmentedPair:
        r = prep.item
        instruction, status = clean_instruction(output, r.response, self.max_instruction_chars, self.require_request,
                                                self.templates.request_words)
        return AugmentedPair(instruction=instruction, response=r.response, source_id=r.source_id, source=r.source,
                             raw_generation=output, status=status, generation=self.settings(r), response_cut=prep.cut)

    def error_record(self, item: UnlabelledResponse, reason: str, cut: bool = False) -> AugmentedPair:
        """The record of a response no instruction could be generated for (kept, never dropped)."""
        return AugmentedPair(instruction="", response=item.response, source_id=item.source_id, source=item.source,
                             raw_generation="", status="error", generation=self.settings(item), response_cut=cut,
                             error=reason)

    def load(self, rec: dict[str, Any]) -> AugmentedPair:
        return AugmentedPair(**rec)


def augment(
    engine: Engine,
    responses: list[UnlabelledResponse],
    params: GenParams,
    out_path: Path,
    max_prompt_tokens: int = 768,
    max_instruction_chars: int = 1000,
    require_request: bool = True,
    templates: Templates | None = None,
) -> list[AugmentedPair]:
    """Generate one instruction per response with the local executor: records are appended to
    `out_path` as they finish, and a re-run after an interruption does only the missing ones."""
    from selfalign.executors import run_local

    step = AugmentStep(templates or shipped(), params, max_prompt_tokens, max_instruction_chars, require_request,
                       engine.name)
    return run_local(step, engine, responses, Path(out_path))
