"""`selfalign ablate`: the paper's data-quality ablation (Li et al. 2023, Sec. 4.3), judge-free.

Forward models are trained from the base model with the run's forward settings (LoRA,
`train_forward`, system tags), the same number of optimizer steps for every arm, once per
training seed:

    (a) seed       seed only
    (b) curated    seed + the curated pairs
    (c) random     seed + as many `ok` augmented pairs as were curated, a seeded random sample
                   (drawn anew for each training seed)
    (d) all        seed + every `ok` augmented pair
    (e) longest    seed + as many `ok` augmented pairs as were curated, those with the longest
                   responses (characters)

Each model is measured by the reference NLL per token of held-out human responses given their
instructions (`ablate.heldout`: by default the OASST1 validation seed `evaluate.oasst1_val` when that file
exists, `evaluate.load_heldout`): the forward prompt with the
seed tag as system, as the forward model's seed examples, loss on the response tokens only. The
base model without an adapter is measured once as a reference. Intervals: `stats.bootstrap_nll`.
A pairwise win rate against arm (a), judged by the rater, is behind `ablate.judge`: off by default,
because at 135M the judge answers "A" about 95% of the time (every pair is then a tie).

Resumable: each arm/seed adapter lives in `<run>/ablate/<arm>-s<seed>/` (training checkpoints and
resumes in `.work/`), each measurement is appended to `<run>/ablate/results.jsonl`. An arm/seed
whose key (config it reads, its training examples, steps, seed, held-out pairs) matches a stored
measurement is skipped; one whose key changed starts fresh.

Cost: arms x seeds trainings of `steps` optimizer steps, plus one held-out measurement per model
and one of the base model:

    T ~= 5 * seeds * steps * t_step + (5 * seeds + 1) * t_measure(n_heldout) + (10 * seeds + 1) * t_load

t_step: one LoRA step at train_forward.batch_size x max_seq_len; t_measure: one forward pass over
the held-out pairs (about n_heldout * (mean example tokens) / inference tokens per second).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfalign import hygiene_stage
from selfalign.config import Config, ConfigError
from selfalign.forward import train_forward
from selfalign.io import atomic_write_text, write_json
from selfalign.log import say
from selfalign.manifest import stage_key
from selfalign.pipeline import Run, declared_reads
from selfalign.record_log import RecordLog
from selfalign.records import AugmentedPair, RatedPair, SeedPair

ARMS: dict[str, str] = {
    "seed": "(a) seed only",
    "curated": "(b) seed + curated",
    "random": "(c) seed + random augmented",
    "all": "(d) seed + all augmented",
    "longest": "(e) seed + longest augmented",
}
BASELINE = "seed"
# Steps of every arm: the run's forward model's, at most MAX_DEFAULT_STEPS (10 trainings of the
# default run's 46 steps take ~40 min on 2 cores; 20 keep `ablate` under 25), or DEFAULT_STEPS when
# the run has no forward model. ablate.steps (--steps) overrides both.
DEFAULT_STEPS = 16
MAX_DEFAULT_STEPS = 20
N_BOOT = 2000


@dataclass
class ArmData:
    arm: str
    seed: int  # training seed
    augmented: list[AugmentedPair | RatedPair]  # what is added to the seed pairs


def arm_data(augmented: Sequence[AugmentedPair], curated: Sequence[RatedPair], seed: int) -> list[ArmData]:
    """The augmented pairs each arm adds to the seed for training seed `seed`. (c) and (e) take
    as many pairs as (b) from the `ok` augmented pairs (all of them when fewer are `ok`)."""
    usable = [p for p in augmented if p.status == "ok"]
    n = min(len(curated), len(usable))
    rng = random.Random(f"selfalign-ablate:{seed}")
    longest = sorted(usable, key=lambda p: (-len(p.response), p.source_id))[:n]
    chosen: dict[str, list[AugmentedPair | RatedPair]] = {
        "seed": [], "curated": list(curated), "random": rng.sample(usable, n), "all": usable, "longest": longest}
    return [ArmData(arm, seed, chosen[arm]) for arm in ARMS]


def _text_hash(rows: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.source_id, r.instruction, r.response]).encode())
    return h.hexdigest()[:16]


def run_forward_steps(run_dir: Path, iteration: int) -> int | None:
    """Optimizer steps the run's forward model took (`forward_N/training_info.json`), if trained."""
    info = Path(run_dir) / f"forward_{iteration}" / "training_info.json"
    if not info.is_file():
        return None
    steps = json.loads(info.read_text(encoding="utf-8")).get("steps")
    return int(steps) if isinstance(steps, int) and steps > 0 else None


