"""The whole instruction-backtranslation pipeline, stage by stage, in one run directory.

seed -> train-backward -> augment -> curate -> train-forward -> responses
(-> iteration 2: the forward model M1 re-rates the candidates, M2 is trained).

Every stage is skipped when its inputs and config are unchanged (see `manifest.py`); the
generation stages append records as they go and resume where they stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfalign import hygiene_stage, lock
from selfalign.config import Config
from selfalign.executors import ray_executor, run_stage
from selfalign.io import DataError, atomic_write_text, write_jsonl, writing
from selfalign.log import say
from selfalign.manifest import Manifest, fingerprint, stage_key, versions
from selfalign.prompts import Templates
from selfalign.reads import STAGE_READS, declared_reads
from selfalign.records import AugmentedPair, RatedPair, RejectLog, SeedPair, UnlabelledResponse
from selfalign.rundir import RunDirError, check_dir, copy_dir, saving
from selfalign.sources import announce_sources, file_fingerprint, resolve_sources
from selfalign.steps import ModelRef

# Generation stages append records to one log: they must not run once per rank.
SINGLE_PROCESS_STAGES = {"augment", "curate-1", "curate-2", "responses"}
STAGES = ["seed", "train-backward", "augment", "curate", "train-forward", "responses"]


def _once(method):  # noqa: ANN001, ANN202
    """Stages call their prerequisites; each stage runs (or is checked) once per process."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args):  # noqa: ANN001, ANN002, ANN202
        key = (method.__name__, args)
        if key not in self._memo:
            try:
                self._memo[key] = method(self, *args)
            except Exception as e:
                # the innermost stage names an unexpected error for the CLI's one line
                if not hasattr(e, "selfalign_stage"):
                    with contextlib.suppress(AttributeError):
                        e.selfalign_stage = "-".join([method.__name__.replace("_", "-"), *map(str, args)])
                raise
        return self._memo[key]

    return wrapper


