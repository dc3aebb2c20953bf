"""The append-only JSONL record log that makes the generation stages resumable (`RecordLog`), and
its fault injection for the crash tests (SELFALIGN_CRASH_AFTER_RECORDS)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from selfalign.io import json_line, writing


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
            self._f = open(self.path, "a", encoding="utf-8", errors="backslashreplace")

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
            self._f.write(json_line(record) + "\n")
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
