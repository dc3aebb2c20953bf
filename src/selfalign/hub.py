"""Publish a finished run to the Hugging Face Hub (or a self-hosted Hub).

`push_run` uploads three repositories:

- `<ns>/<name>-backward` (model): the backward LoRA adapter, its tokenizer and a model card;
- `<ns>/<name>-curated` (dataset): `data.jsonl` and a dataset card;
- `<ns>/<name>-forward` (model): the forward LoRA adapter, its tokenizer and a model card, and
  with `hub.merge` also the merged model (base + adapter) in `merged/`.

The cards are written into a temporary staging folder: the run's artifacts are never modified,
except that the URLs are appended to `report.md` (under "## Hub repositories") and written to
`hub.json`. The token is taken from the argument, else `HF_TOKEN`, else huggingface_hub's stored
login; it is never printed, logged or written anywhere. Failures are a `HubError` with a one-line
message; transient ones (HTTP 5xx/429, connection errors) are retried with exponential backoff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    get_token,
    try_to_load_from_cache,
)
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

from selfalign.config import HubConfig

T = TypeVar("T")

RETRY_ATTEMPTS = 4  # tries per Hub call (1 + 3 retries) on transient errors
RETRY_DELAY = 1.0  # seconds before the first retry; doubled each time

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
KINDS = ("backward", "curated", "forward")

# Base models whose Hub id / license are known without asking the Hub.
KNOWN_BASES = {"smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
KNOWN_LICENSES = (  # (Hub id prefix, license), first match wins
    ("meta-llama/Llama-2-", "llama2"),
    ("meta-llama/Meta-Llama-3-", "llama3"),
    ("meta-llama/Llama-3.1-", "llama3.1"),
    ("meta-llama/Llama-3.2-", "llama3.2"),
    ("HuggingFaceTB/SmolLM", "apache-2.0"),
)


class HubError(RuntimeError):
    """A push that cannot be done; the message is one line and names what to fix."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            errs.append(__import__(mod).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


TRANSPORT_ERRORS = _transport_errors()


# ---------------------------------------------------------------------------------- token


def resolve_token(token: str | None = None) -> tuple[str | None, str]:
    """(token, where it came from): the argument, else HF_TOKEN, else the stored login."""
    if token:
        return token, "argument"
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env, "HF_TOKEN"
    stored = get_token()
    if stored:
        return stored, "stored login"
    return None, "none"


def _clean(text: str, token: str | None) -> str:
    """One line, and never the token."""
    text = " ".join(str(text).split())
    if token:
        text = text.replace(token, "***")
    return text


# ---------------------------------------------------------------------------------- retries


