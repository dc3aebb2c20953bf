"""Memory planning: estimate what a stage needs before loading a model, refuse when it can't fit.

The estimate is built from the model's `config.json` (read without loading weights) and the run
config: weights (dtype or 4-bit NF4), LoRA parameters with their gradients and AdamW states,
activations for batch x length (with or without gradient checkpointing), the fp32 logits of the
loss, and the KV cache for generation. It is an estimate (about +-20% against measured peaks on
the Llama shapes), meant to catch "this cannot possibly fit" before minutes of loading, not to
squeeze the last gigabyte. `run.memory_check=false` turns it off; `run.device_memory_gb` plans for
another device ("would this fit a 16 GB T4?"), as does `selfalign plan --device-memory-gb 16`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfalign.config import Config, LoraConfig, TrainConfig
from selfalign.models import ModelError

GiB = 1024**3
MIN_SHARED_PREFIX = 32  # tokens; shorter shared prefixes are not worth caching (generation.py)
QLORA_CONFIG = "llama2-7b-qlora-t4"  # a shipped config (selfalign config list)
CUDA_CONTEXT = int(0.75 * GiB)  # CUDA context + allocator slack, ~0.5-1 GB on A100/T4
CPU_RUNTIME = int(1.0 * GiB)  # python, torch and transformers in the process (~1 GB RSS here)

# Shapes of the models the shipped configs name, so `selfalign plan` works without network.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008,
                                     vocab_size=32000, num_attention_heads=32, num_key_value_heads=32,
                                     tie_word_embeddings=False, max_position_embeddings=4096),
    "meta-llama/Llama-2-13b-hf": dict(hidden_size=5120, num_hidden_layers=40, intermediate_size=13824,
                                      vocab_size=32000, num_attention_heads=40, num_key_value_heads=40,
                                      tie_word_embeddings=False, max_position_embeddings=4096),
    "meta-llama/Llama-2-70b-hf": dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672,
                                      vocab_size=32000, num_attention_heads=64, num_key_value_heads=8,
                                      tie_word_embeddings=False, max_position_embeddings=4096),
}
for _size in ("7b", "13b", "70b"):
    KNOWN_SHAPES[f"meta-llama/Llama-2-{_size}-chat-hf"] = KNOWN_SHAPES[f"meta-llama/Llama-2-{_size}-hf"]

# Prompt tokens around the variable text when the model's tokenizer cannot be read (`selfalign plan`
# offline with a Hub id), measured with the LLaMA-2 tokenizer on the shipped templates: the rating
# prompt is ~530 tokens plus ~660 per worked example (3 shots: 2,497), the backward and forward
# templates ~30. With the tokenizer at hand the planner counts them instead.
RATING_FIXED, RATING_PER_SHOT, TEMPLATE_FIXED = 530, 660, 32


class MemoryPlanError(ModelError):
    """The estimated memory of a stage exceeds the visible device memory."""


@dataclass
class Shape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    context: int | None = None  # max_position_embeddings

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> Shape:
        try:
            h, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            return cls(hidden=h, layers=int(c["num_hidden_layers"]),
                       intermediate=int(c["intermediate_size"]), vocab=int(c["vocab_size"]),
                       heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads),
                       head_dim=int(c.get("head_dim") or h // heads),
                       tied=bool(c.get("tie_word_embeddings", False)),
                       context=int(c["max_position_embeddings"]) if c.get("max_position_embeddings") else None)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a decoder config with the usual fields ({e})") from None

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block (Llama naming)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def block_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def n_params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.embedding_params + self.layers * self.block_linear_params + norms

    def kv_bytes(self, tokens: int, dtype_bytes: int) -> int:
        """KV cache of `tokens` positions (keys and values of every layer)."""
        return 2 * self.layers * tokens * self.kv_heads * self.head_dim * dtype_bytes

    def lora_params(self, lora: LoraConfig) -> int:
        shapes = self.linear_shapes()
        per_block = sum(lora.r * (a + b) for name, (a, b) in shapes.items()
                        if any(t == name or name.endswith(t) for t in lora.target_modules))
        return self.layers * per_block


@dataclass
class Plan:
    what: str
    parts: dict[str, int] = field(default_factory=dict)
    available: int | None = None
    device: str = ""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def format(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in self.parts.items() if v >= 0.05 * GiB)
        avail = f"{self.available / GiB:.1f} GiB {self.device}" if self.available else "unknown"
        return f"{self.what}: needs ~{self.total / GiB:.1f} GiB ({parts}); available {avail}"


def _is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def fsdp_shards() -> int:
    """How many ranks share (shard) the model in a training stage: the world size under FSDP
    (`accelerate launch` with the shipped accelerate/fsdp config), else 1 (DDP: a full copy per rank)."""
    from selfalign.models import fsdp_enabled, world_size

    return world_size() if fsdp_enabled() else 1


def _bytes_per_param(dtype: str, device: str) -> int:
    if dtype == "float32" or (dtype == "auto" and not _is_cuda(device)):
        return 4
    return 2


def weight_bytes(shape: Shape, dtype_bytes: int, load_in_4bit: bool) -> int:
    linear = shape.layers * shape.block_linear_params
    other = shape.n_params - linear
    if load_in_4bit:  # NF4: 4 bits + one fp32 absmax per 64-weight block; the rest in the dtype
        return int(linear * (0.5 + 4 / 64)) + other * dtype_bytes
    return shape.n_params * dtype_bytes


def plan_training(shape: Shape, lora: LoraConfig, train: TrainConfig, dtype_bytes: int,
                  load_in_4bit: bool, cuda: bool, shards: int = 1) -> Plan:
    """Per process. Under FSDP (`shards` ranks) each rank holds 1/shards of the weights, LoRA
    weights, gradients and optimizer states, plus the decoder blocks being all-gathered (the one
    computing and the one prefetched); activations and logits are per rank, as with DDP."""
    b, s, h, n_layers = train.batch_size, train.max_seq_len, shape.hidden, shape.layers
    n_lora = shape.lora_params(lora)
    if train.gradient_checkpointing:  # each block's input is kept, one block recomputed at a time
        act = b * s * h * n_layers * dtype_bytes + b * s * h * 17 * dtype_bytes
    else:  # ~34 values of h per token per block (Korthikanti et al. 2022, flash/SDPA attention)
        act = b * s * h * n_layers * 17 * dtype_bytes
    parts = {
        "weights": weight_bytes(shape, dtype_bytes, load_in_4bit) // shards,
        "lora+grads+adam": n_lora * 16 // shards,  # fp32 weights, grads and two AdamW moments
        "activations": act,
        "logits": b * s * shape.vocab * 4 * 2,  # fp32 logits and their gradient
        "overhead": CUDA_CONTEXT if cuda else CPU_RUNTIME,
    }
    what = f"training (batch {b} x {s} tokens)"
    if shards > 1:
        parts["gathered blocks"] = 2 * shape.block_linear_params * dtype_bytes
        what = f"training (batch {b} x {s} tokens per GPU, FSDP over {shards} GPUs)"
    return Plan(what, parts)


@dataclass
class PromptTokens:
    """A generation stage's prompt, in tokens, around its variable text (the response, the
    instruction): `fixed` tokens of template and worked examples, of which `shared` open every
    prompt of the stage (computed once and cached by the hf backend), and `variable` the most
    that the variable text and the new tokens add (the cuts of the config)."""

    fixed: int
    shared: int
    variable: int
    counted: bool  # True: counted with the model's tokenizer; False: estimated

    @property
    def longest(self) -> int:
        return self.fixed + self.variable


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def prompt_tokens(cfg: Config, stage: str, tokenizer: Any = None) -> PromptTokens:
    """Token counts of a stage's prompts, from the tokenizer when given (else estimates)."""
    from selfalign.prompts import Templates

    tpl = Templates.load(cfg.run.templates_dir)

    g, cur = cfg.generation, cfg.curation
    new = cur.max_new_tokens if cur.mode == "generate" else 8  # logprob: "Score:" and one token (likelihood: none)
    variable = {
        "augment": g.max_prompt_tokens + g.instruction.max_new_tokens,
        # a response cut to max_response_tokens, an instruction the backward model wrote
        "curate": cur.max_response_tokens + g.instruction.max_new_tokens + new,
        "responses": 512 + g.response.max_new_tokens,  # a user prompt (not cut) + the response
    }[stage]
    render = {
        "augment": lambda a, b: tpl.backward_messages(a),
        "curate": lambda a, b: tpl.rating_messages(a, b, cur.shots),
        "responses": lambda a, b: tpl.forward_messages(a, cfg.forward.seed_tag),
    }[stage]
    if tokenizer is None:
        fixed = RATING_FIXED + RATING_PER_SHOT * cur.shots if stage == "curate" else TEMPLATE_FIXED
        shared = fixed - 40 if stage == "curate" and cur.shots else 0  # all but the tail after the pair
        return PromptTokens(fixed, shared, variable, counted=False)

    def ids(a: str, b: str) -> list[int]:
        return tokenizer(tpl.render_prompt(tokenizer, render(a, b)), add_special_tokens=False)["input_ids"]

    shared = _common_prefix(ids("What is x?", "x is y."), ids("Tell me about z.", "z is w."))
    return PromptTokens(len(ids("", "")), shared, variable, counted=True)


