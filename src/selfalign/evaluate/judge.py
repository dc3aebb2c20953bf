"""Forward model: pairwise win rate against the base model, judged by the rater.

Judged with `templates/pairwise_prompt.txt` (`prompts.Templates.pairwise_messages`). Every pair is judged in
both orders; **a win (or a loss) must hold in both orders, anything else is a tie** (a
position-biased judge that always answers "A" gives only ties). Unparsable verdicts are counted; a
pair with one is a tie by the same rule. The 95% interval is the Wilson score interval of the win
rate (and of the loss rate). When the run has `forward_2`, M2 is also compared with M1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.evaluate.stats import wilson_interval
from selfalign.generation import Engine, GenParams, generate
from selfalign.io import DataError
from selfalign.prompts import Templates, shipped, truncate_tokens

_VERDICT_RE = re.compile(
    r"winner\s*\**\s*[:=\-]?\s*\**\s*(?:is\s+)?[\"'\[(]*\s*(?:response\s+|answer\s+)?(a|b|tie)\b", re.IGNORECASE
)


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
    engine: Engine,
    instructions: Sequence[str],
    responses_x: Sequence[str],
    responses_y: Sequence[str],
    max_new_tokens: int = 96,
    max_response_tokens: int = 512,
    seed: int = 0,
    templates: Templates | None = None,
) -> dict[str, Any]:
    """Judge x vs y on every instruction in both orders (greedy); summary + per-item records."""
    tok, tpl = engine.tokenizer, templates or shipped()
    n = len(instructions)
    if not (len(responses_x) == len(responses_y) == n):
        raise ValueError("judge_pairwise: instructions and responses differ in length")

    def cut(t: str) -> str:
        return truncate_tokens(tok, t, max_response_tokens)[0]

    xs, ys = [cut(t) for t in responses_x], [cut(t) for t in responses_y]
    prompts = [tpl.render_prompt(tok, tpl.pairwise_messages(i, x, y)) for i, x, y in zip(instructions, xs, ys, strict=True)]
    prompts += [tpl.render_prompt(tok, tpl.pairwise_messages(i, y, x)) for i, x, y in zip(instructions, xs, ys, strict=True)]
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
                             cfg.forward.seed_tag, Templates.for_config(cfg))
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
