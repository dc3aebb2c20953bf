"""Writing the run's files without losing work, and the errors of files: atomic writes (temp file
+ rename), JSONL and JSON output, `WriteError` (a failed write, naming the file) with the one-line
description the CLI prints, and `DataError` (an input data file that cannot be used).

The append-only record log of the generation stages is in `selfalign.record_log`; reading data
files (formats, compression, tolerant row parsing) in `selfalign.readers`.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file that cannot be used at all (missing, empty, wrong format)."""


# Failures of the output location, not of selfalign: the CLI names the cause and the file.
STORAGE_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


class WriteError(OSError):
    """Writing one of the run's files failed (disk full, no permission, ...); `filename` names it."""


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Re-raise an OSError of the block as a WriteError naming `path` (a bare ENOSPC from
    write() or fsync() carries no file name)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(path)) from e


def describe_os_error(e: OSError) -> str:
    """One line for the CLI: the cause, the file, and what to do."""
    cause = STORAGE_ERRORS.get(e.errno) or e.strerror or str(e)
    if not isinstance(e, WriteError):
        return f"{cause}: {e.filename}" if e.filename else cause
    msg = f"{cause} writing {e.filename}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return msg + "; free some space and re-run the same command (finished work is kept and resumed)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return msg + "; make the output directory writable or use another run.out_dir"
    return msg


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename: readers never see half a file.

    On failure (disk full, no permission) the old file is untouched, the temp file is removed,
    and a WriteError names `path`."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: follow the umask as open() does
            # backslashreplace: a lone surrogate in a record becomes the JSON escape it came from
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Line breaks that JSON leaves unescaped but str.splitlines() splits on: escaped in our JSONL so
# that any line-based reader (ours, or a user's `read_text().splitlines()`) sees one record a line.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_line(obj: Any) -> str:
    """One JSONL record (UTF-8 text kept readable, no line break inside), without the newline."""
    return json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json_line(r) + "\n" for r in rows))


def jsonl_rows(path: Path, text: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a small JSONL file (`text`: its content,
    when the caller read it); a line that is not JSON is a DataError naming the file and line."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield k, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{k}: not JSON ({e.msg})") from None


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
