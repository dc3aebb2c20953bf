"""The whole evaluation of a finished run: held-out data, the four measurements, the reports."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.evaluate.backward_eval import evaluate_backward
from selfalign.evaluate.corruptions import normalized
from selfalign.evaluate.heldout import load_heldout
from selfalign.evaluate.human import load_human_pairs
from selfalign.evaluate.judge import comparisons, forward_models, judge_pairwise, model_responses
from selfalign.evaluate.rater_eval import evaluate_curation, planted_set, rater_spec
from selfalign.evaluate.recovery import evaluate_recovery
from selfalign.evaluate.resume import cached, texts_hash
from selfalign.evaluate.stats import length_stats
from selfalign.io import DataError, write_json, write_jsonl
from selfalign.records import AugmentedPair, SeedPair


def adapter_hash(adapter: Path | None) -> str:
    """sha256 over the files of an adapter folder ("" for none): a retrained adapter differs."""
    if adapter is None:
        return ""
    return texts_hash([(f.name, hashlib.sha256(f.read_bytes()).hexdigest())
                       for f in sorted(Path(adapter).iterdir()) if f.is_file()])


def backward_fingerprint(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """What the backward model's measurements depend on besides their data: the models, the
    backward adapter's files, the training tokenization, generation settings, seed and templates."""
    from selfalign.prompts import Templates

    tpl = Templates.for_config(cfg)
    return {"models": cfg.models.model_dump(), "adapter_hash": adapter_hash(Path(run_dir) / "backward"),
            "max_seq_len": cfg.train_backward.max_seq_len, "generation": cfg.generation.model_dump(),
            "seed": cfg.run.seed, "templates": texts_hash([tpl.file("templates.json")])}


