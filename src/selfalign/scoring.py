"""What a rater's output means: the score line of the rating prompt and the logprob mode's
next-token probabilities, parsed the same whatever engine or executor produced them."""

from __future__ import annotations

import re
from typing import Any

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




def score_suffix(tokenizer: Any) -> tuple[str, list[str]]:
    """What to append to the prompt, and the candidate strings whose next token is read."""
    base = tokenizer("Score:", add_special_tokens=False)["input_ids"]
    full = tokenizer("Score: 4", add_special_tokens=False)["input_ids"]
    if full[: len(base)] == base and len(full) - len(base) == 1:
        return "Score:", [f" {i}" for i in range(1, 6)]
    return "Score: ", [str(i) for i in range(1, 6)]


def force_score_prompt(tokenizer: Any, prompt: str, output: str) -> str:
    """The rating prompt, the rater's unfinished output and a score line to complete: the
    `score_suffix` of logprob mode, on a new line."""
    return f"{prompt}{output.rstrip()}\n{score_suffix(tokenizer)[0]}"


def expected_score(probs: list[float]) -> tuple[float | None, str]:
    """The logprob mode's score from the probabilities of "1".."5" as the next token: their
    expectation to 4 decimals (None when all are 0: float rounding of a batch, 1e-7, does not show),
    and the distribution as the record's reasoning."""
    total = sum(probs)
    score = round(sum((i + 1) * x for i, x in enumerate(probs)) / total, 4) if total > 0 else None
    dist = ", ".join(f"{i + 1}:{x / total:.2f}" for i, x in enumerate(probs)) if total else ""
    return score, f"next-token probabilities {dist}"
