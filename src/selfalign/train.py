"""LoRA fine-tuning shared by the backward and the forward model.

Examples are (chat messages, target) pairs, tokenized in `train_data.py`: prompt and target
separately, then concatenated, so the loss mask (labels = -100 on the prompt) is exact. Training runs through the
stock transformers `Trainer` (so `accelerate launch` / `torchrun` work unchanged), with a PEFT
LoRA adapter, length-grouped batches and resumable checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfalign.config import LoraConfig, ModelsConfig, TrainConfig
from selfalign.io import write_json, write_jsonl
from selfalign.prompts import Templates
from selfalign.train_data import (  # noqa: F401 - the training API: import these from selfalign.train
    IGNORE_INDEX,
    LengthBucketSampler,
    PadCollator,
    TokenizedSet,
    TrainExample,
    probe_loss,
    probe_rows,
    tokenize_example,
    tokenize_examples,
)


@dataclass
class TrainResult:
    adapter_dir: Path
    n_examples: int
    n_tokens: int
    n_target_tokens: int
    dropped: dict[str, int]
    truncated: int
    first_loss: float | None  # the first logged step's loss (one batch)
    last_loss: float | None
    seconds: float
    tokens_per_second: float
    steps: int
    # the mean loss of the first and of the last `loss_window` logged steps (other examples, of
    # other lengths: a trend, not a comparison)
    loss_start: float | None = None
    loss_end: float | None = None
    loss_window: int = 0
    # the mean loss per target token of the same `probe_n` training examples before and after
    # training (`probe_loss`): like with like; None under several processes
    probe_before: float | None = None
    probe_after: float | None = None
    probe_n: int = 0

    def summary(self, what: str, max_seq_len: int) -> str:
        """One line a person can read: examples trained on and those dropped or cut, the loss at
        the start and the end of training (like with like), speed."""
        dropped = sum(self.dropped.values())
        why = ", ".join(f"{n} {k}" for k, n in sorted(self.dropped.items()))
        parts = [f"{self.n_examples} examples{f' ({what})' if what else ''}"]
        if dropped:
            parts.append(f"{dropped} dropped ({why})")
        if self.truncated:
            parts.append(f"{self.truncated} cut at max_seq_len {max_seq_len} (their ends are not trained on)")
        if self.probe_before is not None and self.probe_after is not None:
            parts.append(f"loss on {self.probe_n} of these examples {self.probe_before:.2f} before training, "
                         f"{self.probe_after:.2f} after")
        elif self.loss_start is not None and self.loss_end is not None:
            k = "step" if self.loss_window == 1 else f"{self.loss_window} steps"
            parts.append(f"loss {self.loss_start:.2f} over the first {k}, {self.loss_end:.2f} over the last {k}")
        parts.append(f"{self.steps} steps in {self.seconds:.0f}s ({self.tokens_per_second:.0f} tokens/s)")
        return "; ".join(parts)


def _compute_dtype(model: Any) -> torch.dtype:
    """The dtype the frozen weights compute in (4-bit: the bitsandbytes compute dtype)."""
    qc = getattr(model.config, "quantization_config", None)
    if qc is not None and getattr(qc, "bnb_4bit_compute_dtype", None) is not None:
        return qc.bnb_4bit_compute_dtype
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _trainer_class() -> type:
    from transformers import Trainer

    class BucketTrainer(Trainer):
        """The stock Trainer, with LengthBucketSampler when train.group_by_length is on."""

        bucket: tuple[list[int], int] | None = None  # (lengths, seed)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if self.bucket is None:
                return super()._get_train_sampler(train_dataset)
            lengths, seed = self.bucket
            return LengthBucketSampler(lengths, self.args.per_device_train_batch_size, seed)

    return BucketTrainer


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _crash_callbacks() -> list[Any]:
    """Fault injection for the crash tests: SELFALIGN_CRASH_AFTER_STEPS=N makes the process
    SIGKILL itself at the end of its N-th optimizer step, before that step's checkpoint is
    written (no cleanup runs, as in a real crash)."""
    limit = os.environ.get("SELFALIGN_CRASH_AFTER_STEPS")
    if limit is None:
        return []
    import signal

    from transformers import TrainerCallback

    class _Crash(TrainerCallback):
        steps = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.steps += 1
            if self.steps >= int(limit):
                os.kill(os.getpid(), signal.SIGKILL)

    return [_Crash()]


def train_lora(
    examples: list[TrainExample],
    out_dir: Path,
    models: ModelsConfig,
    lora: LoraConfig,
    train: TrainConfig,
    seed: int = 0,
    device: str = "auto",
    name: str = "lora",
    templates: Templates | None = None,
) -> TrainResult:
    """Train a LoRA adapter of `models.base` on `examples` and save a standard PEFT folder at `out_dir`.

    The caller checks the memory first (`memory.check_training`): it knows the whole run's config.

    Checkpoints go to `<out_dir>.work/`; an interrupted run resumes from the last one. The
    adapter folder appears (atomically renamed) only when training has finished.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import TrainingArguments, set_seed

    from selfalign.models import accepts_logits_to_keep, load_model, pick_device

    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".work")
    set_seed(seed)
    model, tok = load_model(models.base, models, device=device, trainable=True)
    data = tokenize_examples(tok, examples, train.max_seq_len, templates)
    if not data.rows:
        from selfalign.io import DataError

        raise DataError(f"{name}: no training example left after tokenization ({data.dropped})")
    peft_cfg = PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
    )
    if models.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, peft_cfg)
    model.config.use_cache = False

    from datasets import Dataset

    ds = Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in data.rows])
    # the device picked, not where the weights are: under FSDP they stay on the CPU until the Trainer
    on_cpu = pick_device(device) == "cpu"
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=1,
        seed=seed,
        data_seed=seed,
        report_to="none",
        train_sampling_strategy="random",  # group_by_length: LengthBucketSampler, below
        remove_unused_columns=False,
        use_cpu=on_cpu,
        bf16=not on_cpu and _compute_dtype(model) == torch.bfloat16,
        fp16=not on_cpu and _compute_dtype(model) == torch.float16,
        gradient_checkpointing=train.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if train.gradient_checkpointing else None,
        dataloader_num_workers=0,
        optim="adamw_torch",
    )
    if not on_cpu:
        from selfalign.gpu import one_gpu_per_process

        one_gpu_per_process(args)  # several GPUs, one process: no DataParallel
    collator = PadCollator(tok.pad_token_id, accepts_logits_to_keep(model))
    trainer = _trainer_class()(model=model, args=args, train_dataset=ds, data_collator=collator,
                               callbacks=_crash_callbacks())
    if train.group_by_length:
        trainer.bucket = ([len(r["input_ids"]) for r in data.rows], seed)
    fsdp = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if fsdp is not None:  # PEFT under FSDP: wrap trainable and frozen parameters separately
        from peft.utils.other import fsdp_auto_wrap_policy

        fsdp.auto_wrap_policy = fsdp_auto_wrap_policy(trainer.model)
    resume = any(work.glob("checkpoint-*")) if work.exists() else False
    # the same few examples' loss before and after: one process only (FSDP shards the model)
    probe = probe_rows(data.rows) if fsdp is None and int(os.environ.get("WORLD_SIZE", "1")) == 1 else []
    probe_file = work / "probe_loss.json"
    before = None
    if probe and resume and probe_file.is_file():
        before = json.loads(probe_file.read_text(encoding="utf-8")).get("before")
    elif probe and not resume:
        before = probe_loss(model, probe, tok.pad_token_id, train.batch_size)
        work.mkdir(parents=True, exist_ok=True)
        probe_file.write_text(json.dumps({"before": before, "n": len(probe)}), encoding="utf-8")
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - t0
    after = probe_loss(model, probe, tok.pad_token_id, train.batch_size) if probe else None

    steps = trainer.state.global_step
    epochs_done = (steps * train.batch_size * train.grad_accum) / max(len(data.rows), 1)
    tokens_seen = int(data.n_tokens * epochs_done)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    window = max(1, min(10, len(losses) // 4))  # a quarter of the steps, at most 10
    result = TrainResult(
        adapter_dir=out_dir,
        n_examples=len(data.rows),
        n_tokens=data.n_tokens,
        n_target_tokens=data.n_target_tokens,
        dropped=data.dropped,
        truncated=data.truncated,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        seconds=round(seconds, 2),
        tokens_per_second=round(tokens_seen / seconds, 1) if seconds > 0 else math.nan,
        steps=steps,
        loss_start=round(sum(losses[:window]) / window, 4) if losses else None,
        loss_end=round(sum(losses[-window:]) / window, 4) if losses else None,
        loss_window=window,
        probe_before=round(before, 4) if before is not None else None,
        probe_after=round(after, 4) if after is not None and before is not None else None,
        probe_n=len(probe),
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if fsdp is not None:  # every rank takes part in gathering the sharded adapter
        fsdp.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(tmp))
    if _is_main_process():
        if fsdp is None:
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        write_jsonl(tmp / "train_log.jsonl", trainer.state.log_history)
        info = {k: v for k, v in result.__dict__.items() if k != "adapter_dir"}
        info.update(name=name, base=models.base, lora=lora.model_dump(), train=train.model_dump())
        write_json(tmp / "training_info.json", info)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
        shutil.rmtree(work, ignore_errors=True)
    return result
