"""Backward model: how likely is the true instruction given the response, base vs backward adapter.

Mean negative log-likelihood per token of the true instruction given the response on the held-out
pairs (lower is better), with the training tokenization (`backward.backward_examples` +
`train.tokenize_example`), plus a few side-by-side examples of generated instructions (greedy, the
augmentation prompt `prompts.Templates.backward_prompt`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.generation import GenParams, HFEngine, generate
from selfalign.prompts import Templates
from selfalign.records import SeedPair

N_EXAMPLES = 5


def target_nll(model: Any, rows: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed NLL in nats, number of target tokens) per tokenized example (labels -100 = prompt)."""
    import torch

    from selfalign.train import IGNORE_INDEX, PadCollator

    collate = PadCollator(pad_id)
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows[start : start + batch_size]])
            # left padded; logits of the last (longest target + 1) positions only, labels sliced alike
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device),
                           position_ids=batch["position_ids"].to(device),
                           logits_to_keep=batch["logits_to_keep"]).logits.float()
            labels = batch["labels"][:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="none",
            ).view(labels.shape)
            mask = labels != IGNORE_INDEX
            for r in range(labels.shape[0]):
                out.append((float(nll[r][mask[r]].sum()), int(mask[r].sum())))
    return out


def _nll_summary(per_example: Sequence[tuple[float, int]]) -> dict[str, Any]:
    total = sum(x for x, _ in per_example)
    n = sum(k for _, k in per_example)
    mean = total / n if n else None
    return {"nll_per_token": round(mean, 4) if mean is not None else None,
            "perplexity": round(math.exp(mean), 3) if mean is not None and mean < 50 else None}


def nll_base_vs_backward(model: Any, tok: Any, pairs: Sequence[SeedPair], max_len: int, batch_size: int,
                         templates: Templates | None = None) -> dict[str, Any]:
    """NLL/token of each pair's instruction given its response, with the backward adapter and
    without it (the base model), tokenized as in training (`backward_examples` + `tokenize_example`)."""
    from selfalign.backward import backward_examples
    from selfalign.train import tokenize_example

    rows: list[dict[str, list[int]]] = []
    dropped: dict[str, int] = {}
    for ex in backward_examples(list(pairs), tok, max_len, templates):
        got = tokenize_example(tok, ex, max_len, templates)
        if isinstance(got, str):
            dropped[got] = dropped.get(got, 0) + 1
        else:
            rows.append(got)
    adapted = target_nll(model, rows, tok.pad_token_id, batch_size)
    with model.disable_adapter():
        base = target_nll(model, rows, tok.pad_token_id, batch_size)
    better = sum(1 for (a, n), (b, _) in zip(adapted, base, strict=True) if n and a < b)
    return {"n_pairs": len(rows), "n_tokens": sum(n for _, n in adapted), "dropped": dropped,
            "base": _nll_summary(base), "backward": _nll_summary(adapted), "backward_better_on": better}


def evaluate_backward(cfg: Config, run_dir: Path, heldout: Sequence[SeedPair], n_examples: int = N_EXAMPLES) -> dict[str, Any]:
    """NLL/token of the true instruction given the response, base vs backward adapter, + examples."""
    from selfalign.augment import clean_instruction
    from selfalign.models import load_model

    model, tok = load_model(cfg.models.base, cfg.models, device=cfg.run.device, adapter=Path(run_dir) / "backward")
    bs = cfg.generation.batch_size or 8  # 0 = auto, for generation
    tpl = Templates.for_config(cfg)
    nll = nll_base_vs_backward(model, tok, heldout, cfg.train_backward.max_seq_len, bs, tpl)

    engine = HFEngine(model, tok, bs, "backward")
    shown = list(heldout)[:n_examples]
    prompts = [tpl.backward_prompt(tok, p.response, cfg.generation.max_prompt_tokens)[0] for p in shown]
    params = GenParams(0.0, 1.0, cfg.generation.instruction.max_new_tokens, cfg.run.seed)
    gen_bwd = generate(engine, prompts, params, desc="backward examples")
    with model.disable_adapter():
        gen_base = generate(engine, prompts, params, desc="base examples")
    mx = cfg.generation.max_instruction_chars
    examples = [{"response": p.response, "true_instruction": p.instruction,
                 "backward_instruction": clean_instruction(g, p.response, mx, words_=tpl.request_words)[0],
                 "base_instruction": clean_instruction(b, p.response, mx, words_=tpl.request_words)[0]}
                for p, g, b in zip(shown, gen_bwd, gen_base, strict=True)]
    del engine, model
    return {**nll, "examples": examples}
