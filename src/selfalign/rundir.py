"""The run directory: what may resume in it, and how training artifacts are saved into it."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.io import STORAGE_ERRORS, WriteError
from selfalign.redact import redact_obj


class RunDirError(RuntimeError):
    pass


def storage_errno(err: Exception, where: Path) -> int | None:
    """The errno behind a failed save that torch or safetensors report as RuntimeError /
    SafetensorError instead of OSError, or None if it is something else."""
    text = str(err)
    m = re.search(r"os error (\d+)", text)  # safetensors: "... No space left on device (os error 28)"
    if m:
        return int(m.group(1))
    m = re.search(r"strerror: (.+)$", text)  # torch, opening the file: "open file failed with strerror: ..."
    if m:
        return next((code for code in STORAGE_ERRORS if os.strerror(code) == m.group(1).strip()), errno.EIO)
    if "PytorchStreamWriter failed" in text or "unexpected pos" in text:  # torch: a short write, no reason given
        probe = next((p for p in (where, *where.parents) if p.exists()), Path("."))
        return errno.ENOSPC if shutil.disk_usage(probe).free < 64 << 20 else errno.EIO
    return None


@contextmanager
def saving(out: Path) -> Iterator[None]:
    """Around training: a failed checkpoint or adapter save becomes a WriteError naming `out`,
    and the half-written `<out>.tmp` folder is removed (the checkpoints in `<out>.work` stay)."""
    try:
        yield
    except Exception as e:
        shutil.rmtree(out.with_name(out.name + ".tmp"), ignore_errors=True)
        if isinstance(e, OSError):  # a bare ENOSPC from write(): name the folder
            code = e.errno if e.errno in STORAGE_ERRORS and not e.filename else None
        else:
            code = storage_errno(e, out)
        if code is None:
            raise
        raise WriteError(code, os.strerror(code), str(out)) from e


def copy_dir(src: Path, dst: Path) -> None:
    """shutil.copytree without its error aggregation, which loses the errno (disk full, ...)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.rglob("*")):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)


# Config keys that may differ from those of the run already in run.out_dir. They change nothing
# stored (runtime settings, publishing), or the stage keys redo exactly what they affect and that
# is cheap: a new threshold re-selects from the stored ratings (no re-rating) and retrains the
# forward model; the final responses are re-sampled; iterations 1 -> 2 adds the second round.
RESUMABLE_KEYS = (
    "run.out_dir", "run.force", "run.threads", "ray.address", "run.device", "run.memory_check", "run.device_memory_gb",
    "models.cache_dir", "run.templates_dir", "curation.threshold", "curation.iterations",
    "curation.labels", "curation.max_kept", "hygiene.diversity_threshold",  # selection, redone on every run
    # a served endpoint's throughput, retries, prices and key variable: the answers do not depend on them
    "served.concurrency", "served.timeout", "served.max_retries", "served.max_retry_wait", "served.price_",
    "served.api_key_env",
    "forward.n_responses", "generation.response.", "data.eval_prompts", "data.eval_split", "hub.",
    "generation.gpu_memory_utilization", "evaluate.", "ablate.",
)


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict[str, Any], new: Config) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for each setting that differs from a stored run config, except
    RESUMABLE_KEYS. Keys the stored config lacks (written by an older selfalign) count as defaults."""
    was = {**flat(Config().to_dict()), **flat(old)}
    now = flat(redact_obj(new.to_dict()))  # as stored: secrets masked
    return [(k, was.get(k), v) for k, v in now.items() if was.get(k) != v and not k.startswith(RESUMABLE_KEYS)]


def short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_dir(d: Path, cfg: Config) -> None:
    """Refuse an out_dir that holds something else than this run (or a resume of it)."""
    # logs/ (error logs of runs that failed before they wrote anything) and hidden temp files
    # (another rank writing its manifest this very moment) do not make a folder "used"
    if not d.exists() or cfg.run.force or all(p.name == "logs" or p.name.startswith(".") for p in d.iterdir()):
        return
    m = d / "manifest.json"
    if not m.exists():
        raise RunDirError(f"{d} is not empty and holds no selfalign run: use another run.out_dir or run.force=true")
    try:
        old = json.loads(m.read_text(encoding="utf-8")).get("config")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        old = None
    if not isinstance(old, dict):
        raise RunDirError(f"{m} holds no readable run config: use another run.out_dir or run.force=true")
    changed = config_changes(old, cfg)
    if changed:
        shown = "; ".join(f"{k}: {short(a)} -> {short(b)}" for k, a, b in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise RunDirError(
            f"{d} holds a run with another config ({shown}{more}): resume it with its config "
            f"({d / 'config.yaml'}), or use run.force=true or another run.out_dir"
        )