def arm_config(cfg: Config, steps: int, seed: int) -> Config:
    """The run's config with the arm's optimizer steps and training seed."""
    c = cfg.model_copy(deep=True)
    c.train_forward.max_steps = steps
    c.run.seed = seed
    return c


def arm_key(run: Run, data: ArmData, seed_pairs: Sequence[SeedPair], steps: int, heldout_hash: str) -> str:
    """What an arm/seed's adapter and measurement depend on: the config the forward model reads
    (as its stage key declares), the forward template, the training examples, steps, held-out pairs."""
    values, temps = declared_reads("train-forward", run.cfg, run.templates)
    return stage_key("ablate", values, temps, _text_hash(seed_pairs), data.arm, data.seed, _text_hash(data.augmented), steps,
                     heldout_hash)


def heldout_set(cfg: Config, run_dir: Path, n: int, source: str, oasst1_val: str | Path | None,
                trained: Sequence[Any]) -> tuple[list[SeedPair], dict[str, Any]]:
    """`n` held-out pairs (`evaluate.load_heldout`), also leaving out any pair whose instruction or
    response is among the examples of any arm (`trained`)."""
    from selfalign.evaluate.corruptions import normalized
    from selfalign.evaluate.heldout import load_heldout

    pool, info = load_heldout(cfg, run_dir, 1 << 30, source, oasst1_val)
    seen = {normalized(t) for p in trained for t in (p.instruction, p.response)}
    fresh = [p for p in pool if normalized(p.instruction) not in seen and normalized(p.response) not in seen]
    picked = fresh[:n]
    info = {**info, "excluded_as_trained": info["excluded_as_trained"] + len(pool) - len(fresh), "n": len(picked)}
    return picked, info


def heldout_rows(tok: Any, pairs: Sequence[SeedPair], cfg: Config) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Tokenized as the forward model's seed examples: seed tag as system, loss on the response."""
    from selfalign.forward import forward_examples
    from selfalign.prompts import Templates
    from selfalign.train import tokenize_example

    tpl = Templates.for_config(cfg)
    rows, dropped = [], {}
    for ex in forward_examples(list(pairs), [], cfg.forward, tpl):
        got = tokenize_example(tok, ex, cfg.train_forward.max_seq_len, tpl)
        if isinstance(got, str):
            dropped[got] = dropped.get(got, 0) + 1
        else:
            got.pop("truncated")
            rows.append(got)
    rows.sort(key=lambda r: len(r["input_ids"]))  # batches of similar length: less padding to compute
    return rows, dropped


def measure(cfg: Config, adapter: Path | None, rows: Sequence[dict[str, list[int]]]) -> list[tuple[float, int]]:
    """(summed NLL, target tokens) per held-out row under the base model (+ adapter)."""
    from selfalign.evaluate.backward_eval import target_nll
    from selfalign.models import load_model

    model, tok = load_model(cfg.models.base, cfg.models, device=cfg.run.device, adapter=adapter)
    got = target_nll(model, rows, tok.pad_token_id, cfg.generation.batch_size or 8)
    del model
    return got


def _start_fresh(out: Path) -> None:
    for p in (out, out.with_name(out.name + ".work"), out.with_name(out.name + ".tmp")):
        shutil.rmtree(p, ignore_errors=True)