def generation_context(cfg: Config, stage: str | None, tokenizer: Any = None, context: int | None = None) -> int:
    """Longest prompt + new tokens of a generation stage (None: the longest of all of them),
    capped by the model's context: longer prompts are cut to fit it (prompts.fit_prompt)."""
    stages = [stage] if stage is not None else ["augment", "curate", "responses"]
    n = max(prompt_tokens(cfg, s, tokenizer).longest for s in stages)
    return min(n, context) if context else n


def plan_generation(shape: Shape, cfg: Config, dtype_bytes: int, load_in_4bit: bool, cuda: bool,
                    lora: LoraConfig | None, stage: str | None = None, tokenizer: Any = None) -> Plan:
    ctx = generation_context(cfg, stage, tokenizer, shape.context)
    g = cfg.generation
    b = g.batch_size or g.max_batch_size  # auto (0) never goes above max_batch_size
    parts = {
        "weights": weight_bytes(shape, dtype_bytes, load_in_4bit),
        "lora": shape.lora_params(lora) * dtype_bytes if lora else 0,
        # every row holds the whole prompt (the shared prefix copied in) + room for the new tokens
        "kv_cache": b * shape.kv_bytes(ctx + 1, dtype_bytes),
        "prefill": b * ctx * shape.hidden * 8 * dtype_bytes + b * shape.vocab * 4 * 2,
        "overhead": CUDA_CONTEXT if cuda else CPU_RUNTIME,
    }

    tokens = prompt_tokens(cfg, stage, tokenizer) if stage is not None else None
    if tokens is not None and tokens.shared >= MIN_SHARED_PREFIX:
        parts["prefix_cache"] = shape.kv_bytes(tokens.shared, dtype_bytes)  # kept on the engine
    how = "counted" if tokens is not None and tokens.counted else "estimated"
    cap = f", capped by the context {shape.context}" if shape.context and ctx == shape.context else ""
    return Plan(f"generation ({stage or 'longest stage'}, batch {b} x {ctx} tokens {how}{cap})", parts)


