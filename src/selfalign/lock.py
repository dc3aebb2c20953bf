"""One writer per run directory: every command that writes `run.out_dir` holds an exclusive
`fcntl.flock` on `<out_dir>/.selfalign.lock` for as long as it runs.

The kernel drops a flock when its holder exits, however it exits (crash, kill -9, power loss of
a local disk): a crashed holder never leaves the directory locked. The file itself stays (removing
it would let two processes lock two different files); it records the holder (pid, host, command,
start time), so a second process is refused with one line that names it. Within one process the
lock is re-entrant (a notebook or a test may build several `Run`s on one directory). The ranks of
one torchrun/accelerate job are one writer: rank 0 holds the lock for them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selfalign.io import writing
from selfalign.rundir import RunDirError

LOCK_NAME = ".selfalign.lock"


class RunLockedError(RunDirError):
    """Another process holds the run directory (the message names it)."""


# resolved run directory -> [open lock file, holders in this process]
_HELD: dict[Path, list] = {}


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {info['pid']} on {info['host']} (`{info['command']}`, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its details are not written yet)"


def is_locked_here(run_dir: Path) -> bool:
    """True when this process holds the lock of `run_dir`."""
    return Path(run_dir).resolve() in _HELD


def acquire(run_dir: Path, command: str | None = None) -> Path:
    """Lock `run_dir` (created if needed) for this process, or raise RunLockedError naming the
    holder. Re-entrant; undo with `release`. Returns the lock file."""
    import fcntl

    from selfalign.redact import redact

    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0:
        # torchrun/accelerate: the ranks of one job share the directory; rank 0 holds the lock for all
        return key / LOCK_NAME
    if key in _HELD:
        _HELD[key][1] += 1
        return key / LOCK_NAME
    path = run_dir / LOCK_NAME
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    with writing(path):
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole command
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RunLockedError(
            f"{run_dir} is in use by {_holder(path)}: one command at a time writes a run directory; wait for "
            "it to finish (or stop it), or use another run.out_dir") from None
    except OSError as e:  # a file system without locks (some network mounts)
        fh.close()
        raise RunLockedError(f"{path}: cannot lock the run directory ({e.strerror}); use a run.out_dir on a "
                             "local disk") from None
    cmd = command or " ".join(["selfalign", *sys.argv[1:]])
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": redact(cmd)[:300], "started": time.time()}
    with writing(path):
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(info) + "\n")
        fh.flush()
    _HELD[key] = [fh, 1]
    return path


def release(run_dir: Path) -> None:
    """Undo one `acquire` of this process; the last one unlocks the directory."""
    key = Path(run_dir).resolve()
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        held[0].close()  # closing the file drops the flock


@contextmanager
def scope() -> Iterator[None]:
    """Every lock this process takes inside the block is released when it ends (a library caller
    such as a notebook gets the directory back when `run_pipeline` returns or fails)."""
    before = {k: v[1] for k, v in _HELD.items()}
    try:
        yield
    finally:
        for key in list(_HELD):
            for _ in range(_HELD[key][1] - before.get(key, 0)):
                release(key)


@contextmanager
def held(run_dir: Path, command: str | None = None) -> Iterator[None]:
    """The lock of an existing run directory for the block (a command that adds to a finished run:
    evaluate, ablate, push); nothing when the folder does not exist (the command will say so)."""
    if not Path(run_dir).is_dir():
        yield
        return
    acquire(run_dir, command)
    try:
        yield
    finally:
        release(run_dir)


def looks_like_run_dir(folder: Path) -> bool:
    """True for a selfalign run directory (its lock file, or its manifest with its config):
    never read as data."""
    folder = Path(folder)
    return (folder / LOCK_NAME).exists() or (folder / "manifest.json").is_file() and (folder / "config.yaml").is_file()
