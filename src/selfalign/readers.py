"""Reading data files, tolerantly: the formats read (.jsonl, .json, .parquet, .txt, plain or
.gz/.zst compressed), rows parsed one by one with every bad row recorded as a reject (file:line and
a reason) instead of failing the file, the readable files of a folder, and the text checks the
loaders use (`is_blank`, `lone_surrogate`, `preview`). A file that cannot be read at all is a
`selfalign.io.DataError`."""

from __future__ import annotations

import json
import os
import reprlib
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfalign.io import DataError

if TYPE_CHECKING:  # for annotations only
    from selfalign.records import RejectLog


# What the loaders read: these formats, plain or compressed (decompressed through pyarrow's codecs).
FORMATS = (".jsonl", ".json", ".parquet", ".txt")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
FORMATS_TEXT = ".jsonl, .json, .parquet or .txt, optionally .gz/.zst compressed"


def file_format(path: Path) -> tuple[str, str | None]:
    """(format, compression) of a data file from its name, e.g. ("jsonl", "gzip") for x.jsonl.gz;
    raises DataError naming the suffix for a file that is not read."""
    name = Path(path).name.lower()
    compression = None
    for ext, codec in COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = codec, name[: -len(ext)]
            break
    suffix = Path(name).suffix
    if suffix in FORMATS:
        return suffix[1:], compression
    raise DataError(f"{path}: format {Path(path).suffix or '(no suffix)'} is not read (use {FORMATS_TEXT})")


