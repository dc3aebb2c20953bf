"""Where a run's data comes from: each `data.*` source resolved to a local file, a Hub dataset id
or a shipped sample, strictly.

- A relative path is looked up in the working directory, then in the folder of the config file it
  came from (`Config.config_dir`); an absolute or `~` path is taken as it is.
- `sample:seed`, `sample:unlabelled`, `sample:prompts` name the small OASST1 files shipped in
  `selfalign/sample_data`. They are used only when the config names them, or when
  `data.samples_if_absent` names a folder that does not exist at all and a path of the config
  file lies under it (a project's config can name its folder of real data there, for a machine
  without it). Either way the run says so in its first lines, its manifest and its report.
- `owner/name` with no file suffix that is not a local path is a Hub dataset id.
- Anything else that does not exist is a `DataError`, never a fallback: a typo such as
  `train.jsonI` in a folder that exists, an empty value, and any path typed as a command-line
  override (`data.seed=...`), whether or not `data.samples_if_absent` would cover it.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfalign.io import DataError
from selfalign.log import say
from selfalign.manifest import fingerprint

if TYPE_CHECKING:
    from selfalign.config import Config

SAMPLES = Path(__file__).parent / "sample_data"
SAMPLE_FILES = {"seed": "seed.jsonl", "unlabelled": "unlabelled.jsonl", "prompts": "prompts.jsonl"}
# config key -> the shipped sample that stands in for it
KEY_SAMPLE = {"data.seed": "seed", "data.unlabelled": "unlabelled", "data.eval_prompts": "prompts"}
SAMPLE_PREFIX = "sample:"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# a last path part that names a data file (any case): never a Hub id, even when it is missing
_FILE_SUFFIX = re.compile(r"\.(jsonl?\w*|parquet\w*|txt|gz|zst|zstd|csv|tsv|arrow|xz|bz2)$", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    key: str  # the config key, e.g. "data.seed"
    given: str  # the value in the config
    resolved: str  # an absolute local path, or a Hub dataset id
    kind: str  # "local" | "sample" | "hub"
    note: str = ""  # why, when it is not what was given

    def describe(self) -> str:
        kind = {"local": "", "sample": " (shipped sample)", "hub": " (Hub dataset)"}[self.kind]
        note = f"; {self.note}" if self.note else ""
        return f"{self.key}: {shown(self.given)} -> {shown(self.resolved)}{kind}{note}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shown(value: str) -> str:
    """A value as typed, or its repr when it holds line breaks or unprintable characters."""
    return value if value.isprintable() else repr(value)


def _exists(p: Path) -> bool:
    """Path.exists that answers False for a name the OS refuses (too long, a NUL byte)."""
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def _candidates(value: str, config_dir: Path | None) -> list[Path]:
    p = Path(value).expanduser()
    if p.is_absolute():
        return [p]
    out = [Path.cwd() / p]
    if config_dir is not None and Path(config_dir).resolve() != Path.cwd().resolve():
        out.append(Path(config_dir) / p)
    return out


def _looked_in(config_dir: Path | None, value: str) -> str:
    if Path(value).expanduser().is_absolute():
        return ""
    places = [str(Path.cwd())]
    if config_dir is not None and Path(config_dir).resolve() != Path.cwd().resolve():
        places.append(f"{config_dir} (the config file's folder)")
    return f" (looked in {' and '.join(places)})"


def local_file(value: str, cfg: Config) -> Path | None:
    """The existing local file a path names (the working directory, then the config file's
    folder, as for data paths), resolved; None when there is none."""
    for cand in _candidates(value, cfg.config_dir):
        try:
            if cand.is_file():
                return cand.resolve()
        except (OSError, ValueError):  # a name the OS refuses
            continue
    return None


def _under(value: str, root: str) -> bool:
    v, r = os.path.normpath(os.path.expanduser(value)), os.path.normpath(os.path.expanduser(root))
    return v == r or v.startswith(r.rstrip(os.sep) + os.sep)


def is_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not _FILE_SUFFIX.search(value) and ".." not in value


def sample_source(key: str, name: str, given: str, note: str = "") -> Source:
    if name not in SAMPLE_FILES:
        names = ", ".join(SAMPLE_PREFIX + n for n in SAMPLE_FILES)
        raise DataError(f"{key}: unknown shipped sample {shown(given)!r} (one of {names})")
    return Source(key, given, str(SAMPLES / SAMPLE_FILES[name]), "sample", note)


def resolve_source(value: str, key: str, cfg: Config) -> Source:
    """Resolve one data source; raises DataError (one line) when it names nothing usable."""
    config_dir = cfg.config_dir
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{key}: empty path (name a file, a folder, a Hub dataset id or sample:NAME)")
    if value.startswith(SAMPLE_PREFIX):
        return sample_source(key, value[len(SAMPLE_PREFIX):], value)
    for cand in _candidates(value, config_dir):
        if _exists(cand):
            return Source(key, value, str(cand.resolve()), "local")
    root = cfg.data.samples_if_absent
    why = ""
    if root and key in KEY_SAMPLE and _under(value, root) and not any(_exists(c) for c in _candidates(root, config_dir)):
        if not cfg.is_overridden(key):
            note = f"{root} is absent{_looked_in(config_dir, root)}: data.samples_if_absent"
            return sample_source(key, KEY_SAMPLE[key], value, note)
        why = "; a path typed as an override is never replaced by the shipped samples"
    if is_hub_id(value) and not _exists(_candidates(value.split("/")[0], config_dir)[0]):
        return Source(key, value, value, "hub")
    raise DataError(f"{key}: {shown(value)}: file not found{_looked_in(config_dir, value)}{why}")


def resolve_sources(cfg: Config) -> dict[str, Source]:
    """The run's three data sources, resolved before anything is loaded."""
    d = cfg.data
    return {key: resolve_source(value, key, cfg)
            for key, value in (("data.seed", d.seed), ("data.unlabelled", d.unlabelled),
                               ("data.eval_prompts", d.eval_prompts))}


_SAMPLE_KEY = {"seed.jsonl": "data.seed", "unlabelled.jsonl": "data.unlabelled", "prompts.jsonl": "data.eval_prompts"}


def resolve_data(path: str, sample: str, cfg: Config) -> str:
    """The local path or Hub id that a data source of the config names (see `sources.py`): a
    missing path is a DataError; the shipped `sample` only where the config asks for it."""
    src = resolve_source(path, _SAMPLE_KEY.get(sample, "data"), cfg)
    if src.kind != "local" or src.given != src.resolved:
        say(src.describe())
    return src.resolved


def announce_sources(sources: dict[str, Source]) -> None:
    """The first lines of a run: what each data source was resolved to, samples loudly."""
    for src in sources.values():
        say(src.describe())
    if any(s.kind == "sample" for s in sources.values()):
        say("note: this run uses the small OASST1 samples shipped with selfalign, not real data")


def file_fingerprint(path: str) -> str:
    """A data source's fingerprint for a stage key: its file's hash, a folder's data files (those
    that are read: not a run directory inside it, symlinked folders included), or a Hub id itself."""
    p = Path(path).expanduser()
    if p.is_dir():
        import hashlib

        from selfalign.readers import list_data_files

        h = hashlib.sha256()
        for f in list_data_files(p)[0]:
            h.update(f"{f.relative_to(p).as_posix()}\0{fingerprint(f)}\0".encode())
        return h.hexdigest()[:16]
    return fingerprint(p) if p.exists() else path  # Hub id: the id itself
