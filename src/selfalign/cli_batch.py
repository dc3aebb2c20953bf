"""`selfalign batch write|read`: batch files of a stage's requests to a served model
(`batch_files.py`); cli.py adds them to its command group (`add_batch_commands`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


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
        from selfalign.batch_files import write_command

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
        from selfalign.batch_files import read_command

        read_command(load(config, overrides), stage, Path(path), iteration)
