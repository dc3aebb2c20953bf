import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from selfalign.pipeline import RunDirError, run_pipeline


def lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_smoke_run_end_to_end(smoke_cfg, capsys: pytest.CaptureFixture) -> None:
    import datasets
    from peft import PeftConfig

    run = run_pipeline(smoke_cfg)
    out = capsys.readouterr().out
    d = run.dir
    for section in ("augmented pairs", "high-scored pairs", "low-scored pairs", "responses of the forward model"):
        assert section in out
    assert PeftConfig.from_pretrained(str(d / "backward")).r == smoke_cfg.lora.r
    assert (d / "forward" / "adapter_model.safetensors").is_file()
    aug = lines(d / "augment" / "augmented.jsonl")
    assert len(aug) == smoke_cfg.data.unlabelled_n
    assert {"instruction", "response", "source_id", "source", "status", "generation"} <= set(aug[0])
    ds = datasets.load_dataset(str(d / "curated"), split="train")
    assert ds.num_rows == len(lines(d / "curated" / "data.jsonl"))
    assert len(lines(d / "responses.jsonl")) == smoke_cfg.forward.n_responses
    report = (d / "report.md").read_text()
    assert "## Counts" in report and "## High-scored pairs" in report and "## Responses of the forward model" in report
    assert "[review.html](review.html)" in report and "unlabelled.jsonl" in (d / "review.html").read_text()
    assert "## Data hygiene" in report and (d / "hygiene" / "flags.jsonl").is_file()
    # the smoke config names the shipped samples: the first lines and the report say so
    assert "data.seed: sample:seed -> " in out and "uses the small OASST1 samples shipped" in out
    assert "**This run used the small OASST1 samples shipped with selfalign, not real data.**" in report
    assert "| data.unlabelled | `sample:unlabelled` | shipped sample: `" in report
    manifest = json.loads((d / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert manifest["counts"]["sampled"] == smoke_cfg.data.unlabelled_n
    assert "torch" in manifest["versions"]


@pytest.mark.slow  # > 8 s (the fast tier stays under 3 min; CI runs it)
def test_unchanged_stages_are_skipped(smoke_cfg, capsys: pytest.CaptureFixture) -> None:
    run_pipeline(smoke_cfg)
    adapter = Path(smoke_cfg.run.out_dir) / "backward" / "adapter_model.safetensors"
    mtime = adapter.stat().st_mtime_ns
    capsys.readouterr()
    run_pipeline(smoke_cfg)
    out = capsys.readouterr().out
    assert "running" not in out.replace("skipped", "")
    for stage in ("seed", "train-backward", "sample", "augment", "curate-1", "train-forward-1", "responses"):
        assert f"{stage}: up to date, skipped" in out
    assert adapter.stat().st_mtime_ns == mtime
    # a new threshold re-selects without re-rating, and retrains only what follows
    cfg2 = smoke_cfg.model_copy(deep=True)
    cfg2.curation.threshold = 5.0
    run_pipeline(cfg2)
    out = capsys.readouterr().out
    assert "curate-1: up to date, skipped" in out and "augment: up to date, skipped" in out
    assert "train-forward-1: running" in out


@pytest.mark.slow  # > 8 s (the fast tier stays under 3 min; CI runs it)
def test_resume_after_interrupted_augmentation(smoke_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.steps as augment_mod  # every single-pass step calls the engine through steps.generate

    real = augment_mod.generate
    budget = {"n": 5}

    def crashing_generate(engine, prompts, params, on_result=None, **kw):
        def counting(i, text):
            if budget["n"] == 0:
                raise RuntimeError("simulated crash")
            budget["n"] -= 1
            on_result(i, text)
        return real(engine, prompts, params, on_result=counting, **kw)

    monkeypatch.setattr(augment_mod, "generate", crashing_generate)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(smoke_cfg, until="augment")
    log = Path(smoke_cfg.run.out_dir) / "augment" / "augmented.jsonl"
    first = lines(log)
    assert len(first) == 5
    monkeypatch.setattr(augment_mod, "generate", real)
    run_pipeline(smoke_cfg, until="augment")
    final = lines(log)
    ids = [r["source_id"] for r in final]
    assert len(final) == smoke_cfg.data.unlabelled_n and len(set(ids)) == len(ids)  # none duplicated, none lost
    sample = lines(Path(smoke_cfg.run.out_dir) / "augment" / "sample.jsonl")
    assert set(ids) == {r["source_id"] for r in sample}
    by_id = {r["source_id"]: r for r in final}
    assert all(by_id[r["source_id"]] == r for r in first)  # finished records were kept, not redone
    assert ids == [r["source_id"] for r in sample]  # the file ends in the order of the items
    # and the resumed run wrote exactly what an uninterrupted run with the same seed writes
    fresh = smoke_cfg.model_copy(deep=True)
    fresh.run.out_dir = str(Path(smoke_cfg.run.out_dir).with_name("fresh"))
    run_pipeline(fresh, until="augment")
    uninterrupted = lines(Path(fresh.run.out_dir) / "augment" / "augmented.jsonl")
    assert sorted(final, key=lambda r: r["source_id"]) == sorted(uninterrupted, key=lambda r: r["source_id"])


@pytest.mark.slow  # > 8 s (the fast tier stays under 3 min; CI runs it)
def test_resume_after_interrupted_curation_is_identical(smoke_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.curate as curate_mod

    cfg = smoke_cfg.model_copy(deep=True)
    cfg.curation.mode = "generate"
    cfg.generation.batch_size = 2  # chunks of 8 pairs: the crash lands after the first chunk
    real = curate_mod.generate
    calls = {"n": 0}

    def crashing_generate(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 2:  # first chunk: one rating round + one retry round
            raise RuntimeError("simulated crash")
        return real(*a, **kw)

    monkeypatch.setattr(curate_mod, "generate", crashing_generate)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(cfg, until="curate")
    rated_log = Path(cfg.run.out_dir) / "curate_1" / "rated.jsonl"
    partial = lines(rated_log)
    assert 0 < len(partial) < cfg.data.unlabelled_n
    monkeypatch.setattr(curate_mod, "generate", real)
    run_pipeline(cfg, until="curate")
    final = lines(rated_log)
    ids = [r["source_id"] for r in final]
    assert len(set(ids)) == len(ids) == len(lines(Path(cfg.run.out_dir) / "augment" / "augmented.jsonl"))
    fresh = cfg.model_copy(deep=True)
    fresh.run.out_dir = str(Path(cfg.run.out_dir).with_name("fresh"))
    run_pipeline(fresh, until="curate")
    uninterrupted = lines(Path(fresh.run.out_dir) / "curate_1" / "rated.jsonl")
    assert sorted(final, key=lambda r: r["source_id"]) == sorted(uninterrupted, key=lambda r: r["source_id"])


def test_torn_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    from selfalign.record_log import RecordLog

    p = tmp_path / "log.jsonl"
    p.write_text('{"source_id": "a"}\n{"source_id": "b"}\n{"source_id": "c", "instr')
    log = RecordLog(p)
    assert log.done_keys("source_id") == {"a", "b"}
    log.append({"source_id": "c"})
    log.close()
    assert [json.loads(x)["source_id"] for x in p.read_text().splitlines()] == ["a", "b", "c"]


def test_foreign_output_dir_is_refused(smoke_cfg) -> None:
    d = Path(smoke_cfg.run.out_dir)
    d.mkdir(parents=True)
    (d / "precious.txt").write_text("not a run")
    with pytest.raises(RunDirError, match="holds no selfalign run"):
        run_pipeline(smoke_cfg, until="seed")
    assert (d / "precious.txt").read_text() == "not a run"


def test_out_dir_with_another_config_is_refused(smoke_cfg, tiny_model: Path) -> None:
    """Another run's artifacts are kept: a changed setting that would redo or mix them is refused
    (unless run.force=true); runtime settings, the threshold, hub and response settings are not."""
    run_pipeline(smoke_cfg, until="seed")
    d = Path(smoke_cfg.run.out_dir)
    # (the lock file names whichever process held the directory last: not an artifact)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name not in ("manifest.json", ".selfalign.lock")}

    other = smoke_cfg.model_copy(deep=True)
    other.lora.r, other.run.seed = 8, 1
    with pytest.raises(RunDirError) as ei:
        run_pipeline(other, until="seed")
    msg = str(ei.value)
    assert "\n" not in msg and "another config (run.seed: 0 -> 1; lora.r: 16 -> 8)" in msg
    assert "run.force=true" in msg and str(d / "config.yaml") in msg
    assert {p: p.read_bytes() for p in before} == before

    many = smoke_cfg.model_copy(deep=True)
    many.lora.r, many.lora.alpha, many.lora.dropout, many.train_backward.epochs = 8, 4, 0.0, 3.0
    many.curation.shots, many.curation.mode = 1, "generate"
    with pytest.raises(RunDirError, match=r"\(.*; .*; .*; .*; .* and 1 more\)"):
        run_pipeline(many, until="seed")

    # a resume with other runtime settings, threshold, hub and response settings is fine
    same = smoke_cfg.model_copy(deep=True)
    same.run.threads, same.curation.threshold, same.forward.n_responses = 1, 4.5, 2
    same.hub.name, same.generation.response.temperature = "x", 0.1
    run_pipeline(same, until="seed")
    forced = other.model_copy(deep=True)
    forced.run.force = True
    run_pipeline(forced, until="seed")
    assert json.loads((d / "manifest.json").read_text())["config"]["lora"]["r"] == 8

    r = cli("seed", "--config", "smoke", f"run.out_dir={d}", f"models.base={tiny_model}",
            "data.seed_limit=3")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"error: {d} holds a run with another config (")


def test_config_written_by_an_older_version_counts_its_missing_keys_as_defaults(smoke_cfg) -> None:
    from selfalign.rundir import config_changes

    old = smoke_cfg.to_dict()
    del old["run"]["memory_check"], old["train_forward"]["gradient_checkpointing"]
    assert config_changes(old, smoke_cfg) == []
    old["train_forward"]["gradient_checkpointing"] = True
    assert config_changes(old, smoke_cfg) == [("train_forward.gradient_checkpointing", True, False)]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfalign.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_bad_config_key_is_one_line(tmp_path: Path) -> None:
    r = cli("train-backward", "--config", "smoke", "lora.rank=3", f"run.out_dir={tmp_path}/r")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: config error in ")
    assert r.stderr.strip().endswith("smoke.yaml + overrides: unknown key 'lora.rank'")


def test_cli_missing_data_is_one_line(tmp_path: Path) -> None:
    r = cli("seed", "--config", "smoke", f"data.seed={tmp_path}/nope.jsonl", f"run.out_dir={tmp_path}/r")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: data.seed: {tmp_path}/nope.jsonl: file not found"


def test_cli_prints_resolved_config(tmp_path: Path) -> None:
    r = cli("seed", "--config", "smoke", f"run.out_dir={tmp_path}/r", "data.seed_limit=3")
    assert r.returncode == 0, r.stderr
    assert "# resolved config" in r.stdout and "seed_limit: 3" in r.stdout
    assert len(lines(tmp_path / "r" / "seed" / "pairs.jsonl")) == 3


@pytest.mark.slow  # > 8 s (the fast tier stays under 3 min; CI runs it)
def test_m0_rater_and_second_iteration(smoke_cfg, capsys: pytest.CaptureFixture) -> None:
    """rater=m0 trains the seed-only forward model first; iterations=2 re-rates with M1, trains M2."""
    cfg = smoke_cfg.model_copy(deep=True)
    cfg.models.rater = "m0"
    cfg.curation.iterations = 2
    run = run_pipeline(cfg)
    out = capsys.readouterr().out
    d = run.dir
    for p in ("m0", "forward_1", "forward_2", "curate_1/rated.jsonl", "curate_2/rated.jsonl", "curated_2/data.jsonl"):
        assert (d / p).exists(), p
    stages = json.loads((d / "manifest.json").read_text())["stages"]
    assert stages["curate-1"]["rater"].startswith("M0") and stages["curate-2"]["rater"].startswith("M1")
    assert "curate (iteration 2)" in out
    # the final deliverables are those of iteration 2
    assert (d / "forward" / "adapter_model.safetensors").read_bytes() == (d / "forward_2" / "adapter_model.safetensors").read_bytes()
    assert (d / "curated" / "data.jsonl").read_text() == (d / "curated_2" / "data.jsonl").read_text()


@pytest.mark.slow  # > 8 s (the fast tier stays under 3 min; CI runs it)
def test_cli_generate_after_train_forward(smoke_cfg, tiny_model: Path) -> None:
    run_pipeline(smoke_cfg, until="train-forward")
    r = cli("generate", "--config", "smoke", f"run.out_dir={smoke_cfg.run.out_dir}",
            f"models.base={tiny_model}", "-n", "2")
    assert r.returncode == 0, r.stderr
    assert "=== 2 responses of the forward model ===" in r.stdout
    assert r.stdout.count("prompt:") == 2
    missing = cli("generate", "--config", "smoke", "--adapter", "/nonexistent", f"models.base={tiny_model}")
    assert missing.returncode == 2 and "no LoRA adapter here" in missing.stderr


@pytest.mark.slow  # over ~10 s
def test_training_under_torchrun_two_cpu_ranks(tmp_path: Path, tiny_model: Path) -> None:
    """`torchrun --nproc_per_node 2` (gloo on CPU): both ranks train the same model, rank 0 saves it."""
    import shutil as sh

    torchrun = sh.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    r = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "selfalign.cli", "train-backward", "--config", "smoke",
         f"run.out_dir={tmp_path}/run", f"models.base={tiny_model}", "train_backward.max_steps=3", "run.threads=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = [x for x in r.stdout.splitlines() if x.startswith("[selfalign] train-backward: 16 examples")]
    losses = [x.split("loss ")[1].split(",")[0] for x in summaries]  # "a -> b"
    assert len(losses) == 2 and losses[0] == losses[1]  # the ranks agree on the losses
    adapter = tmp_path / "run" / "backward"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".selfalign.lock", "backward", "config.yaml", "hygiene",
                                                                   "manifest.json", "seed"]
    # generation stages refuse to run once per rank
    g = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "selfalign.cli", "augment", "--config", "smoke",
         f"run.out_dir={tmp_path}/run", f"models.base={tiny_model}", "train_backward.max_steps=3", "run.threads=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert g.returncode != 0 and "runs in a single process" in g.stderr
    assert not (tmp_path / "run" / "augment" / "augmented.jsonl").exists()