class Run:
    """One run directory and the stages that fill it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._memo: dict[tuple[str, tuple[Any, ...]], Any] = {}
        self.ran: list[str] = []  # the stages this process ran (not skipped as up to date)
        self.templates = Templates.for_config(cfg)
        self.dir = Path(cfg.run.out_dir)
        self.sources = resolve_sources(cfg)  # a missing data path fails here, before any stage
        announce_sources(self.sources)
        lock.acquire(self.dir)  # one writer per run directory (lock.py); a second process gets one line
        check_dir(self.dir, cfg)
        with writing(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.dir)
        self.manifest.data.update(config=cfg.to_dict(), versions=versions(), seed=cfg.run.seed,
                                  data_sources={k: s.to_dict() for k, s in self.sources.items()})
        self.manifest.save()
        atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())

    # --- helpers -------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def _stage(self, name: str, key: str, outputs: list[Path]) -> bool:
        """True if the stage must run (and marks it started); False if it is up to date."""
        if self.manifest.is_done(name, key, outputs):
            say(f"{name}: up to date, skipped")
            return False
        self.ran.append(name)
        if name in SINGLE_PROCESS_STAGES and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # several ranks would each generate every record into the same log
            raise RunDirError(
                f"stage {name} runs in a single process: run `selfalign {name.split('-')[0]}` without "
                "torchrun/accelerate first, then launch only the training command on several GPUs"
            )
        say(f"{name}: running")
        self.manifest.start(name, key)
        return True

    def key(self, stage: str, iteration: int = 1, **given: Any) -> str:
        """The stage's key: the hash of what it declares it reads (STAGE_READS) and of what it is
        `given` besides (data files, the rater's adapter)."""
        values, temps = declared_reads(stage, self.cfg, self.templates)
        arts = {a.format(i=iteration): fingerprint(self.path(a.format(i=iteration)))
                for a in STAGE_READS[stage].artifacts}
        from selfalign.config_served import served_reads

        return stage_key(stage, values, temps, arts, {**given, **served_reads(self.cfg, stage)})

    def _drop_stale(self, name: str, key: str, out: Path) -> None:
        """Inputs changed since `out` was written: its records (and Ray's parts) are stale."""
        if self.manifest.previous_key(name) == key:
            return
        if out.exists():
            out.unlink()
        if self.cfg.run.executor == "ray":
            ray_executor().clear(out, self.cfg.ray)

    # --- stages --------------------------------------------------------------------------
    @_once
    def seed(self) -> list[SeedPair]:
        d = self.cfg.data
        src = self.sources["data.seed"].resolved
        out = self.path("seed", "pairs.jsonl")
        if self._stage("seed", self.key("seed", source=[src, file_fingerprint(src)]), [out]):
            from selfalign.seed import load_seed

            rejects = RejectLog()
            pairs = load_seed(src, d.seed_split, d.seed_english_only, d.seed_limit, rejects)
            rejects.write(self.path("seed", "rejects.jsonl"))
            write_jsonl(out, [asdict(p) for p in pairs])
            past = f"; {rejects.past_limit} rows past data.seed_limit not used" if rejects.past_limit else ""
            say(f"seed: {len(pairs)} pairs from {src}; {rejects.summary()}{past}")
            self.manifest.count(seed_pairs=len(pairs), seed_rejected=len(rejects), seed_past_limit=rejects.past_limit,
                                seed_files_not_read=len(rejects.not_read))
            self.manifest.finish("seed", source=src)
            return pairs
        return [SeedPair(**json.loads(x)) for x in out.read_text(encoding="utf-8").splitlines()]

    @_once
    def hygiene(self, part: str = "seed") -> dict[str, Any]:
        """Benchmark contamination and duplicates of the seed or the augmented pairs (hygiene_stage.py)."""
        seed, aug = self.seed(), (self.augment() if part == "augmented" else [])
        name, out, files = f"hygiene-{part}", self.path("hygiene", f"{part}.json"), hygiene_stage.data_files(self.sources)
        if self._stage(name, self.key(name, **hygiene_stage.given(self.cfg, files)), [out, self.path("hygiene", "seed_train.jsonl")]):
            res = hygiene_stage.run_part(part, self.cfg, self.dir, seed, aug, files)
            self.manifest.finish(name, **hygiene_stage.counts(res))
        return json.loads(out.read_text(encoding="utf-8"))

    @_once
    def train_backward(self) -> Path:
        pairs = hygiene_stage.train_seed(self.dir, self.hygiene())  # without benchmark matches
        out = self.path("backward")
        c = self.cfg
        if self._stage("train-backward", self.key("train-backward"), [out / "adapter_model.safetensors"]):
            from selfalign.backward import train_backward

            with saving(out):
                r = train_backward(c, pairs, out, self.templates)
            say(f"train-backward: {r.summary(f'of {len(pairs)} seed pairs', c.train_backward.max_seq_len)}")
            self.manifest.count(backward_examples=r.n_examples, backward_dropped=sum(r.dropped.values()),
                                backward_truncated=r.truncated)
            self.manifest.finish("train-backward", loss_first=r.first_loss, loss_last=r.last_loss,
                                 loss_start=r.loss_start, loss_end=r.loss_end, loss_probe_before=r.probe_before,
                                 loss_probe_after=r.probe_after, tokens_per_second=r.tokens_per_second)
        return out

    @_once
    def sample(self) -> list[UnlabelledResponse]:
        d = self.cfg.data
        src = self.sources["data.unlabelled"].resolved
        out = self.path("augment", "sample.jsonl")
        if self._stage("sample", self.key("sample", source=[src, file_fingerprint(src)]), [out]):
            from selfalign.unlabelled import load_unlabelled, sample_single_turn

            rejects = RejectLog()
            pool = load_unlabelled(src, d.unlabelled_split, rejects)
            picked = sample_single_turn(pool, d.unlabelled_n, self.cfg.run.seed)
            rejects.write(self.path("augment", "unlabelled_rejects.jsonl"))
            write_jsonl(out, [asdict(r) for r in picked])
            n_multi = rejects.counts().get("multi_turn", 0)
            say(f"sample: {len(pool)} single-turn responses ({n_multi} multi-turn dropped, "
                f"{rejects.summary()}), sampled {len(picked)}")
            self.manifest.count(unlabelled_single_turn=len(pool), unlabelled_multi_turn=n_multi,
                                unlabelled_rejected=len(rejects), unlabelled_files_not_read=len(rejects.not_read),
                                sampled=len(picked))
            self.manifest.finish("sample", source=src)
            return picked
        return [UnlabelledResponse(**json.loads(x)) for x in out.read_text(encoding="utf-8").splitlines()]

    @_once
    def augment(self) -> list[AugmentedPair]:
        responses = self.sample()  # first: a bad unlabelled file fails before hours of training
        backward = self.train_backward()
        c = self.cfg
        out = self.path("augment", "augmented.jsonl")
        key = self.key("augment")
        self._drop_stale("augment", key, out)
        if self._stage("augment", key, [out]):
            from selfalign.augment import AugmentStep, status_counts

            step = AugmentStep.from_config(c, self.templates, "backward")
            pairs = run_stage(c, step, responses, out, ModelRef(c.models.base, backward, "backward", "augment"))
            status = status_counts(pairs)
            n_cut = sum(p.response_cut for p in pairs)
            say(f"augment: {len(pairs)} instructions generated; {status}; {n_cut} responses cut to "
                f"{c.generation.max_prompt_tokens} tokens (or to fit the model's context) in the prompt")
            self.manifest.count(generated=len(pairs), generated_ok=status["ok"], generated_status=status,
                                generated_response_cut=n_cut)
            self.manifest.finish("augment")
            return pairs  # in the order of `responses`
        rows = [AugmentedPair(**json.loads(x)) for x in out.read_text(encoding="utf-8").splitlines()]
        order = {r.source_id: i for i, r in enumerate(responses)}
        return sorted(rows, key=lambda r: order.get(r.source_id, 1 << 30))

    @_once
    def train_m0(self) -> Path:
        """The paper's M0: the forward model trained on the seed data only (a rater option)."""
        pairs = hygiene_stage.train_seed(self.dir, self.hygiene())  # without benchmark matches
        out = self.path("m0")
        c = self.cfg
        if self._stage("train-m0", self.key("train-m0"), [out / "adapter_model.safetensors"]):
            from selfalign.forward import train_forward

            with saving(out):
                r = train_forward(c, pairs, [], out, name="m0", templates=self.templates)
            self.manifest.finish("train-m0", loss_first=r.first_loss, loss_last=r.last_loss)
        return out

    def _rater(self, iteration: int) -> tuple[str, Path | None, str]:
        from selfalign.curate import choose_rater

        spec, adapter, name = choose_rater(self.cfg.models, self.dir, iteration)
        if iteration == 2:
            self.train_forward(1)
        elif adapter is not None:
            self.train_m0()
        return spec, adapter, name

    @_once
    def curate(self, iteration: int = 1) -> list[RatedPair]:
        pairs = self.augment()
        self.hygiene("augmented")
        usable = [p for p in pairs if p.status == "ok"]
        spec, adapter, rater_name = self._rater(iteration)
        c = self.cfg
        rated_path = self.path(f"curate_{iteration}", "rated.jsonl")
        key = self.key("curate", iteration, rater=[spec, fingerprint(adapter) if adapter else None])
        name = f"curate-{iteration}"
        self._drop_stale(name, key, rated_path)
        if self._stage(name, key, [rated_path]):
            from selfalign.curate import step_for

            rated = run_stage(c, step_for(c, self.templates), usable, rated_path,
                              ModelRef(spec, adapter, rater_name, "curate"))
            self.manifest.finish(name, rater=rater_name)
        else:
            rated = load_rated(rated_path)
        # Selection is cheap: always redone, so a new threshold (or labels file) needs no re-rating.
        from selfalign.curate import select_round

        stats = select_round(c, rated, self.dir, iteration, self.templates, rater_name, len(pairs), len(usable))
        self.manifest.count(**{f"curation_{iteration}": stats})
        return rated

    @_once
    def train_forward(self, iteration: int = 1) -> Path:
        pairs = hygiene_stage.train_seed(self.dir, self.hygiene())  # without benchmark matches
        self.curate(iteration)  # writes curated_{iteration}/data.jsonl: the data trained on, and hashed
        c = self.cfg
        out = self.path(f"forward_{iteration}")
        name = f"train-forward-{iteration}"
        if self._stage(name, self.key("train-forward", iteration), [out / "adapter_model.safetensors"]):
            from selfalign.forward import load_curated, train_forward

            kept = load_curated(self.path(f"curated_{iteration}"))
            with saving(out):
                r = train_forward(c, pairs, kept, out, name=f"forward (M{iteration})", templates=self.templates)
            given = f"of {len(pairs) if c.forward.use_seed else 0} seed + {len(kept)} curated"
            say(f"train-forward (M{iteration}): {r.summary(given, c.train_forward.max_seq_len)}")
            self.manifest.count(**{f"forward_{iteration}_examples": r.n_examples,
                                   f"forward_{iteration}_dropped": sum(r.dropped.values()),
                                   f"forward_{iteration}_truncated": r.truncated})
            self.manifest.finish(name, loss_first=r.first_loss, loss_last=r.last_loss,
                                 loss_start=r.loss_start, loss_end=r.loss_end, loss_probe_before=r.probe_before,
                                 loss_probe_after=r.probe_after, tokens_per_second=r.tokens_per_second)
        return out

    @_once
    def final_forward(self) -> Path:
        n = self.cfg.curation.iterations
        for i in range(1, n + 1):
            out = self.train_forward(i)
        return out

    @_once
    def responses(self) -> list[dict[str, str]]:
        fwd = self.final_forward()
        c = self.cfg
        src = self.sources["data.eval_prompts"].resolved
        out = self.path("responses.jsonl")
        key = self.key("responses", c.curation.iterations, source=[src, file_fingerprint(src)])
        self._drop_stale("responses", key, out)
        if self._stage("responses", key, [out]):
            from selfalign.forward import RespondStep, load_prompts, prompt_items
            from selfalign.generation import GenParams

            prompts = prompt_items(load_prompts(src, c.forward.n_responses, c.data.eval_split))
            step = RespondStep(self.templates, GenParams.from_config(c.generation.response, c.run.seed),
                               c.forward.seed_tag, fwd.name)
            rows = run_stage(c, step, prompts, out, ModelRef(c.models.base, fwd, "forward", "responses"))
            self.manifest.finish("responses")
            return rows
        return [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]

    def finalize(self) -> None:
        """Copy the final curated data and forward model to `curated/` and `forward/`; write the report."""
        n = self.cfg.curation.iterations
        for src, dst in ((self.path(f"curated_{n}"), self.path("curated")), (self.path(f"forward_{n}"), self.path("forward"))):
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                with writing(dst):
                    copy_dir(src, tmp)
                    shutil.rmtree(dst, ignore_errors=True)
                    tmp.rename(dst)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        from selfalign.report import write_report
        from selfalign.review import write_review

        write_review(self.dir, n)

        write_report(self.path("report.md"), self.dir, self.manifest.data, self.augment(), self.curate(n),
                     self.responses())
        hygiene_stage.add_to_report(self.path("report.md"), self.dir)  # benchmark matches, duplicates, budget


def run_pipeline(cfg: Config, until: str = "responses") -> Run:
    """Run the stages up to and including `until` (one of STAGES)."""
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; one of {STAGES}")
    with lock.scope():  # the run directory is locked from Run() until the stages end
        if cfg.run.executor == "ray":  # one Ray instance for the whole run, shut down at the end
            with ray_executor().ray_cluster(cfg.ray):
                return _run_stages(cfg, until)
        return _run_stages(cfg, until)


def _run_stages(cfg: Config, until: str) -> Run:
    from selfalign.models import setup_threads

    if cfg.generation.backend == "vllm":  # before hours of training: one line if vllm won't do
        from selfalign.vllm_backend import check_vllm

        check_vllm()
    setup_threads(cfg.run.threads)
    t0 = time.perf_counter()
    run = Run(cfg)
    from selfalign import report

    if until == "seed":
        run.seed()
    elif until == "train-backward":
        run.train_backward()
    elif until == "augment":
        report.print_augmented(run.augment())
    elif until == "curate":
        for i in range(1, cfg.curation.iterations + 1):
            rated = run.curate(i)
        report.print_rated(rated, cfg.curation.threshold)
    elif until == "train-forward":
        run.final_forward()
    else:
        report.print_augmented(run.augment())
        run.final_forward()
        report.print_rated(run.curate(cfg.curation.iterations), cfg.curation.threshold)  # memoized
        report.print_responses(run.responses())
        run.finalize()
        run.manifest.data["total_seconds"] = round(time.perf_counter() - t0, 1)
        run.manifest.save()
        if cfg.hub.push:
            from selfalign.hub import push_run

            push_run(run.dir, cfg.hub)
        say(f"done in {time.perf_counter() - t0:.0f}s; report: {run.path('report.md')}")
    return run


def load_rated(path: Path) -> list[RatedPair]:
    if not path.exists():
        raise DataError(f"{path}: not found (run `selfalign curate` first)")
    return [RatedPair(**json.loads(x)) for x in path.read_text().splitlines()]
