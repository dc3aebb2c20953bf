"""The whole instruction-backtranslation pipeline, stage by stage, in one run directory.

seed -> train-backward -> augment -> curate -> train-forward -> responses
(-> iteration 2: the forward model M1 re-rates the candidates, M2 is trained).

Every stage is skipped when its inputs and config are unchanged (see `manifest.py`); the
generation stages append records as they go and resume where they stopped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selfalign.config import Config, ConfigError
from selfalign.io import (
    STORAGE_ERRORS,
    DataError,
    WriteError,
    atomic_write_text,
    write_jsonl,
    writing,
)
from selfalign.manifest import Manifest, fingerprint, stage_key, versions
from selfalign.records import AugmentedPair, RatedPair, RejectLog, SeedPair, UnlabelledResponse
from selfalign.sources import SAMPLES as SAMPLES  # noqa: F401 - re-exported for callers
from selfalign.sources import Source, resolve_source, resolve_sources

# Generation stages append records to one log: they must not run once per rank.
SINGLE_PROCESS_STAGES = {"augment", "curate-1", "curate-2", "responses"}
STAGES = ["seed", "train-backward", "augment", "curate", "train-forward", "responses"]


@dataclass(frozen=True)
class Reads:
    """What a stage reads. Its key is the hash of exactly these, plus the data files it is given
    (and, for curation, the rater's adapter): a change to any of them redoes the stage, a change
    to anything else does not."""

    config: tuple[str, ...] = ()  # dotted config keys or whole sections
    templates: tuple[str, ...] = ()  # template files, or `file.json:section`
    artifacts: tuple[str, ...] = ()  # files of earlier stages in the run directory ({i}: iteration)


_PLAIN = "templates.json:plain"  # the chat template of tokenizers without one (LLaMA-2 base)
_MODEL = ("models.base", "models.dtype", "models.load_in_4bit")
STAGE_READS: dict[str, Reads] = {
    "seed": Reads(config=("data.seed", "data.seed_split", "data.seed_limit", "data.seed_english_only")),
    "train-backward": Reads(config=(*_MODEL, "lora", "train_backward", "run.seed"),
                            templates=("templates.json:backward", _PLAIN), artifacts=("seed/pairs.jsonl",)),
    "sample": Reads(config=("data.unlabelled", "data.unlabelled_split", "data.unlabelled_n", "run.seed")),
    "augment": Reads(config=(*_MODEL, "generation.instruction", "generation.max_prompt_tokens",
                             "generation.max_instruction_chars", "generation.require_request", "run.seed"),
                     templates=("templates.json:backward", _PLAIN, "request_words.json"),
                     artifacts=("backward/adapter_model.safetensors", "augment/sample.jsonl")),
    "train-m0": Reads(config=(*_MODEL, "lora", "train_forward", "forward.seed_tag", "run.seed"),
                      templates=("templates.json:forward", _PLAIN), artifacts=("seed/pairs.jsonl",)),
    # curation.threshold is not read: selection from the stored ratings is redone on every run
    "curate": Reads(config=("models.rater", "models.dtype", "models.load_in_4bit", "curation.mode",
                            "curation.shots", "curation.n_samples", "curation.retries", "curation.force_score",
                            "curation.temperature",
                            "curation.max_new_tokens", "curation.max_response_tokens", "run.seed"),
                    templates=("rating_prompt.txt", "rating_fewshot.json", _PLAIN,  # likelihood modes:
                               "templates.json:forward", "templates.json:role_check"),
                    artifacts=("augment/augmented.jsonl",)),
    "train-forward": Reads(config=(*_MODEL, "lora", "train_forward", "forward.seed_tag", "forward.augmented_tag",
                                   "forward.use_seed", "run.seed"),
                           templates=("templates.json:forward", _PLAIN),
                           artifacts=("seed/pairs.jsonl", "curated_{i}/data.jsonl")),
    "responses": Reads(config=(*_MODEL, "generation.response", "forward.n_responses", "forward.seed_tag",
                               "data.eval_prompts", "data.eval_split", "run.seed"),
                       templates=("templates.json:forward", _PLAIN),
                       artifacts=("forward_{i}/adapter_model.safetensors",)),
}
# Config keys no stage reads: where and how things run, not what they compute (or, for the
# threshold and iterations, handled outside the keys: see above and `final_forward`).
NOT_READ_BY_STAGES = (
    "run.out_dir", "run.force", "run.threads", "run.device", "run.memory_check", "run.device_memory_gb",
    "run.templates_dir", "models.cache_dir", "models.trust_remote_code", "data.samples_if_absent",
    "generation.backend", "generation.batch_size", "generation.max_batch_size", "generation.memory_budget_gb",
    "generation.gpu_memory_utilization", "curation.threshold", "curation.iterations", "hub.",
    # where generation runs; a run directory refuses another executor or Ray setup (but ray.address)
    "run.executor", "ray.",
    "evaluate.", "ablate.",  # settings of `selfalign evaluate` / `ablate`, read after the run
)


def declared_reads(stage: str, cfg: Config) -> tuple[dict[str, Any], dict[str, str]]:
    """The config values (by dotted key) and template fingerprints that `stage` declares it reads
    (STAGE_READS): what its key hashes besides its input artifacts."""
    from selfalign.prompts import template_fingerprint

    reads = STAGE_READS[stage]
    conf = cfg.to_dict()
    values = {}
    for dotted in reads.config:
        node: Any = conf
        for part in dotted.split("."):
            node = node[part]
        values[dotted] = node
    return values, {t: template_fingerprint(t) for t in reads.templates}


class RunDirError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[selfalign] {msg}", flush=True)


_SAMPLE_KEY = {"seed.jsonl": "data.seed", "unlabelled.jsonl": "data.unlabelled", "prompts.jsonl": "data.eval_prompts"}


def resolve_data(path: str, sample: str, cfg: Config) -> str:
    """The local path or Hub id that a data source of the config names (see `sources.py`): a
    missing path is a DataError; the shipped `sample` only where the config asks for it."""
    src = resolve_source(path, _SAMPLE_KEY.get(sample, "data"), cfg)
    if src.kind != "local" or src.given != src.resolved:
        say(src.describe())
    return src.resolved


def announce_sources(sources: dict[str, Source]) -> None:
    """The first lines of a run: what each data source was resolved to, samples loudly."""
    for src in sources.values():
        say(src.describe())
    if any(s.kind == "sample" for s in sources.values()):
        say("note: this run uses the small OASST1 samples shipped with selfalign, not real data")


def _file_fp(path: str) -> str:
    p = Path(path).expanduser()
    return fingerprint(p) if p.exists() else path  # Hub id: the id itself


def _storage_errno(err: Exception, where: Path) -> int | None:
    """The errno behind a failed save that torch or safetensors report as RuntimeError /
    SafetensorError instead of OSError, or None if it is something else."""
    text = str(err)
    m = re.search(r"os error (\d+)", text)  # safetensors: "... No space left on device (os error 28)"
    if m:
        return int(m.group(1))
    m = re.search(r"strerror: (.+)$", text)  # torch, opening the file: "open file failed with strerror: ..."
    if m:
        return next((code for code in STORAGE_ERRORS if os.strerror(code) == m.group(1).strip()), errno.EIO)
    if "PytorchStreamWriter failed" in text or "unexpected pos" in text:  # torch: a short write, no reason given
        probe = next((p for p in (where, *where.parents) if p.exists()), Path("."))
        return errno.ENOSPC if shutil.disk_usage(probe).free < 64 << 20 else errno.EIO
    return None


@contextmanager
def _saving(out: Path) -> Iterator[None]:
    """Around training: a failed checkpoint or adapter save becomes a WriteError naming `out`,
    and the half-written `<out>.tmp` folder is removed (the checkpoints in `<out>.work` stay)."""
    try:
        yield
    except Exception as e:
        shutil.rmtree(out.with_name(out.name + ".tmp"), ignore_errors=True)
        if isinstance(e, OSError):  # a bare ENOSPC from write(): name the folder
            code = e.errno if e.errno in STORAGE_ERRORS and not e.filename else None
        else:
            code = _storage_errno(e, out)
        if code is None:
            raise
        raise WriteError(code, os.strerror(code), str(out)) from e


def _copy_dir(src: Path, dst: Path) -> None:
    """shutil.copytree without its error aggregation, which loses the errno (disk full, ...)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.rglob("*")):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)


