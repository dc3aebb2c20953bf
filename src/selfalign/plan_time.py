"""Time estimates per stage for `selfalign plan`: arithmetic from token counts and a device's
peak compute and memory bandwidth. An estimate (a factor of ~2 either way on a GPU; the CPU
figures are calibrated on this project's default run, docs/gpu-and-colab.md#planned-vs-measured),
meant to say "minutes, hours or days", not to schedule.

- Training a LoRA adapter: per token, forward 2N FLOPs and backward 2N (gradients of the
  activations only: the base weights are frozen), +2N for gradient checkpointing's recomputation;
  at `train_mfu` of the device's dense 16-bit peak (half of that in 4-bit: the weights are
  de-quantized at every use).
- Generation: prefill at `gen_mfu` of the peak; each decoding step reads every weight once
  (memory bound at `bandwidth_eff` of the bandwidth) for the whole batch, plus a fixed
  per-step cost (kernel launches, Python: the hf backend's `generate`).

Counts that the config does not fix are assumed: `AVG_PAIR_TOKENS` tokens per training pair
before the max_seq_len cut (Guanaco/LIMA pairs), `OK_FRACTION` of the generated instructions
rated and `KEEP_FRACTION` of the sampled responses kept (the default run's), every generation
running to its max_new_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfalign.config import Config, TrainConfig
from selfalign.memory_estimate import TEMPLATE_FIXED, Shape, prompt_tokens, weight_bytes
from selfalign.train_data import PROBE_EXAMPLES


@dataclass(frozen=True)
class Device:
    name: str
    tflops: float  # dense fp16/bf16 tensor peak (fp32 on a CPU)
    bandwidth_gbs: float
    train_mfu: float = 0.35
    gen_mfu: float = 0.30
    bandwidth_eff: float = 0.6
    step_overhead_s: float = 0.03  # per decoding step of a batch (hf backend)
    gib: float = 0.0  # memory, to guess the device from run.device_memory_gb


# Data-sheet peaks: T4 65 TFLOPS fp16 / 320 GB/s; L4 121 / 300; A100 (SXM, 40 GB) 312 / 1555;
# H100 SXM 989 / 3350. CPU: calibrated on the default run (2 shared cores here): see the docs.
DEVICES = {
    "T4": Device("T4", 65, 320, train_mfu=0.25, gib=15),  # 70 W: its clocks drop under sustained load
    "L4": Device("L4", 121, 300, gib=22),
    "A100": Device("A100", 312, 1555, train_mfu=0.4, gib=40),
    "H100": Device("H100", 989, 3350, train_mfu=0.4, step_overhead_s=0.02, gib=80),
    # effective figures of a 2-core machine alone (the default run's stage times of
    # docs/results/2026-12-07-restructure.md: train-backward 138 s for 160 pairs of ~245 tokens,
    # augment 103 s, curate 96 s, train-forward 150 s, responses 14 s)
    "cpu": Device("cpu", 0.15, 10, train_mfu=1.0, gen_mfu=1.0, bandwidth_eff=1.0, step_overhead_s=0.04),
}
AVG_PAIR_TOKENS = 250  # a Guanaco/LIMA pair, template included, before the max_seq_len cut (~245 measured)
SEED_ROWS_IF_ALL = 3200  # data.seed_limit null: ~3.2k usable English Guanaco pairs
OK_FRACTION = 0.6  # generated instructions usable for curation (default run: 89 of 150)
KEEP_FRACTION = 0.2  # curated pairs kept at the default threshold (default run: 23 of 150)


def pick_device(cfg: Config, name: str | None = None) -> Device:
    """The device to estimate for: `name`, else the visible GPU's name, else by
    run.device_memory_gb, else the CPU."""
    if name:
        key = {k.lower(): k for k in DEVICES}.get(name.lower())
        if key is None:
            raise ValueError(f"unknown device {name!r}; one of {', '.join(DEVICES)}")
        return DEVICES[key]
    import torch

    if torch.cuda.is_available():
        found = torch.cuda.get_device_name()
        for k in ("H100", "A100", "L4", "T4"):
            if k in found:
                return DEVICES[k]
    if cfg.run.device_memory_gb is not None:
        gpus = sorted((d for d in DEVICES.values() if d.gib), key=lambda d: d.gib)
        return next((d for d in gpus if cfg.run.device_memory_gb <= d.gib * 1.1), gpus[-1])
    return DEVICES["cpu"]


def gpu_memory_gb(name: str) -> float | None:
    """The memory of a named device (None: the CPU, or unknown: the visible one is planned for)."""
    dev = {k.lower(): d for k, d in DEVICES.items()}.get(name.lower())
    return dev.gib or None if dev else None


def _examples(cfg: Config, stage: str) -> int:
    seed = cfg.data.seed_limit or SEED_ROWS_IF_ALL
    if stage == "train-backward":
        return seed
    return (seed if cfg.forward.use_seed else 0) + round(cfg.data.unlabelled_n * KEEP_FRACTION)


def train_seconds(shape: Shape, cfg: Config, train: TrainConfig, stage: str, dev: Device) -> float:
    per_example = min(train.max_seq_len, AVG_PAIR_TOKENS)
    if train.max_steps and train.max_steps > 0:
        examples = train.max_steps * train.batch_size * train.grad_accum
    else:
        examples = _examples(cfg, stage) * train.epochs
    flops = (4 + 2 * train.gradient_checkpointing) * shape.n_params * per_example * examples
    # the probe loss: forward passes over up to 16 examples before and after training (train_data)
    flops += 2 * 2 * shape.n_params * per_example * min(PROBE_EXAMPLES, _examples(cfg, stage))
    mfu = dev.train_mfu * (0.5 if cfg.models.load_in_4bit and dev.name != "cpu" else 1.0)
    return flops / (dev.tflops * 1e12 * mfu)


def generation_seconds(shape: Shape, cfg: Config, stage: str, dev: Device, tokenizer=None) -> float:
    g, cur = cfg.generation, cfg.curation
    rows = {"augment": cfg.data.unlabelled_n, "curate": max(1, round(cfg.data.unlabelled_n * OK_FRACTION)),
            "responses": cfg.forward.n_responses}[stage]
    tokens = prompt_tokens(cfg, stage, tokenizer)
    prompt = tokens.fixed - tokens.shared + min(g.max_prompt_tokens, AVG_PAIR_TOKENS)
    if stage == "augment":
        new = g.instruction.max_new_tokens
    elif stage == "responses":
        new = g.response.max_new_tokens
    elif cur.mode == "generate":
        new = cur.max_new_tokens * cur.n_samples
    elif cur.mode == "logprob":  # one pass of the rating prompt
        new = 0
    else:  # likelihood modes: the response with and without the instruction (+ two short passes)
        new, prompt = 0, 2 * (TEMPLATE_FIXED + g.instruction.max_new_tokens + cur.max_response_tokens)
    batch = max(1, min(g.batch_size or g.max_batch_size, rows))
    flops_per_s = dev.tflops * 1e12 * dev.gen_mfu
    prefill = 2 * shape.n_params * prompt * rows / flops_per_s
    wbytes = weight_bytes(shape, 4 if dev.name == "cpu" else 2, cfg.models.load_in_4bit and dev.name != "cpu")
    step = max(wbytes / (dev.bandwidth_gbs * 1e9 * dev.bandwidth_eff), 2 * shape.n_params * batch / flops_per_s)
    steps = -(-rows // batch) * new
    return prefill + steps * (step + dev.step_overhead_s)


LOAD_GBS = 1.0  # reading the weights from a local disk or the Hub cache, GB/s; + 3 s of set-up


def stage_seconds(shape: Shape, cfg: Config, stage: str, dev: Device, tokenizer=None) -> float:
    base = stage.split(" ")[0]
    load = 3 + shape.n_params * 2 / (LOAD_GBS * 1e9)
    if base == "train-backward":
        return load + train_seconds(shape, cfg, cfg.train_backward, base, dev)
    if base == "train-forward":
        return (load + train_seconds(shape, cfg, cfg.train_forward, base, dev)) * cfg.curation.iterations
    return load + generation_seconds(shape, cfg, base, dev, tokenizer)


def format_seconds(s: float) -> str:
    if s < 90:
        return f"~{s:.0f} s"
    if s < 90 * 60:
        return f"~{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"~{s / 3600:.1f} h"
    return f"~{s / 86400:.1f} days"


def plan_lines(cfg: Config, device: str | None = None) -> list[tuple[str, object, str]]:
    """(stage, memory plan, printed line) of every model-loading stage: memory and estimated time."""
    from selfalign.memory import plan_run, read_shape, read_tokenizer
    from selfalign.models import resolve_model

    dev = pick_device(cfg, device)
    path = resolve_model(cfg.models.base, cfg.models.cache_dir)
    shape = read_shape(cfg.models.base, path)
    tok = read_tokenizer(path, cfg.models.trust_remote_code)
    out = []
    for stage, plan in plan_run(cfg):
        when = (f"time {format_seconds(stage_seconds(shape, cfg, stage, dev, tok))} (estimate, {dev.name})"
                if shape is not None else "time unknown")
        if plan is None:
            line = f"{stage}: memory unknown (cannot read the model's config.json); {when}"
        else:
            line = f"{stage}: {'fits' if plan.fits else 'DOES NOT FIT'}: {plan.format()}; {when}"
        out.append((stage, plan, line))
    return out
