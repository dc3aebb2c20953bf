"""Prompt construction from the template files in `selfalign/templates/`.

`Templates` is built once from the config (`run.templates_dir`: a folder whose files replace the
shipped ones of the same names) and passed to whoever renders a prompt, including workers in other
processes (it is plain data and pickles). Every prompt is a list of chat messages rendered with the
tokenizer's chat template when it has one, else with the plain Guanaco-style template of
`templates.json`. Training examples are split into (prompt_text, target_text) so that the loss mask
is exact.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from selfalign.config import ConfigError

Messages = list[dict[str, str]]

# The template files a run reads; an override folder may replace any of them.
TEMPLATE_FILES = ("templates.json", "rating_prompt.txt", "rating_fewshot.json", "pairwise_prompt.txt",
                  "request_words.json", "model_card.md", "dataset_card.md")


# Placeholders each template must hold (a template without them renders every prompt the same).
PLACEHOLDERS = {
    "templates.json:backward.user": ("{response}",),
    "templates.json:forward.user": ("{instruction}",),
    "rating_prompt.txt": ("{instruction}", "{response}"),
    "pairwise_prompt.txt": ("{instruction}", "{response_a}", "{response_b}"),
}
FEWSHOT_KEYS = ("instruction", "response", "reasoning", "score")
# The values the card templates are rendered with (`cards.model_card`, `cards.dataset_card`): a
# card template that names another one would fail when the card is written, after hours of work.
CARD_VALUES = {
    "model_card.md": ("kind", "curated_link", "threshold", "use_seed", "seed_tag", "augmented_tag", "run_table",
                      "settings_table", "counts_table", "rating_prompt", "related", "merged", "repo_id", "base_ref", "base_note"),
    "dataset_card.md": ("title", "shots", "threshold", "repo_id", "provenance_table", "counts_table", "rating_prompt",
                        "related"),
}


class TemplateError(ConfigError):
    """A template file of run.templates_dir that cannot be used: names the file and what is wrong."""


def shipped_file(name: str) -> str:
    return resources.files("selfalign").joinpath("templates").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Templates:
    """The template texts of a run: the shipped files, with those of `folder` in their place."""

    folder: str | None = None
    texts: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _parsed: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # JSON files, read once

    @classmethod
    def load(cls, folder: str | Path | None = None) -> Templates:
        """The templates of `run.templates_dir` (None: the shipped ones only), read once."""
        if folder is None:
            return shipped()
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(2, "run.templates_dir is not a folder", str(path))
        texts = {}
        for n in TEMPLATE_FILES:
            try:
                texts[n] = (path / n).read_text(encoding="utf-8") if (path / n).is_file() else shipped_file(n)
            except (OSError, UnicodeDecodeError) as e:
                raise TemplateError(f"{path / n}: cannot be read ({e})") from None
        tpl = cls(str(path), texts)
        tpl.validate()
        return tpl

    def validate(self, shots: int = 0) -> None:
        """Raise TemplateError (file and problem, one line) for a template that cannot be used:
        a JSON file that does not parse or has the wrong shape, a missing placeholder, fewer
        worked examples than `shots`. Checked before any model loads."""
        where = Path(self.folder) if self.folder else Path("selfalign/templates")
        for name in ("templates.json", "rating_fewshot.json", "request_words.json"):
            try:
                self.read_json(name)
            except json.JSONDecodeError as e:
                raise TemplateError(f"{where / name}: not valid JSON ({e})") from None
        sections = self.sections
        for key in ("backward", "forward", "plain"):
            if not isinstance(sections.get(key), dict):
                raise TemplateError(f"{where / 'templates.json'}: section {key!r} is not an object")
        for ref, needed in PLACEHOLDERS.items():
            name, _, field_ = ref.partition(":")
            text: Any = self.file(name)
            if field_:
                section, key = field_.split(".")
                text = sections[section].get(key)
            if not isinstance(text, str):
                raise TemplateError(f"{where / name}: {field_ or 'the template'} is not a string")
            missing = [p for p in needed if p not in text]
            if missing:
                raise TemplateError(f"{where / name}: {field_ or 'the template'} lacks the placeholder "
                                    f"{', '.join(missing)} (every prompt would be the same)")
        shots_ = self.read_json("rating_fewshot.json")
        if not isinstance(shots_, list) or not all(isinstance(x, dict) and all(k in x for k in FEWSHOT_KEYS)
                                                    for x in shots_):
            raise TemplateError(f"{where / 'rating_fewshot.json'}: must be a list of objects with "
                                f"{', '.join(FEWSHOT_KEYS)}")
        if shots > len(shots_):
            raise TemplateError(f"curation.shots={shots} but {where / 'rating_fewshot.json'} holds "
                                f"{len(shots_)} worked examples")
        for name, known in CARD_VALUES.items():
            problem = card_template_problem(self.file(name), known)
            if problem:
                raise TemplateError(f"{where / name}: {problem}")
        words = self.read_json("request_words.json")
        if not isinstance(words, dict) or not isinstance(words.get("words"), list) or \
                not all(isinstance(w, str) for w in words["words"]):
            raise TemplateError(f"{where / 'request_words.json'}: must be an object with a list of strings \"words\"")

    @classmethod
    def for_config(cls, cfg: Any) -> Templates:
        """The templates of a run's config (`run.templates_dir`), checked against it
        (`curation.shots` worked examples)."""
        tpl = cls.load(cfg.run.templates_dir)
        tpl.validate(cfg.curation.shots)
        return tpl

    # --- files ------------------------------------------------------------------------------
    def file(self, name: str) -> str:
        """The text of one template file (`rating_prompt.txt`), the override's where it has one."""
        if name not in self.texts:
            self.texts[name] = shipped_file(name)  # a frozen dataclass's dict is still a cache
        return self.texts[name]

    def fingerprint(self, ref: str) -> str:
        """sha256 of a template file (`rating_prompt.txt`) or of one section of a JSON template file
        (`templates.json:backward`): what a stage's key hashes for the templates it reads."""
        name, _, section = ref.partition(":")
        text = self.file(name)
        if section:  # templates.json: the section used (an override's, else the shipped one)
            got = self.sections.get(section) if name == "templates.json" else json.loads(text).get(section)
            text = json.dumps(got, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def read_json(self, name: str) -> Any:
        """A JSON template file, parsed once."""
        if name not in self._parsed:
            self._parsed[name] = json.loads(self.file(name))
        return self._parsed[name]

    @property
    def sections(self) -> dict[str, Any]:
        """templates.json's sections; a section an override lacks is the shipped one."""
        if "sections" not in self._parsed:
            own = self.read_json("templates.json")
            if not isinstance(own, dict):
                own = {}
            base = json.loads(shipped_file("templates.json")) if self.folder else {}
            self._parsed["sections"] = {**base, **own}
        return self._parsed["sections"]

    @property
    def rating_prompt(self) -> str:
        """The paper's Table 1 rating prompt (verbatim), with {instruction} and {response} slots."""
        return self.file("rating_prompt.txt")

    @property
    def rating_fewshot(self) -> list[dict[str, Any]]:
        return self.read_json("rating_fewshot.json")

    @property
    def pairwise_prompt(self) -> str:
        """The pairwise judge's prompt, with {instruction}, {response_a} and {response_b} slots."""
        return self.file("pairwise_prompt.txt")

    @property
    def request_words(self) -> frozenset[str]:
        """First words that make a generated instruction read as a request (`augment.reads_as_request`)."""
        return frozenset(w.lower() for w in self.read_json("request_words.json")["words"])

    # --- messages ---------------------------------------------------------------------------
    def backward_messages(self, response: str) -> Messages:
        t = self.sections["backward"]
        msgs: Messages = []
        if t.get("system"):
            msgs.append({"role": "system", "content": t["system"]})
        msgs.append({"role": "user", "content": fill(t["user"], response=response)})
        return msgs

    def forward_messages(self, instruction: str, system: str | None = None) -> Messages:
        t = self.sections["forward"]
        msgs: Messages = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": fill(t["user"], instruction=instruction)})
        return msgs

    def rating_messages(self, instruction: str, response: str, shots: int) -> Messages:
        """Few-shot rating prompt: k worked examples as earlier turns, then the pair to rate."""
        examples = self.rating_fewshot
        if shots > len(examples):
            raise ValueError(f"curation.shots={shots} but the templates hold only {len(examples)} worked examples")
        prompt = self.rating_prompt
        msgs: Messages = []
        for ex in examples[:shots]:
            msgs.append({"role": "user", "content": fill(prompt, instruction=ex["instruction"], response=ex["response"])})
            msgs.append({"role": "assistant", "content": f"{ex['reasoning']}\nScore: {ex['score']}"})
        msgs.append({"role": "user", "content": fill(prompt, instruction=instruction, response=response)})
        return msgs

    def pairwise_messages(self, instruction: str, response_a: str, response_b: str) -> Messages:
        """The pairwise judge's prompt for one instruction and two responses (A shown first)."""
        text = fill(self.pairwise_prompt, instruction=instruction, response_a=response_a, response_b=response_b)
        return [{"role": "user", "content": text}]

    # --- rendering --------------------------------------------------------------------------
    def render_prompt(self, tokenizer: Any, messages: Messages) -> str:
        """Text of the prompt up to where the assistant starts writing."""
        if has_chat_template(tokenizer):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        p = self.sections["plain"]
        parts = [tokenizer.bos_token or ""]
        for m in messages:
            if m["role"] == "system":
                parts.append(fill(p["system"], content=m["content"]))
            elif m["role"] == "user":
                parts.append(fill(p["user"], content=m["content"]))
            else:
                parts.append(p["assistant_prefix"] + m["content"] + fill(p["assistant_suffix"], eos=tokenizer.eos_token or ""))
        parts.append(p["assistant_prefix"])
        return "".join(parts)

    def render_target(self, tokenizer: Any, messages: Messages, target: str) -> str:
        """Text the model must produce after `render_prompt(messages)`, end-of-turn included."""
        if has_chat_template(tokenizer):
            prompt = self.render_prompt(tokenizer, messages)
            full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target}], tokenize=False)
            if full.startswith(prompt):
                return full[len(prompt) :].rstrip("\n")
            return target + (tokenizer.eos_token or "")
        return target + fill(self.sections["plain"]["assistant_suffix"], eos=tokenizer.eos_token or "")

    def backward_prompt(self, tokenizer: Any, response: str, max_response_tokens: int,
                        limit: int | None = None) -> tuple[str, bool]:
        """The augmentation prompt of a response (cut to `max_response_tokens`, and so that the prompt
        has at most `limit` tokens), and whether it was cut. Raises PromptTooLong (see `fit_prompt`)."""
        return fit_prompt(tokenizer, lambda t: self.render_prompt(tokenizer, self.backward_messages(t)), response,
                          max_response_tokens, limit)


