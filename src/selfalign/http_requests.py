"""The requests of the served engine (`http_engine.py`) in the OpenAI format, and the reading of
their answers: what a request body holds (also a batch input line's), its id, and the text or
score probabilities an answer gives."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from selfalign.config_served import ServedConfig

MARK, END = "<|selfalign-messages|>", "<|/selfalign-messages|>"
SCORE_REGEX = r"[\s\S]{0,1500}Score: [1-5]"  # served.guided: the rating ends in its score
CHAT_LOGPROB_TOKENS = 64  # chat + logprob mode: room for the model to reach its score


class ServedRequestError(RuntimeError):
    """A request that failed after its retries (or could not be sent)."""


class ChatTokenizer:
    """A tokenizer whose chat template renders messages as a marker (`api: chat`): the engine sends
    the messages themselves. Tokens are counted with the wrapped tokenizer (to cut prompts)."""

    chat_template = "served"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, **_: Any) -> str:
        return MARK + json.dumps(messages, ensure_ascii=False) + END

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tok(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def split_messages(prompt: str) -> tuple[list[dict[str, Any]], str]:
    """(messages, text after them) of a prompt rendered by `ChatTokenizer`; a plain prompt is one
    user message."""
    if prompt.startswith(MARK) and END in prompt:
        head, tail = prompt[len(MARK):].split(END, 1)
        return json.loads(head), tail
    return [{"role": "user", "content": prompt}], ""


def request_key(url: str, body: dict[str, Any]) -> str:
    """The id of a request (its batch `custom_id`): the hash of its endpoint and body."""
    return "sa-" + hashlib.sha256(json.dumps([url, body], sort_keys=True).encode()).hexdigest()[:32]


def request_body(cfg: ServedConfig, model: str, prompt: str, temperature: float, top_p: float,
                 max_tokens: int, seed: int, candidates: tuple[str, ...] = (), guided: bool = False
                 ) -> tuple[str, dict[str, Any]]:
    """(url, body) of one request in the OpenAI format (what a batch input line carries)."""
    greedy = temperature <= 0
    body: dict[str, Any] = {"model": model, "temperature": 0.0 if greedy else temperature, "seed": seed}
    if not greedy:
        body["top_p"] = top_p
    if cfg.api == "chat":
        url = "/v1/chat/completions"
        body["messages"] = split_messages(prompt)[0]
        body["max_tokens"] = CHAT_LOGPROB_TOKENS if candidates else max_tokens
        if candidates and cfg.logprobs:
            body.update(logprobs=True, top_logprobs=cfg.top_logprobs)
    else:
        url = "/v1/completions"
        body.update(prompt=prompt, max_tokens=1 if candidates else max_tokens)
        if candidates and cfg.logprobs:
            body["logprobs"] = cfg.top_logprobs
    if guided and not candidates:
        body["structured_outputs"] = {"regex": SCORE_REGEX}
    return url, body


def _candidate_probs(top: dict[str, float], candidates: tuple[str, ...]) -> list[float]:
    """Probabilities of the candidates from {token: logprob}: a token counts for the candidate it
    equals, spaces aside (" 4" and "4" are both the score 4)."""
    return [sum(math.exp(lp) for tok, lp in top.items() if tok.strip() == c.strip()) for c in candidates]


def parse_answer(body: dict[str, Any], candidates: tuple[str, ...]) -> tuple[Any, str]:
    """(output, how) of a response body: the text, or the candidates' probabilities read from the
    top logprobs ("top_logprobs") or from the generated text when there are none ("text")."""
    choice = (body.get("choices") or [None])[0]
    if choice is None:
        raise ServedRequestError(f"a response without choices: {json.dumps(body)[:200]}")
    message = choice.get("message")
    text = (message or {}).get("content") if message is not None else choice.get("text")
    text = text or ""
    if not candidates:
        return text, "text"
    lp = choice.get("logprobs") or {}
    if message is not None:  # chat: the alternatives at the score's position
        content = lp.get("content") or []
        seen = ""
        for i, t in enumerate(content):
            if t.get("token", "").strip() in {c.strip() for c in candidates} and (
                    seen.rstrip().endswith(":") or i == len(content) - 1 or "Score" not in text):
                top = {a["token"]: a["logprob"] for a in t.get("top_logprobs") or []}
                return _candidate_probs(top or {t["token"]: t.get("logprob", 0.0)}, candidates), "top_logprobs"
            seen += t.get("token", "")
    else:
        tops = lp.get("top_logprobs") or []
        if tops and tops[0]:
            return _candidate_probs(tops[0], candidates), "top_logprobs"
    # no logprobs: the score the text gives, as a one-hot (after "Score:" in chat, else the first token)
    tail = text.split("Score:")[-1] if message is not None else text
    digit = next((ch for ch in tail if not ch.isspace()), "")
    return [1.0 if c.strip() == digit else 0.0 for c in candidates], "text"
