"""Disk full and permission denied on the output directory: one `error:` line naming the cause and
the file (exit 2), no temp file left behind, and every earlier artifact intact.

We run as root, so chmod cannot make a folder unwritable: faults are injected instead, at the
system calls the failure really comes from (fsync/open/mkdir raising ENOSPC or EACCES, torch and
safetensors failing their writes).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from selfalign.cli import main
from selfalign.io import WriteError, atomic_write_text
from selfalign.record_log import RecordLog

ENOSPC = os.strerror(errno.ENOSPC)


def fail_fsync(monkeypatch: pytest.MonkeyPatch, name: str, code: int = errno.ENOSPC, after: int = 0) -> None:
    """fsync of a file whose path contains `name` fails with `code` after `after` successful ones."""
    real = os.fsync
    left = {"n": after}

    def fsync(fd: int) -> None:
        if name in os.readlink(f"/proc/self/fd/{fd}"):
            if left["n"] == 0:
                raise OSError(code, os.strerror(code))
            left["n"] -= 1
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def deny_writes(monkeypatch: pytest.MonkeyPatch, root: Path, code: int = errno.EACCES) -> None:
    """Creating a file or folder under `root` fails with `code` (a read-only output directory)."""
    real_open, real_mkdir = os.open, os.mkdir

    def denied(path: object) -> bool:
        return str(Path(os.fsdecode(path)).absolute()).startswith(str(root))

    def guarded_open(path, flags, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if flags & os.O_CREAT and denied(path):
            raise PermissionError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *a, **k)

    def guarded_mkdir(path, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if denied(path):
            raise PermissionError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


LOCK = ".selfalign.lock"  # the run directory's lock file (selfalign.lock): rewritten by each command, not a temp file


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for root in paths:
        for f in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and p.name != LOCK):
            h.update(str(f).encode() + f.read_bytes())
    return h.hexdigest()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if (p.name.endswith(".tmp") or p.name.startswith(".")) and p.name != LOCK]


def cli(*args: str) -> tuple[int, str]:
    """The real CLI in this process (so faults can be injected): (exit code, the `error:` line or "").

    stderr also holds progress bars (a bar cut short by the error ends without a newline); it must
    hold no traceback and at most one `error:` line, at its end."""
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr and r.stderr.count("error: ") <= 1
    if "error: " not in r.stderr:
        return r.exit_code, ""
    line = r.stderr[r.stderr.index("error: "):]
    assert line.endswith("\n") and line.count("\n") == 1 and "\r" not in line
    return r.exit_code, line.rstrip("\n")


def smoke(cmd: str, run: Path, tiny_model: Path, *extra: str) -> tuple[int, str]:
    return cli(cmd, "--config", "smoke", f"run.out_dir={run}", f"models.base={tiny_model}",
               f"models.rater={tiny_model}", "run.threads=2", *extra)


# ------------------------------------------------------------------------------ io writers


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temp(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "data.jsonl"
    atomic_write_text(target, "old\n")
    fail_fsync(monkeypatch, "data.jsonl")
    with pytest.raises(WriteError) as ei:
        atomic_write_text(target, "new\n" * 1000)
    assert ei.value.errno == errno.ENOSPC and ei.value.filename == str(target)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.jsonl"]  # no temp file left

    monkeypatch.undo()
    deny_writes(monkeypatch, tmp_path / "out")
    with pytest.raises(WriteError) as ei:
        atomic_write_text(target, "new\n")
    assert ei.value.errno == errno.EACCES and ei.value.filename == str(target)
    assert target.read_text() == "old\n"


def test_record_log_write_failure_names_the_log_and_keeps_whole_records(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.jsonl"
    fail_fsync(monkeypatch, "log.jsonl", after=2)
    log = RecordLog(path)
    log.append({"source_id": "a"})
    log.append({"source_id": "b"})
    with pytest.raises(WriteError) as ei:
        log.append({"source_id": "c"})
    assert ei.value.errno == errno.ENOSPC and ei.value.filename == str(path)
    log.close()
    monkeypatch.undo()
    ids = [json.loads(x)["source_id"] for x in path.read_text().splitlines()]  # whole lines only
    assert ids[:2] == ["a", "b"] and len(ids) <= 3


# ------------------------------------------------------------------------------ the CLI


def test_disk_full_during_augmentation(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on the 4th record of augment/augmented.jsonl: one line, earlier work intact, and the
    same command resumes once there is room."""
    run = tmp_path / "run"
    assert smoke("train-backward", run, tiny_model, "train_backward.max_steps=2") == (0, "")
    earlier = [run / "seed" / "pairs.jsonl", run / "seed" / "rejects.jsonl", run / "backward"]
    before = digest(*earlier)

    fail_fsync(monkeypatch, "augmented.jsonl", after=3)
    code, err = smoke("augment", run, tiny_model, "train_backward.max_steps=2")
    log = run / "augment" / "augmented.jsonl"
    assert code == 2
    assert err == (f"error: {ENOSPC.lower()} writing {log}; free some space and re-run the same command "
                   "(finished work is kept and resumed)")
    assert digest(*earlier) == before
    partial = [json.loads(x) for x in log.read_text().splitlines()]  # whole records only
    assert 3 <= len(partial) < 12
    assert temp_files(run) == []
    json.loads((run / "manifest.json").read_text())

    monkeypatch.undo()
    assert smoke("augment", run, tiny_model, "train_backward.max_steps=2") == (0, "")
    final = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(final) == 12 and len({r["source_id"] for r in final}) == 12
    by_id = {r["source_id"]: r for r in final}
    assert all(by_id[r["source_id"]] == r for r in partial[:3])  # the records written before are kept as they were
    assert digest(*earlier) == before