# Config keys that may differ from those of the run already in run.out_dir. They change nothing
# stored (runtime settings, publishing), or the stage keys redo exactly what they affect and that
# is cheap: a new threshold re-selects from the stored ratings (no re-rating) and retrains the
# forward model; the final responses are re-sampled; iterations 1 -> 2 adds the second round.
RESUMABLE_KEYS = (
    "run.out_dir", "run.force", "run.threads", "ray.address", "run.device", "run.memory_check", "run.device_memory_gb",
    "models.cache_dir", "run.templates_dir", "curation.threshold", "curation.iterations",
    "forward.n_responses", "generation.response.", "data.eval_prompts", "data.eval_split", "hub.",
    "generation.gpu_memory_utilization", "evaluate.", "ablate.",
)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict[str, Any], new: Config) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for each setting that differs from a stored run config, except
    RESUMABLE_KEYS. Keys the stored config lacks (written by an older selfalign) count as defaults."""
    was = {**_flat(Config().to_dict()), **_flat(old)}
    now = _flat(new.to_dict())
    return [(k, was.get(k), v) for k, v in now.items() if was.get(k) != v and not k.startswith(RESUMABLE_KEYS)]


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


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
        from selfalign.prompts import use_templates

        use_templates(cfg.run.templates_dir)
        self.dir = Path(cfg.run.out_dir)
        self.sources = resolve_sources(cfg)  # a missing data path fails here, before any stage
        announce_sources(self.sources)
        self._check_dir()
        with writing(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.dir)
        self.manifest.data.update(config=cfg.to_dict(), versions=versions(), seed=cfg.run.seed,
                                  data_sources={k: s.to_dict() for k, s in self.sources.items()})
        self.manifest.save()
        atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())

    def _check_dir(self) -> None:
        """Refuse an out_dir that holds something else than this run (or a resume of it)."""
        d = self.dir
        # logs/ (error logs of runs that failed before they wrote anything) and hidden temp files
        # (another rank writing its manifest this very moment) do not make a folder "used"
        if not d.exists() or self.cfg.run.force or all(p.name == "logs" or p.name.startswith(".") for p in d.iterdir()):
            return
        m = d / "manifest.json"
        if not m.exists():
            raise RunDirError(f"{d} is not empty and holds no selfalign run: use another run.out_dir or run.force=true")
        try:
            old = json.loads(m.read_text(encoding="utf-8")).get("config")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            old = None
        if not isinstance(old, dict):
            raise RunDirError(f"{m} holds no readable run config: use another run.out_dir or run.force=true")
        changed = config_changes(old, self.cfg)
        if changed:
            shown = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in changed[:5])
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            raise RunDirError(
                f"{d} holds a run with another config ({shown}{more}): resume it with its config "
                f"({d / 'config.yaml'}), or use run.force=true or another run.out_dir"
            )

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
        values, temps = declared_reads(stage, self.cfg)
        arts = {a.format(i=iteration): fingerprint(self.path(a.format(i=iteration)))
                for a in STAGE_READS[stage].artifacts}
        return stage_key(stage, values, temps, arts, given)

    def _drop_stale(self, name: str, key: str, out: Path) -> None:
        """Inputs changed since `out` was written: its records (and Ray's parts) are stale."""
        if self.manifest.previous_key(name) == key:
            return
        if out.exists():
            out.unlink()
        if self.cfg.run.executor == "ray":
            _ray_exec().clear(out, self.cfg.ray)

    # --- stages --------------------------------------------------------------------------
    @_once
    def seed(self) -> list[SeedPair]:
        d = self.cfg.data
        src = self.sources["data.seed"].resolved
        out = self.path("seed", "pairs.jsonl")
        if self._stage("seed", self.key("seed", source=[src, _file_fp(src)]), [out]):
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
    def train_backward(self) -> Path:
        pairs = self.seed()
        out = self.path("backward")
        c = self.cfg
        if self._stage("train-backward", self.key("train-backward"), [out / "adapter_model.safetensors"]):
            from selfalign.backward import train_backward

            with _saving(out):
                r = train_backward(c, pairs, out)
            say(f"train-backward: {r.n_examples} examples, loss {r.first_loss:.3f} -> {r.last_loss:.3f}, "
                f"{r.tokens_per_second} tokens/s, {r.seconds}s; dropped {r.dropped}, truncated {r.truncated}")
            self.manifest.count(backward_examples=r.n_examples, backward_dropped=sum(r.dropped.values()),
                                backward_truncated=r.truncated)
            self.manifest.finish("train-backward", loss_first=r.first_loss, loss_last=r.last_loss,
                                 tokens_per_second=r.tokens_per_second)
        return out

    @_once
    def sample(self) -> list[UnlabelledResponse]:
        d = self.cfg.data
        src = self.sources["data.unlabelled"].resolved
        out = self.path("augment", "sample.jsonl")
        if self._stage("sample", self.key("sample", source=[src, _file_fp(src)]), [out]):
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
            from selfalign.augment import augment, status_counts
            from selfalign.generation import GenParams, load_engine

            if c.run.executor == "ray":
                _ray_exec().run_job(c, "augment", self.path("augment", "sample.jsonl"), out, c.models.base,
                                    backward, "backward")
                order = {r.source_id: i for i, r in enumerate(responses)}
                pairs = sorted((AugmentedPair(**json.loads(x)) for x in out.read_text(encoding="utf-8").splitlines()),
                               key=lambda r: order.get(r.source_id, 1 << 30))
            else:
                engine = load_engine(c, c.models.base, adapter=backward, name="backward", stage="augment")
                pairs = augment(engine, responses, GenParams.from_config(c.generation.instruction, c.run.seed), out,
                                c.generation.max_prompt_tokens, c.generation.max_instruction_chars,
                                c.generation.require_request)
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
        pairs = self.seed()
        out = self.path("m0")
        c = self.cfg
        if self._stage("train-m0", self.key("train-m0"), [out / "adapter_model.safetensors"]):
            from selfalign.forward import train_forward

            with _saving(out):
                r = train_forward(c, pairs, [], out, name="m0")
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
        usable = [p for p in pairs if p.status == "ok"]
        spec, adapter, rater_name = self._rater(iteration)
        c = self.cfg
        rated_path = self.path(f"curate_{iteration}", "rated.jsonl")
        curated_dir = self.path(f"curated_{iteration}")
        key = self.key("curate", iteration, rater=[spec, fingerprint(adapter) if adapter else None])
        name = f"curate-{iteration}"
        self._drop_stale(name, key, rated_path)
        if self._stage(name, key, [rated_path]):
            from selfalign.curate import RANKED_MODES, finish_ranked, rate_pairs
            from selfalign.generation import load_engine

            if c.run.executor == "ray":  # reads augmented.jsonl and rates its `ok` rows
                _ray_exec().run_job(c, "curate", self.path("augment", "augmented.jsonl"), rated_path, spec,
                                    adapter, rater_name)
                rated = load_rated(rated_path)
                if c.curation.mode in RANKED_MODES:  # rows are scored alone; the rank needs them all
                    rated = finish_ranked(rated, rated_path, c.curation.mode)
            else:
                engine = load_engine(c, spec, adapter=adapter, name=rater_name, stage="curate")
                rated = rate_pairs(engine, usable, c.curation, rated_path, c.run.seed, c.curation.max_response_tokens)
            self.manifest.finish(name, rater=rater_name)
        else:
            rated = load_rated(rated_path)
        # Selection is cheap: always redone, so a new threshold needs no re-rating.
        from selfalign.curate import curation_stats, select, write_curated

        stats = curation_stats(rated, c.curation.threshold)
        kept = select(rated, c.curation.threshold)
        prov = {**stats, "base": c.models.base, "backward": str(self.path("backward")), "rater": rater_name,
                "unlabelled": c.data.unlabelled, "seed": c.data.seed, "mode": c.curation.mode,
                "n_samples": c.curation.n_samples, "shots": c.curation.shots, "iteration": iteration,
                "generated": len(pairs), "generated_ok": len(usable)}
        write_curated(kept, curated_dir, prov)
        say(f"curate (iteration {iteration}): {stats['rated']} rated, {stats['unscored']} unscored, "
            f"{stats['kept']} kept at >= {stats['threshold']}; histogram {stats['histogram']}; "
            f"parse-failure rate {stats['parse_failure_rate']}; {stats['response_cut']} responses cut to "
            f"{c.curation.max_response_tokens} tokens (or to fit the model's context) in the prompt")
        self.manifest.count(**{f"curation_{iteration}": stats})
        return rated

    @_once
    def train_forward(self, iteration: int = 1) -> Path:
        pairs = self.seed()
        self.curate(iteration)  # writes curated_{iteration}/data.jsonl: the data trained on, and hashed
        c = self.cfg
        out = self.path(f"forward_{iteration}")
        name = f"train-forward-{iteration}"
        if self._stage(name, self.key("train-forward", iteration), [out / "adapter_model.safetensors"]):
            from selfalign.forward import load_curated, train_forward

            kept = load_curated(self.path(f"curated_{iteration}"))
            with _saving(out):
                r = train_forward(c, pairs, kept, out, name=f"forward (M{iteration})")
            say(f"train-forward (M{iteration}): {r.n_examples} examples ({len(pairs) if c.forward.use_seed else 0} "
                f"seed + {len(kept)} curated), loss {r.first_loss:.3f} -> {r.last_loss:.3f}, "
                f"{r.tokens_per_second} tokens/s, {r.seconds}s")
            self.manifest.count(**{f"forward_{iteration}_examples": r.n_examples,
                                   f"forward_{iteration}_truncated": r.truncated})
            self.manifest.finish(name, loss_first=r.first_loss, loss_last=r.last_loss,
                                 tokens_per_second=r.tokens_per_second)
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
        key = self.key("responses", c.curation.iterations, source=[src, _file_fp(src)])
        self._drop_stale("responses", key, out)
        if self._stage("responses", key, [out]):
            from selfalign.forward import load_prompts, sample_responses
            from selfalign.generation import GenParams, load_engine

            prompts = load_prompts(src, c.forward.n_responses, c.data.eval_split)
            if c.run.executor == "ray":
                tmp = self.path("responses.prompts.jsonl")
                write_jsonl(tmp, [{"source_id": f"prompt-{i:06d}", "prompt": p} for i, p in enumerate(prompts)])
                first = {p: i for i, p in reversed(list(enumerate(prompts)))}
                _ray_exec().run_job(c, "responses", tmp, out, c.models.base, fwd, str(fwd),
                                    sort_key=lambda r: first[r["prompt"]])
                rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
            else:
                engine = load_engine(c, c.models.base, adapter=fwd, name="forward", stage="responses")
                texts = sample_responses(engine, prompts, GenParams.from_config(c.generation.response, c.run.seed),
                                         c.forward.seed_tag)
                rows = [{"prompt": p, "response": t, "model": str(fwd)} for p, t in zip(prompts, texts, strict=True)]
                write_jsonl(out, rows)
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
                    _copy_dir(src, tmp)
                    shutil.rmtree(dst, ignore_errors=True)
                    tmp.rename(dst)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        from selfalign.report import write_report

        write_report(self.path("report.md"), self.dir, self.manifest.data, self.augment(), self.curate(n),
                     self.responses())


def _ray_exec():  # noqa: ANN202 - the module, imported only for run.executor=ray
    try:
        from selfalign import ray_exec
    except ImportError as e:
        raise ConfigError(f"run.executor=ray needs Ray Data: pip install 'selfalign[ray]' ({e})") from None
    return ray_exec


def run_pipeline(cfg: Config, until: str = "responses") -> Run:
    """Run the stages up to and including `until` (one of STAGES)."""
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; one of {STAGES}")
    if cfg.run.executor == "ray":  # one Ray instance for the whole run, shut down at the end
        with _ray_exec().ray_cluster(cfg.ray):
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
