"""Seed data: human-written (instruction, response) pairs, Guanaco format.

Guanaco rows hold `text` = "### Human: ...### Assistant: ..." (possibly several turns). The paper
uses the first turn of English conversations only. Rows in `messages` (role/content) form or
`instruction`/`output` form are accepted too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from selfalign.io import DataError
from selfalign.log import say
from selfalign.readers import (
    format_not_read,
    is_blank,
    iter_json_rows,
    list_data_files,
    preview,
)
from selfalign.records import RejectLog, SeedPair

_TURN_RE = re.compile(r"###\s*(Human|Assistant)\s*:", re.IGNORECASE)
_QUOTES = "'\"`\u2018\u2019\u201c\u201d\u00ab\u00bb"

# Common English function words; a cheap language check good enough for a seed filter.
_EN_WORDS = frozenset(
    "the a an and or of to in is are was were be been it this that for on with as at by from "
    "you your i my we our they their he she what how why which who can could would should do "
    "does did not no yes if then there here have has had will about please me".split()
)


def split_guanaco(text: str) -> list[tuple[str, str]]:
    """Split Guanaco text into [(role, content)], role in {"user", "assistant"}.

    Never raises: text without any marker gives an empty list.
    """
    if not isinstance(text, str):
        return []
    turns: list[tuple[str, str]] = []
    # a marker followed at once by a closing quote or backtick is quoted text ("what does
    # '### Assistant:' mean?"); a real marker is followed by the turn's text
    matches = [m for m in _TURN_RE.finditer(text) if text[m.end() : m.end() + 1] not in _QUOTES or m.end() == len(text)]
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        role = "user" if m.group(1).lower() == "human" else "assistant"
        turns.append((role, text[m.end() : end].strip()))
    return turns


def join_guanaco(turns: list[tuple[str, str]]) -> str:
    """Inverse of `split_guanaco` (up to whitespace around each turn)."""
    tag = {"user": "### Human: ", "assistant": "### Assistant: "}
    return "".join(tag[role] + content for role, content in turns)


def english_score(text: str) -> float:
    """Share of words that are common English function words (0..1)."""
    words = re.findall(r"\w+", text.lower())
    if not words:
        return 0.0
    return sum(w in _EN_WORDS for w in words) / len(words)


def is_english(text: str, min_score: float = 0.12) -> bool:
    return english_score(text) >= min_score


def first_turn(row: dict[str, Any]) -> tuple[str, str, int] | str:
    """(instruction, response, n_turns) from one row, or a reject reason."""
    if "text" in row:
        if not isinstance(row["text"], str):
            return "wrong_type: text is not a string"
        if is_blank(row["text"]):
            return "empty: empty or invisible text"
        turns = split_guanaco(row["text"])
        if not turns:
            return "no_markers: no '### Human:'/'### Assistant:' marker"
        if any(role == ("assistant" if i % 2 else "user") for i, (role, _) in enumerate(turns[1:])):
            # two human or two assistant turns in a row: a turn quotes a marker, and where it ends is a guess
            return "ambiguous_turns: '### Human:'/'### Assistant:' turns do not alternate (a marker quoted in a turn?)"
    elif "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            return "wrong_type: messages is not a list of objects"
        turns = [(str(m.get("role", "")), m.get("content")) for m in msgs]
        if any(not isinstance(c, str) for _, c in turns):
            return "wrong_type: message content is not a string"
        turns = [("user" if r in ("user", "human", "prompter") else r, c) for r, c in turns]
    elif "instruction" in row and ("output" in row or "response" in row):
        ins, out = row["instruction"], row.get("output", row.get("response"))
        if not isinstance(ins, str) or not isinstance(out, str):
            return "wrong_type: instruction/output is not a string"
        turns = [("user", ins), ("assistant", out)]
    else:
        return "missing_field: no text, messages or instruction/output field"
    if len(turns) < 2 or turns[0][0] != "user" or turns[1][0] != "assistant":
        return "no_first_turn: does not start with a human turn followed by an assistant turn"
    instruction, response = turns[0][1].strip(), turns[1][1].strip()
    if is_blank(instruction):
        return "empty: empty or invisible instruction"
    if is_blank(response):
        return "empty: empty or invisible response"
    n_turns = sum(1 for r, _ in turns if r == "assistant")
    return instruction, response, n_turns


def _rows_from_hub(name: str, split: str, rejects: RejectLog) -> list[tuple[str, int, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - network, auth, missing repo: one clear line
        raise DataError(f"cannot load dataset '{name}' (split {split}): {e}") from None
    from selfalign.readers import row_problem, text_size

    out = []
    for i, r in enumerate(ds):
        bad = row_problem(dict(r), text_size(dict(r)))  # a lone surrogate, a row over the bound
        if bad:
            rejects.add(name, i + 1, bad)
        else:
            out.append((name, i + 1, dict(r)))
    return out


def row_id(source: str, file: str, line: int) -> str:
    """The id of the row at `file`:`line` of a data source: the file's path relative to the
    source folder (its name for a file given directly, the dataset id on the Hub) and the line,
    so that two files of one name in two sub-folders never give the same ids."""
    root, f = Path(source).expanduser(), Path(file)
    if root.is_dir():
        try:
            return f"{f.relative_to(root).as_posix()}:{line}"
        except ValueError:
            return f"{file}:{line}"
    return f"{f.name if f.suffix else file}:{line}"


def check_unique_ids(source: str, items: list[Any], where: dict[str, str]) -> None:
    """A DataError naming both rows when two records of one source share an id: records are keyed
    on their ids (resume, sampling, curation), so a collision would lose or mix rows."""
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        sid = item.source_id
        if sid in seen:
            first, second = where.get(f"{seen[sid]}", "?"), where.get(f"{i}", "?")
            raise DataError(f"{source}: two rows have the id {sid!r} ({first} and {second}); ids must be unique "
                            "within a data source (fix or drop one of them)")
        seen[sid] = i


def load_rows(source: str, split: str, rejects: RejectLog) -> list[tuple[str, int, dict[str, Any]]]:
    """(file, line, row) from a local file or folder, or a Hub dataset id (`owner/name`).

    The files of a folder that are not read (another format, hidden) are listed in one line and
    kept in `rejects.not_read`."""
    from selfalign.sources import is_hub_id

    if not source or not source.strip():
        raise DataError("empty data path")
    p = Path(source).expanduser()
    if p.exists():
        files, skipped = list_data_files(p)
        if skipped:
            rejects.not_read.extend((str(p / name), why) for name, why in skipped)
            say(f"{p}: {format_not_read(skipped)}")
        out = []
        for f in files:
            out.extend((str(f), line, row) for line, row in iter_json_rows(f, rejects))
        return out
    if not is_hub_id(source):
        raise DataError(f"{source}: file not found")
    return _rows_from_hub(source, split, rejects)


def load_seed(
    source: str,
    split: str = "train",
    english_only: bool = True,
    limit: int | None = None,
    rejects: RejectLog | None = None,
) -> list[SeedPair]:
    """Load seed pairs (first turn of each conversation), deduplicated, English-filtered."""
    rejects = rejects if rejects is not None else RejectLog()
    pairs: list[SeedPair] = []
    where: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    rows = load_rows(source, split, rejects)
    for n, (file, line, row) in enumerate(rows, start=1):
        got = first_turn(row)
        if isinstance(got, str):
            rejects.add(file, line, got, preview(row.get("text", row)))
            continue
        instruction, response, n_turns = got
        if english_only and not is_english(instruction + " " + response):
            rejects.add(file, line, "not_english", instruction)
            continue
        key = (instruction, response)
        if key in seen:
            rejects.add(file, line, "duplicate", instruction)
            continue
        seen.add(key)
        source_id = str(row.get("id", row.get("message_tree_id", row_id(source, file, line))))
        where[f"{len(pairs)}"] = f"{file}:{line}"
        pairs.append(SeedPair(instruction, response, source_id, n_turns))
        if limit is not None and len(pairs) >= limit:
            rejects.past_limit = len(rows) - n
            break
    if not pairs:
        first = f"; first: {rejects.first()}" if len(rejects) else ""
        raise DataError(f"{source}: no usable seed pair ({rejects.summary()}{first})")
    check_unique_ids(source, pairs, where)
    return pairs
