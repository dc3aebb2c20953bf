"""The Ray Data executor (`run.executor: ray`) on a local Ray instance (2 logical CPUs, 2 actors).

The kill/resume test runs the `selfalign augment` command in a child process and SIGKILLs it once a
block is committed, so it comes first: it must not share a Ray instance with this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfalign.config import load_config
from selfalign.records import AugmentedPair

ray = pytest.importorskip("ray", reason="run.executor=ray needs ray[data] (the dev extra installs it)")

from selfalign import ray_exec  # noqa: E402 - needs ray

REPO = Path(__file__).resolve().parent.parent
N_ROWS = 2000  # over 4 shard files
RAY_OPTS = ["run.executor=ray", "ray.concurrency=2", "ray.cpus_per_actor=0.25", "ray.num_cpus=2",
            "ray.object_store_mb=512", "run.threads=1"]
FAST_GEN = ["generation.instruction.max_new_tokens=3", "generation.max_prompt_tokens=48", "generation.batch_size=16"]


def write_shards(folder: Path, n: int = N_ROWS, shards: int = 4) -> set[str]:
    """n unlabelled rows (`source_id`, `response`, `source`) over `shards` JSONL files; their ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = set()
    for s in range(shards):
        with open(folder / f"part-{s}.jsonl", "w", encoding="utf-8") as f:
            for i in range(s, n, shards):
                sid = f"row-{i:05d}"
                ids.add(sid)
                words = " ".join(f"w{(i * 7 + k) % 97}" for k in range(5 + i % 23))
                f.write(json.dumps({"source_id": sid, "response": f"Answer {i}: {words}.", "source": "test"}) + "\n")
    return ids


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def committed_parts(out: Path) -> dict[str, bytes]:
    """Part files whose block was committed (a checkpoint file that is not pending), with their bytes."""
    ck = Path(ray_exec.checkpoint_dir(out, load_config(None, []).ray))
    done = [p.name[: -len(".parquet")] for p in ck.glob("*.parquet") if ".pending" not in p.name]
    parts = ray_exec.parts_dir(out)
    return {p.name: p.read_bytes() for p in parts.glob("*.jsonl") if any(p.name.startswith(d) for d in done)}


@pytest.mark.slow  # about 70 s: a subprocess driver on a fresh Ray instance, killed and re-run
def test_sigkill_after_a_committed_block_then_rerun_resumes(tmp_path: Path, tiny_model: Path) -> None:
    shards = tmp_path / "shards"
    write_shards(shards)
    # the pipeline's loader names a row by file:line
    ids = {f"{f.name}:{k}" for f in shards.glob("*.jsonl") for k in range(1, len(read_jsonl(f)) + 1)}
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-c", "from selfalign.cli import main; main()", "augment",
           "--config", "smoke", f"run.out_dir={run_dir}",
           f"models.base={tiny_model}", f"models.rater={tiny_model}", f"data.unlabelled={shards}",
           f"data.unlabelled_n={N_ROWS}", "ray.block_rows=40", *RAY_OPTS, *FAST_GEN]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = run_dir / "augment" / "augmented.jsonl"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and first.poll() is None and not committed_parts(out):
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before a block was committed: " + (
            tmp_path / "first.log").read_text()[-2000:]
        assert committed_parts(out), "no block committed in time"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    kept = committed_parts(out)  # blocks committed before the kill
    assert not out.exists()  # the merged file is written only at the end
    n_kept = sum(len(b.splitlines()) for b in kept.values())
    assert 0 < n_kept < N_ROWS

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = read_jsonl(out)
    got = [r["source_id"] for r in rows]
    assert sorted(got) == sorted(ids)  # the same id set, each id exactly once
    lines = set(out.read_bytes().splitlines(keepends=True))
    for name, data in kept.items():  # committed rows are unchanged byte for byte
        assert (ray_exec.parts_dir(out) / name).read_bytes() == data
        assert all(line in lines for line in data.splitlines(keepends=True))
    # the re-run generated only the rows not committed before the kill
    written_again = sum(len(p.read_bytes().splitlines()) for p in ray_exec.parts_dir(out).glob("*.jsonl")
                        if p.name not in kept)
    assert written_again == N_ROWS - n_kept