def plan_vllm(shape: Shape, cfg: Config, lora: LoraConfig | None, stage: str | None,
              tokenizer: Any = None) -> Plan:
    """vLLM in 16 bit (it has no bitsandbytes 4-bit): weights, LoRA slots, and the KV cache of at
    least one longest sequence, within generation.gpu_memory_utilization of the GPU."""
    ctx = generation_context(cfg, stage, tokenizer, shape.context)
    parts = {
        "weights": weight_bytes(shape, 2, False),
        "lora": shape.lora_params(lora) * 2 if lora else 0,
        "kv_cache": shape.kv_bytes(ctx, 2),
        "activations": max(ctx, 2048) * shape.hidden * 8 * 2 + 256 * shape.vocab * 4,  # profile run
        "overhead": CUDA_CONTEXT,
    }
    return Plan(f"vLLM fp16 ({stage or 'longest stage'}, {ctx} tokens)", parts)


def read_shape(spec: str, path: str) -> Shape | None:
    """The model's shape from its config.json (local folder, known id, or the Hub), else None."""
    local = Path(path) / "config.json"
    try:
        if local.is_file():
            return Shape.from_config(json.loads(local.read_text()))
        if spec in KNOWN_SHAPES:
            return Shape.from_config(KNOWN_SHAPES[spec])
        from transformers import AutoConfig

        return Shape.from_config(AutoConfig.from_pretrained(path).to_dict())
    except Exception:  # noqa: BLE001 - unknown shape: no plan, the load itself will say more
        return None


