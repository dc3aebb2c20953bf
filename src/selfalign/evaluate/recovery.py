"""Instruction recovery: does the backward model write back the prompts LIMA's responses answer?

LIMA rows hold their true prompt (`conversations[0]`), which augmentation never sees. For the
run's augmented pairs (`<run>/augment/augmented.jsonl`, first `n` whose row has a prompt), base
model vs backward adapter:

- mean NLL per token of the true prompt given the response (`backward_eval.nll_base_vs_backward`,
  the training tokenization);
- ROUGE-L F1 between generated and true prompt (`rouge_l_f1`). Backward: the instruction the run
  generated. Base: one generated now by the base model with the augmentation prompt and sampling
  (`augment.AugmentStep`, `generation.instruction`, seeded with `run.seed`). Every pair counts,
  whatever its status (an empty or failed generation scores 0);
- the share of each augmentation status (`augment.STATUSES`), e.g. ok vs not_request;
- side-by-side examples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.records import AugmentedPair, RejectLog, SeedPair, UnlabelledResponse

N_EXAMPLES = 5


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row)."""
    if len(b) > len(a):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0  # row[j - 1] of the previous line
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diag + 1 if x == y else max(above, row[j - 1])
            diag = above
    return row[-1]


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 on lowercased word tokens (`augment.words`): with L the longest common
    subsequence, P = L / len(candidate), R = L / len(reference), F1 = 2PR / (P + R); 0 when
    either side has no word."""
    from selfalign.augment import words

    c, r = words(candidate), words(reference)
    lcs = lcs_length(c, r) if c and r else 0
    if not lcs:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def true_prompts(source: str, split: str = "train") -> dict[str, tuple[str, str]]:
    """source_id -> (true prompt, response) of every unlabelled row that has a prompt (LIMA
    `conversations[0]`, or an `instruction`/`prompt` field), with the source ids that
    `unlabelled.load_unlabelled` gives (`seed.row_id`: `path in the folder:line`)."""
    from selfalign.seed import load_rows, row_id
    from selfalign.unlabelled import response_of

    out: dict[str, tuple[str, str]] = {}
    for file, line, row in load_rows(source, split, RejectLog()):
        try:
            response = response_of(row)
        except ValueError:
            continue
        conv = row.get("conversations")
        prompt = conv[0] if isinstance(conv, list) and conv else row.get("instruction", row.get("prompt"))
        if isinstance(prompt, str) and prompt.strip():
            out[row_id(source, file, line)] = (prompt.strip(), response)
    return out


def recovery_pairs(augmented: Sequence[AugmentedPair], prompts: dict[str, tuple[str, str]],
                   n: int) -> tuple[list[tuple[AugmentedPair, str]], dict[str, int]]:
    """The first `n` augmented pairs with their true prompt, and how many were skipped and why
    (no prompt in the row; the row's response is not the pair's: the file changed since the run)."""
    picked: list[tuple[AugmentedPair, str]] = []
    skipped = {"no_true_prompt": 0, "response_changed": 0}
    for p in augmented:
        if len(picked) == n:
            break
        got = prompts.get(p.source_id)
        if got is None:
            skipped["no_true_prompt"] += 1
        elif got[1] != p.response:
            skipped["response_changed"] += 1
        else:
            picked.append((p, got[0]))
    return picked, skipped


def _shares(statuses: Sequence[str]) -> dict[str, float]:
    from selfalign.augment import STATUSES

    return {s: round(sum(x == s for x in statuses) / len(statuses), 4) if statuses else 0.0 for s in STATUSES}


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def evaluate_recovery(cfg: Config, run_dir: Path, n: int = 40, n_examples: int = N_EXAMPLES,
                      records: Path | None = None) -> dict[str, Any]:
    """Base vs backward on recovering the true prompts of the run's augmented pairs (see the
    module doc). `records`: where to write one JSON line per pair (optional)."""
    from selfalign.augment import AugmentStep
    from selfalign.evaluate.backward_eval import nll_base_vs_backward
    from selfalign.generation import HFEngine
    from selfalign.io import write_jsonl
    from selfalign.models import load_model
    from selfalign.prompts import Templates
    from selfalign.sources import resolve_data

    run_dir = Path(run_dir)
    path = run_dir / "augment" / "augmented.jsonl"
    augmented = [AugmentedPair(**json.loads(x)) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    src = resolve_data(cfg.data.unlabelled, "unlabelled.jsonl", cfg)
    picked, skipped = recovery_pairs(augmented, true_prompts(src, cfg.data.unlabelled_split), n)
    info: dict[str, Any] = {"source": src, "augmented": len(augmented), "n": len(picked), "skipped": skipped}
    if not picked:
        return {**info, "nll": None, "rouge_l_f1": None, "status_share": None, "examples": []}

    model, tok = load_model(cfg.models.base, cfg.models, device=cfg.run.device, adapter=run_dir / "backward")
    bs = cfg.generation.batch_size or 8  # 0 = auto, for generation
    truth = [SeedPair(prompt, p.response, p.source_id) for p, prompt in picked]
    tpl = Templates.for_config(cfg)
    nll = nll_base_vs_backward(model, tok, truth, cfg.train_backward.max_seq_len, bs, tpl)

    engine = HFEngine(model, tok, bs, "base")
    with model.disable_adapter():
        step = AugmentStep.from_config(cfg, tpl, engine.name)
        base = step.run(engine, [UnlabelledResponse(p.response, p.source_id, p.source) for p, _ in picked],
                        progress=False, isolate=True)
    del engine, model

    rows = [{"source_id": p.source_id, "true_prompt": prompt,
             "backward_instruction": p.instruction, "backward_status": p.status,
             "backward_rouge_l_f1": round(rouge_l_f1(p.instruction, prompt), 4),
             "base_instruction": b.instruction, "base_status": b.status,
             "base_rouge_l_f1": round(rouge_l_f1(b.instruction, prompt), 4), "response": p.response}
            for (p, prompt), b in zip(picked, base, strict=True)]
    if records is not None:
        write_jsonl(records, rows)
    return {
        **info,
        "nll": nll,
        "rouge_l_f1": {m: _mean([r[f"{m}_rouge_l_f1"] for r in rows]) for m in ("base", "backward")},
        "status_share": {m: _shares([r[f"{m}_status"] for r in rows]) for m in ("base", "backward")},
        "examples": [{k: r[k] for k in ("true_prompt", "base_instruction", "backward_instruction", "base_status",
                                        "backward_status", "response")} for r in rows[:n_examples]],
    }