def card_template_problem(text: str, known: Sequence[str]) -> str | None:
    """Why a card template (Jinja) cannot be rendered, or None: a syntax error, or a value it names
    that cards are not rendered with."""
    import jinja2
    from jinja2 import meta

    try:
        names = meta.find_undeclared_variables(jinja2.Environment().parse(text))
    except jinja2.TemplateSyntaxError as e:
        return f"not a valid Jinja template (line {e.lineno}: {e.message})"
    unknown = sorted(names - set(known))
    if unknown:
        return f"names {', '.join(unknown)}, which cards are not rendered with (known: {', '.join(known)})"
    return None


@cache
def shipped() -> Templates:
    """The templates shipped with selfalign."""
    return Templates(None, {})


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(template: str, **values: str) -> str:
    """`template` with each "{key}" of `values` replaced by its value, in one pass over the
    template only: a value that holds "{response}" (text from data) is never read as a template.
    Not str.format: responses contain braces (code, JSON); other "{...}" are left as they are."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


# Text is cut to this many characters per token wanted before it is tokenized: a tokenizer's
# memory grows with its input (a 200 MB response took 21.5 GB), and no token of the models we
# load is this long, so the cut never changes which tokens are kept.
MAX_CHARS_PER_TOKEN = 32


def clip_chars(text: str, max_tokens: int) -> str:
    """`text` cut to `max_tokens * MAX_CHARS_PER_TOKEN` characters: what tokenizing it for at most
    `max_tokens` tokens can use (never tokenize a huge row whole)."""
    limit = max(max_tokens, 1) * MAX_CHARS_PER_TOKEN
    return text if len(text) <= limit else text[:limit]


def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut `text` to at most `max_tokens` tokens; returns (text, was_cut)."""
    clipped = clip_chars(text, max_tokens + 1)
    ids = tokenizer(clipped, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens and clipped is text:
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
    None: no limit). Raises PromptTooLong when even an empty `text` does not fit. The text is cut
    by characters first (`clip_chars`): a huge response is never tokenized whole."""
    clipped = clip_chars(text, max_tokens + 1)
    ids = tokenizer(clipped, add_special_tokens=False)["input_ids"]
    whole = clipped is text  # the ids are those of the whole text
    keep = min(len(ids), max(max_tokens, 0))

    def build(k: int) -> str:
        return render(text if k >= len(ids) and whole else tokenizer.decode(ids[:k], skip_special_tokens=True))

    prompt = build(keep)
    if limit is None:
        return prompt, keep < len(ids) or not whole
    while True:
        over = count_tokens(tokenizer, prompt) - limit
        if over <= 0:
            return prompt, keep < len(ids) or not whole
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
