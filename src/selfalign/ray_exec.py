"""The Ray Data executor (`run.executor: ray`): augmentation, curation and responses on Ray.

One job per stage, of the shape Ray can checkpoint:

    read_json / read_parquet (the stage's input: one file or a folder of shards, streamed)
    -> [checkpoint filter: rows whose source_id is committed are dropped; Ray inserts it]
    -> repartition(target_num_rows_per_block=ray.block_rows)  (streaming: blocks of N rows)
    -> map_batches(EngineActor, compute=ActorPoolStrategy(size=ray.concurrency))  (an engine each)
    -> write_datasink(RecordSink)  (one JSONL file per block in <output>.parts/, then commit)

Each actor holds selfalign's engine (`generation.load_engine`: the HF engine) and runs the stage's
Step (`steps.py`) on its batches, as the local executor does, so the records are the same; they
are serialised by the actor (`io.json_line`, as the record log does) and written verbatim. After
the job, the parts are concatenated into the stage's usual file (augment/augmented.jsonl,
curate_N/rated.jsonl, responses.jsonl), in the order of the stage's items.

Resume: `CheckpointConfig(id_column="source_id")` records each written block's ids (two-phase:
pending, data file, commit); a re-run drops committed rows at read time and deletes data files
of uncommitted blocks. Ray turns checkpointing off with only a warning when a job does not end in
a Write, and says nothing when a path starts with something else than a Read (`from_items`: ids are
recorded but never filtered); `write_checkpointed` refuses both.

Seeds: every sampled row is seeded by `steps.row_seed(run.seed, source_id)`, so a row's text does
not depend on which batch or worker it landed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.data.block import BlockAccessor
from ray.data.datasource import BlockBasedFileDatasink

from selfalign.config import Config, ConfigError, RayConfig
from selfalign.io import DataError, json_line, write_jsonl, writing
from selfalign.ray_llm import ray_batch_size
from selfalign.readers import data_files
from selfalign.steps import ID, ModelRef, Step, as_dict, in_order

CHECKPOINT_OFF = "doesn't support checkpointing"  # Ray's warning when it turns checkpointing off
IO_CPUS = 0.25  # logical CPUs of a read or write task (JSON lines: light work)
FILTER_CPUS = 1.0  # Ray's checkpoint filter actor on a resumed job (Ray's default for map actors, fixed)


class RayJobError(DataError):
    """A Ray job that cannot run as asked (checkpointing would be off, an id written twice, ...)."""


def step_rows(step: Step, engine: Any, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(source_id, JSON line) of each row's record: the step run on the rows it can use, an error
    record for each row it cannot (`Step.from_row`); rows that are not for the step get none."""
    parsed = [step.from_row(r) for r in rows]
    good = [i for i, (item, why) in enumerate(parsed) if item is not None and not why]
    recs: dict[int, Any] = dict(zip(good, step.run(engine, [parsed[i][0] for i in good], progress=False,
                                                   isolate=True), strict=True))
    for i, (item, why) in enumerate(parsed):
        if item is not None and why:
            recs[i] = step.error_record(item, why)
    return [(str(rows[i][ID]), json_line(as_dict(recs[i]))) for i in sorted(recs)]


class EngineActor:
    """A Ray actor holding one engine; called with a batch (a pyarrow Table of input rows), it
    returns the batch's records as (source_id, JSON line) columns."""

    def __init__(self, cfg: dict[str, Any], step: Step, model: ModelRef) -> None:
        import torch

        self.cfg = Config.model_validate(cfg)
        threads = self.cfg.run.threads or max(1, int(self.cfg.ray.cpus_per_actor))
        torch.set_num_threads(threads)
        from selfalign.generation import load_engine

        self.step = step
        self.engine = load_engine(self.cfg, model.spec, adapter=model.adapter, name=model.name, stage=model.stage)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = step_rows(self.step, self.engine, batch.to_pylist())
        return pa.table({ID: pa.array([i for i, _ in out], pa.string()),
                         "record": pa.array([line for _, line in out], pa.string())})