def _prepare(cfg: Config) -> Run:
    """The run's seed, augmented and rated pairs (stages that are up to date are skipped)."""
    from selfalign.executors import ray_executor
    from selfalign.models import setup_threads

    setup_threads(cfg.run.threads)
    ctx = ray_executor().ray_cluster(cfg.ray) if cfg.run.executor == "ray" else contextlib.nullcontext()
    with ctx:
        run = Run(cfg)
        for i in range(1, cfg.curation.iterations + 1):
            run.curate(i)
    return run


def ablate(cfg: Config) -> dict[str, Any]:
    """Train and measure every arm for `ablate.seeds` training seeds (run.seed, run.seed + 1, ...)
    with the config's `ablate` section (`AblateConfig`; the OASST1 file: `evaluate.oasst1_val`);
    writes `<run>/ablate/ablation.json`, `report.md` and `ablation.png`; returns the results."""
    from selfalign.curate import select
    from selfalign.models import load_tokenizer, resolve_model
    from selfalign.plots import plot_ablation
    from selfalign.report_eval import ablation_markdown

    a = cfg.ablate  # ranges checked by the config (seeds, steps >= 1, n_heldout >= 2)
    seeds, steps, n_heldout = a.seeds, a.steps, a.n_heldout
    if not cfg.forward.use_seed:
        raise ConfigError("ablate: every arm is seed + X; forward.use_seed must be true")
    t0 = time.perf_counter()
    run = _prepare(cfg)
    it = cfg.curation.iterations
    # the data the run trains on: without benchmark matches (hygiene_stage), the curated set as written
    seed_pairs, augmented = hygiene_stage.train_seed(run.dir, run.hygiene()), hygiene_stage.clean(cfg, run.dir, run.augment())
    curated = hygiene_stage.curate_filter(cfg, run.dir, select(run.curate(it), cfg.curation.threshold), it)[0]
    steps_from = "ablate.steps"
    if steps is None:
        steps = run_forward_steps(run.dir, it)
        steps_from = f"forward_{it} (the run's forward model)" if steps else "default"
        if steps and steps > MAX_DEFAULT_STEPS:
            steps_from = f"forward_{it} took {steps}, capped at {MAX_DEFAULT_STEPS} for time"
            steps = MAX_DEFAULT_STEPS
        steps = steps or DEFAULT_STEPS
    train_seeds = [cfg.run.seed + k for k in range(seeds)]
    plan = [d for s in train_seeds for d in arm_data(augmented, curated, s)]
    heldout, held_info = heldout_set(cfg, run.dir, n_heldout, a.heldout, cfg.evaluate.oasst1_val,
                                     [*seed_pairs, *[p for d in plan for p in d.augmented]])
    tok = load_tokenizer(resolve_model(cfg.models.base, cfg.models.cache_dir), cfg.models.trust_remote_code)
    rows, dropped = heldout_rows(tok, heldout, cfg)
    if len(rows) < 2:
        raise ConfigError(f"ablate: only {len(rows)} held-out pairs fit train_forward.max_seq_len ({dropped})")
    # the measured token rows themselves, in their order: pairs, template, tokenizer, max_seq_len
    held_hash = hashlib.sha256(json.dumps([[r["input_ids"], r["labels"]] for r in rows]).encode()).hexdigest()[:16]
    say(f"ablate: {len(ARMS)} arms x {seeds} seeds, {steps} steps each (from {steps_from}); "
        f"{len(rows)} held-out pairs from {held_info['path']}; {len(curated)} curated of "
        f"{sum(p.status == 'ok' for p in augmented)} ok augmented pairs")

    out_dir = run.path("ablate")
    log = RecordLog(out_dir / "results.jsonl")
    try:
        base_key = stage_key("base", cfg.models.base, cfg.models.dtype, held_hash)
        if not any(r.get("key") == base_key for r in log.records):
            say("ablate: measuring the base model (no adapter)")
            got = measure(cfg, None, rows)
            log.append({"kind": "nll", "arm": "base", "seed": None, "key": base_key,
                        "nll": [x for x, _ in got], "tokens": [n for _, n in got]})
        keys = {(d.arm, d.seed): arm_key(run, d, seed_pairs, steps, held_hash) for d in plan}
        for k, d in enumerate(plan, 1):
            _run_arm(run, log, d, keys[d.arm, d.seed], steps, rows, f"{k}/{len(plan)}")
        if a.judge:
            _judge_arms(run, log, plan, keys, steps, [p.instruction for p in heldout[:a.judge_prompts]])
    finally:
        log.close()

    results = summarize(log.records, keys, len(seed_pairs), base_key, cfg.run.seed)
    results.update(run_dir=str(run.dir), base=cfg.models.base, steps=steps, steps_from=steps_from, seeds=train_seeds,
                   heldout={**held_info, "n_measured": len(rows), "dropped": dropped},
                   judge_note="off by default: at 135M the judge answers 'A' about 95% of the time",
                   seconds=round(time.perf_counter() - t0, 1))
    write_json(out_dir / "ablation.json", results)
    plot = plot_ablation(results, out_dir / "ablation.png")
    atomic_write_text(out_dir / "report.md", ablation_markdown(results, plot.name if plot else None))
    say(f"ablate: done in {results['seconds']:.0f}s; {out_dir / 'report.md'}")
    return results


