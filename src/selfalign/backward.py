"""Backward model M_yx = p(instruction | response): trained on seed pairs turned around."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.prompts import Templates, shipped, truncate_tokens
from selfalign.records import SeedPair
from selfalign.train import TrainExample, TrainResult, train_lora

# Room kept for the template and the instruction when a long response is cut to fit.
_TARGET_ROOM = 96


def backward_example(pair: SeedPair, tokenizer: Any | None = None, max_response_tokens: int | None = None,
                     templates: Templates | None = None) -> TrainExample:
    response = pair.response
    if tokenizer is not None and max_response_tokens is not None:
        response, _ = truncate_tokens(tokenizer, response, max_response_tokens)
    return TrainExample((templates or shipped()).backward_messages(response), pair.instruction, pair.source_id)


def backward_examples(pairs: list[SeedPair], tokenizer: Any, max_seq_len: int,
                      templates: Templates | None = None) -> list[TrainExample]:
    """Response -> instruction examples; long responses are cut so the instruction still fits."""
    budget = max(16, max_seq_len - _TARGET_ROOM)
    return [backward_example(p, tokenizer, budget, templates) for p in pairs]


def train_backward(cfg: Config, pairs: list[SeedPair], out_dir: Path, templates: Templates | None = None) -> TrainResult:
    from selfalign.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(cfg.models.base, cfg.models.cache_dir), cfg.models.trust_remote_code)
    examples = backward_examples(pairs, tok, cfg.train_backward.max_seq_len, templates)
    from selfalign.memory import check_training

    check_training(cfg, cfg.train_backward)  # before loading: refuse what can't fit
    return train_lora(examples, out_dir, cfg.models, cfg.lora, cfg.train_backward, seed=cfg.run.seed,
                      device=cfg.run.device, name="backward", templates=templates)
