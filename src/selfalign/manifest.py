"""The run manifest: config, versions, input hashes, and per-stage status and timings.

A stage is identified by a key: the hash of the config it reads and the fingerprints of its
inputs. A stage whose key matches a finished entry (and whose outputs exist) is skipped on re-run.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from selfalign.io import write_json
from selfalign.redact import redact_obj


def fingerprint(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names + contents), short form."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return "missing"
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def stage_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("selfalign", "torch", "transformers", "peft", "datasets", "accelerate", "huggingface_hub"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class Manifest:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "manifest.json"
        self.data: dict[str, Any] = {"stages": {}, "counts": {}}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            self.data.setdefault("stages", {})
            self.data.setdefault("counts", {})

    def save(self) -> None:
        write_json(self.path, redact_obj(self.data))  # the config's secrets masked

    def is_done(self, name: str, key: str, outputs: list[Path]) -> bool:
        st = self.data["stages"].get(name)
        return bool(st and st.get("status") == "done" and st.get("key") == key and all(Path(o).exists() for o in outputs))

    def previous_key(self, name: str) -> str | None:
        st = self.data["stages"].get(name)
        return st.get("key") if st else None

    def start(self, name: str, key: str) -> None:
        from selfalign.peak_memory import reset_peak

        self.data["stages"][name] = {"status": "running", "key": key, "started": time.time()}
        self.save()
        reset_peak()  # the stage's own peak memory, recorded by finish

    def finish(self, name: str, **info: Any) -> None:
        from selfalign.ledger import take
        from selfalign.peak_memory import peak

        info = {**take(name), **info}  # the stage's requests to a served model, if any (ledger.py)

        st = self.data["stages"][name]
        st.update(status="done", finished=time.time(), seconds=round(time.time() - st["started"], 1), **peak(), **info)
        self.save()

    def count(self, **counts: Any) -> None:
        self.data["counts"].update(counts)
        self.save()