def _server_message(e: HfHubHTTPError) -> str:
    msg = getattr(e, "server_message", None)
    if msg:
        return msg.splitlines()[0]
    lines = [x for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def _http_error(what: str, e: HfHubHTTPError, endpoint: str) -> HubError:
    status = e.response.status_code if getattr(e, "response", None) is not None else None
    server = _server_message(e)
    if status == 401:
        return HubError(f"{what}: authentication failed (HTTP 401) at {endpoint}: the token was rejected "
                        f"({server}); pass a valid write token, set HF_TOKEN or run `hf auth login`")
    if status == 403:
        return HubError(f"{what}: permission denied (HTTP 403) at {endpoint}: the token cannot write "
                        f"there ({server}); use a write token or another hub.namespace")
    if isinstance(e, RepositoryNotFoundError) or status == 404:
        return HubError(f"{what}: not found (HTTP {status}) at {endpoint} ({server})")
    return HubError(f"{what}: HTTP {status} from {endpoint} ({server})")


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if getattr(e, "response", None) is not None else None
        return status is not None and (status >= 500 or status in (408, 429))
    return isinstance(e, TRANSPORT_ERRORS) and not isinstance(e, OfflineModeIsEnabled)


def with_retries(what: str, fn: Callable[[], T], *, endpoint: str, token: str | None,
                 attempts: int = RETRY_ATTEMPTS, delay: float = RETRY_DELAY) -> T:
    """fn(), retried with exponential backoff on transient errors; failures become HubError."""
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except OfflineModeIsEnabled:
            raise HubError(f"{what}: HF_HUB_OFFLINE is set; unset it to push") from None
        except HfHubHTTPError as e:
            if not _is_transient(e) or attempt == attempts:
                err = _http_error(what, e, endpoint)
                raise HubError(_clean(str(err), token)) from None
            reason = f"HTTP {e.response.status_code}"
        except TRANSPORT_ERRORS as e:
            if attempt == attempts:
                raise HubError(_clean(f"{what}: cannot reach the Hub at {endpoint} after {attempts} "
                                      f"attempts ({type(e).__name__}: {e})", token)) from None
            reason = type(e).__name__
        except ValueError as e:  # e.g. card metadata rejected by validate-yaml
            raise HubError(_clean(f"{what}: {e}", token)) from None
        wait = delay * 2 ** (attempt - 1)
        print(f"[selfalign] {what}: transient error ({reason}); retry {attempt}/{attempts - 1} "
              f"in {wait:g}s", file=sys.stderr, flush=True)
        time.sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------- run info


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _dig(d: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _public(spec: Any) -> Any:
    """A model/data spec as shown on a public card: absolute local paths lose their directories."""
    if not isinstance(spec, str) or _is_hub_id(spec):
        return spec
    if spec.startswith(("/", "~")) or Path(spec).is_absolute():
        return f"local: {Path(spec).name}"
    return spec


def _is_hub_id(spec: Any) -> bool:
    if not isinstance(spec, str) or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec) is not None


def _card_license(readme: Path | str | None) -> str | None:
    if not readme or not Path(readme).is_file():
        return None
    try:
        lic = ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except Exception:  # an unreadable card just means an unknown license
        return None
    return lic if isinstance(lic, str) and lic else None


def base_model_info(base: str | None, adapter_base: str | None) -> tuple[str | None, str | None]:
    """(Hub id, license) of the base model, each None where unknown. Offline: local cards,
    the local Hub cache and a few known models; the Hub is never asked."""
    hub_id, lic = None, None
    if base in KNOWN_BASES:
        hub_id, lic = KNOWN_BASES[base]
    for spec in (base, adapter_base):
        if hub_id is None and _is_hub_id(spec):
            hub_id = spec
    if lic is None:
        for spec in (base, adapter_base):
            if isinstance(spec, str) and Path(spec).expanduser().is_dir():
                lic = _card_license(Path(spec).expanduser() / "README.md")
                if lic:
                    break
    if lic is None and hub_id is not None:
        try:
            cached = try_to_load_from_cache(hub_id, "README.md")
        except Exception:  # a malformed id: nothing cached
            cached = None
        lic = _card_license(cached) if isinstance(cached, str) else None
        for prefix, known in KNOWN_LICENSES:
            if lic is None and hub_id.startswith(prefix):
                lic = known
    return hub_id, lic


@dataclass
class RunInfo:
    """What the cards say about a run, read once from its files (all optional)."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, dict[str, Any]] = field(default_factory=dict)  # backward/forward
    adapter_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    curated_meta: dict[str, Any] = field(default_factory=dict)
    curated_body: str = ""
    rating_prompt: str = ""
    n_rows: int = 0

    @property
    def counts(self) -> dict[str, Any]:
        c = self.manifest.get("counts")
        return c if isinstance(c, dict) else {}

    @property
    def base(self) -> str | None:
        return _dig(self.config, "models.base") or self.provenance.get("base")

    @classmethod
    def load(cls, run_dir: Path) -> RunInfo:
        info = cls(run_dir=run_dir, config=_read_yaml(run_dir / "config.yaml"),
                   manifest=_read_json(run_dir / "manifest.json"))
        n = _dig(info.config, "curation.iterations", 1)
        prov = run_dir / f"curated_{n}.provenance.json"
        if not prov.is_file():
            found = sorted(run_dir.glob("curated_*.provenance.json"))
            prov = found[-1] if found else prov
        info.provenance = _read_json(prov)
        for kind in ("backward", "forward"):
            info.training[kind] = _read_json(run_dir / kind / "training_info.json")
            info.adapter_config[kind] = _read_json(run_dir / kind / "adapter_config.json")
        readme = run_dir / "curated" / "README.md"
        if readme.is_file():
            try:
                card = DatasetCard.load(readme, ignore_metadata_errors=True)
                info.curated_meta, info.curated_body = card.data.to_dict(), card.text
            except Exception:  # a broken local card: write ours from scratch
                pass
        m = re.search(r"## Rating prompt\s*```[^\n]*\n(.*?)```", info.curated_body, re.DOTALL)
        if m:
            info.rating_prompt = m.group(1).strip()
        else:
            try:
                from selfalign.prompts import rating_prompt

                info.rating_prompt = rating_prompt().strip()
            except Exception:  # templates missing: the card just has no prompt
                info.rating_prompt = ""
        with open(run_dir / "curated" / "data.jsonl", "rb") as fh:
            info.n_rows = sum(1 for line in fh if line.strip())
        return info


# ---------------------------------------------------------------------------------- cards


def _md(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(", ", ": "))
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in rows]
    return "\n".join(lines)


def _counts_rows(counts: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in counts.items():
        if isinstance(v, dict):
            rows += [(f"{k}.{sk}", sv) for sk, sv in v.items()]
        else:
            rows.append((k, v))
    return rows


def _code(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}\n{text}\n{fence}"


def _front(data: ModelCardData | DatasetCardData, body: str) -> str:
    return f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"


@dataclass
class Repos:
    """Repo ids and URLs of the three repositories."""

    ids: dict[str, str]
    endpoint: str

    @classmethod
    def make(cls, namespace: str, name: str, endpoint: str) -> Repos:
        return cls({k: f"{namespace}/{name}-{k}" for k in KINDS}, endpoint.rstrip("/"))

    def repo_type(self, kind: str) -> str:
        return "dataset" if kind == "curated" else "model"

    def url(self, kind: str) -> str:
        prefix = "datasets/" if kind == "curated" else ""
        return f"{self.endpoint}/{prefix}{self.ids[kind]}"

    def links(self, *kinds: str) -> str:
        what = {"backward": "backward model (response -> instruction)",
                "curated": "curated dataset", "forward": "forward model (instruction -> response)"}
        return "\n".join(f"- {what[k]}: [{self.ids[k]}]({self.url(k)})" for k in kinds)


def _settings_rows(info: RunInfo, kind: str) -> list[tuple[str, Any]]:
    c, t = info.config, info.training.get(kind, {})
    ac = info.adapter_config.get(kind, {})
    train = _dig(c, f"train_{kind}", {}) or t.get("train", {}) or {}
    lora = _dig(c, "lora", {}) or t.get("lora", {}) or {}
    # the adapter's own config is the truth; the run config fills in what it lacks
    r, alpha = ac.get("r", lora.get("r")), ac.get("lora_alpha", lora.get("alpha"))
    dropout = ac.get("lora_dropout", lora.get("dropout"))
    targets = ac.get("target_modules") or lora.get("target_modules")
    if isinstance(targets, list):
        targets = sorted(targets)
    rows: list[tuple[str, Any]] = [
        ("LoRA r / alpha / dropout", f"{r} / {alpha} / {dropout}"),
        ("LoRA target modules", targets),
    ]
    for key in ("epochs", "max_steps", "learning_rate", "batch_size", "grad_accum", "max_seq_len",
                "warmup_ratio", "weight_decay"):
        if key in train:
            rows.append((key, train[key]))
    for key, label in (("n_examples", "training examples"), ("steps", "optimizer steps"),
                       ("first_loss", "first loss"), ("last_loss", "last loss"),
                       ("seconds", "training seconds")):
        if t.get(key) is not None:
            rows.append((label, t[key]))
    rows.append(("seed", _dig(c, "run.seed")))
    return rows


def _usage(repo_id: str, base_ref: str, merged: bool = False) -> str:
    lines = [
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base_ref}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        "```",
    ]
    if merged:
        lines += ["", "The merged model (base + adapter, no peft needed) is in `merged/`. Pass "
                  "`adapter_kwargs` too: without it transformers finds the adapter config at the "
                  "repository root and loads the base model instead.", "",
                  "```python",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", subfolder="merged",',
                  '                                             adapter_kwargs={"subfolder": "merged"})',
                  "```"]
    return "\n".join(lines)


def model_card(info: RunInfo, repos: Repos, kind: str, merged: bool = False) -> str:
    """README.md of the backward or forward adapter repository."""
    c = info.config
    adapter_base = info.adapter_config.get(kind, {}).get("base_model_name_or_path")
    hub_id, lic = base_model_info(info.base, adapter_base)
    seed, unlabelled = _dig(c, "data.seed"), _dig(c, "data.unlabelled")
    datasets = [repos.ids["curated"]] if kind == "forward" else []
    datasets += [d for d in (seed,) if _is_hub_id(d)]
    tags = ["selfalign", "instruction-backtranslation", "lora", "peft", f"{kind}-model"]
    data = ModelCardData(base_model=hub_id, library_name="peft", license=lic, tags=tags,
                         datasets=datasets or None, pipeline_tag="text-generation")
    repo_id = repos.ids[kind]
    threshold = _dig(c, "curation.threshold", info.provenance.get("threshold"))
    if kind == "backward":
        title = "Backward model (instruction backtranslation)"
        what = ("A LoRA adapter trained on the seed data with the pairs reversed: given a response, it "
                "writes the instruction the response answers. It generated the instructions for the "
                "unlabelled responses of the run, which were then rated and curated into "
                f"[{repos.ids['curated']}]({repos.url('curated')}).")
        related = repos.links("curated", "forward")
    else:
        title = "Forward model (instruction backtranslation)"
        fwd = _dig(c, "forward", {}) or {}
        on = "the seed data plus" if fwd.get("use_seed", True) is not False else "only"
        what = (f"A LoRA adapter trained to answer instructions, on {on} the "
                f"self-curated pairs of [{repos.ids['curated']}]({repos.url('curated')}) (rating >= "
                f"{threshold}). As in the paper, examples carry a system tag naming their origin: "
                f"seed data \"{fwd.get('seed_tag', 'Answer in the style of an AI Assistant.')}\", "
                f"curated data \"{fwd.get('augmented_tag', 'Answer with knowledge from web search.')}\".")
        related = repos.links("backward", "curated")
    rows: list[tuple[str, Any]] = [
        ("base model", _base_desc(info.base or adapter_base, hub_id)),
        ("license", lic or "unknown: see the base model's license"),
        ("seed data", _public(seed)),
        ("unlabelled data", _public(unlabelled)),
        ("rater", _public(_dig(c, "models.rater", info.provenance.get("rater")))),
        ("curation threshold", threshold),
        ("curation iterations", _dig(c, "curation.iterations")),
    ]
    body = [
        f"# {title}", "",
        "Trained with selfalign following Li et al. 2023, *Self-Alignment with Instruction "
        "Backtranslation* (arXiv:2308.06259), with LoRA.", "",
        what, "",
        "## Run", "", _table(rows), "",
        "## Training settings", "", _table(_settings_rows(info, kind)), "",
    ]
    if info.counts:
        body += ["## Counts", "", _table(_counts_rows(info.counts)), ""]
    if kind == "forward" and info.rating_prompt:
        body += ["## Rating prompt used for curation", "", _code(info.rating_prompt), ""]
    body += ["## Related repositories", "", related, "",
             "## Usage", "", _usage(repo_id, hub_id or "PATH/TO/BASE_MODEL", merged), ""]
    if not hub_id:
        body += [f"The base model ({_md(_public(info.base or adapter_base))}) is not a Hub model: load "
                 "the same weights before applying the adapter.", ""]
    return _front(data, "\n".join(body))


def _base_desc(base: Any, hub_id: str | None) -> Any:
    shown = _public(base)
    return f"{shown} (= {hub_id})" if hub_id and hub_id != base else shown


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(info: RunInfo, repos: Repos) -> str:
    """README.md of the curated dataset repository."""
    c = info.config
    meta = {k: v for k, v in info.curated_meta.items() if k not in ("configs", "pretty_name")}
    tags = list(meta.pop("tags", None) or [])
    for t in ("selfalign", "instruction-backtranslation", "synthetic"):
        if t not in tags:
            tags.append(t)
    meta.setdefault("license", "other")
    meta.setdefault("task_categories", ["text-generation"])
    meta.setdefault("language", ["en"])
    meta["size_categories"] = [_size_category(info.n_rows)]
    data = DatasetCardData(
        pretty_name=f"{repos.ids['curated'].split('/')[-1]} (selfalign curated data)", tags=tags,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data.jsonl"}]}],
        **meta,
    )
    p = info.provenance
    cur = _dig(c, "curation", {}) or {}
    hub_id, _ = base_model_info(info.base, info.adapter_config.get("backward", {}).get("base_model_name_or_path"))
    rows: list[tuple[str, Any]] = [
        ("rows", info.n_rows),
        ("base model", _base_desc(info.base, hub_id)),
        ("backward model", f"[{repos.ids['backward']}]({repos.url('backward')})"),
        ("rater", _public(_dig(c, "models.rater", p.get("rater")))),
        ("seed data", _public(_dig(c, "data.seed", p.get("seed")))),
        ("unlabelled data", _public(_dig(c, "data.unlabelled", p.get("unlabelled")))),
        ("rating mode", f"{cur.get('mode', p.get('mode'))} (samples per pair: "
                        f"{cur.get('n_samples', p.get('n_samples'))}, shots: {cur.get('shots', p.get('shots'))})"),
        ("threshold", cur.get("threshold", p.get("threshold"))),
    ]
    for key in ("generated", "generated_ok", "rated", "scored", "kept", "mean_score",
                "parse_failure_rate", "histogram"):
        if key in p:
            rows.append((key.replace("_", " "), p[key]))
    body = [
        f"# {repos.ids['curated']}", "",
        "Instruction-response pairs made by instruction backtranslation (Li et al. 2023, "
        "arXiv:2308.06259) with selfalign: a backward model wrote an "
        "instruction for each unlabelled response, a rater model scored each pair 1-5 with the "
        "paper's rating prompt, and the pairs scoring at or above the threshold were kept.", "",
        "Fields: `instruction`, `response`, `score` (the rating), `reasoning` (the rater's "
        "explanation), `source`, `source_id` (where the response came from), and any extra "
        "fields the run recorded.", "",
        "```python", "from datasets import load_dataset", "",
        f'ds = load_dataset("{repos.ids["curated"]}", split="train")', "```", "",
        "## Provenance", "", _table(rows), "",
    ]
    if info.counts:
        body += ["## Counts of the run", "", _table(_counts_rows(info.counts)), ""]
    if info.rating_prompt:
        body += ["## Rating prompt", "", _code(info.rating_prompt), ""]
    body += ["## Related repositories", "", repos.links("backward", "forward"), "",
             "## License", "",
             "The responses keep the license of their source dataset (LIMA, for example, is "
             "CC BY-NC-SA: non-commercial use only); the generated instructions and ratings are "
             "outputs of the models named above.", ""]
    return _front(data, "\n".join(body))


# ---------------------------------------------------------------------------------- plan


@dataclass
class RepoPlan:
    kind: str
    repo_id: str
    repo_type: str
    url: str
    files: dict[str, Path | str]  # path in repo -> local file, or generated text
    merge_from: Path | None = None  # forward adapter to merge into merged/ at push time

    def sizes(self) -> list[tuple[str, int]]:
        return [(p, src.stat().st_size if isinstance(src, Path) else len(src.encode()))
                for p, src in sorted(self.files.items())]


def check_artifacts(run_dir: Path) -> None:
    """HubError naming the first missing artifact of a finished run."""
    if not run_dir.is_dir():
        raise HubError(f"run directory not found: {run_dir}")
    for kind in ("backward", "curated", "forward"):
        d = run_dir / kind
        if not d.is_dir():
            raise HubError(f"missing run artifact: {d} (is the run finished?)")
    for kind in ("backward", "forward"):
        d = run_dir / kind
        if not (d / "adapter_config.json").is_file():
            raise HubError(f"missing run artifact: {d / 'adapter_config.json'}")
        if not any((d / w).is_file() for w in ADAPTER_WEIGHTS):
            raise HubError(f"missing run artifact: {d / ADAPTER_WEIGHTS[0]}")
    if not (run_dir / "curated" / "data.jsonl").is_file():
        raise HubError(f"missing run artifact: {run_dir / 'curated' / 'data.jsonl'}")


def _adapter_files(folder: Path) -> dict[str, Path | str]:
    """Top-level files of an adapter folder (adapter, tokenizer, logs), without its README."""
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "README.md" and not p.name.startswith(".")
            and not p.name.endswith(".tmp")}


def plan_run(run_dir: Path, info: RunInfo, repos: Repos, merge: bool) -> list[RepoPlan]:
    plans = []
    for kind in KINDS:
        if kind == "curated":
            files: dict[str, Path | str] = {"data.jsonl": run_dir / "curated" / "data.jsonl",
                                            "README.md": dataset_card(info, repos)}
        else:
            files = _adapter_files(run_dir / kind)
            files["README.md"] = model_card(info, repos, kind, merged=merge and kind == "forward")
        plans.append(RepoPlan(kind, repos.ids[kind], repos.repo_type(kind), repos.url(kind), files,
                              merge_from=run_dir / kind if merge and kind == "forward" else None))
    return plans


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_plan(plans: list[RepoPlan], private: bool, token_source: str) -> None:
    print(f"[selfalign] dry run: nothing is uploaded (token: {token_source}; "
          f"{'private' if private else 'public'} repositories)")
    for plan in plans:
        sizes = plan.sizes()
        total = sum(s for _, s in sizes)
        print(f"\n{plan.repo_id} ({plan.repo_type}) -> {plan.url}")
        for path, size in sizes:
            print(f"  {path:<40} {_human(size):>10}")
        if plan.merge_from is not None:
            print(f"  {'merged/':<40} {'(built at push time: base + adapter merged)':>10}")
        print(f"  {len(sizes)} files, {_human(total)}")


def materialize(plan: RepoPlan, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path, src in plan.files.items():
        dst = folder / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, dst)
        else:
            dst.write_text(src, encoding="utf-8")
    return folder


def merge_adapter(adapter_dir: Path, out_dir: Path, trust_remote_code: bool = False) -> Path:
    """Base model (from adapter_config.json) + LoRA adapter, merged and saved to out_dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _read_json(adapter_dir / "adapter_config.json")
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise HubError(f"{adapter_dir / 'adapter_config.json'} names no base_model_name_or_path: "
                       "cannot build the merged model (set hub.merge=false)")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        tok = AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise HubError(f"cannot build the merged model from base {base}: "
                       f"{' '.join(str(e).split())[:300]}") from None
    merged.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------- records


def record_urls(run_dir: Path, repos: Repos, urls: dict[str, str], private: bool,
                commits: dict[str, str]) -> None:
    """hub.json (never the token) and a "## Hub repositories" section in report.md."""
    from selfalign.io import atomic_write_text

    record = {**urls, "repos": {k: {"id": repos.ids[k], "type": repos.repo_type(k), "url": urls[k],
                                    "commit": commits.get(k)} for k in KINDS},
              "endpoint": repos.endpoint, "private": private,
              "pushed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(run_dir / "hub.json", json.dumps(record, indent=2) + "\n")
    report = run_dir / "report.md"
    if report.is_file():
        text = report.read_text(encoding="utf-8")
        # a re-push replaces the section instead of appending a second one
        text = re.sub(r"\n*## Hub repositories\n.*?(?=\n## |\Z)", "", text, flags=re.DOTALL)
        section = ["## Hub repositories", "",
                   f"- backward model: {urls['backward']}",
                   f"- curated dataset: {urls['curated']}",
                   f"- forward model: {urls['forward']}"]
        atomic_write_text(report, text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n")


# ---------------------------------------------------------------------------------- push


def push_run(run_dir: Path, hub: HubConfig, token: str | None = None, dry_run: bool = False,
             api: HfApi | None = None, *, retries: int | None = None,
             retry_delay: float | None = None) -> dict[str, str]:
    """Publish the backward adapter, the curated dataset and the forward adapter of a finished
    run; returns {"backward": url, "curated": url, "forward": url} and prints the URLs.

    `dry_run` prints what would be uploaded (repo ids, types, files and sizes) and contacts
    nothing. `retries`/`retry_delay` override RETRY_ATTEMPTS/RETRY_DELAY (tries per call and the
    first backoff in seconds).
    """
    run_dir = Path(run_dir)
    check_artifacts(run_dir)
    info = RunInfo.load(run_dir)
    endpoint = (hub.endpoint or (api.endpoint if api is not None else None) or constants.ENDPOINT).rstrip("/")
    tok, source = resolve_token(token)
    attempts = RETRY_ATTEMPTS if retries is None else retries
    delay = RETRY_DELAY if retry_delay is None else retry_delay

    def call(what: str, fn: Callable[[], T]) -> T:
        return with_retries(what, fn, endpoint=endpoint, token=tok, attempts=attempts, delay=delay)

    if dry_run:
        namespace = hub.namespace or "<your-username>"
        repos = Repos.make(namespace, hub.name, endpoint)
        plans = plan_run(run_dir, info, repos, hub.merge)
        print_plan(plans, hub.private, f"found ({source})" if tok else "none found")
        return {p.kind: p.url for p in plans}

    if tok is None:
        raise HubError("no Hugging Face token: pass one, set HF_TOKEN, or run `hf auth login` "
                       "(a token with write access)")
    api = api if api is not None else HfApi(endpoint=endpoint, token=tok)
    if hub.namespace:
        namespace = hub.namespace
    else:
        me = call("checking the token (whoami)", lambda: api.whoami(token=tok))
        namespace = me.get("name") if isinstance(me, dict) else None
        if not namespace:
            raise HubError(f"the Hub at {endpoint} did not say whose token this is: set hub.namespace")
    repos = Repos.make(namespace, hub.name, endpoint)
    plans = plan_run(run_dir, info, repos, hub.merge)
    trust = bool(_dig(info.config, "models.trust_remote_code", False))
    commits: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="selfalign-hub-") as staging:
        for plan in plans:
            folder = materialize(plan, Path(staging) / plan.kind)
            if plan.merge_from is not None:
                print(f"[selfalign] merging the forward adapter into its base model for {plan.repo_id}/merged",
                      flush=True)
                merge_adapter(plan.merge_from, folder / "merged", trust_remote_code=trust)
            call(f"creating {plan.repo_type} repo {plan.repo_id}",
                 lambda p=plan: api.create_repo(p.repo_id, repo_type=p.repo_type, private=hub.private,
                                                exist_ok=True, token=tok))
            n = sum(1 for f in folder.rglob("*") if f.is_file())
            print(f"[selfalign] uploading {n} files to {plan.repo_id} ({plan.repo_type})", flush=True)
            info_commit = call(
                f"uploading to {plan.repo_id}",
                lambda p=plan, f=folder: api.upload_folder(
                    repo_id=p.repo_id, folder_path=f, repo_type=p.repo_type, token=tok,
                    commit_message=f"selfalign: {p.kind} of run {run_dir.name}"),
            )
            commits[plan.kind] = getattr(info_commit, "oid", None) or ""
    urls = {p.kind: p.url for p in plans}
    record_urls(run_dir, repos, urls, hub.private, commits)
    print("Hub repositories:")
    for kind in KINDS:
        print(f"  {kind:<9} {urls[kind]}")
    return urls
