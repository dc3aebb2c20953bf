"""Resuming `selfalign evaluate`: records and results are reused only when their inputs match.

Each reusable file has a fingerprint beside it (`<file>.fingerprint.json`): the config values
that matter and a hash of the input texts. A file whose fingerprint is missing or differs is
deleted before the step runs, so stale records are never mixed with fresh ones.

- `fingerprinted_log`: for record logs (`record_log.RecordLog`, e.g. `rated_<set>_<mode>.jsonl`) that a
  step appends to and resumes (done keys skipped);
- `cached`: for a result computed in one go (base-model instructions, model responses,
  judgments): returned from its file when present and matching, else computed and written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from selfalign.io import atomic_write_text


def texts_hash(texts: Iterable[Any]) -> str:
    """sha256 over the JSON of each item, in order (a list of pairs, prompts, ...)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(json.dumps(t, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def _fp_path(path: Path) -> Path:
    return path.with_name(path.name + ".fingerprint.json")


def _canonical(fp: dict[str, Any]) -> str:
    return json.dumps(fp, sort_keys=True, ensure_ascii=False, default=str)


def fingerprint_matches(path: Path, fingerprint: dict[str, Any]) -> bool:
    """True when `path` exists and its stored fingerprint equals `fingerprint`."""
    fp_file = _fp_path(Path(path))
    return Path(path).is_file() and fp_file.is_file() and \
        fp_file.read_text(encoding="utf-8") == _canonical(fingerprint)


def fingerprinted_log(path: Path, fingerprint: dict[str, Any]) -> bool:
    """Prepare `path` for a resumable record log: keep it when its stored fingerprint equals
    `fingerprint`, else delete it and store the new one. True when earlier records are kept."""
    path = Path(path)
    fp_file = _fp_path(path)
    want = _canonical(fingerprint)
    if fp_file.is_file() and fp_file.read_text(encoding="utf-8") == want:
        return path.exists()
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(fp_file, want)
    return False


def cached(path: Path, fingerprint: dict[str, Any], compute: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, reused): the JSON value in `path` when its fingerprint matches, else `compute()`
    written there (fingerprint first, so a torn write is never taken for a match)."""
    path = Path(path)
    fp_file = _fp_path(path)
    want = _canonical(fingerprint)
    if path.is_file() and fp_file.is_file() and fp_file.read_text(encoding="utf-8") == want:
        try:
            return json.loads(path.read_text(encoding="utf-8")), True
        except json.JSONDecodeError:
            pass
    path.unlink(missing_ok=True)
    value = compute()
    atomic_write_text(fp_file, want)
    atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=1))
    return value, False
