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
QLORA_CONFIG = "configs/llama2-7b-qlora-t4.yaml"
CUDA_CONTEXT = int(0.75 * GiB)  # CUDA context + allocator slack, ~0.5-1 GB on A100/T4
CPU_RUNTIME = int(1.0 * GiB)  # python, torch and transformers in the process (~1 GB RSS here)

# Shapes of the models the shipped configs name, so `selfalign plan` works without network.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008,
                                     vocab_size=32000, num_attention_heads=32, num_key_value_heads=32,
                                     tie_word_embeddings=False),
    "meta-llama/Llama-2-13b-hf": dict(hidden_size=5120, num_hidden_layers=40, intermediate_size=13824,
                                      vocab_size=32000, num_attention_heads=40, num_key_value_heads=40,
                                      tie_word_embeddings=False),
}
KNOWN_SHAPES["meta-llama/Llama-2-7b-chat-hf"] = KNOWN_SHAPES["meta-llama/Llama-2-7b-hf"]
KNOWN_SHAPES["meta-llama/Llama-2-13b-chat-hf"] = KNOWN_SHAPES["meta-llama/Llama-2-13b-hf"]


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

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> Shape:
        try:
            h, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            return cls(hidden=h, layers=int(c["num_hidden_layers"]),
                       intermediate=int(c["intermediate_size"]), vocab=int(c["vocab_size"]),
                       heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads),
                       head_dim=int(c.get("head_dim") or h // heads),
                       tied=bool(c.get("tie_word_embeddings", False)))
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


def _bytes_per_param(dtype: str, device: str) -> int:
    if dtype == "float32" or (dtype == "auto" and device != "cuda"):
        return 4
    return 2


def weight_bytes(shape: Shape, dtype_bytes: int, load_in_4bit: bool) -> int:
    linear = shape.layers * shape.block_linear_params
    other = shape.n_params - linear
    if load_in_4bit:  # NF4: 4 bits + one fp32 absmax per 64-weight block; the rest in the dtype
        return int(linear * (0.5 + 4 / 64)) + other * dtype_bytes
    return shape.n_params * dtype_bytes


def plan_training(shape: Shape, lora: LoraConfig, train: TrainConfig, dtype_bytes: int,
                  load_in_4bit: bool, cuda: bool) -> Plan:
    b, s, h, n_layers = train.batch_size, train.max_seq_len, shape.hidden, shape.layers
    n_lora = shape.lora_params(lora)
    if train.gradient_checkpointing:  # each block's input is kept, one block recomputed at a time
        act = b * s * h * n_layers * dtype_bytes + b * s * h * 17 * dtype_bytes
    else:  # ~34 values of h per token per block (Korthikanti et al. 2022, flash/SDPA attention)
        act = b * s * h * n_layers * 17 * dtype_bytes
    parts = {
        "weights": weight_bytes(shape, dtype_bytes, load_in_4bit),
        "lora+grads+adam": n_lora * 16,  # fp32 weights, grads and two AdamW moments
        "activations": act,
        "logits": b * s * shape.vocab * 4 * 2,  # fp32 logits and their gradient
        "overhead": CUDA_CONTEXT if cuda else CPU_RUNTIME,
    }
    return Plan(f"training (batch {b} x {s} tokens)", parts)


def generation_context(cfg: Config, stage: str | None) -> int:
    """Longest prompt + new tokens of a generation stage (None: the longest of all of them)."""
    g, cur = cfg.generation, cfg.curation
    ctx = {
        "augment": g.max_prompt_tokens + 64 + g.instruction.max_new_tokens,  # response + template
        # rating prompt: response + ~400 tokens per worked example + the paper's instructions
        "curate": cur.max_response_tokens + 400 * cur.shots + 300 + cur.max_new_tokens,
        "responses": 512 + g.response.max_new_tokens,  # a user prompt + the response
    }
    return ctx[stage] if stage in ctx else max(ctx.values())