class RecordSink(BlockBasedFileDatasink):
    """Writes each block's `record` column, one JSON line per row, to one .jsonl file."""

    def __init__(self, path: str) -> None:
        super().__init__(path, file_format="jsonl")

    def write_block_to_file(self, block: BlockAccessor, file: Any) -> None:
        lines = block.to_arrow().column("record").to_pylist()
        file.write("".join(line + "\n" for line in lines).encode("utf-8"))


# --- the cluster and the job -------------------------------------------------------------------

def check_local_cpus(rc: RayConfig) -> None:
    """Refuse actors that would hold the CPUs that reads, writes and (on a resumed job) Ray's
    checkpoint filter actor need: they would wait forever (Ray Data does not say so; the job hangs).
    CPUs here are Ray's logical ones: an actor's torch threads are `run.threads` (or max(1, its CPUs))."""
    actors = rc.concurrency * rc.cpus_per_actor
    room = rc.num_cpus - FILTER_CPUS - IO_CPUS
    if actors > room:
        raise ConfigError(
            f"ray.concurrency x ray.cpus_per_actor = {actors:g} leaves too little of the local Ray instance "
            f"(ray.num_cpus={rc.num_cpus}) for Ray's checkpoint filter ({FILTER_CPUS:g} CPU) and reads and "
            f"writes ({IO_CPUS:g}): lower ray.cpus_per_actor (e.g. {room / rc.concurrency:g}) or raise ray.num_cpus")


@contextmanager
def ray_cluster(rc: RayConfig) -> Iterator[None]:
    """Join `ray.address` (or $RAY_ADDRESS), or start a small local instance for the run (no
    dashboard, `ray.num_cpus` logical CPUs, a `ray.object_store_mb` object store); shut it down
    at the end. An instance this process already holds is used as it is, and left running."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = rc.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        check_local_cpus(rc)
        ray.init(num_cpus=rc.num_cpus, object_store_memory=rc.object_store_mb << 20, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def read_rows(paths: list[Path]) -> Any:
    """A dataset over JSONL/JSON or Parquet files (one kind per stage input), read in parallel."""
    import ray

    kinds = {p.suffix.lower() for p in paths}
    if kinds == {".parquet"}:
        return ray.data.read_parquet([str(p) for p in paths], num_cpus=IO_CPUS)
    if kinds <= {".jsonl", ".json"}:
        return ray.data.read_json([str(p) for p in paths], num_cpus=IO_CPUS)
    raise DataError(f"run.executor=ray reads .jsonl/.json or .parquet shards, not a mix of {sorted(kinds)}")


def checkpoint_dir(out_path: Path, rc: RayConfig) -> str:
    """Where the job's committed ids are recorded: beside the output, or under ray.checkpoint_path
    (one folder per output file)."""
    if rc.checkpoint_path is None:
        return str(out_path.with_name(out_path.name + ".ray_checkpoint"))
    tag = hashlib.sha256(str(out_path.resolve()).encode()).hexdigest()[:12]
    return f"{rc.checkpoint_path.rstrip('/')}/{out_path.stem}-{tag}"


def parts_dir(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".parts")


def clear(out_path: Path, rc: RayConfig) -> None:
    """Remove the parts and checkpoint of a stage's output (its inputs changed: they are stale)."""
    shutil.rmtree(parts_dir(out_path), ignore_errors=True)
    ck = checkpoint_dir(out_path, rc)
    if "://" not in ck:
        shutil.rmtree(ck, ignore_errors=True)