def read_data_bytes(path: Path, compression: str | None) -> bytes:
    """The bytes of a data file, decompressed; a corrupt or truncated stream is a DataError."""
    if compression is None:
        return Path(path).read_bytes()
    import pyarrow as pa

    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    try:
        with pa.input_stream(str(path), compression=compression) as stream:
            return stream.read()
    except OSError as e:
        if e.errno is not None:  # permission denied, ...: not the data's fault
            raise
        raise DataError(f"{path}: not a readable {compression} file ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - pyarrow reports a corrupt stream as ArrowInvalid/IOError
        raise DataError(f"{path}: not a readable {compression} file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


# Characters that show nothing: a text made only of these (and whitespace) is empty.
_INVISIBLE_EXTRA = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u180e")


def is_blank(text: str) -> bool:
    """True when `text` has no visible character: only whitespace, zero-width and format
    characters (U+200B, U+FEFF, ...), control characters, combining marks, or fillers."""
    for ch in text:
        if ch.isspace() or ch in _INVISIBLE_EXTRA:
            continue
        if unicodedata.category(ch)[0] in "LNPS":
            return False
    return True


def lone_surrogate(value: Any) -> str | None:
    """The first lone UTF-16 surrogate in any string of a parsed JSON value (keys included), as
    `\\udXXX`, or None. JSON escapes such as "\\ud800" parse to text that is not valid UTF-8 and
    cannot be written back. Walks without recursion: deeply nested rows are fine."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"\\u{ord(v[e.start]):04x}"
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return None


# A row longer than this (in bytes, as stored) is a reject, never parsed nor tokenized: far above
# any response a model is trained or prompted with (those are cut to a few thousand tokens), far
# below what would exhaust memory when parsed and tokenized.
MAX_ROW_BYTES = 4 << 20


class _Keys(dict):
    """A parsed JSON object that remembers a key it was given twice (JSON parsers keep the last)."""

    duplicate: str | None = None


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _Keys(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        obj.duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


def duplicate_key(value: Any) -> str | None:
    """The first key given twice in any object of a parsed row (nested ones included), or None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if getattr(v, "duplicate", None) is not None:
                return v.duplicate
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def row_problem(row: Any, size: int) -> str | None:
    """The reject reason of a parsed row that must not be used whole, or None: a key given twice
    (which value was meant?), a lone surrogate, a row over MAX_ROW_BYTES."""
    if size > MAX_ROW_BYTES:
        return _too_long(size)
    dup = duplicate_key(row)
    if dup is not None:
        return f"duplicate_key: {dup!r} is given twice"
    bad = lone_surrogate(row)
    return f"lone_surrogate: {bad}" if bad else None


def _parse_json(text: str) -> Any:
    """json.loads (objects remember a key given twice: `duplicate_key`), with nesting too deep
    for the parser reported as a ValueError."""
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def iter_json_rows(path: Path, rejects: RejectLog) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) from a .jsonl / .json / .parquet / .txt file, plain or .gz/.zst.

    Bad rows are recorded in `rejects` with file:line and a reason (invalid UTF-8, bad JSON, a lone
    surrogate, not an object); every row of the file is either yielded or rejected. A JSON array
    (in a .json or .jsonl file) gives one row per element; a .json file holding one object is one
    row. A file that cannot be read as a whole (corrupt compression or parquet, an array that does
    not parse) is a DataError.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fmt, compression = file_format(path)
    raw = read_data_bytes(path, compression)
    if fmt == "parquet":
        yield from _parquet_rows(path, raw, rejects)
        return
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark (Windows editors)
        raw = raw[3:]
    if fmt == "txt":  # plain text: one response per non-empty line
        for i, line in _lines(raw):
            if isinstance(line, int):
                rejects.add(path, i, _too_long(line))
                continue
            if not line.strip():
                continue
            try:
                yield i, {"text": line.decode("utf-8").rstrip("\r")}
            except UnicodeDecodeError:
                rejects.add(path, i, "invalid_utf8")
        return
    stripped = raw.lstrip()
    if stripped.startswith(b"["):
        yield from _array_rows(path, raw, rejects)
        return
    if fmt == "json" and stripped.startswith(b"{"):  # one object, possibly over several lines
        try:
            row = _parse_json(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            row = None  # not one object: read it line by line (JSON Lines named .json)
        if isinstance(row, dict):
            line = raw[: len(raw) - len(stripped)].count(b"\n") + 1
            bad = row_problem(row, len(stripped))
            if bad:
                rejects.add(path, line, bad)
            else:
                yield line, row
            return
    for i, line in _lines(raw):
        if isinstance(line, int):  # never copied, decoded, parsed or tokenized
            rejects.add(path, i, _too_long(line))
            continue
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            rejects.add(path, i, "invalid_utf8")
            continue
        try:
            row = _parse_json(text)
        except ValueError as e:
            rejects.add(path, i, f"bad_json: {getattr(e, 'msg', str(e))}", text)
            continue
        if not isinstance(row, dict):
            rejects.add(path, i, "not_an_object", text)
            continue
        bad = row_problem(row, 0)
        if bad:
            rejects.add(path, i, bad, text)
            continue
        yield i, row


def _too_long(size: int) -> str:
    return f"too_long: {size:,} bytes, over the {MAX_ROW_BYTES:,} a row may hold"


def _lines(raw: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(line number, its bytes) for each line of `raw` (as raw.split(b"\\n") numbers them), one at a
    time; a line over MAX_ROW_BYTES as its length only, never copied."""
    start, i, n = 0, 0, len(raw)
    while start <= n:
        end = raw.find(b"\n", start)
        end = n if end < 0 else end
        i += 1
        yield i, (end - start if end - start > MAX_ROW_BYTES else raw[start:end])
        start = end + 1


def text_size(value: Any) -> int:
    """Characters of every string in a parsed row (its size where no line length is known)."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return total


def _array_rows(path: Path, raw: bytes, rejects: RejectLog) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        items = _parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: looks like a JSON array but is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: looks like a JSON array but does not parse ({e.msg})") from None
    except ValueError as e:
        raise DataError(f"{path}: looks like a JSON array but does not parse ({e})") from None
    if not isinstance(items, list):  # e.g. "[1] 2" is not valid JSON, but "[1]" then spaces is
        raise DataError(f"{path}: looks like a JSON array but does not parse")
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            rejects.add(path, i, "not_an_object", preview(item))
            continue
        bad = row_problem(item, text_size(item))
        if bad:
            rejects.add(path, i, bad)
            continue
        yield i, item


def _parquet_rows(path: Path, raw: bytes, rejects: RejectLog) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(pa.BufferReader(raw)).to_pylist()
    except Exception as e:  # noqa: BLE001 - any parquet failure is a data error
        raise DataError(f"{path}: not a readable parquet file ({_first_line(e)})") from None
    for i, row in enumerate(rows, start=1):
        bad = row_problem(row, text_size(row))
        if bad:
            rejects.add(path, i, bad)
            continue
        yield i, row


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel, _short.maxlist, _short.maxdict = 200, 200, 3, 6, 6


def preview(value: Any) -> str:
    """Text for a reject: a string's first 200 characters, else a short repr of the parsed value
    (deep nesting and huge values included)."""
    return value[:200] if isinstance(value, str) else _short.repr(value)


def list_data_files(path: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The data files of a local dataset (the file itself, or the readable files of a folder,
    sorted), and the files of the folder that are not read, each with the reason."""
    path = Path(path)
    if path.is_file():
        file_format(path)  # a file given directly must be readable: DataError otherwise
        return [path], []
    if not path.is_dir():
        raise DataError(f"{path}: file not found")
    from selfalign.lock import looks_like_run_dir

    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    # Symlinked folders are read like any folder (followlinks), each real folder once: a link to
    # a folder already read (a loop such as `loop -> .`, or a second link) is listed as not read.
    seen = {os.path.realpath(path)}
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs.sort()
        for d in list(dirs):
            rel = os.path.join(os.path.relpath(root, path), d, "")
            real = os.path.realpath(os.path.join(root, d))
            why = ("hidden folder" if d.startswith(".")
                   else "a selfalign run directory" if looks_like_run_dir(Path(root, d))
                   else "link to a folder already read (a loop?)" if real in seen else None)
            if why:
                skipped.append((rel, why))
                dirs.remove(d)
            else:
                seen.add(real)
        for name in sorted(names):
            f = Path(root, name)
            rel = str(f.relative_to(path))
            if name.startswith("."):
                skipped.append((rel, "hidden file"))
                continue
            try:
                file_format(f)
            except DataError:
                skipped.append((rel, f"format {f.suffix or '(no suffix)'} is not read"))
                continue
            if f.is_file():
                files.append(f)
            else:
                skipped.append((rel, "not a regular file"))
    if not files:
        held = f"; it holds {format_not_read(skipped)}" if skipped else ""
        raise DataError(f"{path}: folder holds no readable data file ({FORMATS_TEXT}){held}")
    return files, skipped


def format_not_read(skipped: list[tuple[str, str]], n: int = 5) -> str:
    """One line: `3 files not read: a.csv (format not read), ...`."""
    shown = ", ".join(f"{name.removeprefix('./')} ({why})" for name, why in skipped[:n])
    more = f" and {len(skipped) - n} more" if len(skipped) > n else ""
    return f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} not read: {shown}{more}"


def data_files(path: Path) -> list[Path]:
    """The data files of a local dataset: the file itself, or the readable files of a folder."""
    return list_data_files(path)[0]