def test_permission_denied_on_the_output_directory(tmp_path: Path, tiny_model: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    assert smoke("seed", run, tiny_model) == (0, "")
    before = digest(run)
    deny_writes(monkeypatch, run)
    code, err = smoke("seed", run, tiny_model)
    assert code == 2
    assert err == (f"error: permission denied writing {run / 'manifest.json'}; make the output directory writable "
                   "or use another run.out_dir")
    assert digest(run) == before and temp_files(run) == []

    # a new run directory inside a read-only folder
    monkeypatch.undo()
    ro = tmp_path / "readonly"
    ro.mkdir()
    deny_writes(monkeypatch, ro, errno.EROFS)
    code, err = smoke("seed", ro / "run", tiny_model)
    assert code == 2 and err.startswith(f"error: read-only file system writing {ro / 'run'}; ")


def _torch_short_write(real_save):  # noqa: ANN001, ANN202
    def save(obj, f, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if "checkpoint-" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *a, **k)
    return save


def _safetensors_full(real_save):  # noqa: ANN001, ANN202
    def save(tensors, filename, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if "checkpoint-" in str(filename):
            from safetensors import SafetensorError

            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, *a, **k)
    return save


@pytest.mark.parametrize("writer", ["torch.save", "safetensors"])
def test_disk_full_while_training_saves_a_checkpoint(writer: str, tmp_path: Path, tiny_model: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """torch and safetensors report a full disk as RuntimeError/SafetensorError: still one line."""
    import peft.peft_model
    import torch

    run = tmp_path / "run"
    steps = ("train_backward.max_steps=3", "train_backward.save_steps=2")
    assert smoke("seed", run, tiny_model, *steps) == (0, "")
    before = digest(run / "seed")
    if writer == "torch.save":  # a short write gives no reason: the free space tells
        monkeypatch.setattr(torch, "save", _torch_short_write(torch.save))
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    else:
        monkeypatch.setattr(peft.peft_model, "safe_save_file", _safetensors_full(peft.peft_model.safe_save_file))
    code, err = smoke("train-backward", run, tiny_model, *steps)
    assert code == 2
    assert err == (f"error: {ENOSPC.lower()} writing {run / 'backward'}; free some space and re-run the same "
                   "command (finished work is kept and resumed)")
    assert digest(run / "seed") == before
    assert not (run / "backward").exists() and not (run / "backward.tmp").exists()
