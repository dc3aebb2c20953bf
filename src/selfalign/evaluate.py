"""`selfalign evaluate`: offline measurements of a finished run (issue 7).

Three questions, each answered on data the run never trained on:

1. **Curation quality.** Held-out human-written pairs (good) and planted bad pairs made from them
   (`plant_corruptions`: swapped instruction, response cut to its first sentence, unrelated
   response, web boilerplate appended) are rated exactly as curation rates (`curate.rate_pairs`,
   the run's curation config, the run's first-iteration rater). Reported: ROC AUC of the score
   for good vs bad (Mann-Whitney, ties count 1/2), precision and recall of "kept" for "good" at
   the run's threshold and at 1..5 (as the paper's Table 7), mean score per corruption kind, and
   the parse-failure rate. An unscored pair counts as score 0 for the AUC and is never kept.
2. **Backward model.** Mean negative log-likelihood per token of the true instruction given the
   response on the held-out pairs, base model vs backward adapter (lower is better), with the
   training tokenization (`backward.backward_examples` + `train.tokenize_example`), plus a few
   side-by-side examples of generated instructions (greedy, the augmentation prompt).
3. **Forward model.** Pairwise win rate of the forward model vs the base model on held-out
   prompts, judged by the rater with `templates/pairwise_prompt.txt`. Every pair is judged in
   both orders; **a win (or a loss) must hold in both orders, anything else is a tie** (a
   position-biased judge that always answers "A" gives only ties). Unparsable verdicts are
   counted; a pair with one is a tie by the same rule. The 95% interval is the Wilson score
   interval of the win rate (and of the loss rate). When the run has `forward_2`, M2 is also
   compared with M1.

Results go to `<run>/eval/evaluation.json` (records beside it: `heldout.jsonl`,
`rated_eval.jsonl`, `responses.jsonl`, `judgments.jsonl`); `write_eval_report` renders
`report.html`, PNG plots and the "## Evaluation" section of `report.md`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import random
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.generation import Engine, GenParams, generate
from selfalign.io import DataError, atomic_write_text, write_json, write_jsonl
from selfalign.prompts import Messages, prompt_file, render_prompt, truncate_tokens
from selfalign.records import AugmentedPair, RatedPair, SeedPair

CORRUPTION_KINDS = ("swapped_instruction", "truncated", "unrelated_response", "boilerplate")
GOOD = "good"
REPORT_THRESHOLDS = (1.0, 2.0, 3.0, 4.0, 4.5, 5.0)
OASST1_VAL_SEED = Path("../shared/data/oasst1/seed_en_val_first_turn.jsonl")
N_EXAMPLES = 5

# Web boilerplate by category; one variant of each category is appended (seeded choice and order).
_BOILERPLATE: dict[str, tuple[str, ...]] = {
    "navigation": (
        "Home | About Us | Blog | Contact | Privacy Policy | Terms of Service",
        "Menu: Home > Articles > Tips & Tricks > Next article >>",
        "Skip to main content. Home  News  Reviews  Deals  Forums  Sign in",
    ),
    "share": (
        "Share on Facebook | Tweet this | Pin it on Pinterest | Share on LinkedIn",
        "Did you like this post? Share it on social media and leave a comment below!",
        "Share this article: Facebook Twitter WhatsApp Email. 12 comments",
    ),
    "cookie": (
        "We use cookies to improve your experience on our website. By continuing to browse, you agree "
        "to our use of cookies. Accept all cookies | Manage preferences",
        "This site uses cookies. Read our Cookie Policy to find out more. [Got it!]",
    ),
    "footer": (
        "Subscribe to our newsletter to get the latest posts straight to your inbox!",
        "Copyright 2023 All rights reserved. Sponsored links: Best deals on laptops - click here",
        "Related posts: 10 tips you need to know | Top 5 mistakes beginners make | Read more...",
    ),
}


# --------------------------------------------------------------------------------------------
# Planted corruptions
# --------------------------------------------------------------------------------------------
def _ir(pair: SeedPair | tuple[str, str]) -> tuple[str, str]:
    if isinstance(pair, SeedPair):
        return pair.instruction, pair.response
    return pair[0], pair[1]


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def first_sentence(text: str) -> str:
    """The response cut to its first sentence (or first line); a strict, shorter prefix.

    When the text is a single sentence, its first third of words is kept instead, so the cut
    always removes something.
    """
    stripped = text.strip()
    head = re.split(r"(?<=[.!?])\s+|\n+", stripped, maxsplit=1)[0].strip()
    if len(head) < len(stripped):
        return head
    words = stripped.split()
    if len(words) > 1:
        return " ".join(words[: max(1, len(words) // 3)])
    return stripped[: max(1, len(stripped) // 2)]


def boilerplate_text(rng: random.Random) -> str:
    """Web page boilerplate: navigation, social sharing, cookie banner, footer (seeded)."""
    parts = [rng.choice(v) for v in _BOILERPLATE.values()]
    rng.shuffle(parts)
    return "\n\n".join(parts)


def _other(i: int, n: int, texts: list[str], rng: random.Random) -> int:
    """Index of another pair whose text differs from pair i's (seeded)."""
    offsets = list(range(1, n))
    rng.shuffle(offsets)
    for off in offsets:
        j = (i + off) % n
        if _norm(texts[j]) != _norm(texts[i]):
            return j
    raise ValueError("plant_corruptions: every pair has the same text; nothing to swap with")