@pytest.fixture(scope="module")
def ray_instance():
    from selfalign.config import RayConfig

    with ray_exec.ray_cluster(RayConfig(concurrency=2, cpus_per_actor=0.25)):
        yield


def bad_rows() -> list[dict]:
    return [
        {"source_id": "bad-null", "response": None, "source": "test"},
        {"source_id": "bad-empty", "response": "   ", "source": "test"},
        {"source_id": "bad-long", "response": "x " * 20000, "source": "test"},  # > the tiny model's 16k context
    ]


@pytest.mark.slow  # over ~10 s
def test_ray_augment_same_ids_as_local_and_bad_rows_are_errors(tmp_path: Path, tiny_model: Path, ray_instance) -> None:
    from selfalign.augment import AugmentStep, augment
    from selfalign.generation import GenParams, load_engine
    from selfalign.prompts import shipped
    from selfalign.records import UnlabelledResponse
    from selfalign.steps import ModelRef

    shards = tmp_path / "shards"
    ids = write_shards(shards)
    with open(shards / "part-9-bad.jsonl", "w", encoding="utf-8") as f:
        for r in bad_rows():
            f.write(json.dumps(r) + "\n")
    # bad-long: its response is longer than the context: cut to fit it (#12), counted, not an error
    cfg = load_config(None, [f"models.base={tiny_model}", *RAY_OPTS, *FAST_GEN, "generation.max_prompt_tokens=100000"])
    step = AugmentStep.from_config(cfg, shipped(), "b")
    ray_exec.run_job(cfg, step, shards, tmp_path / "ray" / "augmented.jsonl", ModelRef(str(tiny_model), None, "b", "augment"))
    rows = read_jsonl(tmp_path / "ray" / "augmented.jsonl")
    by_id = {r["source_id"]: r for r in rows}
    assert len(rows) == len(by_id) == N_ROWS + 3
    assert set(by_id) == ids | {r["source_id"] for r in bad_rows()}
    for sid, reason in (("bad-null", "bad_row: wrong_type"), ("bad-empty", "bad_row: empty")):
        assert by_id[sid]["status"] == "error" and by_id[sid]["error"].startswith(reason), by_id[sid]
    assert by_id["bad-long"]["status"] != "error" and by_id["bad-long"]["response_cut"]
    assert sum(r["status"] == "error" for r in rows) == 2
    AugmentedPair(**rows[0])  # the local schema: select, curate and report read it unchanged

    engine = load_engine(cfg, str(tiny_model))
    responses = [UnlabelledResponse(r["response"], r["source_id"], r["source"])
                 for f in sorted(shards.glob("part-?.jsonl")) for r in read_jsonl(f)]
    local = augment(engine, responses, GenParams.from_config(cfg.generation.instruction), tmp_path / "local.jsonl",
                    cfg.generation.max_prompt_tokens)
    assert {p.source_id for p in local} == ids
    assert {k for k, r in by_id.items() if r["status"] != "error"} == ids | {"bad-long"}
    assert all(by_id[p.source_id]["response_cut"] == p.response_cut for p in local)


