"""Training data: examples tokenized with the loss on the target only, batches padded and
grouped by length, and the loss of a few examples (`probe_loss`) that training reports before and
after."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from selfalign.prompts import Messages, Templates, clip_chars, shipped

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
    # cut by characters before tokenizing (prompts.clip_chars): a huge row is never tokenized whole
    messages = [{**m, "content": clip_chars(m["content"], max_len + 1)} for m in ex.messages]
    target = clip_chars(ex.target, max_len + 1)
    prompt_ids = tokenizer(tpl.render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(tpl.render_target(tokenizer, messages, target), add_special_tokens=False)["input_ids"]
    truncated = target is not ex.target
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
