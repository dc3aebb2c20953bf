"""`selfalign batch write|read`: batch files of a stage's requests to a served model
(`batch_files.py`); cli.py adds them to its command group (`add_batch_commands`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from selfalign.log import say


def add_batch_commands(main: click.Group, config_opt: Callable, overrides: Callable, guard: Callable,
                       load: Callable[..., Any]) -> None:
    """Add the `batch` group to `main`, with cli.py's option decorators and config loader."""
    stage_arg = click.argument("stage", type=click.Choice(["augment", "curate", "responses"]))
    iteration = click.option("--iteration", default=1, type=int, help="curation iteration (curate)")

    @main.group("batch")
    def batch_group() -> None:
        """Batch files of a stage's requests to a served model (OpenAI Batch API, vllm run-batch)."""

    @batch_group.command("write")
    @stage_arg
    @click.argument("path", type=click.Path(dir_okay=False))
    @config_opt
    @iteration
    @overrides
    @guard
    def batch_write_cmd(stage: str, path: str, config: str | None, iteration: int, overrides: tuple[str, ...]) -> None:
        """Write the requests of STAGE (the stages before it run first) to PATH in the OpenAI batch format."""
        write_command(load(config, overrides), stage, Path(path), iteration)

    @batch_group.command("read")
    @stage_arg
    @click.argument("path", type=click.Path(dir_okay=False))
    @config_opt
    @iteration
    @overrides
    @guard
    def batch_read_cmd(stage: str, path: str, config: str | None, iteration: int, overrides: tuple[str, ...]) -> None:
        """Read the batch output file PATH into STAGE's answer log: `selfalign STAGE` then sends only the rest."""
        read_command(load(config, overrides), stage, Path(path), iteration)


def write_command(cfg: Any, stage: str, path: Path, iteration: int = 1) -> int:
    """`selfalign batch write`: run the pipeline up to `stage`, whose requests go to `path`."""
    from selfalign.batch_files import COLLECT, BatchWritten, stage_file
    from selfalign.config import ConfigError
    from selfalign.config_served import role_of
    from selfalign.pipeline import run_pipeline

    if role_of(stage) not in cfg.served.roles:
        raise ConfigError(f"batch write {stage}: its role {role_of(stage)} is not in served.roles {cfg.served.roles}")
    stage_file(cfg.run.out_dir, stage, iteration)  # a known stage
    COLLECT.update(stage=stage, path=str(path))
    try:
        run_pipeline(cfg, until=stage)
    except BatchWritten as done:
        say(f"batch write {stage}: {done}; run them (OpenAI Batch API, or `vllm run-batch -i {path} -o out.jsonl "
            f"--model ...`), then `selfalign batch read {stage} out.jsonl`")
        return done.n
    finally:
        COLLECT.clear()
    say(f"batch write {stage}: every request of the stage is answered already; nothing to write")
    return 0


def read_command(cfg: Any, stage: str, output: Path, iteration: int = 1) -> dict[str, int]:
    """`selfalign batch read`: the batch output's answers into the stage's answer log."""
    from selfalign.batch_files import read_batch, stage_file
    from selfalign.http_engine import answer_log_path

    answers = answer_log_path(stage_file(cfg.run.out_dir, stage, iteration))
    counts = read_batch(output, answers)
    say(f"batch read {stage}: {counts['added']} answers added to {answers}, {counts['present']} there already, "
        f"{counts['failed']} failed (sent when the stage runs); now run `selfalign {stage}`")
    return counts