# logprob mode is the same job with another step: marked slow to keep the default run short
@pytest.mark.slow  # a Ray instance and a job: 22 s (the fast tier; CI runs it)
@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_greedy_curation_on_ray_scores_as_local(tmp_path: Path, tiny_model: Path, ray_instance, mode: str) -> None:
    from selfalign.curate import rate_pairs, step_for
    from selfalign.generation import load_engine
    from selfalign.prompts import shipped
    from selfalign.steps import ModelRef

    pairs = [AugmentedPair(f"Question {i}: what is w{i % 13}?", f"It is {'w' * (1 + i % 9)} {i}.", f"p{i:03d}", "t", "")
             for i in range(48)]
    pairs += [AugmentedPair("not rated", "r", "p-echo", "t", "", "echo"),  # not ok: never rated, as locally
              AugmentedPair("long " * 17000, "r", "p-long", "t", "")]  # over the context: an error row
    src = tmp_path / "augmented.jsonl"
    src.write_text("".join(json.dumps(p.__dict__) + "\n" for p in pairs))
    cfg = load_config(None, [f"models.base={tiny_model}", *RAY_OPTS, f"curation.mode={mode}", "curation.shots=1",
                             "curation.retries=0", "curation.n_samples=1", "curation.max_new_tokens=6",
                             "generation.batch_size=8", "ray.block_rows=12"])
    ray_exec.run_job(cfg, step_for(cfg, shipped()), src, tmp_path / "rated.jsonl",
                     ModelRef(str(tiny_model), None, "rater", "curate"))
    ray_rows = {r["source_id"]: r for r in read_jsonl(tmp_path / "rated.jsonl")}
    local = rate_pairs(load_engine(cfg, str(tiny_model)), [p for p in pairs if p.status == "ok"], cfg.curation,
                       tmp_path / "local.jsonl", 0, cfg.curation.max_response_tokens)
    assert set(ray_rows) == {r.source_id for r in local} == {f"p{i:03d}" for i in range(48)} | {"p-long"}
    assert ray_rows["p-long"]["status"] == "error" and ray_rows["p-long"]["error"].startswith("prompt_too_long")
    for r in local:
        got = ray_rows[r.source_id]
        if r.score is None:
            assert got["score"] is None
        else:
            assert got["score"] == pytest.approx(r.score, abs=1e-4)
        if mode == "generate":
            assert got["raw_outputs"] == r.raw_outputs  # greedy: the same text
    if mode == "logprob":
        assert sum(r.score is not None for r in local) == 48  # the comparison compared numbers


def test_a_job_ray_would_not_checkpoint_is_refused(tmp_path: Path, ray_instance) -> None:
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    before = ctx.checkpoint_config
    ctx.checkpoint_config = CheckpointConfig(id_column="source_id", checkpoint_path=str(tmp_path / "ck"))
    try:
        ds = ray.data.from_items([{"source_id": "a", "record": "{}"}])  # not a Read: Ray would only warn
        with pytest.raises(ray_exec.RayJobError, match="without checkpointing"):
            ray_exec.write_checkpointed(ds, tmp_path / "parts")
    finally:
        ctx.checkpoint_config = before


def test_local_instance_leaves_a_cpu_for_reads_and_writes() -> None:
    from selfalign.config import ConfigError, RayConfig

    with pytest.raises(ConfigError, match="leaves too little"):  # the resumed job would hang
        ray_exec.check_local_cpus(RayConfig(concurrency=2, cpus_per_actor=0.5))
    ray_exec.check_local_cpus(RayConfig(concurrency=2, cpus_per_actor=0.25))


