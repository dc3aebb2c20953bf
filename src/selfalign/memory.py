"""Memory planning: check a stage's estimate against the device before loading a model, and refuse
when it can't fit; pick the generation batch size and backend, and the config for a GPU.

The arithmetic of the estimates is in `selfalign.memory_estimate`; here the model's shape is read
(`config.json`, a known id, or the Hub), the device's free memory is asked, and the result is
printed, used or refused (`MemoryPlanError`, with what to try). `run.memory_check=false` turns the
check off; `run.device_memory_gb` plans for another device ("would this fit a 16 GB T4?"), as does
`selfalign plan --device-memory-gb 16`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from selfalign.config import Config, LoraConfig, TrainConfig
from selfalign.memory_estimate import (
    KNOWN_SHAPES,
    GiB,
    Plan,
    Shape,
    plan_generation,
    plan_training,
    plan_vllm,
)
from selfalign.models import ModelError

QLORA_CONFIG = "llama2-7b-qlora-t4"  # a shipped config (selfalign config list)


class MemoryPlanError(ModelError):
    """The estimated memory of a stage exceeds the visible device memory."""


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
            from selfalign.gpu import free_memory

            index = int(device.split(":", 1)[1]) if ":" in device else None
            free, _total = free_memory(index)  # torch's cached blocks count as free
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
    if vllm and plan.available is not None:  # vLLM's start-up rule (selfalign.gpu.vllm_budget)
        plan.available, plan.blocker, plan.device = _vllm_available(cfg, device, plan.available, share)
    plan.what = f"{plan.what} of {spec} ({shape.n_params / 1e9:.2f}B parameters)"
    return plan


def _vllm_available(cfg: Config, device: str, available: int, share: float) -> tuple[int, str, str]:
    """(budget, why vLLM would refuse, label): total x gpu_memory_utilization, if that much is free."""
    if cfg.run.device_memory_gb is not None or not _is_cuda(device):
        return int(available * share), "", f"(run.device_memory_gb) x generation.gpu_memory_utilization {share}"
    import torch

    from selfalign.gpu import vllm_budget

    index = int(device.split(":", 1)[1]) if ":" in device else None
    free, total = torch.cuda.mem_get_info(index)  # vLLM's engine runs in its own process: no cached blocks
    budget, why = vllm_budget(free, total, share)
    return budget, why, f"total on {torch.cuda.get_device_name(index)} x generation.gpu_memory_utilization {share}"


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
    from selfalign.gpu import release
    from selfalign.models import pick_device, resolve_model

    release()  # the previous stage's engine and cached blocks first: they are not this stage's
    base = cfg.models.base
    return check(cfg, base, resolve_model(base, cfg.models.cache_dir), pick_device(cfg.run.device), train=train,
                 lora=cfg.lora)


def auto_batch_size(cfg: Config, spec: str, path: str, device: str, stage: str | None,
                    lora: LoraConfig | None = None, tokenizer: Any = None) -> tuple[int, str]:
    """(batch size, why) for generation.batch_size=0: the largest batch, up to
    generation.max_batch_size, whose KV cache and activations fit the budget (generation.memory_budget_gb,
    default: half of the device memory left after the weights). On a CPU, larger batches read the
    weights once for more rows per decoding step; the cap keeps the cost of one interrupted batch
    small."""
    g = cfg.generation
    single = cfg.model_copy(update={"generation": g.model_copy(update={"batch_size": 1})})
    plan = make_plan(single, spec, path, device, lora=lora, stage=stage, tokenizer=tokenizer)
    if plan is None:
        return min(8, g.max_batch_size), "model shape unknown: 8"
    per_row = sum(plan.parts.get(k, 0) for k in ("kv_cache", "prefill", "logits"))  # logits: scoring
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
        cfg, over, why = QLORA_CONFIG, [], f"{total_gib:.0f} GiB: 4-bit QLoRA in fp16 (T4, V100 16 GB)"
        if total_gib < 14:
            why += "; under 14 GiB it may not fit: read the memory plan below"
    if not bf16:
        why += "; no native bf16 on this GPU (compute capability < 8.0): fp16"
    if count > 1:
        # curate first: train-forward runs its prerequisites, and generation stages refuse several ranks
        why += (f"; {count} GPUs: this notebook uses one; to train on all, run `selfalign curate` (seed to "
                "curation, one process), then "
                f"`accelerate launch --config_file $(selfalign config path accelerate/ddp) --num_processes {count} -m "
                f"selfalign.cli train-forward --config {cfg}` with grad_accum divided by {count}")
    return cfg, over, why
