"""The whole evaluation of a finished run: held-out data, the four measurements, the reports."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.evaluate.backward_eval import evaluate_backward
from selfalign.evaluate.heldout import DEFAULT_OASST1_VAL, load_heldout
from selfalign.evaluate.judge import comparisons, forward_models, judge_pairwise, model_responses
from selfalign.evaluate.rater_eval import evaluate_curation, rater_spec
from selfalign.evaluate.recovery import evaluate_recovery
from selfalign.evaluate.stats import length_stats
from selfalign.io import DataError, write_json, write_jsonl


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
    oasst1_val: str | Path = DEFAULT_OASST1_VAL,
    n_recovery: int = 40,
) -> dict[str, Any]:
    """Evaluate the finished run in `cfg.run.out_dir`; writes `eval/` and (with `report`) the reports.

    `heldout_source`, `oasst1_val`: see `load_heldout`. `judge_max_new_tokens`: room for the
    pairwise judge's reasoning and verdict (default: `curation.max_new_tokens`). `n_recovery`:
    augmented pairs whose true prompt base and backward model try to recover (`recovery.py`).
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

    heldout, held_info = load_heldout(cfg, run_dir, n_heldout, heldout_source, oasst1_val)
    write_jsonl(ev / "heldout.jsonl", [asdict(p) for p in heldout])
    say(f"evaluate: {len(heldout)} held-out pairs from {held_info['path']} "
        f"({held_info['excluded_as_trained']} skipped as used in training)")

    t = time.perf_counter()
    backward = evaluate_backward(cfg, run_dir, heldout)
    seconds["backward"] = round(time.perf_counter() - t, 1)
    say(f"evaluate: backward NLL/token base {backward['base']['nll_per_token']} -> "
        f"backward {backward['backward']['nll_per_token']}")

    t = time.perf_counter()
    recovery = evaluate_recovery(cfg, run_dir, n_recovery, records=ev / "recovery.jsonl")
    seconds["recovery"] = round(time.perf_counter() - t, 1)
    if recovery["nll"]:
        say(f"evaluate: recovery of {recovery['n']} true prompts: NLL/token base "
            f"{recovery['nll']['base']['nll_per_token']} -> backward {recovery['nll']['backward']['nll_per_token']}; "
            f"ROUGE-L F1 base {recovery['rouge_l_f1']['base']} -> backward {recovery['rouge_l_f1']['backward']}")
    else:
        say(f"evaluate: recovery: no augmented pair has a true prompt in {recovery['source']} ({recovery['skipped']})")

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
        "recovery": recovery,
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
        from selfalign.report import write_eval_report

        write_eval_report(run_dir, results)
    say(f"evaluate: done in {time.perf_counter() - t0:.0f}s; results in {ev / 'evaluation.json'}")
    return results