def plan_generation(shape: Shape, cfg: Config, dtype_bytes: int, load_in_4bit: bool, cuda: bool,
                    lora: LoraConfig | None, stage: str | None = None) -> Plan:
    ctx = generation_context(cfg, stage)
    g = cfg.generation
    b = g.batch_size or g.max_batch_size  # auto (0) never goes above max_batch_size
    kv = 2 * shape.layers * b * ctx * shape.kv_heads * shape.head_dim * dtype_bytes
    parts = {
        "weights": weight_bytes(shape, dtype_bytes, load_in_4bit),
        "lora": shape.lora_params(lora) * dtype_bytes if lora else 0,
        "kv_cache": kv,
        "prefill": b * ctx * shape.hidden * 8 * dtype_bytes + b * shape.vocab * 4 * 2,
        "overhead": CUDA_CONTEXT if cuda else CPU_RUNTIME,
    }
    return Plan(f"generation ({stage or 'longest stage'}, batch {b} x {ctx} tokens)", parts)


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
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            return free, f"free on {torch.cuda.get_device_name()}"
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
    if plan.what == "training":
        tips.append("train_*.gradient_checkpointing=true, a smaller train_*.batch_size with a larger "
                    "grad_accum, or a shorter max_seq_len")
    else:
        tips.append("a smaller generation.batch_size or max_prompt_tokens")
    tips.append("run.memory_check=false to try anyway")
    return "try " + "; ".join(tips)


def make_plan(cfg: Config, spec: str, path: str, device: str, train: TrainConfig | None = None,
              lora: LoraConfig | None = None, stage: str | None = None) -> Plan | None:
    """The estimate for a training (train given) or generation stage; None if the shape is unknown."""
    shape = read_shape(spec, path)
    if shape is None:
        return None
    if cfg.run.device_memory_gb is not None and cfg.run.device == "auto":
        device = "cuda"  # planning for a GPU from any machine
    dtype_bytes = _bytes_per_param(cfg.models.dtype, device)
    cuda = device == "cuda"
    if train is not None:
        plan = plan_training(shape, lora or cfg.lora, train, dtype_bytes, cfg.models.load_in_4bit, cuda)
    else:
        plan = plan_generation(shape, cfg, dtype_bytes, cfg.models.load_in_4bit, cuda, lora, stage)
    if cfg.run.device_memory_gb is not None:
        plan.available, plan.device = int(cfg.run.device_memory_gb * GiB), "(run.device_memory_gb)"
    else:
        plan.available, plan.device = visible_memory(device)
    plan.what = f"{plan.what} of {spec} ({shape.n_params / 1e9:.2f}B parameters)"
    return plan


def check(cfg: Config, spec: str, path: str, device: str, train: TrainConfig | None = None,
          lora: LoraConfig | None = None, stage: str | None = None) -> Plan | None:
    """Called before a model is loaded: raise MemoryPlanError if the stage cannot fit."""
    if not cfg.run.memory_check:
        return None
    plan = make_plan(cfg, spec, path, device, train, lora, stage)
    if plan is not None and not plan.fits:
        raise MemoryPlanError(f"{plan.format()}: it will not fit; {suggestion(cfg, plan)}")
    return plan


def auto_batch_size(cfg: Config, spec: str, path: str, device: str, stage: str | None,
                    lora: LoraConfig | None = None) -> tuple[int, str]:
    """(batch size, why) for generation.batch_size=0: the largest batch, up to
    generation.max_batch_size, whose KV cache and activations fit the budget (generation.memory_budget_gb,
    default: half of the device memory left after the weights). On a CPU, larger batches read the
    weights once for more rows per decoding step (measured: 32 prompts, batch 8 -> 16 -> 32 took
    34 -> 28 -> 27 s); the cap keeps the cost of one interrupted batch small."""
    g = cfg.generation
    single = cfg.model_copy(update={"generation": g.model_copy(update={"batch_size": 1})})
    plan = make_plan(single, spec, path, device, lora=lora, stage=stage)
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


def plan_run(cfg: Config) -> list[tuple[str, Plan | None]]:
    """The estimate of every model-loading stage of `selfalign run`, without loading anything."""
    from selfalign.models import pick_device, resolve_model

    device = pick_device(cfg.run.device)
    base = resolve_model(cfg.models.base, cfg.models.cache_dir)
    rater = cfg.models.base if cfg.models.rater == "m0" else cfg.models.rater
    rater_path = resolve_model(rater, cfg.models.cache_dir)
    rater_lora = cfg.lora if cfg.models.rater == "m0" else None
    return [
        ("train-backward", make_plan(cfg, cfg.models.base, base, device, train=cfg.train_backward)),
        ("augment", make_plan(cfg, cfg.models.base, base, device, lora=cfg.lora, stage="augment")),
        ("curate", make_plan(cfg, rater, rater_path, device, lora=rater_lora, stage="curate")),
        ("train-forward", make_plan(cfg, cfg.models.base, base, device, train=cfg.train_forward)),
        ("responses", make_plan(cfg, cfg.models.base, base, device, lora=cfg.lora, stage="responses")),
    ]
