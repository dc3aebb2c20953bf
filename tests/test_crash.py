"""Kill the real CLI process (SIGKILL) at random points of augmentation, curation and training, re-run
the same command, and compare with an uninterrupted run: same records (none duplicated, none lost),
the same adapter bytes."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def selfalign(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "selfalign.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def records(path: Path, key: str = "source_id") -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return sorted(rows, key=lambda r: r[key])


@pytest.mark.parametrize("stage,log", [("augment", "augment/augmented.jsonl"), ("curate", "curate_1/rated.jsonl")])
@pytest.mark.slow  # over ~10 s
def test_sigkill_and_rerun_gives_the_uninterrupted_result(stage: str, log: str, tmp_path: Path,
                                                          tiny_model: Path) -> None:
    common = ["--config", "smoke", f"models.base={tiny_model}", f"models.rater={tiny_model}",
              "curation.mode=generate", "generation.batch_size=2", "run.threads=1"]
    run = tmp_path / "killed"
    if stage == "curate":  # kill inside curation, not inside the augmentation it depends on
        for d in (tmp_path / "ref", run):
            assert selfalign(["augment", *common, f"run.out_dir={d}"]).returncode == 0
    ref = selfalign([stage, *common, f"run.out_dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    expected = records(tmp_path / "ref" / log)
    assert len(expected) > 4

    rng = random.Random(0)
    kills = 0
    partial: list[int] = []
    # curation logs a chunk (8 pairs) at a time: kill points are counted in records appended
    points = sorted(rng.sample(range(1, len(expected)), 2))
    for point in points:
        r = selfalign([stage, *common, f"run.out_dir={run}"], {"SELFALIGN_CRASH_AFTER_RECORDS": str(point)})
        if r.returncode == -9:
            kills += 1
            partial.append(len(records(run / log)))
    assert kills >= 1  # the process really died at least once
    assert all(0 < n < len(expected) for n in partial)  # and left a partial log behind
    final = selfalign([stage, *common, f"run.out_dir={run}"])
    assert final.returncode == 0, final.stderr[-2000:]
    got = records(run / log)
    ids = [r["source_id"] for r in got]
    assert len(ids) == len(set(ids))  # none duplicated
    assert got == expected  # none lost, and the same content as the uninterrupted run


@pytest.mark.slow  # over ~10 s
def test_training_killed_twice_resumes_to_the_uninterrupted_adapter(tmp_path: Path, tiny_model: Path) -> None:
    """SIGKILL train-backward at 2 random optimizer steps (SELFALIGN_CRASH_AFTER_STEPS: the end of
    a step, before its checkpoint); re-running resumes from `backward.work/` to the same bytes."""
    save_steps, max_steps = 2, 8
    common = ["train-backward", "--config", "smoke", f"models.base={tiny_model}", "run.threads=1",
              f"train_backward.save_steps={save_steps}", f"train_backward.max_steps={max_steps}",
              "train_backward.batch_size=2"]
    adapter = "backward/adapter_model.safetensors"
    ref = selfalign([*common, f"run.out_dir={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "killed"
    work = run / "backward.work"
    rng = random.Random(0)
    points = sorted(rng.sample(range(save_steps + 1, max_steps + 1), 2))  # global steps; a checkpoint precedes each
    resumed_from = 0
    for point in points:
        r = selfalign([*common, f"run.out_dir={run}"], {"SELFALIGN_CRASH_AFTER_STEPS": str(point - resumed_from)})
        assert r.returncode == -9, (point, r.returncode, r.stderr[-2000:])  # really killed
        checkpoints = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        assert checkpoints, f"no checkpoint left in {work} after a kill at step {point}"
        resumed_from = int(checkpoints[-1].name.split("-")[1])
        assert resumed_from == (point - 1) // save_steps * save_steps  # the kill came before step `point`'s save
        assert not (run / "backward").exists()  # the adapter folder appears only when training is done
    final = selfalign([*common, f"run.out_dir={run}"])
    assert final.returncode == 0, final.stderr[-2000:]
    assert (run / adapter).read_bytes() == (tmp_path / "ref" / adapter).read_bytes()
    assert not work.exists()  # checkpoints are removed once the adapter is in place