def _absolute(spec: str) -> str:
    """A local model folder as an absolute path (actors may run elsewhere than the driver's cwd)."""
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def run_job(cfg: Config, step: Step, items: list[Any] | Path, out_path: Path, model: ModelRef) -> list[Any]:
    """Run `step` over `items` on Ray and write `out_path` (JSONL); resumable (see module doc).

    `items`: the stage's items (they go to Ray as `<out_path>.input.jsonl`, and the records come
    back in their order), or a file or folder of .jsonl/.json/.parquet shards of input rows (read
    by Ray in parallel; every row has a unique `source_id`; records in the order of the parts)."""
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    rc = cfg.ray
    out_path = Path(out_path).resolve()
    if isinstance(items, (str, Path)):
        files = data_files(Path(items).resolve())
    else:
        files = [out_path.with_name(out_path.name + ".input.jsonl")]
        write_jsonl(files[0], [as_dict(it) for it in items])
    parts = parts_dir(out_path)
    with writing(parts):
        parts.mkdir(parents=True, exist_ok=True)
    model = ModelRef(_absolute(model.spec), Path(model.adapter).resolve() if model.adapter else None, model.name,
                     model.stage)
    if cfg.generation.backend == "vllm":
        from selfalign import ray_llm

        run = ray_llm.vllm_job
    else:
        run = _hf_job
    with ray_cluster(rc):
        ctx = DataContext.get_current()
        before = ctx.checkpoint_config
        ctx.checkpoint_config = CheckpointConfig(
            id_column=ID, checkpoint_path=checkpoint_dir(out_path, rc), delete_checkpoint_on_success=False)
        try:
            ds = read_rows(files).repartition(target_num_rows_per_block=rc.block_rows)
            write_checkpointed(run(cfg, step, ds, model), parts)
        finally:
            ctx.checkpoint_config = before
    if isinstance(items, (str, Path)):
        merge_parts(parts, out_path)
    else:
        order = {step.item_id(it): k for k, it in enumerate(items)}
        merge_parts(parts, out_path, lambda rec: order.get(str(rec.get(ID)), len(order)))
    records = [json.loads(x) for x in out_path.read_text(encoding="utf-8").splitlines()]
    if isinstance(items, (str, Path)):
        return [step.load(r) for r in records]
    return in_order(step, items, records)


def write_checkpointed(ds: Any, parts: Path) -> None:
    """Write the records of `ds` into `parts` with the current checkpoint config; refuse a job Ray
    would run without checkpointing (Ray only warns, or says nothing: see below)."""
    from ray.data._internal.logical.operators import Read, ReadFiles  # what Ray's planner checks

    def sources(op: Any) -> Iterator[Any]:  # where each path of the plan starts
        if isinstance(op, (Read, ReadFiles)) or not op.input_dependencies:
            yield op
        for dep in () if isinstance(op, (Read, ReadFiles)) else op.input_dependencies:
            yield from sources(dep)

    # Ray checks that the plan ends in a Write and warns otherwise, but a path that starts with
    # something else than a Read (from_items, from_pandas) passes its check, and nothing filters it
    not_read = sorted({type(op).__name__ for op in sources(ds._logical_plan.dag) if not isinstance(op, (Read, ReadFiles))})
    if not_read:
        raise RayJobError(f"Ray would run this job without checkpointing (it starts with {', '.join(not_read)}, "
                          "not a read), so a re-run could not resume")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=f".*{CHECKPOINT_OFF}.*")
        try:
            ds.write_datasink(RecordSink(str(parts)), ray_remote_args={"num_cpus": IO_CPUS})
        except UserWarning as e:
            raise RayJobError(f"Ray would run this job without checkpointing, so a re-run could not resume ({e})") from None


def _hf_job(cfg: Config, step: Step, ds: Any, model: ModelRef) -> Any:
    from ray.data import ActorPoolStrategy

    rc = cfg.ray
    return ds.map_batches(  # `concurrency=` is deprecated since Ray 2.51: compute=ActorPoolStrategy
        EngineActor, fn_constructor_args=(cfg.to_dict(), step, model),
        batch_size=ray_batch_size(cfg), batch_format="pyarrow", compute=ActorPoolStrategy(size=rc.concurrency),
        num_cpus=rc.cpus_per_actor, num_gpus=rc.gpus_per_actor or None,
    )


def merge_parts(parts: Path, out_path: Path, sort_key: Callable[[dict[str, Any]], Any] | None = None) -> int:
    """Concatenate the part files into `out_path` (atomically, ordered by `sort_key` of each record,
    else in the order of the part files); refuse an id written twice. Returns the number of records."""
    seen: set[str] = set()
    lines: list[tuple[Any, str]] = []
    for part in sorted(parts.glob("*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            key = str(rec[ID])
            if key in seen:
                raise RayJobError(f"{part}: source_id {key!r} was written twice")
            seen.add(key)
            lines.append((sort_key(rec) if sort_key else len(lines), line))
    tmp = out_path.with_name(f".{out_path.name}.merge.tmp")
    with writing(out_path), open(tmp, "w", encoding="utf-8") as f:
        for _, line in sorted(lines, key=lambda x: x[0]):
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_path)
    return len(lines)
