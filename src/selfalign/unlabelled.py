"""Unlabelled responses (LIMA format) and the seeded sample of single-turn ones."""

from __future__ import annotations

import hashlib
from typing import Any

from selfalign.io import DataError
from selfalign.readers import is_blank, preview
from selfalign.records import RejectLog, UnlabelledResponse
from selfalign.seed import _TURN_RE, check_unique_ids, load_rows, row_id


def is_multi_turn(conversations: list[str]) -> bool:
    """LIMA: a single-turn row is [prompt, response]; anything longer is multi-turn."""
    return len(conversations) > 2


def response_of(row: dict[str, Any]) -> str:
    """The response text of a row, or raise ValueError with a reject reason."""
    if "conversations" in row:
        conv = row["conversations"]
        if not isinstance(conv, list) or not all(isinstance(c, str) for c in conv):
            raise ValueError("wrong_type: conversations is not a list of strings")
        if is_multi_turn(conv):
            raise ValueError("multi_turn")
        if len(conv) < 2:
            raise ValueError("no_response: conversations holds no response")
        text = conv[1]
    elif "text" in row:
        text = row["text"]
    elif "response" in row:
        text = row["response"]
    elif "output" in row:
        text = row["output"]
    else:
        raise ValueError("missing_field: no conversations, text, response or output field")
    if not isinstance(text, str):
        raise ValueError("wrong_type: response is not a string")
    if is_blank(text):
        raise ValueError("empty: empty, whitespace-only or invisible response")
    if _TURN_RE.search(text):
        # a Guanaco conversation is seed data: its "response" holds the human turns too
        raise ValueError("guanaco_conversation: holds '### Human:'/'### Assistant:' turns")
    return text.strip()


def load_unlabelled(
    source: str, split: str = "train", rejects: RejectLog | None = None
) -> list[UnlabelledResponse]:
    """All usable single-turn responses; multi-turn rows are counted as rejects, not dropped silently."""
    rejects = rejects if rejects is not None else RejectLog()
    out: list[UnlabelledResponse] = []
    where: dict[str, str] = {}
    seen: set[str] = set()
    for file, line, row in load_rows(source, split, rejects):
        try:
            text = response_of(row)
        except ValueError as e:
            rejects.add(file, line, str(e), preview(row))
            continue
        if text in seen:
            rejects.add(file, line, "duplicate", text)
            continue
        seen.add(text)
        name = str(row.get("source", "")) if isinstance(row.get("source", ""), str) else ""
        where[f"{len(out)}"] = f"{file}:{line}"
        out.append(UnlabelledResponse(text, source_id=row_id(source, file, line), source=name))
    n_guanaco = rejects.counts().get("guanaco_conversation", 0)
    if n_guanaco and n_guanaco >= len(out):
        raise DataError(
            f"{source}: looks like Guanaco conversations ({n_guanaco} rows hold '### Human:' turns, "
            f"{len(out)} are plain responses): unlabelled data must be responses without instructions "
            "(LIMA `conversations` or `text` rows); give Guanaco data as data.seed"
        )
    if not out:
        first = f"; first: {rejects.first()}" if len(rejects) else ""
        raise DataError(f"{source}: no usable unlabelled response ({rejects.summary()}{first})")
    check_unique_ids(source, out, where)
    return out


def sample_single_turn(
    responses: list[UnlabelledResponse], n: int, seed: int
) -> list[UnlabelledResponse]:
    """A seeded sample of n responses, the same on every machine and Python version.

    Items are ordered by a SHA-256 of (seed, source_id): no dependence on `random`'s algorithm.
    """
    def key(r: UnlabelledResponse) -> str:
        return hashlib.sha256(f"{seed}:{r.source_id}".encode()).hexdigest()

    return sorted(responses, key=key)[: min(n, len(responses))]
