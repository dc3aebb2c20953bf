"""Executors: where a Step runs (`run.executor`). Each runs any Step without knowing which it is.

- `local` (`run_local`): one engine in this process; records are appended to the stage's record
  log as they finish (fsynced), and a re-run does only the items the log does not hold.
- `ray` (`ray_exec.run_job`): Ray Data actors each holding an engine, or vLLM processors on a GPU
  cluster (`ray_llm.py`); resumable through Ray's checkpoints.

Both return the records in the order of the items, after the step's `finish` (ranking among the
whole set, for the ranked curation modes), and leave them in the stage's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfalign.config import Config, ConfigError
from selfalign.io import DataError, write_jsonl
from selfalign.record_log import RecordLog
from selfalign.steps import ID, ModelRef, Record, Step, as_dict, in_order


def run_local(step: Step, engine: Any, items: list[Any], out_path: Path, progress: bool = True,
              isolate: bool = False) -> list[Record]:
    """Run `step` over `items` on `engine`, appending each record to `out_path` as it is done;
    items whose record the file already holds (an interrupted run) are not run again, but for
    those an engine failed (`engine_error`, e.g. a served model that was down). At the end the
    file holds the records in the order of the items (records come in the engine's order).
    `isolate`: an engine failure is recorded on the rows it fails (see `Step.run`)."""
    log = RecordLog(out_path)
    done = {str(r[ID]) for r in log.records if ID in r and not str(r.get("error", "")).startswith("engine_error")}
    step.resume(log.records)
    todo = [it for it in items if step.item_id(it) not in done]
    try:
        for chunk in step.chunks(todo):
            step.run(engine, chunk, on_record=lambda rec: log.append(as_dict(rec)), progress=progress, isolate=isolate)
    finally:
        log.close()
    records = in_order(step, items, log.records)
    final = step.finish(records)
    out = final if final is not None else records
    rows = [as_dict(r) for r in out]
    if final is not None or [r[ID] for r in rows] != [r[ID] for r in log.records]:
        write_jsonl(Path(out_path), rows)  # in the order of the items, as the Ray executor writes them
    return out


def finish(step: Step, records: list[Record], out_path: Path) -> list[Record]:
    """The step's final records; the stage's file is rewritten when `finish` changes them."""
    final = step.finish(records)
    if final is None:
        return records
    write_jsonl(out_path, [as_dict(r) for r in final])
    return final


def run_stage(cfg: Config, step: Step, items: list[Any], out_path: Path, model: ModelRef) -> list[Record]:
    """Run a stage's step with the configured executor: records in the order of `items`."""
    check_unique_items(step, items, out_path)
    if cfg.run.executor == "ray":
        from selfalign.config_served import role_of

        if role_of(model.stage) in cfg.served.roles:
            raise ConfigError("served.roles run with run.executor=local (the server does the batching)")
        return finish(step, ray_executor().run_job(cfg, step, items, out_path, model), out_path)
    from selfalign.generation import load_engine

    engine = load_engine(cfg, model.spec, adapter=model.adapter, name=model.name, stage=model.stage)
    if hasattr(engine, "use_answer_log"):  # a served model (http_engine.py)
        return run_served(step, engine, items, out_path, model.stage)
    return run_local(step, engine, items, out_path)


def run_served(step: Step, engine: Any, items: list[Any], out_path: Path, stage: str) -> list[Record]:
    """`run_local` on a served engine (`http_engine.HttpEngine`): its answers are logged as they
    arrive (`<stage file>.answers.jsonl`), a request that keeps failing is recorded as its row's
    error; the stage's ledger goes to the manifest (`ledger.take`). While `selfalign batch write`
    runs, the stage's requests go to a batch file instead (`batch_files.collect`)."""
    from selfalign import batch_files
    from selfalign.http_engine import answer_log_path
    from selfalign.ledger import register
    from selfalign.log import say

    engine.use_answer_log(answer_log_path(out_path))
    if batch_files.COLLECT.get("stage") == stage:
        batch_files.collect(step, engine, items, out_path, Path(batch_files.COLLECT["path"]))
    try:
        return run_local(step, engine, items, out_path, isolate=True)
    finally:
        engine.close()
        register(stage, engine.ledger)
        say(f"{stage}: served {engine.model!r}: {engine.ledger.line()}")


def check_unique_items(step: Step, items: list[Any], out_path: Path) -> None:
    """Records are keyed on their item's id (resume skips the ids the log holds): two items with one
    id would lose one record and mix the other. A DataError before any model loads."""
    seen: set[str] = set()
    for it in items:
        key = step.item_id(it)
        if key in seen:
            raise DataError(f"{out_path}: two items have the id {key!r}, and records are keyed on ids (the input was "
                            "sampled by a selfalign that gave two files of one name the same ids): delete "
                            f"{out_path.parent} and re-run to sample again")
        seen.add(key)


def ray_executor():  # noqa: ANN201 - the module, imported only for run.executor=ray
    try:
        from selfalign import ray_exec
    except ImportError as e:
        raise ConfigError(f"run.executor=ray needs Ray Data: pip install 'selfalign[ray]' ({e})") from None
    return ray_exec
