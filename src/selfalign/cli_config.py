"""`selfalign config list|show|path|write`: the shipped configs; cli.py adds the group to its
command group (`add_config_commands`), as it does `selfalign batch`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from selfalign.config import find_config, load_config, packaged_config_path, packaged_configs


def add_config_commands(main: click.Group, guard: Callable, fail: Callable[[str], None]) -> None:
    """Add the `config` group to `main`, with cli.py's error guard and one-line failure."""

    @main.group("config")
    def config_group() -> None:
        """The shipped configs: list them, print one, or write a copy to edit."""

    @config_group.command("list")
    def config_list() -> None:
        """Names of the shipped configs (use them with --config NAME)."""
        for name in packaged_configs():
            click.echo(f"{name}\t{packaged_config_path(name)}")

    @config_group.command("show")
    @click.argument("name", default="default")
    @guard
    def config_show(name: str) -> None:
        """Print a shipped config (or a config file), comments included."""
        click.echo(find_config(name).read_text(encoding="utf-8"), nl=False)

    @config_group.command("path")
    @click.argument("name", default="default")
    @guard
    def config_path(name: str) -> None:
        """Print the file of a shipped config, e.g. for `accelerate launch --config_file`."""
        click.echo(str(find_config(name)))

    @config_group.command("write")
    @click.argument("path")
    @click.option("--from", "name", default="default", show_default=True, help="shipped config to copy")
    @click.option("--force", is_flag=True, help="overwrite an existing file")
    @guard
    def config_write(path: str, name: str, force: bool) -> None:
        """Write a copy of a shipped config to PATH, to edit and pass back with --config PATH."""
        dst = Path(path)
        if dst.exists() and not force:
            fail(f"{dst} exists: use --force to overwrite it")
        text = find_config(name).read_text(encoding="utf-8")
        if not name.startswith("accelerate/"):  # accelerate's own files are not selfalign configs
            load_config(find_config(name))  # one that does not load is a bug: fail before writing
        from selfalign.io import atomic_write_text

        atomic_write_text(dst, text)
        click.echo(f"wrote {dst} (from the shipped config '{find_config(name).stem}'); run it with "
                   f"`selfalign run --config {dst}`")