def visible_memory(device: str) -> tuple[int | None, str]:
    """(bytes free on the device that will be used, its name); None when unknown."""
    if _is_cuda(device):
        import torch

        if torch.cuda.is_available():
            index = int(device.split(":", 1)[1]) if ":" in device else None
            free, _total = torch.cuda.mem_get_info(index)
            return free, f"free on {torch.cuda.get_device_name(index)}"
        return None, "cuda"
    if device == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available RAM"
        except (ValueError, OSError, AttributeError):
            return None, "cpu"
    return None, device


def suggestion(cfg: Config, plan: Plan) -> str:
    tips = []
    if not cfg.models.load_in_4bit:
        tips.append(f"4-bit QLoRA (--config {QLORA_CONFIG}, or models.load_in_4bit=true)")
    if plan.what.startswith("training"):
        tips.append("train_*.gradient_checkpointing=true, a smaller train_*.batch_size with a larger "
                    "grad_accum, or a shorter max_seq_len")
    else:
        tips.append("a smaller generation.batch_size or max_prompt_tokens")
    tips.append("run.memory_check=false to try anyway")
    return "try " + "; ".join(tips)


def read_tokenizer(path: str, trust_remote_code: bool = False, local_only: bool = True) -> Any:
    """The model's tokenizer for counting prompt tokens, or None. `local_only`: a folder or the Hub
    cache, no download (`selfalign plan` must not wait on the network)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                             local_files_only=local_only)
    except Exception:  # noqa: BLE001 - no tokenizer: the planner estimates the prompt lengths
        return None


def make_plan(cfg: Config, spec: str, path: str, device: str, train: TrainConfig | None = None,
              lora: LoraConfig | None = None, stage: str | None = None, tokenizer: Any = None,
              vllm: bool = False) -> Plan | None:
    """The estimate for a training (train given) or generation stage; None if the shape is unknown.

    Generation counts the prompts' tokens with `tokenizer` (read from `path` when not given and it
    is local or cached), else estimates them. `vllm`: vLLM's fp16 engine within
    generation.gpu_memory_utilization."""
    shape = read_shape(spec, path)
    if shape is None:
        return None
    if cfg.run.device_memory_gb is not None and cfg.run.device == "auto":
        device = "cuda"  # planning for a GPU from any machine
    dtype_bytes = _bytes_per_param(cfg.models.dtype, device)
    cuda = _is_cuda(device)
    if train is None and tokenizer is None:
        tokenizer = read_tokenizer(path, cfg.models.trust_remote_code)
    share = 1.0
    if train is not None:
        plan = plan_training(shape, lora or cfg.lora, train, dtype_bytes, cfg.models.load_in_4bit, cuda,
                             shards=fsdp_shards())
    elif vllm:
        plan = plan_vllm(shape, cfg, lora, stage, tokenizer)
        share = cfg.generation.gpu_memory_utilization
    else:
        plan = plan_generation(shape, cfg, dtype_bytes, cfg.models.load_in_4bit, cuda, lora, stage, tokenizer)
    if cfg.run.device_memory_gb is not None:
        plan.available, plan.device = int(cfg.run.device_memory_gb * GiB), "(run.device_memory_gb)"
    else:
        plan.available, plan.device = visible_memory(device)
    if share < 1.0 and plan.available is not None:
        plan.available = int(plan.available * share)
        plan.device = f"{plan.device} x generation.gpu_memory_utilization {share}"
    plan.what = f"{plan.what} of {spec} ({shape.n_params / 1e9:.2f}B parameters)"
    return plan


def check(cfg: Config, spec: str, path: str, device: str, train: TrainConfig | None = None,
          lora: LoraConfig | None = None, stage: str | None = None, tokenizer: Any = None) -> Plan | None:
    """Called before a model is loaded: raise MemoryPlanError if the stage cannot fit."""
    if not cfg.run.memory_check:
        return None
    plan = make_plan(cfg, spec, path, device, train, lora, stage, tokenizer)
    if plan is not None and not plan.fits:
        raise MemoryPlanError(f"{plan.format()}: it will not fit; {suggestion(cfg, plan)}")
    return plan


def check_training(cfg: Config, train: TrainConfig) -> Plan | None:
    """`check` for LoRA training of `cfg.models.base` with `train`, before the model is loaded."""
    from selfalign.models import pick_device, resolve_model

    base = cfg.models.base
    return check(cfg, base, resolve_model(base, cfg.models.cache_dir), pick_device(cfg.run.device), train=train,
                 lora=cfg.lora)


def auto_batch_size(cfg: Config, spec: str, path: str, device: str, stage: str | None,
                    lora: LoraConfig | None = None, tokenizer: Any = None) -> tuple[int, str]:
    """(batch size, why) for generation.batch_size=0: the largest batch, up to
    generation.max_batch_size, whose KV cache and activations fit the budget (generation.memory_budget_gb,
    default: half of the device memory left after the weights). On a CPU, larger batches read the
    weights once for more rows per decoding step (measured: 32 prompts, batch 8 -> 16 -> 32 took
    34 -> 28 -> 27 s); the cap keeps the cost of one interrupted batch small."""
    g = cfg.generation
    single = cfg.model_copy(update={"generation": g.model_copy(update={"batch_size": 1})})
    plan = make_plan(single, spec, path, device, lora=lora, stage=stage, tokenizer=tokenizer)
    if plan is None:
        return min(8, g.max_batch_size), "model shape unknown: 8"
    per_row = plan.parts["kv_cache"] + plan.parts["prefill"]
    if g.memory_budget_gb is not None:
        budget, src = int(g.memory_budget_gb * GiB), f"generation.memory_budget_gb={g.memory_budget_gb}"
    elif plan.available is not None:
        fixed = plan.total - per_row
        budget, src = max(0, (plan.available - fixed) // 2), f"half of {plan.device} left after the weights"
    else:
        return min(8, g.max_batch_size), "device memory unknown: 8"
    batch = max(1, min(g.max_batch_size, budget // max(per_row, 1)))
    return int(batch), f"{per_row / 2**20:.0f} MiB per prompt, budget {budget / GiB:.1f} GiB ({src})"


def choose_backend(cfg: Config, spec: str, path: str, device: str, lora: LoraConfig | None,
                   stage: str | None, tokenizer: Any = None) -> tuple[str, Plan | None, str]:
    """(backend, its plan, why) for a generation stage. vLLM has no bitsandbytes 4-bit (0.28+ moved
    it out of core), so with models.load_in_4bit vLLM serves the 16-bit model where the planner
    says it fits generation.gpu_memory_utilization of the GPU, and the hf backend generates in
    4-bit otherwise."""
    if cfg.generation.backend == "hf":
        return "hf", make_plan(cfg, spec, path, device, lora=lora, stage=stage, tokenizer=tokenizer), ""
    v = make_plan(cfg, spec, path, device, lora=lora, stage=stage, tokenizer=tokenizer, vllm=True)
    if not cfg.models.load_in_4bit:
        return "vllm", v, ""
    if v is not None and v.fits:
        return "vllm", v, "models.load_in_4bit: vLLM has no bitsandbytes 4-bit; the 16-bit model fits, vLLM serves it"
    hf = make_plan(cfg, spec, path, device, lora=lora, stage=stage, tokenizer=tokenizer)
    why = ("models.load_in_4bit: vLLM has no bitsandbytes 4-bit and the 16-bit model does not fit"
           + (f" ({v.total / GiB:.1f} GiB > {v.available / GiB:.1f} GiB)" if v and v.available else "")
           + ": the hf backend generates in 4-bit")
    return "hf", hf, why


def plan_run(cfg: Config) -> list[tuple[str, Plan | None]]:
    """The estimate of every model-loading stage of `selfalign run`, without loading anything."""
    from selfalign.models import pick_device, resolve_model

    device = pick_device(cfg.run.device)
    base = resolve_model(cfg.models.base, cfg.models.cache_dir)
    rater = cfg.models.base if cfg.models.rater == "m0" else cfg.models.rater
    rater_path = resolve_model(rater, cfg.models.cache_dir)
    rater_lora = cfg.lora if cfg.models.rater == "m0" else None

    def gen(stage: str, spec: str, path: str, lora: LoraConfig | None) -> tuple[str, Plan | None]:
        backend, plan, _why = choose_backend(cfg, spec, path, device, lora, stage)
        return (stage if cfg.generation.backend == "hf" else f"{stage} ({backend})"), plan

    return [
        ("train-backward", make_plan(cfg, cfg.models.base, base, device, train=cfg.train_backward)),
        gen("augment", cfg.models.base, base, cfg.lora),
        gen("curate", rater, rater_path, rater_lora),
        ("train-forward", make_plan(cfg, cfg.models.base, base, device, train=cfg.train_forward)),
        gen("responses", cfg.models.base, base, cfg.lora),
    ]


def config_for_gpu(total_gib: float | None, capability: tuple[int, int] | None = None,
                   count: int = 1) -> tuple[str, list[str], str]:
    """(config, overrides, why) for the GPU a notebook finds: what `CONFIG = "auto"` runs.

    A run uses one GPU (generation runs in one process); with several, the note gives the
    launch line that trains on all of them."""
    if total_gib is None:
        return "default", [], "no GPU: the offline SmolLM2-135M config (plumbing, not quality)"
    bf16 = capability is not None and capability[0] >= 8
    fp16 = [] if bf16 else ["models.dtype=float16"]  # no native bf16 before compute capability 8.0
    if total_gib >= 38:
        cfg, over, why = "llama2-7b", fp16, f"{total_gib:.0f} GiB: LLaMA-2-7B in 16 bit with LoRA"
    elif total_gib >= 22:
        cfg, over, why = ("llama2-7b", ["generation.batch_size=2", *fp16],
                          f"{total_gib:.0f} GiB: LLaMA-2-7B in 16 bit, generation batch 2")
    else:
        cfg, over, why = QLORA_CONFIG, [], f"{total_gib:.0f} GiB: 4-bit QLoRA in fp16 (T4, P100, V100 16 GB)"
        if total_gib < 14:
            why += "; under 14 GiB it may not fit: read the memory plan below"
    if not bf16:
        why += "; no native bf16 on this GPU (compute capability < 8.0): fp16"
    if count > 1:
        why += (f"; {count} GPUs: this notebook uses one; to train on all, run `selfalign augment`, then "
                f"`accelerate launch --config_file $(selfalign config path accelerate/ddp) --num_processes {count} -m "
                f"selfalign.cli train-forward --config {cfg}` with grad_accum divided by {count}")
    return cfg, over, why