def _run_arm(run: Run, log: RecordLog, d: ArmData, key: str, steps: int, rows: Sequence[dict[str, list[int]]],
             progress: str) -> None:
    name = f"{d.arm}-s{d.seed}"
    seed_pairs = hygiene_stage.train_seed(run.dir, run.hygiene())
    n_seed = len(seed_pairs)
    if any(r.get("key") == key and r.get("kind") == "nll" for r in log.records):
        say(f"ablate {progress}: {name} up to date, skipped")
        return
    out = run.path("ablate", name)
    marker = out.with_name(name + ".key")
    if not marker.is_file() or marker.read_text(encoding="utf-8") != key:
        _start_fresh(out)  # another config, data, steps or held-out set: nothing of it is reused
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(key, encoding="utf-8")
    cfg = arm_config(run.cfg, steps, d.seed)
    if not (out / "adapter_model.safetensors").is_file():  # else: trained, then stopped before measuring
        say(f"ablate {progress}: training {name}: {n_seed} seed + {len(d.augmented)} augmented examples")
        train_forward(cfg, seed_pairs, d.augmented, out, name=f"ablate {name}", templates=run.templates)
    trained = json.loads((out / "training_info.json").read_text(encoding="utf-8"))
    t = time.perf_counter()
    got = measure(cfg, out, rows)
    measure_seconds = round(time.perf_counter() - t, 2)
    nll = sum(x for x, _ in got) / max(sum(n for _, n in got), 1)
    say(f"ablate {progress}: {name}: held-out NLL/token {nll:.4f} after {trained['steps']} steps")
    log.append({"kind": "nll", "arm": d.arm, "seed": d.seed, "key": key, "n_seed": n_seed,
                "n_augmented": len(d.augmented), "n_examples": trained["n_examples"], "steps": trained["steps"],
                "train_seconds": trained["seconds"], "loss_first": trained["first_loss"],
                "loss_last": trained["last_loss"], "measure_seconds": measure_seconds, "augmented_ids": [p.source_id for p in d.augmented], "nll_per_token": round(nll, 4),
                "nll": [x for x, _ in got], "tokens": [n for _, n in got]})