def recovery_inputs(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """The data instruction recovery reads: the run's augmented pairs and the unlabelled source
    (its file's bytes when it is a local file, else its name)."""
    from selfalign.manifest import fingerprint
    from selfalign.sources import resolve_data

    src = resolve_data(cfg.data.unlabelled, "unlabelled.jsonl", cfg)
    local = Path(src).expanduser()
    return {"augmented": fingerprint(Path(run_dir) / "augment" / "augmented.jsonl"), "unlabelled": str(src),
            "unlabelled_hash": fingerprint(local) if local.exists() else "", "split": cfg.data.unlabelled_split}


def human_set(cfg: Config, heldout: list[SeedPair]) -> tuple[list[AugmentedPair], dict[str, Any]]:
    """The human-judged set (`human.load_human_pairs`) of `evaluate.n_human` prompts from the file
    `evaluate.human`, held-out instructions excluded. Empty (and said) when n_human is 0, when no
    file is named, or when the config file names one that is absent; a file typed as an option or
    override (`--human PATH`) that is absent is an error."""
    from selfalign.log import say
    from selfalign.sources import local_file

    ev = cfg.evaluate
    n, path = ev.n_human, ev.human
    if n <= 0:
        return [], {"n_prompts": 0, "note": "not asked for (evaluate.n_human: 0)"}
    if path is None:
        note = "no human-judged set: evaluate.human names no OASST1 messages file (pass --human PATH)"
        say(f"evaluate: {note}")
        return [], {"n_prompts": 0, "note": note}
    found = local_file(path, cfg)
    if found is None and not cfg.is_overridden("evaluate.human"):
        note = f"{path} not found: no human-judged set (pass --human PATH)"
        say(f"evaluate: {note}")
        return [], {"n_prompts": 0, "path": str(path), "note": note}
    from selfalign.labels import is_labels_file

    if is_labels_file(found or path):  # review.html's labels: keep = good, drop = bad (labels.py)
        from selfalign.labels import human_pairs

        pairs, info = human_pairs(found or path, Path(cfg.run.out_dir) / "curate_1" / "rated.jsonl")
        say(f"evaluate: human-judged set: {info['n_good']} keep and {len(pairs) - info['n_good']} drop labels "
            f"from {info['path']}")
        return pairs, info
    pairs, info = load_human_pairs(found or path, n, cfg.run.seed, {normalized(p.instruction) for p in heldout})
    say(f"evaluate: human-judged set: {info['n_prompts']} prompts with best- and last-ranked OASST1 replies "
        f"from {info['path']}")
    return pairs, info


def check_run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise DataError(f"{run_dir}: no finished selfalign run here (no manifest.json); run `selfalign run` first")
    if not (run_dir / "backward" / "adapter_config.json").is_file():
        raise DataError(f"{run_dir}/backward: no backward adapter; run `selfalign run` first")


def evaluate_run(cfg: Config, report: bool = True) -> dict[str, Any]:
    """Evaluate the finished run in `cfg.run.out_dir`; writes `eval/` and (with `report`) the reports.

    The settings are the config's `evaluate` section: `n_heldout` held-out pairs from `heldout`
    and `oasst1_val` (see `load_heldout`); `n_prompts` prompts for the pairwise win rate, judged
    with `judge_max_new_tokens` (None: `curation.max_new_tokens`); `n_human` prompts of the
    human-judged set from the file `human` (`human.py`; 0 leaves it out); `n_recovery` augmented
    pairs whose true prompt base and backward model try to recover (`recovery.py`). Re-running
    resumes: rated records, responses and judgments whose inputs match are reused (`resume.py`).
    """
    from selfalign.forward import load_prompts
    from selfalign.generation import load_engine
    from selfalign.log import say
    from selfalign.models import setup_threads
    from selfalign.prompts import Templates
    from selfalign.sources import resolve_data

    tpl = Templates.for_config(cfg)
    settings = cfg.evaluate
    run_dir = Path(cfg.run.out_dir)
    check_run(run_dir)
    setup_threads(cfg.run.threads)
    ev = run_dir / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    heldout, held_info = load_heldout(cfg, run_dir, settings.n_heldout, settings.heldout, settings.oasst1_val)
    write_jsonl(ev / "heldout.jsonl", [asdict(p) for p in heldout])
    say(f"evaluate: {len(heldout)} held-out pairs from {held_info['path']} "
        f"({held_info['excluded_as_trained']} skipped as used in training)")

    t = time.perf_counter()
    step_fp = backward_fingerprint(cfg, run_dir)
    backward, reused = cached(ev / "backward.json", {**step_fp, "heldout": texts_hash([asdict(p) for p in heldout])},
                              lambda: evaluate_backward(cfg, run_dir, heldout))
    if reused:
        say(f"evaluate: backward model's measurement reused from {ev / 'backward.json'}")
    seconds["backward"] = round(time.perf_counter() - t, 1)
    say(f"evaluate: backward NLL/token base {backward['base']['nll_per_token']} -> "
        f"backward {backward['backward']['nll_per_token']}")

    t = time.perf_counter()
    n_recovery = settings.n_recovery
    recovery, reused = cached(ev / "recovery.json", {**step_fp, **recovery_inputs(cfg, run_dir), "n": n_recovery},
                              lambda: evaluate_recovery(cfg, run_dir, n_recovery, records=ev / "recovery.jsonl"))
    if reused:
        say(f"evaluate: recovery reused from {ev / 'recovery.json'}")
    seconds["recovery"] = round(time.perf_counter() - t, 1)
    if recovery["nll"]:
        say(f"evaluate: recovery of {recovery['n']} true prompts: NLL/token base "
            f"{recovery['nll']['base']['nll_per_token']} -> backward {recovery['nll']['backward']['nll_per_token']}; "
            f"ROUGE-L F1 base {recovery['rouge_l_f1']['base']} -> backward {recovery['rouge_l_f1']['backward']}")
    else:
        say(f"evaluate: recovery: no augmented pair has a true prompt in {recovery['source']} ({recovery['skipped']})")

    t = time.perf_counter()
    src = resolve_data(cfg.data.eval_prompts, "prompts.jsonl", cfg)
    prompts = load_prompts(src, settings.n_prompts, cfg.data.eval_split)
    models = forward_models(run_dir)
    responses = {}
    for name, adapter in models.items():
        fp = {"models": cfg.models.model_dump(), "adapter": str(adapter or ""), "adapter_hash": adapter_hash(adapter),
              "generation": cfg.generation.response.model_dump(), "tag": cfg.forward.seed_tag, "seed": cfg.run.seed,
              "prompts": texts_hash(prompts)}
        responses[name], reused = cached(ev / f"responses_{name}.json", fp,
                                         lambda a=adapter, n=name: model_responses(cfg, a, prompts, n))
        if reused:
            say(f"evaluate: responses of {name} reused from {ev / f'responses_{name}.json'}")
    write_jsonl(ev / "responses.jsonl", [{"model": name, "adapter": str(models[name] or ""), "prompt": p, "response": r}
                                         for name, texts in responses.items() for p, r in zip(prompts, texts, strict=True)])
    seconds["responses"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    planted, planted_info = planted_set(cfg, heldout, ev)
    human, human_info = human_set(cfg, heldout)
    spec, adapter, rater_name = rater_spec(cfg, run_dir)
    rater_fp = {"rater": spec, "adapter": str(adapter or ""), "adapter_hash": adapter_hash(adapter),
                "models": cfg.models.model_dump()}
    rater = load_engine(cfg, spec, adapter=adapter, name=rater_name, role="judge")
    curation = evaluate_curation(cfg, rater, planted, human, ev, (spec, adapter), planted_info["kinds"])
    curation.update(rater=rater_name, planted=planted_info, human=human_info)
    seconds["curation"] = round(time.perf_counter() - t, 1)
    say(f"evaluate: rater ROC AUC {curation['roc_auc']} (mode {cfg.curation.mode}, good vs planted bad), "
        f"precision/recall at {curation['threshold']}: "
        f"{curation['at_threshold']['precision']}/{curation['at_threshold']['recall']}")

    t = time.perf_counter()
    comps: list[dict[str, Any]] = []
    judged: list[dict[str, Any]] = []
    judge_tokens = settings.judge_max_new_tokens or cfg.curation.max_new_tokens
    for x, y in comparisons(models):
        fp = {**rater_fp, "x": texts_hash(responses[x]), "y": texts_hash(responses[y]), "prompts": texts_hash(prompts),
              "max_new_tokens": judge_tokens, "max_response_tokens": cfg.curation.max_response_tokens,
              "seed": cfg.run.seed, "template": texts_hash([tpl.file("pairwise_prompt.txt")])}
        got, _ = cached(ev / f"judgments_{x}_vs_{y}.json", fp, lambda x=x, y=y, r=rater: judge_pairwise(
            r, prompts, responses[x], responses[y], judge_tokens, cfg.curation.max_response_tokens, cfg.run.seed,
            tpl))
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
        from selfalign.report_eval import write_eval_report

        write_eval_report(run_dir, results)
    say(f"evaluate: done in {time.perf_counter() - t0:.0f}s; results in {ev / 'evaluation.json'}")
    return results
