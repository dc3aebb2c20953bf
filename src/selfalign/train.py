"""LoRA fine-tuning shared by the backward and the forward model.

Examples are (chat messages, target) pairs. Prompt and target are tokenized separately and
concatenated, so the loss mask (labels = -100 on the prompt) is exact. Training runs through the
stock transformers `Trainer` (so `accelerate launch` / `torchrun` work unchanged), with a PEFT
LoRA adapter, length-grouped batches and resumable checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfalign.config import LoraConfig, ModelsConfig, TrainConfig
from selfalign.io import write_json, write_jsonl
from selfalign.prompts import Messages, Templates, shipped

IGNORE_INDEX = -100


@dataclass
class TrainExample:
    messages: Messages
    target: str
    source_id: str = ""


@dataclass
class TokenizedSet:
    rows: list[dict[str, list[int]]]
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0

    @property
    def n_tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows)

    @property
    def n_target_tokens(self) -> int:
        return sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in self.rows)


def tokenize_example(tokenizer: Any, ex: TrainExample, max_len: int,
                     templates: Templates | None = None) -> dict[str, Any] | str:
    """input_ids + labels (prompt masked with -100), or a reason string if it can't be used.

    Over-long examples lose the tail of the target; an example whose prompt leaves no room for
    at least one target token is dropped (the caller counts it).
    """
    if not ex.target.strip():
        return "empty_target"
    tpl = templates or shipped()
    prompt_ids = tokenizer(tpl.render_prompt(tokenizer, ex.messages), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(tpl.render_target(tokenizer, ex.messages, ex.target), add_special_tokens=False)["input_ids"]
    truncated = False
    room = max_len - len(prompt_ids)
    if room < 1:
        return "prompt_too_long"
    if len(target_ids) > room:
        target_ids = target_ids[:room]
        truncated = True
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
        "truncated": truncated,
    }


PROBE_EXAMPLES = 16  # training examples whose loss is measured before and after training


def probe_rows(rows: list[dict[str, Any]], n: int = PROBE_EXAMPLES) -> list[dict[str, Any]]:
    """`n` tokenized examples spread evenly over the set (the same ones on every run of it)."""
    return rows[:: max(1, len(rows) // n)][:n]


def probe_loss(model: Any, rows: list[dict[str, Any]], pad_id: int, batch_size: int = 8) -> float:
    """Mean loss per target token of `rows` (input_ids, labels), the model in eval mode (no dropout)."""
    from selfalign.likelihood import token_logprobs

    starts = [next(i for i, label in enumerate(r["labels"]) if label != IGNORE_INDEX) for r in rows]
    was_training = model.training
    model.eval()
    try:
        lps = token_logprobs(model, [r["input_ids"] for r in rows], starts, pad_id, batch_size, progress=False)
    finally:
        model.train(was_training)
    n = sum(len(x) for x in lps)
    return -sum(sum(x) for x in lps) / n if n else float("nan")


def tokenize_examples(tokenizer: Any, examples: list[TrainExample], max_len: int,
                      templates: Templates | None = None) -> TokenizedSet:
    out = TokenizedSet(rows=[])
    for ex in examples:
        got = tokenize_example(tokenizer, ex, max_len, templates)
        if isinstance(got, str):
            out.dropped[got] = out.dropped.get(got, 0) + 1
            continue
        out.truncated += int(got.pop("truncated"))
        out.rows.append(got)
    return out


class PadCollator:
    """Left-pads a batch so that every example ends at the last position, and asks the model for
    logits only where the loss needs them (`logits_to_keep`): the last (longest target + 1)
    positions. The prompt's logits are never computed: for the backward model, whose prompt is a
    whole response and whose target a short instruction, that skips most of the lm_head and of the
    softmax over the vocabulary. position_ids count real tokens only, so the result is the same as
    with right padding and full logits (tested); labels are -100 on prompt and padding.

    `keep_logits=False` (a model whose forward has no `logits_to_keep`) returns full labels.
    """

    def __init__(self, pad_token_id: int, keep_logits: bool = True) -> None:
        self.pad = pad_token_id
        self.keep_logits = keep_logits

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, n - k:] = torch.tensor(f["input_ids"])
            labels[i, n - k:] = torch.tensor(f["labels"])
            mask[i, n - k:] = 1
            labels[i, n - k] = IGNORE_INDEX  # a first token is never predicted (not from padding either)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                 "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
        if not self.keep_logits:
            return {**batch, "labels": labels}
        # the model shifts labels by one: logits at positions n-K .. n-2 predict tokens n-K+1 .. n-1
        targets = (labels != IGNORE_INDEX).sum(1)
        keep = min(n, int(targets.max()) + 1)
        return {**batch, "labels": labels[:, n - keep:], "logits_to_keep": keep}


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of similar length, so that little of each batch is padding.

    Per epoch: a seeded random permutation is cut into groups of `group` batches; each group is
    sorted by length and cut into batches; the order of the full batches is shuffled. Unlike the Trainer's
    `group_by_length` sampler, whose groups shrink to a single batch on small data sets (fewer
    than 16 x batch examples: no grouping at all), the groups here are always `group` batches.
    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: int = 16) -> None:
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.group
        batches = []
        for k in range(0, len(perm), size):
            chunk = sorted(perm[k : k + size], key=lambda i: self.lengths[i])  # stable: random ties
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        # only the last group can end in a short batch: it goes last, or it would shift every
        # following batch boundary of the DataLoader
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        order = torch.randperm(len(batches), generator=g).tolist()
        return iter([i for b in [*(batches[j] for j in order), *tail] for i in b])


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
