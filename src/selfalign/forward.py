"""Forward model M = p(response | instruction), trained on seed + curated data, and its responses.

As in the paper (Sec. 2.3), seed examples carry the system tag "Answer in the style of an AI
Assistant." and self-curated ones "Answer with knowledge from web search.". At inference the seed
tag is used, to ask for answers in the assistant style.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfalign.config import Config, ForwardConfig
from selfalign.generation import Engine, GenParams, context_limit, overlong_prompts
from selfalign.io import DataError
from selfalign.prompts import PromptTooLong, Templates, fit_prompt, shipped
from selfalign.readers import is_blank
from selfalign.records import AugmentedPair, RatedPair, RejectLog, SeedPair
from selfalign.steps import Prepared, Request, Step, seeded
from selfalign.train import TrainExample, TrainResult, train_lora


def forward_examples(
    seed: Sequence[SeedPair], curated: Sequence[RatedPair | AugmentedPair], fwd: ForwardConfig,
    templates: Templates | None = None,
) -> list[TrainExample]:
    tpl = templates or shipped()
    out = [TrainExample(tpl.forward_messages(p.instruction, fwd.seed_tag), p.response, p.source_id) for p in seed]
    out += [TrainExample(tpl.forward_messages(p.instruction, fwd.augmented_tag), p.response, p.source_id)
            for p in curated]
    return out


def train_forward(
    cfg: Config, seed: Sequence[SeedPair], curated: Sequence[RatedPair | AugmentedPair], out_dir: Path,
    name: str = "forward", templates: Templates | None = None,
) -> TrainResult:
    tpl = templates or shipped()
    examples = forward_examples(seed if cfg.forward.use_seed else [], curated, cfg.forward, tpl)
    if not examples:
        raise DataError("forward model: no training example (no seed and nothing curated)")
    from selfalign.memory import check_training

    check_training(cfg, cfg.train_forward)  # before loading: refuse what can't fit
    return train_lora(examples, out_dir, cfg.models, cfg.lora, cfg.train_forward, seed=cfg.run.seed,
                      device=cfg.run.device, name=name, templates=tpl)


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


@dataclass
class Prompt:
    """An evaluation prompt and its id (`prompt-000000`: its place in the prompts file)."""

    source_id: str
    prompt: str


@dataclass
class RespondStep(Step):
    """Responses of a model to prompts: the forward prompt (with the system tag `system`), cut to fit
    the model's context with the new tokens; records {"prompt", "response", "model", "source_id"}."""

    templates: Templates
    params: GenParams
    system: str | None = None
    model: str = ""

    name = "respond"
    desc = "responses"

    def item_id(self, item: Prompt) -> str:
        return item.source_id

    def from_row(self, row: dict[str, Any]) -> tuple[Prompt, str]:
        return Prompt(str(row["source_id"]), str(row["prompt"])), ""

    def prepare(self, engine: Engine, items: Sequence[Prompt]) -> list[Prepared]:
        tpl, tok = self.templates, engine.tokenizer
        limit = context_limit(engine, self.params.max_new_tokens)
        out = []
        for p in items:
            try:
                prompt, cut = fit_prompt(tok, lambda t: tpl.render_prompt(tok, tpl.forward_messages(t, self.system)),
                                         p.prompt, 1 << 30, limit)
                out.append(Prepared(p, Request(prompt, seeded(self.params, p.source_id)), cut=cut))
            except PromptTooLong as e:
                out.append(Prepared(p, Request("", self.params), f"prompt_too_long: {e}", True))
        for p, why in zip(out, overlong_prompts(engine, [p.request.prompt for p in out], self.params.max_new_tokens),
                          strict=True):
            p.error = p.error or why
        return out

    def record(self, prep: Prepared, output: str) -> dict[str, Any]:
        return {"prompt": prep.item.prompt, "response": output, "model": self.model, "source_id": prep.item.source_id}

    def error_record(self, item: Prompt, reason: str, cut: bool = False) -> dict[str, Any]:
        return {"prompt": item.prompt, "response": "", "model": self.model, "source_id": item.source_id,
                "status": "error", "error": reason}


def prompt_items(prompts: Sequence[str]) -> list[Prompt]:
    return [Prompt(f"prompt-{i:06d}", p) for i, p in enumerate(prompts)]


def sample_responses(engine: Engine, prompts: list[str], params: GenParams, system: str | None,
                     templates: Templates | None = None) -> list[str]:
    """One response per prompt ("" where the prompt cannot fit the model's context)."""
    step = RespondStep(templates or shipped(), params, system, engine.name)
    return [r["response"] for r in step.run(engine, prompt_items(prompts))]
