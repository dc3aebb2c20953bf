"""Forward model M = p(response | instruction), trained on seed + curated data, and its responses.

As in the paper (Sec. 2.3), seed examples carry the system tag "Answer in the style of an AI
Assistant." and self-curated ones "Answer with knowledge from web search.". At inference the seed
tag is used, to ask for answers in the assistant style.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfalign.config import Config, ForwardConfig
from selfalign.generation import Engine, GenParams, context_limit, generate
from selfalign.io import DataError
from selfalign.prompts import fit_prompt, forward_messages, render_prompt
from selfalign.readers import is_blank
from selfalign.records import AugmentedPair, RatedPair, RejectLog, SeedPair
from selfalign.train import TrainExample, TrainResult, train_lora


def forward_examples(
    seed: Sequence[SeedPair], curated: Sequence[RatedPair | AugmentedPair], fwd: ForwardConfig
) -> list[TrainExample]:
    out = [TrainExample(forward_messages(p.instruction, fwd.seed_tag), p.response, p.source_id) for p in seed]
    out += [TrainExample(forward_messages(p.instruction, fwd.augmented_tag), p.response, p.source_id) for p in curated]
    return out


def train_forward(
    cfg: Config, seed: Sequence[SeedPair], curated: Sequence[RatedPair | AugmentedPair], out_dir: Path,
    name: str = "forward",
) -> TrainResult:
    examples = forward_examples(seed if cfg.forward.use_seed else [], curated, cfg.forward)
    if not examples:
        raise DataError("forward model: no training example (no seed and nothing curated)")
    from selfalign.memory import check_training

    check_training(cfg, cfg.train_forward)  # before loading: refuse what can't fit
    return train_lora(examples, out_dir, cfg.models, cfg.lora, cfg.train_forward, seed=cfg.run.seed,
                      device=cfg.run.device, name=name)


def load_curated(folder: Path) -> list[RatedPair]:
    """The curated dataset folder's rows (`data.jsonl`), as the forward model trains on them."""
    rows = [json.loads(x) for x in (Path(folder) / "data.jsonl").read_text(encoding="utf-8").splitlines() if x]
    return [RatedPair(r["instruction"], r["response"], r["source_id"], r.get("source", ""), r.get("score"),
                      r.get("reasoning", ""), r.get("ratings") or []) for r in rows]


def load_prompts(path: str, limit: int | None = None, split: str = "test") -> list[str]:
    """Evaluation prompts: LIMA test rows (`conversations[0]`) or `instruction`/`text`/`prompt` rows.

    `path` is a local file/folder or a Hub dataset id (then `split` is used).
    """
    from selfalign.seed import load_rows

    rejects = RejectLog()
    out: list[str] = []
    for _file, line, row in load_rows(path, split, rejects):
        text: Any = None
        if isinstance(row.get("conversations"), list) and row["conversations"]:
            text = row["conversations"][0]
        else:
            text = row.get("instruction", row.get("prompt", row.get("text")))
        if isinstance(text, str) and not is_blank(text):
            out.append(text.strip())
        else:
            rejects.add(path, line, "no_prompt")
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no usable prompt ({rejects.summary()})")
    return out


def sample_responses(engine: Engine, prompts: list[str], params: GenParams, system: str | None) -> list[str]:
    """One response per prompt; a prompt too long for the model's context with the new tokens is cut."""
    limit = context_limit(engine, params.max_new_tokens)
    rendered = [fit_prompt(engine.tokenizer, lambda t: render_prompt(engine.tokenizer, forward_messages(t, system)),
                           p, 1 << 30, limit)[0] for p in prompts]
    return generate(engine, rendered, params, desc="responses")
