"""Cards of a run's artifacts: the model cards of the two adapters and the dataset card.

The texts are Jinja templates (`templates/model_card.md`, `templates/dataset_card.md`); this
module gathers what they say about a run (config, manifest, provenance, training info, adapter
configs, the rating prompt from `templates/rating_prompt.txt`) and adds the YAML metadata. The
dataset card has one writer, `dataset_card`: curation writes it into `curated_N/` and the Hub push
writes it for the dataset repository, there with the repository links and a `configs:` block.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCardData, ModelCard, ModelCardData, try_to_load_from_cache

from selfalign.prompts import Templates, shipped
from selfalign.redact import redact
from selfalign.report import table

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
DATASET_TAGS = ["selfalign", "instruction-backtranslation", "synthetic"]


# ---------------------------------------------------------------------------------- templates


@cache
def _template(text: str) -> Any:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, autoescape=False)
    return env.from_string(text)


def _templates(config: dict[str, Any]) -> Templates:
    """The templates of the run whose config this is (`run.templates_dir`, else the shipped ones)."""
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    folder = run.get("templates_dir")
    return Templates.load(folder if folder and Path(folder).expanduser().is_dir() else None)


def render_card(name: str, meta: ModelCardData | DatasetCardData, templates: Templates | None = None,
                **values: Any) -> str:
    """YAML metadata + the template `name` filled with `values` (runs of blank lines squeezed)."""
    body = re.sub(r"\n{3,}", "\n\n", _template((templates or shipped()).file(name)).render(**values)).strip()
    return redact(f"---\n{meta.to_yaml()}\n---\n\n{body}\n")  # a card is published: no secret in it


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


def _is_hub_id(spec: Any) -> bool:
    if not isinstance(spec, str) or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec) is not None


def _public(spec: Any) -> Any:
    """A model/data spec as shown on a public card: absolute local paths lose their directories."""
    if not isinstance(spec, str) or _is_hub_id(spec):
        return spec
    if spec.startswith(("/", "~")) or Path(spec).is_absolute():
        return f"local: {Path(spec).name}"
    return spec


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
        with open(run_dir / "curated" / "data.jsonl", "rb") as fh:
            info.n_rows = sum(1 for line in fh if line.strip())
        return info


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

    def link(self, kind: str) -> str:
        return f"[{self.ids[kind]}]({self.url(kind)})"

    def links(self, *kinds: str) -> str:
        what = {"backward": "backward model (response -> instruction)",
                "curated": "curated dataset", "forward": "forward model (instruction -> response)"}
        return "\n".join(f"- {what[k]}: {self.link(k)}" for k in kinds)


# ---------------------------------------------------------------------------------- cards


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    return table(["", ""], [[k, _cell(v)] for k, v in rows])


def _counts_table(counts: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = []
    for k, v in counts.items():
        if isinstance(v, dict):
            rows += [(f"{k}.{sk}", sv) for sk, sv in v.items()]
        else:
            rows.append((k, v))
    return _kv_table(rows) if rows else ""


def _code(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}\n{text}\n{fence}"


def _base_desc(base: Any, hub_id: str | None) -> Any:
    shown = _public(base)
    return f"{shown} (= {hub_id})" if hub_id and hub_id != base else shown


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


def model_card(info: RunInfo, repos: Repos, kind: str, merged: bool = False) -> str:
    """README.md of the backward or forward adapter repository."""
    c = info.config
    adapter_base = info.adapter_config.get(kind, {}).get("base_model_name_or_path")
    hub_id, lic = base_model_info(info.base, adapter_base)
    seed, unlabelled = _dig(c, "data.seed"), _dig(c, "data.unlabelled")
    datasets = [repos.ids["curated"]] if kind == "forward" else []
    datasets += [d for d in (seed,) if _is_hub_id(d)]
    tags = ["selfalign", "instruction-backtranslation", "lora", "peft", f"{kind}-model"]
    meta = ModelCardData(base_model=hub_id, library_name="peft", license=lic, tags=tags,
                         datasets=datasets or None, pipeline_tag="text-generation")
    threshold = _dig(c, "curation.threshold", info.provenance.get("threshold"))
    fwd = _dig(c, "forward", {}) or {}
    run_rows: list[tuple[str, Any]] = [
        ("base model", _base_desc(info.base or adapter_base, hub_id)),
        ("license", lic or "unknown: see the base model's license"),
        ("seed data", _public(seed)),
        ("unlabelled data", _public(unlabelled)),
        ("rater", _public(_dig(c, "models.rater", info.provenance.get("rater")))),
        ("curation threshold", threshold),
        ("curation iterations", _dig(c, "curation.iterations")),
    ]
    return render_card(
        "model_card.md", meta, _templates(c), kind=kind, curated_link=repos.link("curated"), threshold=threshold,
        use_seed=fwd.get("use_seed", True) is not False,
        seed_tag=fwd.get("seed_tag", "Answer in the style of an AI Assistant."),
        augmented_tag=fwd.get("augmented_tag", "Answer with knowledge from web search."),
        run_table=_kv_table(run_rows), settings_table=_kv_table(_settings_rows(info, kind)),
        counts_table=_counts_table(info.counts),
        rating_prompt=_code(_templates(c).rating_prompt.strip()) if kind == "forward" else "",
        related=repos.links("curated", "forward") if kind == "backward" else repos.links("backward", "curated"),
        repo_id=repos.ids[kind], base_ref=hub_id or "PATH/TO/BASE_MODEL", merged=merged,
        base_note="" if hub_id else _cell(_public(info.base or adapter_base)),
    )


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(provenance: dict[str, Any], n_rows: int, config: dict[str, Any] | None = None,
                 counts: dict[str, Any] | None = None, repos: Repos | None = None,
                 templates: Templates | None = None) -> str:
    """README.md of a curated dataset: the local `curated_N/` folder (`repos` None) or the Hub
    dataset repository (`repos`: links, a load snippet and a `configs:` block).

    The local card has no `configs:` block on purpose: with one, datasets caches local folders by
    name, and two runs' `curated/` folders would be served from the same cache entry.
    """
    c, p = config or {}, provenance
    cur = _dig(c, "curation", {}) or {}
    extra: dict[str, Any] = {}
    if repos is not None:
        extra = {"pretty_name": f"{repos.ids['curated'].split('/')[-1]} (selfalign curated data)",
                 "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data.jsonl"}]}]}
    meta = DatasetCardData(license="other", task_categories=["text-generation"], language=["en"],
                           tags=list(DATASET_TAGS), size_categories=[_size_category(n_rows)], **extra)
    base = _dig(c, "models.base", p.get("base"))
    hub_id, _ = base_model_info(base, None)
    rows: list[tuple[str, Any]] = [
        ("rows", n_rows),
        ("base model", _base_desc(base, hub_id)),
        ("backward model", repos.link("backward") if repos is not None else p.get("backward")),
        ("rater", _public(_dig(c, "models.rater", p.get("rater")))),
        ("seed data", _public(_dig(c, "data.seed", p.get("seed")))),
        ("unlabelled data", _public(_dig(c, "data.unlabelled", p.get("unlabelled")))),
        ("rating mode", f"{cur.get('mode', p.get('mode'))} (samples per pair: "
                        f"{cur.get('n_samples', p.get('n_samples'))}, shots: {cur.get('shots', p.get('shots'))})"),
        ("threshold", cur.get("threshold", p.get("threshold"))),
    ]
    for key in ("generated", "generated_ok", "rated", "scored", "kept", "mean_score",
                "parse_failure_rate", "histogram", "labels_file", "labelled", "overruled_to_keep",
                "overruled_to_drop", "kept_after_labels", "hygiene"):  # labels.py: a person overruled the rater
        if key in p:
            rows.append((key.replace("_", " "), _public(p[key]) if key == "labels_file" else p[key]))
    return render_card(
        "dataset_card.md", meta, templates or _templates(c),
        title=repos.ids["curated"] if repos is not None else "Curated instruction data (selfalign)",
        shots=cur.get("shots", p.get("shots")), threshold=cur.get("threshold", p.get("threshold")),
        repo_id=repos.ids["curated"] if repos is not None else "",
        provenance_table=_kv_table(rows), counts_table=_counts_table(counts or {}),
        rating_prompt=_code(_templates(c).rating_prompt.strip()),
        related=repos.links("backward", "forward") if repos is not None else "",
    )