def plant_corruptions(
    pairs: Sequence[SeedPair | tuple[str, str]], seed: int, kinds: Sequence[str] = CORRUPTION_KINDS
) -> list[tuple[str, str, str]]:
    """One bad (instruction, response, kind) per good pair, in the order of `pairs`.

    Kinds are spread evenly over the pairs (a seeded shuffle of kinds repeated), so 40 pairs give
    10 of each of the 4 kinds. Deterministic for a seed:

    - `swapped_instruction`: the instruction of another pair, with the pair's own response;
    - `truncated`: the response cut to its first sentence (`first_sentence`);
    - `unrelated_response`: the response of another pair, with the pair's own instruction;
    - `boilerplate`: the response followed by navigation, "share on social media", cookie
      banner and footer text.
    """
    unknown = [k for k in kinds if k not in CORRUPTION_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown corruption kinds {unknown}; choose from {CORRUPTION_KINDS}")
    items = [_ir(p) for p in pairs]
    n = len(items)
    if n < 2 and any(k in ("swapped_instruction", "unrelated_response") for k in kinds):
        raise ValueError("plant_corruptions needs at least 2 pairs")
    rng = random.Random(f"selfalign-corruptions:{seed}")
    assigned = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(assigned)
    instructions = [ins for ins, _ in items]
    responses = [resp for _, resp in items]
    out: list[tuple[str, str, str]] = []
    for i, ((ins, resp), kind) in enumerate(zip(items, assigned, strict=True)):
        if kind == "swapped_instruction":
            out.append((instructions[_other(i, n, instructions, rng)], resp, kind))
        elif kind == "unrelated_response":
            out.append((ins, responses[_other(i, n, responses, rng)], kind))
        elif kind == "truncated":
            out.append((ins, first_sentence(resp), kind))
        else:
            out.append((ins, resp.rstrip() + "\n\n" + boilerplate_text(rng), kind))
    return out


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def roc_auc(labels: Sequence[bool | int], scores: Sequence[float]) -> float | None:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2.

    Mann-Whitney U from average ranks; None when a class is empty.
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1  # ranks are 1-based; tied scores share their average rank
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def precision_recall(
    labels: Sequence[bool | int], scores: Sequence[float | None], threshold: float
) -> dict[str, Any]:
    """Precision and recall of "kept" (score >= threshold; None is never kept) for the positives."""
    kept = [s is not None and s >= threshold - 1e-9 for s in scores]
    tp = sum(1 for k, y in zip(kept, labels, strict=True) if k and y)
    fp = sum(1 for k, y in zip(kept, labels, strict=True) if k and not y)
    fn = sum(1 for k, y in zip(kept, labels, strict=True) if not k and y)
    return {
        "threshold": threshold,
        "kept": tp + fp,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
    }


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def length_stats(texts: Sequence[str]) -> dict[str, Any]:
    lens = [len(t) for t in texts]
    return {
        "n": len(lens),
        "mean_chars": round(statistics.mean(lens), 1) if lens else None,
        "median_chars": statistics.median(lens) if lens else None,
        "empty": sum(1 for t in texts if not t.strip()),
    }


# --------------------------------------------------------------------------------------------
# Held-out data
# --------------------------------------------------------------------------------------------
def _find_oasst1() -> Path | None:
    here = Path(__file__).resolve().parents[2]  # the repository root (editable install)
    for p in (OASST1_VAL_SEED, here.parent / "shared" / "data" / "oasst1" / OASST1_VAL_SEED.name):
        if p.expanduser().is_file():
            return p.expanduser()
    return None


def load_heldout(
    cfg: Config, run_dir: Path, n: int, source: str = "auto"
) -> tuple[list[SeedPair], dict[str, Any]]:
    """Up to `n` real (instruction, response) pairs the run did not train on, and where from.

    `source`: "auto" (the OASST1 validation seed `../shared/data/oasst1/seed_en_val_first_turn.jsonl`
    if present, else the unused rows of the run's seed data), "oasst1", "seed" (unused rows of
    `cfg.data.seed`, or the shipped sample when it is absent), or a path / Hub id of seed data.
    Pairs whose source id or instruction is in `<run>/seed/pairs.jsonl` are skipped. The order is
    a seeded hash of the source id, the same on every machine.
    """
    from selfalign.pipeline import resolve_data
    from selfalign.seed import load_seed

    d = cfg.data
    if source == "auto":
        found = _find_oasst1()
        src, split, label = (str(found), "train", "oasst1") if found else (None, d.seed_split, "seed")
        if src is None:
            src = resolve_data(d.seed, "seed.jsonl", cfg)
    elif source == "oasst1":
        found = _find_oasst1()
        if found is None:
            raise DataError(f"{OASST1_VAL_SEED}: not found (held-out source oasst1)")
        src, split, label = str(found), "train", "oasst1"
    elif source == "seed":
        src, split, label = resolve_data(d.seed, "seed.jsonl", cfg), d.seed_split, "seed"
    else:
        src, split, label = source, d.seed_split, "custom"
    pool = load_seed(src, split, d.seed_english_only, None)
    used_ids: set[str] = set()
    used_ins: set[str] = set()
    seed_file = Path(run_dir) / "seed" / "pairs.jsonl"
    if seed_file.is_file():
        for line in seed_file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            used_ids.add(str(row["source_id"]))
            used_ins.add(_norm(row["instruction"]))
    fresh = [p for p in pool if p.source_id not in used_ids and _norm(p.instruction) not in used_ins]

    def key(p: SeedPair) -> str:
        return hashlib.sha256(f"{cfg.run.seed}:{p.source_id}:{p.instruction}".encode()).hexdigest()

    picked = sorted(fresh, key=key)[:n]
    if len(picked) < 2:
        raise DataError(f"{src}: only {len(picked)} held-out pairs not used in training (need >= 2)")
    info = {"source": label, "path": src, "pool": len(pool), "excluded_as_trained": len(pool) - len(fresh),
            "n": len(picked)}
    return picked, info


# --------------------------------------------------------------------------------------------
# 1. Curation quality
# --------------------------------------------------------------------------------------------
def rater_spec(cfg: Config, run_dir: Path) -> tuple[str, Path | None, str]:
    """(model spec, adapter, name) of the run's first-iteration rater."""
    if cfg.models.rater == "m0":
        m0 = Path(run_dir) / "m0"
        if not (m0 / "adapter_config.json").is_file():
            raise DataError(f"{m0}: the M0 rater adapter is missing (models.rater=m0)")
        return cfg.models.base, m0, "M0 (forward model trained on seed only)"
    return cfg.models.rater, None, cfg.models.rater


def eval_pairs(heldout: Sequence[SeedPair], seed: int) -> list[AugmentedPair]:
    """The held-out pairs (source "good") followed by one planted bad pair each (source = kind)."""
    good = [AugmentedPair(p.instruction, p.response, f"good-{i}", GOOD, "", "ok") for i, p in enumerate(heldout)]
    bad = [AugmentedPair(ins, resp, f"bad-{i}-{kind}", kind, "", "ok")
           for i, (ins, resp, kind) in enumerate(plant_corruptions(heldout, seed))]
    return good + bad


def curation_metrics(rated: Sequence[RatedPair], threshold: float) -> dict[str, Any]:
    """AUC, precision/recall, per-kind mean scores and failure rates of rated eval pairs."""
    from selfalign.curate import curation_stats

    labels = [r.source == GOOD for r in rated]
    scores = [r.score for r in rated]
    auc = roc_auc(labels, [s if s is not None else 0.0 for s in scores])
    kinds: dict[str, dict[str, Any]] = {}
    for kind in (GOOD, *CORRUPTION_KINDS):
        rows = [r for r in rated if r.source == kind]
        if not rows:
            continue
        got = [r.score for r in rows if r.score is not None]
        kinds[kind] = {"n": len(rows), "mean_score": round(statistics.mean(got), 3) if got else None,
                       "unscored": len(rows) - len(got),
                       "kept": sum(1 for s in got if s >= threshold - 1e-9)}
    stats = curation_stats(list(rated), threshold)
    thresholds = sorted({*REPORT_THRESHOLDS, threshold})
    return {
        "n_good": sum(labels),
        "n_bad": len(labels) - sum(labels),
        "roc_auc": round(auc, 4) if auc is not None else None,
        "threshold": threshold,
        "at_threshold": precision_recall(labels, scores, threshold),
        "by_threshold": [precision_recall(labels, scores, t) for t in thresholds],
        "by_kind": kinds,
        "unscored": stats["unscored"],
        "unscored_rate": round(stats["unscored"] / len(rated), 4) if rated else 0.0,
        "parse_failure_rate": stats["parse_failure_rate"],
        "histogram": stats["histogram"],
    }


def evaluate_curation(cfg: Config, engine: Any, heldout: Sequence[SeedPair], out_path: Path) -> dict[str, Any]:
    """Rate held-out good + planted bad pairs as curation does; records go to `out_path`."""
    from selfalign.curate import rate_pairs

    out_path = Path(out_path)
    out_path.unlink(missing_ok=True)  # a fresh measurement, never resumed from stale records
    pairs = eval_pairs(heldout, cfg.run.seed)
    rated = rate_pairs(engine, pairs, cfg.curation, out_path, cfg.run.seed, cfg.curation.max_response_tokens)
    return curation_metrics(rated, cfg.curation.threshold)


# --------------------------------------------------------------------------------------------
# 2. Backward model
# --------------------------------------------------------------------------------------------
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


def backward_prompt(tokenizer: Any, response: str, max_prompt_tokens: int) -> str:
    """The augmentation prompt (`augment.augment`): the response cut to fit, backward template."""
    from selfalign.prompts import backward_messages

    cut, _ = truncate_tokens(tokenizer, response, max_prompt_tokens)
    return render_prompt(tokenizer, backward_messages(cut))


def evaluate_backward(cfg: Config, run_dir: Path, heldout: Sequence[SeedPair], n_examples: int = N_EXAMPLES) -> dict[str, Any]:
    """NLL/token of the true instruction given the response, base vs backward adapter, + examples."""
    from selfalign.augment import clean_instruction
    from selfalign.backward import backward_examples
    from selfalign.models import load_model
    from selfalign.train import tokenize_example

    model, tok = load_model(cfg.models.base, cfg.models, device=cfg.run.device, adapter=Path(run_dir) / "backward")
    max_len = cfg.train_backward.max_seq_len
    rows: list[dict[str, list[int]]] = []
    dropped: dict[str, int] = {}
    for ex in backward_examples(list(heldout), tok, max_len):
        got = tokenize_example(tok, ex, max_len)
        if isinstance(got, str):
            dropped[got] = dropped.get(got, 0) + 1
        else:
            rows.append(got)
    bs = cfg.generation.batch_size or 8  # 0 = auto, for generation
    adapted = target_nll(model, rows, tok.pad_token_id, bs)
    with model.disable_adapter():
        base = target_nll(model, rows, tok.pad_token_id, bs)
    better = sum(1 for (a, n), (b, _) in zip(adapted, base, strict=True) if n and a < b)

    engine = Engine(model, tok, bs, "backward")
    shown = list(heldout)[:n_examples]
    prompts = [backward_prompt(tok, p.response, cfg.generation.max_prompt_tokens) for p in shown]
    params = GenParams(0.0, 1.0, cfg.generation.instruction.max_new_tokens, cfg.run.seed)
    gen_bwd = generate(engine, prompts, params, desc="backward examples")
    with model.disable_adapter():
        gen_base = generate(engine, prompts, params, desc="base examples")
    mx = cfg.generation.max_instruction_chars
    examples = [{"response": p.response, "true_instruction": p.instruction,
                 "backward_instruction": clean_instruction(g, p.response, mx)[0],
                 "base_instruction": clean_instruction(b, p.response, mx)[0]}
                for p, g, b in zip(shown, gen_bwd, gen_base, strict=True)]
    del engine, model
    return {"n_pairs": len(rows), "n_tokens": sum(n for _, n in adapted), "dropped": dropped,
            "base": _nll_summary(base), "backward": _nll_summary(adapted),
            "backward_better_on": better, "examples": examples}


# --------------------------------------------------------------------------------------------
# 3. Forward model: pairwise judgments
# --------------------------------------------------------------------------------------------
_VERDICT_RE = re.compile(
    r"winner\s*\**\s*[:=\-]?\s*\**\s*(?:is\s+)?[\"'\[(]*\s*(?:response\s+|answer\s+)?(a|b|tie)\b", re.IGNORECASE
)


def pairwise_prompt() -> str:
    return prompt_file("pairwise_prompt.txt")


def pairwise_messages(instruction: str, response_a: str, response_b: str) -> Messages:
    text = pairwise_prompt()
    for k, v in (("instruction", instruction), ("response_a", response_a), ("response_b", response_b)):
        text = text.replace("{" + k + "}", v)  # not str.format: responses contain braces
    return [{"role": "user", "content": text}]


def parse_verdict(text: str) -> str | None:
    """The verdict "A", "B" or "tie" of the last "Winner: ..." in the text; None when there is none."""
    if not isinstance(text, str):
        return None
    matches = list(_VERDICT_RE.finditer(text))
    if not matches:
        return None
    v = matches[-1].group(1).lower()
    return "tie" if v == "tie" else v.upper()


def pairwise_outcome(verdict_x_first: str | None, verdict_x_second: str | None) -> str:
    """win / loss / tie for candidate x from the two orders (x shown as A, then x shown as B).

    A win (loss) must hold in both orders; disagreement, a tie verdict or an unparsable verdict
    in either order is a tie.
    """
    if verdict_x_first == "A" and verdict_x_second == "B":
        return "win"
    if verdict_x_first == "B" and verdict_x_second == "A":
        return "loss"
    return "tie"


def summarize_outcomes(outcomes: Sequence[str], unparsable: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    n = len(outcomes)
    win, tie, loss = (sum(1 for o in outcomes if o == k) for k in ("win", "tie", "loss"))
    wl, wh = wilson_interval(win, n, confidence)
    ll, lh = wilson_interval(loss, n, confidence)
    return {
        "n": n, "win": win, "tie": tie, "loss": loss,
        "win_rate": round(win / n, 4) if n else None,
        "win_rate_ci95": [round(wl, 4), round(wh, 4)],
        "loss_rate": round(loss / n, 4) if n else None,
        "loss_rate_ci95": [round(ll, 4), round(lh, 4)],
        "win_rate_ties_half": round((win + tie / 2) / n, 4) if n else None,
        "ci_method": "wilson",
        "unparsable_verdicts": unparsable,
    }


def judge_pairwise(
    engine: Any,
    instructions: Sequence[str],
    responses_x: Sequence[str],
    responses_y: Sequence[str],
    max_new_tokens: int = 96,
    max_response_tokens: int = 512,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge x vs y on every instruction in both orders (greedy); summary + per-item records."""
    tok = engine.tokenizer
    n = len(instructions)
    if not (len(responses_x) == len(responses_y) == n):
        raise ValueError("judge_pairwise: instructions and responses differ in length")

    def cut(t: str) -> str:
        return truncate_tokens(tok, t, max_response_tokens)[0]

    xs, ys = [cut(t) for t in responses_x], [cut(t) for t in responses_y]
    prompts = [render_prompt(tok, pairwise_messages(i, x, y)) for i, x, y in zip(instructions, xs, ys, strict=True)]
    prompts += [render_prompt(tok, pairwise_messages(i, y, x)) for i, x, y in zip(instructions, xs, ys, strict=True)]
    outs = generate(engine, prompts, GenParams(0.0, 1.0, max_new_tokens, seed), desc="judge")
    items: list[dict[str, Any]] = []
    unparsable = 0
    first_a = first_total = 0
    for k in range(n):
        v1, v2 = parse_verdict(outs[k]), parse_verdict(outs[n + k])
        unparsable += (v1 is None) + (v2 is None)
        for v in (v1, v2):
            if v in ("A", "B"):
                first_total += 1
                first_a += v == "A"
        items.append({"instruction": instructions[k], "x": responses_x[k], "y": responses_y[k],
                      "verdict_x_as_a": v1, "verdict_x_as_b": v2, "outcome": pairwise_outcome(v1, v2),
                      "judge_x_as_a": outs[k], "judge_x_as_b": outs[n + k]})
    summary = summarize_outcomes([it["outcome"] for it in items], unparsable)
    summary["verdicts"] = 2 * n
    summary["a_rate"] = round(first_a / first_total, 4) if first_total else None  # position bias
    return {"summary": summary, "items": items}


def model_responses(cfg: Config, adapter: Path | None, prompts: Sequence[str], name: str) -> list[str]:
    """Responses of the base model (adapter None) or an adapter, as the pipeline samples them."""
    from selfalign.forward import sample_responses
    from selfalign.generation import load_engine

    engine = load_engine(cfg, cfg.models.base, adapter=adapter, name=name)
    texts = sample_responses(engine, list(prompts), GenParams.from_config(cfg.generation.response, cfg.run.seed),
                             cfg.forward.seed_tag)
    del engine
    return texts


def forward_models(run_dir: Path) -> dict[str, Path | None]:
    """Models to compare: base, the final forward model, and M1 when the run has M2."""
    run_dir = Path(run_dir)
    fwd = run_dir / "forward"
    if not (fwd / "adapter_config.json").is_file():
        cands = sorted(run_dir.glob("forward_*/adapter_config.json"))
        if not cands:
            raise DataError(f"{run_dir}: no forward adapter (run `selfalign run` first)")
        fwd = cands[-1].parent
    out: dict[str, Path | None] = {"base": None, "forward": fwd}
    if (run_dir / "forward_2" / "adapter_config.json").is_file() and (run_dir / "forward_1" / "adapter_config.json").is_file():
        out["forward_1"] = run_dir / "forward_1"
    return out


def comparisons(models: dict[str, Path | None]) -> list[tuple[str, str]]:
    pairs = [("forward", "base")]
    if "forward_1" in models:
        pairs.append(("forward", "forward_1"))  # M2 (the final forward model) vs M1
    return pairs


# --------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------
def check_run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise DataError(f"{run_dir}: no finished selfalign run here (no manifest.json); run `selfalign run` first")
    if not (run_dir / "backward" / "adapter_config.json").is_file():
        raise DataError(f"{run_dir}/backward: no backward adapter; run `selfalign run` first")


def evaluate_run(
    cfg: Config,
    n_heldout: int = 40,
    n_prompts: int = 20,
    heldout_source: str = "auto",
    report: bool = True,
    judge_max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Evaluate the finished run in `cfg.run.out_dir`; writes `eval/` and (with `report`) the reports.

    `heldout_source`: see `load_heldout`. `judge_max_new_tokens`: room for the pairwise judge's
    reasoning and verdict (default: `curation.max_new_tokens`).
    """
    from selfalign.forward import load_prompts
    from selfalign.generation import load_engine
    from selfalign.models import setup_threads
    from selfalign.pipeline import resolve_data, say

    run_dir = Path(cfg.run.out_dir)
    check_run(run_dir)
    setup_threads(cfg.run.threads)
    ev = run_dir / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    heldout, held_info = load_heldout(cfg, run_dir, n_heldout, heldout_source)
    write_jsonl(ev / "heldout.jsonl", [asdict(p) for p in heldout])
    say(f"evaluate: {len(heldout)} held-out pairs from {held_info['path']} "
        f"({held_info['excluded_as_trained']} skipped as used in training)")

    t = time.perf_counter()
    backward = evaluate_backward(cfg, run_dir, heldout)
    seconds["backward"] = round(time.perf_counter() - t, 1)
    say(f"evaluate: backward NLL/token base {backward['base']['nll_per_token']} -> "
        f"backward {backward['backward']['nll_per_token']}")

    t = time.perf_counter()
    src = resolve_data(cfg.data.eval_prompts, "prompts.jsonl", cfg)
    prompts = load_prompts(src, n_prompts, cfg.data.eval_split)
    models = forward_models(run_dir)
    responses = {name: model_responses(cfg, adapter, prompts, name) for name, adapter in models.items()}
    write_jsonl(ev / "responses.jsonl", [{"model": name, "adapter": str(models[name] or ""), "prompt": p, "response": r}
                                         for name, texts in responses.items() for p, r in zip(prompts, texts, strict=True)])
    seconds["responses"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    spec, adapter, rater_name = rater_spec(cfg, run_dir)
    rater = load_engine(cfg, spec, adapter=adapter, name=rater_name)
    curation = evaluate_curation(cfg, rater, heldout, ev / "rated_eval.jsonl")
    curation["rater"] = rater_name
    seconds["curation"] = round(time.perf_counter() - t, 1)
    say(f"evaluate: rater ROC AUC {curation['roc_auc']} (good vs planted bad), precision/recall at "
        f"{curation['threshold']}: {curation['at_threshold']['precision']}/{curation['at_threshold']['recall']}")

    t = time.perf_counter()
    comps: list[dict[str, Any]] = []
    judged: list[dict[str, Any]] = []
    for x, y in comparisons(models):
        got = judge_pairwise(rater, prompts, responses[x], responses[y], judge_max_new_tokens or cfg.curation.max_new_tokens,
                             cfg.curation.max_response_tokens, cfg.run.seed)
        comps.append({"x": x, "y": y, "x_adapter": str(models[x] or cfg.models.base),
                      "y_adapter": str(models[y] or cfg.models.base), **got["summary"],
                      "examples": [{k: it[k] for k in ("instruction", "x", "y", "verdict_x_as_a", "verdict_x_as_b", "outcome")}
                                   for it in got["items"][:3]]})
        judged += [{"x": x, "y": y, **it} for it in got["items"]]
        s = got["summary"]
        say(f"evaluate: {x} vs {y}: {s['win']} win / {s['tie']} tie / {s['loss']} loss, win rate {s['win_rate']} "
            f"(95% Wilson {s['win_rate_ci95']}), {s['unparsable_verdicts']} unparsable verdicts")
    write_jsonl(ev / "judgments.jsonl", judged)
    seconds["pairwise"] = round(time.perf_counter() - t, 1)
    del rater

    results: dict[str, Any] = {
        "run_dir": str(run_dir),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "models": {"base": cfg.models.base, "rater": rater_name, "iterations": cfg.curation.iterations},
        "heldout": held_info,
        "curation": curation,
        "backward": backward,
        "forward": {
            "prompts": {"path": src, "n": len(prompts)},
            "judge": rater_name,
            "rule": "each pair judged in both orders; a win or loss must hold in both, otherwise tie "
                    "(unparsable verdicts count as no preference)",
            "lengths": {name: length_stats(texts) for name, texts in responses.items()},
            "comparisons": comps,
        },
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 1)},
    }
    write_json(ev / "evaluation.json", results)
    if report:
        write_eval_report(run_dir, results)
    say(f"evaluate: done in {time.perf_counter() - t0:.0f}s; results in {ev / 'evaluation.json'}")
    return results


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows)


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def eval_tables(results: dict[str, Any]) -> list[Table]:
    """The evaluation tables, as data (rendered to Markdown and HTML)."""
    tables: list[Table] = []
    c = results.get("curation")
    if c:
        at = c["at_threshold"]
        tables.append(("Curation quality: rater on held-out good vs planted bad pairs", ["metric", "value"], [
            ["rater", str(c.get("rater", ""))],
            ["held-out good / planted bad", f"{c['n_good']} / {c['n_bad']}"],
            ["ROC AUC (ties 1/2, unscored = 0)", _f(c["roc_auc"])],
            [f"precision at threshold {c['threshold']}", _f(at["precision"])],
            [f"recall at threshold {c['threshold']}", _f(at["recall"])],
            ["unscored pairs", f"{c['unscored']} ({_f(c['unscored_rate'])})"],
            ["parse-failure rate", _f(c["parse_failure_rate"])],
        ]))
        tables.append(("Precision / recall of kept pairs by threshold", ["threshold", "kept", "precision", "recall"],
                       [[_f(r["threshold"], 1), str(r["kept"]), _f(r["precision"]), _f(r["recall"])] for r in c["by_threshold"]]))
        tables.append(("Mean score by kind", ["kind", "n", "mean score", "unscored", "kept"],
                       [[k, str(v["n"]), _f(v["mean_score"]), str(v["unscored"]), str(v["kept"])] for k, v in c["by_kind"].items()]))
    b = results.get("backward")
    if b:
        tables.append(("Backward model: NLL per token of the true instruction (held-out, lower is better)",
                       ["model", "NLL/token", "perplexity", "pairs", "tokens"],
                       [["base", _f(b["base"]["nll_per_token"]), _f(b["base"]["perplexity"]), str(b["n_pairs"]), str(b["n_tokens"])],
                        ["backward", _f(b["backward"]["nll_per_token"]), _f(b["backward"]["perplexity"]), str(b["n_pairs"]), str(b["n_tokens"])]]))
        tables.append(("Backward model: generated instructions (greedy)", ["true instruction", "backward model", "base model", "response"],
                       [[_short(e["true_instruction"], 160), _short(e["backward_instruction"], 160), _short(e["base_instruction"], 160),
                         _short(e["response"], 200)] for e in b["examples"]]))
    f = results.get("forward")
    if f:
        tables.append((f"Forward model: pairwise judgments on {f['prompts']['n']} held-out prompts ({f['rule']})",
                       ["comparison", "n", "win", "tie", "loss", "win rate [95% Wilson]", "loss rate [95% Wilson]",
                        "unparsable verdicts", "judge says A"],
                       [[f"{x['x']} vs {x['y']}", str(x["n"]), str(x["win"]), str(x["tie"]), str(x["loss"]),
                         f"{_f(x['win_rate'])} [{_f(x['win_rate_ci95'][0])}, {_f(x['win_rate_ci95'][1])}]",
                         f"{_f(x['loss_rate'])} [{_f(x['loss_rate_ci95'][0])}, {_f(x['loss_rate_ci95'][1])}]",
                         f"{x['unparsable_verdicts']} of {x['verdicts']}", _f(x["a_rate"])] for x in f["comparisons"]]))
        tables.append(("Response lengths (characters)", ["model", "n", "mean", "median", "empty"],
                       [[k, str(v["n"]), _f(v["mean_chars"], 1), _f(v["median_chars"], 1), str(v["empty"])]
                        for k, v in f["lengths"].items()]))
    return tables


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def eval_markdown(results: dict[str, Any], plots: dict[str, Path] | None = None) -> str:
    """The "## Evaluation" section of report.md."""
    h = results.get("heldout", {})
    lines = ["## Evaluation", "",
             f"`selfalign evaluate` on {results.get('created', '')}: {h.get('n')} held-out pairs from "
             f"`{h.get('path')}` ({h.get('excluded_as_trained')} skipped as used in training). "
             "Details: `eval/evaluation.json`; full report with plots: `report.html`.", ""]
    for title, header, rows in eval_tables(results):
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    if plots:
        lines += ["### Plots", ""] + [f"![{k}]({p.name})" for k, p in plots.items()] + [""]
    return "\n".join(lines)


def replace_section(text: str, section: str, title: str = "## Evaluation") -> str:
    """`text` with its `title` section (up to the next "## " heading) replaced by `section`, or appended."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == title), None)
    new = section.rstrip("\n").splitlines()
    if start is None:
        body = "\n".join(lines).rstrip("\n")
        return (body + "\n\n" if body else "") + "\n".join(new) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    out = lines[:start] + new + ([""] + lines[end:] if end < len(lines) else [])
    return "\n".join(out).rstrip("\n") + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
code{background:#f3f3f3;padding:1px 4px}"""


def render_html(run_dir: Path, results: dict[str, Any] | None, plots: dict[str, Path]) -> str:
    """A self-contained HTML report (plots embedded as data URIs)."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
    cfg = manifest.get("config", {})
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>selfalign run report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>selfalign run report</h1>",
             f"<p>Run directory: <code>{html.escape(str(run_dir))}</code></p>"]
    if cfg:
        m, cur = cfg.get("models", {}), cfg.get("curation", {})
        parts.append(_html_table(["setting", "value"], [
            ["base model", str(m.get("base"))], ["rater", str(m.get("rater"))],
            ["curation", f"mode {cur.get('mode')}, threshold {cur.get('threshold')}, iterations {cur.get('iterations')}"],
            ["seed data", str(cfg.get("data", {}).get("seed"))], ["unlabelled data", str(cfg.get("data", {}).get("unlabelled"))],
        ]))
    counts = manifest.get("counts", {})
    if counts:
        parts.append("<h2>Counts</h2>")
        parts.append(_html_table(["count", "value"], [[k, str(v)] for k, v in counts.items() if not isinstance(v, dict)]))
    stages = manifest.get("stages", {})
    if stages:
        parts.append("<h2>Stages</h2>")
        parts.append(_html_table(["stage", "status", "seconds", "loss first", "loss last", "tokens/s"],
                                 [[k, str(s.get("status")), _f(s.get("seconds"), 1), _f(s.get("loss_first")),
                                   _f(s.get("loss_last")), _f(s.get("tokens_per_second"), 1)] for k, s in stages.items()]))
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, p in plots.items():
            data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
            parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    if results:
        h = results.get("heldout", {})
        parts.append("<h2>Evaluation</h2>")
        parts.append(f"<p>{html.escape(str(results.get('created', '')))}: {h.get('n')} held-out pairs from "
                     f"<code>{html.escape(str(h.get('path')))}</code> ({h.get('excluded_as_trained')} skipped as used "
                     "in training).</p>")
        for title, header, rows in eval_tables(results):
            parts.append(f"<h3>{html.escape(title)}</h3>" + _html_table(header, rows))
        for comp in results.get("forward", {}).get("comparisons", []):
            if comp.get("examples"):
                parts.append(f"<h3>Examples: {html.escape(comp['x'])} (x) vs {html.escape(comp['y'])} (y)</h3>")
                parts.append(_html_table(["prompt", "x", "y", "verdict x as A", "verdict x as B", "outcome"],
                                         [[_short(e["instruction"], 200), _short(e["x"], 400), _short(e["y"], 400),
                                           str(e["verdict_x_as_a"]), str(e["verdict_x_as_b"]), e["outcome"]]
                                          for e in comp["examples"]]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_eval_report(run_dir: Path, results: dict[str, Any] | None) -> dict[str, Path]:
    """Write PNG plots and `report.html` in `run_dir`, and the "## Evaluation" section of `report.md`.

    Returns the written files by name (plots, plus "report.html" and "report.md").
    """
    from selfalign import plots as pl

    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
    threshold = manifest.get("config", {}).get("curation", {}).get("threshold")
    made: dict[str, Path | None] = {
        "funnel": pl.plot_funnel(manifest.get("counts", {}), run_dir / "funnel.png"),
        "scores": pl.plot_score_histograms(run_dir, run_dir / "scores.png", threshold),
        "loss": pl.plot_loss_curves(run_dir, run_dir / "loss.png"),
    }
    if results:
        made["eval_scores"] = pl.plot_eval_scores(run_dir / "eval" / "rated_eval.jsonl", run_dir / "eval_scores.png",
                                                  results.get("curation", {}).get("threshold", threshold))
        made["pairwise"] = pl.plot_pairwise(results.get("forward", {}).get("comparisons", []), run_dir / "pairwise.png")
    plots = {k: p for k, p in made.items() if p is not None}
    atomic_write_text(run_dir / "report.html", render_html(run_dir, results, plots))
    files = dict(plots)
    files["report.html"] = run_dir / "report.html"
    if results:
        md = run_dir / "report.md"
        old = md.read_text(encoding="utf-8") if md.is_file() else "# selfalign run report\n"
        atomic_write_text(md, replace_section(old, eval_markdown(results, plots)))
        files["report.md"] = md
    return files