def _judge_arms(run: Run, log: RecordLog, plan: Sequence[ArmData], keys: dict[tuple[str, int], str], steps: int,
                prompts: list[str]) -> None:
    """Pairwise win rate of each arm against (a) of the same training seed, judged by the rater."""
    from selfalign.evaluate.judge import judge_pairwise, model_responses
    from selfalign.evaluate.rater_eval import rater_spec
    from selfalign.generation import load_engine

    c = run.cfg
    todo = []
    for d in plan:
        if d.arm == BASELINE:
            continue
        key = stage_key("judge", keys[d.arm, d.seed], keys[BASELINE, d.seed], prompts, c.models.rater)
        if not any(r.get("key") == key for r in log.records):
            todo.append((d, key))
    if not todo:
        return
    responses: dict[str, list[str]] = {}

    def answers(arm: str, seed: int) -> list[str]:
        name = f"{arm}-s{seed}"
        if name not in responses:
            responses[name] = model_responses(arm_config(c, steps, seed), run.path("ablate", name), prompts, name)
        return responses[name]

    for d, _ in todo:
        answers(d.arm, d.seed), answers(BASELINE, d.seed)
    spec, adapter, rater_name = rater_spec(c, run.dir)
    rater = load_engine(c, spec, adapter=adapter, name=rater_name)
    for d, key in todo:
        got = judge_pairwise(rater, prompts, answers(d.arm, d.seed), answers(BASELINE, d.seed),
                             c.curation.max_new_tokens, c.curation.max_response_tokens, c.run.seed)
        s = got["summary"]
        say(f"ablate: judge {d.arm}-s{d.seed} vs {BASELINE}-s{d.seed}: {s['win']} win / {s['tie']} tie / "
            f"{s['loss']} loss ('A' rate {s['a_rate']})")
        log.append({"kind": "judge", "arm": d.arm, "seed": d.seed, "key": key, "arm_key": keys[d.arm, d.seed],
                    "judge": rater_name,
                    "outcomes": [i["outcome"] for i in got["items"]], "unparsable": s["unparsable_verdicts"],
                    "a_rate": s["a_rate"]})


def summarize(records: Sequence[dict[str, Any]], keys: dict[tuple[str, int], str], n_seed: int, base_key: str,
              boot_seed: int = 0) -> dict[str, Any]:
    """Per arm: examples, steps, mean NLL per token over seeds with its interval and the
    difference with (a) (`stats.bootstrap_nll`); the base model's NLL; judge win rates if any."""
    from selfalign.evaluate.judge import summarize_outcomes
    from selfalign.evaluate.stats import bootstrap_nll

    by_key = {r["key"]: r for r in records if "key" in r}
    current = [by_key[k] for k in keys.values()]  # this plan's measurements, not stale ones
    tokens = current[0]["tokens"]
    if any(r["tokens"] != tokens for r in current):
        raise ValueError("ablate: arms were measured on different held-out tokens")
    nll = {arm: [r["nll"] for r in current if r["arm"] == arm] for arm in ARMS}
    stats = bootstrap_nll(nll, tokens, BASELINE, N_BOOT, boot_seed)
    base = by_key[base_key]
    arms = []
    for arm, label in ARMS.items():
        rs = [r for r in current if r["arm"] == arm]
        judged = list({r["seed"]: r for r in records if r.get("kind") == "judge" and r["arm"] == arm
                       and r.get("arm_key") == keys.get((arm, r["seed"]))}.values())
        entry = {"arm": arm, "label": label, "n_seed": n_seed, "n_augmented": sorted({r["n_augmented"] for r in rs}),
                 "steps": sorted({r["steps"] for r in rs}), "per_seed": {str(r["seed"]): r["nll_per_token"] for r in rs},
                 **stats.get(arm, {})}
        if judged:
            entry["judge_vs_seed"] = summarize_outcomes([o for r in judged for o in r["outcomes"]],
                                                        sum(r["unparsable"] for r in judged))
        arms.append(entry)
    return {"arms": arms, "baseline": BASELINE,
            "base_nll_per_token": round(sum(base["nll"]) / max(sum(base["tokens"]), 1), 4),
            "interval": f"95% percentile bootstrap ({N_BOOT} resamples): held-out pairs resampled (the same draw "
                        "for every arm: deltas are paired over pairs), then each arm's seeds resampled",
            "measure": "reference NLL per token of held-out responses given their instructions "
                       "(forward prompt, seed tag as system; response tokens only); lower is better"}