def test_an_engine_error_fails_only_its_row(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps as the actors run them (`isolate`): a batch that fails is retried row by row, and
    only the row the engine fails on becomes an error record (the others are generated as usual)."""
    from selfalign import curate
    from selfalign.augment import AugmentStep
    from selfalign.generation import GenParams, load_engine
    from selfalign.prompts import shipped
    from selfalign.records import UnlabelledResponse

    cfg = load_config(None, [f"models.base={tiny_model}", "curation.mode=generate", "curation.shots=0", "curation.max_new_tokens=4",
                             "curation.retries=0"])
    engine = load_engine(cfg, str(tiny_model))
    real = type(engine).generate

    def flaky(self, prompts, params, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if any("BOOM" in p for p in prompts):
            raise RuntimeError("CUDA error: device-side assert")
        return real(self, prompts, params, *a, **kw)

    monkeypatch.setattr(type(engine), "generate", flaky)
    rows = [UnlabelledResponse(f"Answer {i}. {'BOOM' if i == 1 else 'fine'}", f"r{i}") for i in range(3)]
    out = AugmentStep(shipped(), GenParams(max_new_tokens=3)).run(engine, rows, isolate=True)
    assert [p.source_id for p in out] == ["r0", "r1", "r2"]
    assert [p.status == "error" for p in out] == [False, True, False]
    assert out[1].error == "engine_error: RuntimeError: CUDA error: device-side assert"
    pairs = [AugmentedPair(f"Question {i}?", r.response, r.source_id, "", "") for i, r in enumerate(rows)]
    rated = curate.RateStep(shipped(), cfg.curation).run(engine, pairs, isolate=True)
    assert [r.status for r in rated] == ["ok", "error", "ok"] and rated[1].error.startswith("engine_error")
    assert rated[0].raw_outputs and rated[1].score is None


def test_manifest_refuses_a_run_dir_with_another_config(smoke_cfg) -> None:
    from selfalign.pipeline import Run, RunDirError

    cfg = smoke_cfg.model_copy(deep=True)
    cfg.run.executor = "ray"
    Run(cfg)
    other = cfg.model_copy(deep=True)
    other.ray.concurrency = 4  # changes the batches, so what is sampled
    with pytest.raises(RunDirError, match="ray.concurrency"):
        Run(other)
    local = cfg.model_copy(deep=True)
    local.run.executor = "local"
    with pytest.raises(RunDirError, match="run.executor"):
        Run(local)
    moved = cfg.model_copy(deep=True)
    moved.ray.address = "10.0.0.1:6379"  # where the cluster is: the same run
    Run(moved)


@pytest.mark.slow
def test_smoke_run_on_ray_writes_the_local_records_with_a_templates_override(smoke_cfg, tmp_path: Path) -> None:
    """`selfalign run` with run.executor=ray and a run.templates_dir override: the same records as
    the local executor, row by row (per-row seeds; the Step carries the templates to the actors),
    and the override is what both rendered (a run with the shipped templates writes others)."""
    import shutil
    from importlib import resources

    from selfalign.pipeline import run_pipeline

    folder = tmp_path / "templates"
    shutil.copytree(Path(str(resources.files("selfalign").joinpath("templates"))), folder)
    t = json.loads((folder / "templates.json").read_text())
    t["backward"]["system"] = "Write the question that this text answers, as a user would ask it."
    (folder / "templates.json").write_text(json.dumps(t))

    def run(name: str, *changes: tuple[str, object]) -> Path:
        cfg = smoke_cfg.model_copy(deep=True)
        cfg.run.out_dir = str(tmp_path / name)
        for key, value in changes:
            section, field = key.split(".")
            setattr(getattr(cfg, section), field, value)
        return run_pipeline(cfg).dir

    local = run("local", ("run.templates_dir", str(folder)))
    on_ray = run("ray", ("run.templates_dir", str(folder)), ("run.executor", "ray"))
    for f in ("augment/augmented.jsonl", "curate_1/rated.jsonl", "curated_1/data.jsonl", "responses.jsonl"):
        assert read_jsonl(on_ray / f) == read_jsonl(local / f), f
    assert {r["status"] for r in read_jsonl(local / "augment" / "augmented.jsonl")} == {"ok"}  # all were rated
    assert len(read_jsonl(local / "curate_1" / "rated.jsonl")) == smoke_cfg.data.unlabelled_n
    assert (on_ray / "report.md").exists() and (on_ray / "forward" / "adapter_model.safetensors").exists()
    shipped_run = smoke_cfg.model_copy(deep=True)
    shipped_run.run.out_dir = str(tmp_path / "shipped")
    run_pipeline(shipped_run, until="augment")
    ours = [r["raw_generation"] for r in read_jsonl(local / "augment" / "augmented.jsonl")]
    theirs = [r["raw_generation"] for r in read_jsonl(tmp_path / "shipped" / "augment" / "augmented.jsonl")]
    assert ours != theirs  # the override reached the prompts
