"""Prompt construction from the data files in `selfalign/templates/`.

Every prompt is a list of chat messages rendered with the tokenizer's chat template when it has
one, else with the plain Guanaco-style template from `templates.json`. Training examples are
split into (prompt_text, target_text) so that the loss mask is exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


# Template files that replace the shipped ones (run.templates_dir); None = the shipped files only.
_override_dir: Path | None = None


def use_templates(folder: str | Path | None) -> None:
    """Read templates from `folder` first (files of the same names as the shipped ones), then
    from the shipped `selfalign/templates/`. Called with `run.templates_dir` by every command."""
    global _override_dir
    new = Path(folder).expanduser() if folder else None
    if new is not None and not new.is_dir():
        raise FileNotFoundError(2, "run.templates_dir is not a folder", str(new))
    if new != _override_dir:
        _override_dir = new
        for f in (templates, rating_prompt, rating_fewshot, pairwise_prompt, request_words):
            f.cache_clear()


def prompt_file(name: str) -> str:
    if _override_dir is not None and (_override_dir / name).is_file():
        return (_override_dir / name).read_text(encoding="utf-8")
    return resources.files("selfalign").joinpath("templates").joinpath(name).read_text(encoding="utf-8")


def template_fingerprint(ref: str) -> str:
    """sha256 of a template file (`rating_prompt.txt`) or of one section of a JSON template file
    (`templates.json:backward`): what a stage's key hashes for the templates it reads."""
    import hashlib

    name, _, section = ref.partition(":")
    text = prompt_file(name)
    if section:
        text = json.dumps(json.loads(text).get(section), sort_keys=True)  # a section an override lacks: null
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@cache
def templates() -> dict[str, Any]:
    return json.loads(prompt_file("templates.json"))


@cache
def rating_prompt() -> str:
    """The paper's Table 1 rating prompt (verbatim), with {instruction} and {response} slots."""
    return prompt_file("rating_prompt.txt")


@cache
def rating_fewshot() -> list[dict[str, Any]]:
    return json.loads(prompt_file("rating_fewshot.json"))


@cache
def pairwise_prompt() -> str:
    """The pairwise judge's prompt, with {instruction}, {response_a} and {response_b} slots."""
    return prompt_file("pairwise_prompt.txt")


@cache
def request_words() -> frozenset[str]:
    """First words that make a generated instruction read as a request (`augment.reads_as_request`)."""
    return frozenset(w.lower() for w in json.loads(prompt_file("request_words.json"))["words"])


def fill(template: str, **values: str) -> str:
    """`template` with each "{key}" replaced by its value.

    str.replace, not str.format: responses contain braces (code, JSON)."""
    out = template
    for k, v in values.items():
        out = out.replace("{" + k + "}", v)
    return out


def backward_messages(response: str) -> Messages:
    t = templates()["backward"]
    msgs: Messages = []
    if t.get("system"):
        msgs.append({"role": "system", "content": t["system"]})
    msgs.append({"role": "user", "content": fill(t["user"], response=response)})
    return msgs


def backward_prompt(tokenizer: Any, response: str, max_response_tokens: int,
                    limit: int | None = None) -> tuple[str, bool]:
    """The augmentation prompt of a response (cut to `max_response_tokens`, and so that the prompt
    has at most `limit` tokens), and whether it was cut. Raises PromptTooLong (see `fit_prompt`)."""
    return fit_prompt(tokenizer, lambda t: render_prompt(tokenizer, backward_messages(t)), response,
                      max_response_tokens, limit)


def forward_messages(instruction: str, system: str | None = None) -> Messages:
    t = templates()["forward"]
    msgs: Messages = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": fill(t["user"], instruction=instruction)})
    return msgs


def rating_messages(instruction: str, response: str, shots: int) -> Messages:
    """Few-shot rating prompt: k worked examples as earlier turns, then the pair to rate."""
    examples = rating_fewshot()
    if shots > len(examples):
        raise ValueError(f"curation.shots={shots} but only {len(examples)} examples are shipped")
    msgs: Messages = []
    for ex in examples[:shots]:
        msgs.append(
            {
                "role": "user",
                "content": fill(rating_prompt(), instruction=ex["instruction"], response=ex["response"]),
            }
        )
        msgs.append({"role": "assistant", "content": f"{ex['reasoning']}\nScore: {ex['score']}"})
    msgs.append(
        {"role": "user", "content": fill(rating_prompt(), instruction=instruction, response=response)}
    )
    return msgs


def pairwise_messages(instruction: str, response_a: str, response_b: str) -> Messages:
    """The pairwise judge's prompt for one instruction and two responses (A shown first)."""
    text = fill(pairwise_prompt(), instruction=instruction, response_a=response_a, response_b=response_b)
    return [{"role": "user", "content": text}]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, messages: Messages) -> str:
    """Text of the prompt up to where the assistant starts writing."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    p = templates()["plain"]
    bos = tokenizer.bos_token or ""
    parts = [bos]
    for m in messages:
        if m["role"] == "system":
            parts.append(fill(p["system"], content=m["content"]))
        elif m["role"] == "user":
            parts.append(fill(p["user"], content=m["content"]))
        else:
            parts.append(p["assistant_prefix"] + m["content"] + fill(p["assistant_suffix"], eos=tokenizer.eos_token or ""))
    parts.append(p["assistant_prefix"])
    return "".join(parts)


def render_target(tokenizer: Any, messages: Messages, target: str) -> str:
    """Text the model must produce after `render_prompt(messages)`, end-of-turn included."""
    if has_chat_template(tokenizer):
        prompt = render_prompt(tokenizer, messages)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": target}], tokenize=False
        )
        if full.startswith(prompt):
            return full[len(prompt) :].rstrip("\n")
        return target + (tokenizer.eos_token or "")
    p = templates()["plain"]
    return target + fill(p["assistant_suffix"], eos=tokenizer.eos_token or "")


def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut `text` to at most `max_tokens` tokens; returns (text, was_cut)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[: max(max_tokens, 0)], skip_special_tokens=True), True


class PromptTooLong(ValueError):
    """A prompt that cannot fit the model's context even with its variable text cut to nothing."""


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of a rendered prompt, as generation encodes it (its special tokens are in the text)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(
    tokenizer: Any, render: Callable[[str], str], text: str, max_tokens: int, limit: int | None
) -> tuple[str, bool]:
    """(render(text), was_cut): `text` is cut to at most `max_tokens` tokens, and further until
    the rendered prompt has at most `limit` tokens (the model's context less the new tokens;
    None: no limit). Raises PromptTooLong when even an empty `text` does not fit."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = min(len(ids), max(max_tokens, 0))

    def build(k: int) -> str:
        return render(text if k >= len(ids) else tokenizer.decode(ids[:k], skip_special_tokens=True))

    prompt = build(keep)
    if limit is None:
        return prompt, keep < len(ids)
    while True:
        over = count_tokens(tokenizer, prompt) - limit
        if over <= 0:
            return prompt, keep < len(ids)
        if keep == 0:
            raise PromptTooLong(f"a prompt is {over + limit} tokens with its variable text cut to nothing, "
                                f"over the {limit} the model's context leaves")
        keep = max(0, keep - over)  # tokens can merge differently at the cut: check again
        prompt = build(keep)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to and including the stop string that is completed first (where generation
    stopped), or all of it when none occurs. Every engine cuts with this, so that all return
    the same text whatever their own stopping rule (vLLM's, or a batch that ran on)."""
    ends = [i + len(s) for s in stop if s and (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text
