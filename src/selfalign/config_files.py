"""Where config text comes from and how it is read: the shipped configs and `./selfalign.yaml`
(`find_config`), YAML with a key given twice refused, dotted `key=value` overrides, and
validation errors as one line that names the key. `config.py` holds the settings themselves."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key."""


_REPLACED = {"data.fallback_to_samples": "use data.samples_if_absent (a folder: when it is absent, the shipped "
                                         "samples are used) or name a sample, e.g. data.seed=sample:seed"}
_short_repr = reprlib.Repr()
_short_repr.maxstring, _short_repr.maxother, _short_repr.maxlevel = 60, 60, 2
_short_repr.maxlist = _short_repr.maxdict = 4


def _format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "constrained-")))
        if e["type"] == "extra_forbidden":
            hint = f" ({_REPLACED[key]})" if key in _REPLACED else ""
            parts.append(f"unknown key {_one_line(key)}{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{_one_line(key)}: {msg} (got {_short_repr.repr(e.get('input'))})")
    return f"config error in {source}: " + "; ".join(parts)


def _one_line(text: str) -> str:
    """'text' quoted, or its repr when it holds line breaks or other unprintable characters."""
    return f"'{text}'" if text.isprintable() else repr(text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML (so 3, 0.5, true, null, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"override {_one_line(text)} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {_one_line(text)} has an empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except ConfigError as e:  # in the subset's words: a value we refuse (010, !!set, ...)
        raise ConfigError(f"override {_one_line(text)}: {e}") from None
    except (yaml.YAMLError, RecursionError, ValueError):  # not YAML: the text itself
        value = raw
    return key.split("."), value


def _set(data: dict[str, Any], path: list[str], value: Any, what: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {_one_line(part)} is not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        _set(data, path, value, f"override {_one_line(text)}")
    return data


from selfalign.yaml_subset import SubsetLoader, YAMLRefused  # noqa: E402


class _UniqueKeyLoader(SubsetLoader):
    """The YAML subset of `yaml_subset.py` (a key given twice refused too), its refusals as ConfigError."""

    def get_single_data(self) -> Any:
        try:
            return super().get_single_data()
        except YAMLRefused as e:
            raise ConfigError(str(e)) from None


def load_yaml(text: str) -> Any:
    """`text` read as the YAML subset; ConfigError (one line) for what it refuses."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass

# --- shipped configs -----------------------------------------------------------------------
# The configs live inside the package (src/selfalign/configs/), so an installed selfalign finds
# them from any directory: `--config smoke` names one, `--config my.yaml` is a file. Without
# --config, a project's own `selfalign.yaml` in the working directory is used when there is one
# (as tools find theirs), else the shipped `default`.
DEFAULT_CONFIG_NAME = "default"
LOCAL_CONFIG_NAME = "selfalign.yaml"


def local_config() -> Path | None:
    """`./selfalign.yaml` (absolute) when the working directory holds that file, else None."""
    p = Path.cwd() / LOCAL_CONFIG_NAME
    return p.resolve() if p.is_file() else None


def _config_root() -> Any:
    from importlib import resources

    return resources.files("selfalign").joinpath("configs")


def packaged_configs() -> list[str]:
    """Names of the shipped configs: 'default', 'smoke', 'llama2-7b', ..., 'accelerate/ddp'."""
    root = _config_root()
    names = [f.name[: -len(".yaml")] for f in root.iterdir() if f.name.endswith(".yaml")]
    sub = root.joinpath("accelerate")
    if sub.is_dir():
        names += [f"accelerate/{f.name[: -len('.yaml')]}" for f in sub.iterdir() if f.name.endswith(".yaml")]
    return sorted(names)


def packaged_config_path(name: str) -> Path:
    """The file of a shipped config by name (with or without `.yaml`, or as `configs/NAME.yaml`)."""
    stem = name.removeprefix("configs/").removesuffix(".yaml")
    if stem not in packaged_configs():
        raise ConfigError(f"no shipped config named {name!r}; shipped: {', '.join(packaged_configs())}")
    return Path(str(_config_root().joinpath(f"{stem}.yaml")))


def find_config(arg: str | None) -> Path:
    """`--config` to a file: an existing file wins, then a shipped config's name; None =
    `./selfalign.yaml` when the working directory holds one (`local_config`), else the shipped default."""
    if arg is None:
        return local_config() or packaged_config_path(DEFAULT_CONFIG_NAME)
    p = Path(arg).expanduser()
    if p.is_file():
        return p.resolve()
    stem = arg.removeprefix("configs/").removesuffix(".yaml")
    if stem in packaged_configs():
        return packaged_config_path(stem)
    hint = f"; shipped configs: {', '.join(n for n in packaged_configs() if '/' not in n)}"
    raise ConfigError(f"config file not found: {arg}{hint}")
