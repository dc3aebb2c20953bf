"""File I/O that never loses work: atomic writes, append-only record logs, tolerant readers."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # records imports io (RejectLog.write): no import at run time
    from selfalign.records import RejectLog


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
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


class RecordLog:
    """Append-only JSONL log of finished records, for resumable generation stages.

    Each record is one line, flushed and fsynced as it is written. On reopen, a torn last
    line (the process died mid-write) is cut off, so a resumed stage sees only whole records.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.records: list[dict[str, Any]] = self._recover()
            self._f = open(self.path, "a", encoding="utf-8")

    def _recover(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        records: list[dict[str, Any]] = []
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            good += len(line)
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return records

    def done_keys(self, key: str) -> set[str]:
        return {str(r[key]) for r in self.records if key in r}

    def append(self, record: dict[str, Any]) -> None:
        # A failed write may leave a torn last line: it is cut when the log is reopened.
        with writing(self.path):
            self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        self.records.append(record)
        _maybe_crash()

    def close(self) -> None:
        with writing(self.path):
            self._f.close()

_appended = 0


def _maybe_crash() -> None:
    """Fault injection for the crash tests: SELFALIGN_CRASH_AFTER_RECORDS=N makes the process
    SIGKILL itself after its N-th appended record (no cleanup runs, as in a real crash)."""
    global _appended
    limit = os.environ.get("SELFALIGN_CRASH_AFTER_RECORDS")
    if limit is None:
        return
    _appended += 1
    if _appended >= int(limit):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def iter_json_rows(path: Path, rejects: RejectLog) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) from a .jsonl / .json / .parquet file.

    Bad rows are recorded in `rejects` with file:line and a reason. A JSON array in a .jsonl
    file is accepted (one row per element); rows that are not objects are rejected.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - any parquet failure is a data error
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark (Windows editors)
        raw = raw[3:]
    if suffix == ".txt":  # plain text: one response per non-empty line
        for i, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                yield i, {"text": line.decode("utf-8").rstrip("\r")}
            except UnicodeDecodeError:
                rejects.add(path, i, "invalid_utf8")
        return
    stripped = raw.lstrip()
    if stripped.startswith(b"["):
        try:
            items = json.loads(raw.decode("utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: looks like a JSON array but does not parse ({e.msg})") from None
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: looks like a JSON array but is not valid UTF-8") from None
        for i, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                rejects.add(path, i, "not_an_object", repr(item))
                continue
            yield i, item
        return
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            rejects.add(path, i, "invalid_utf8")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            rejects.add(path, i, f"bad_json: {e.msg}", text)
            continue
        if not isinstance(row, dict):
            rejects.add(path, i, "not_an_object", text)
            continue
        yield i, row


def data_files(path: Path) -> list[Path]:
    """The data files of a local dataset: the file itself, or the data files of a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.suffix.lower() in {".jsonl", ".json", ".parquet", ".txt"} and p.is_file()
        )
        if not files:
            raise DataError(f"{path}: folder holds no .jsonl/.json/.parquet file")
        return files
    raise DataError(f"{path}: file not found")
