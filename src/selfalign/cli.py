"""Thin command line over the pipeline stages.

    selfalign run [--config FILE|NAME] [key=value ...]
    selfalign train-backward | augment | curate | train-forward [--config FILE|NAME] [key=value ...]
    selfalign generate --adapter DIR [--prompts FILE] [key=value ...]
    selfalign push [--run DIR] [--dry-run] [--private] [--endpoint URL]
    selfalign evaluate [--n-heldout N] [--n-prompts N] [--n-human N] [--n-recovery N] [key=value ...]
    selfalign ablate [--seeds N] [--steps N] [--n-heldout N] [--judge] [key=value ...]
    selfalign plan [--device-memory-gb GB] [--gpu T4|L4|A100|H100|cpu] [--show-config] [key=value ...]
    selfalign config list | show [NAME] | path [NAME] | write PATH [--from NAME]

--config takes a YAML file or the name of a config shipped inside the package (`default`,
`smoke`, `llama2-7b`, `llama2-7b-qlora-t4`); without it, `./selfalign.yaml` when the working
directory holds one, else the shipped `default` (from any directory). A command's options
(`evaluate --n-heldout 10`, `generate -n 3`, ...) override config keys (`evaluate.n_heldout`,
`forward.n_responses`, ...) and are validated as they are. Every command prints the resolved config
first. Errors in config, data or models are one line.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

from selfalign.config import (
    LOCAL_CONFIG_NAME,
    Config,
    ConfigError,
    find_config,
    format_config,
    load_config,
    local_config,
)

# Library deprecation notices (transformers 5.x renames) are noise for a pipeline user.
warnings.filterwarnings("ignore", category=FutureWarning)


# The run directory of the command being run (for the error log), set once its config is loaded.
_RUN_DIR: list[Path] = []


# A command option that sets a config key: (the key, the option's name as typed, its value; None = not given).
Option = tuple[str, str, object]


def _load(config: str | None, overrides: tuple[str, ...], options: tuple[Option, ...] = (),
          show: bool = True) -> Config:
    """The config named by --config (a file, or a shipped config's name; default: ./selfalign.yaml
    when the working directory holds one, else the shipped `default`), with the overrides applied,
    then the options that were given (each sets its config key, validated as the file's values are),
    printed first so the run can be reproduced."""
    path = find_config(config)
    given = {key: value for key, _, value in options if value is not None}
    try:
        cfg = load_config(path, list(overrides), given)
    except ConfigError as e:  # name the option too where it set the key
        msg = str(e)
        for key, name, value in options:
            if value is not None:
                msg = msg.replace(f"'{key}':", f"'{key}' ({name}):")
        raise ConfigError(msg) from None
    _RUN_DIR[:] = [Path(cfg.run.out_dir)]
    shipped = path.parent.name == "configs" and path.parent.parent.name == "selfalign" and config != str(path)
    if config is None and path == local_config():
        print(f"# config: {LOCAL_CONFIG_NAME} (found in the working directory)")
    else:
        print(f"# config: {path}" + (f" (shipped config '{path.stem}')" if shipped else ""))
    if show:
        print(format_config(cfg), flush=True)
    from selfalign.prompts import Templates

    Templates.for_config(cfg)  # a templates folder that cannot be used: one line, before any model loads
    return cfg


def _hold(run_dir: str | Path) -> None:
    """This command writes into an existing run directory: hold its lock until the command ends."""
    from selfalign.lock import held

    click.get_current_context().with_resource(held(Path(run_dir)))


def _fail(msg: str, code: int = 2) -> None:
    from selfalign.redact import redact

    one_line = redact(msg.strip().replace("\r", "\\r").replace("\n", "\\n"))  # whatever a message quotes
    click.echo(f"error: {one_line}", err=True)
    sys.exit(code)


def write_error_log(err: BaseException, run_dir: Path | None) -> Path | None:
    """The traceback of an unexpected error, in `<run_dir>/logs/error-<time>.log` (or, when that
    cannot be written, in the temp folder's `selfalign-logs/`); None if neither can be written."""
    import tempfile
    import time
    import traceback

    stamp = time.strftime("%Y%m%d-%H%M%S")
    from selfalign.redact import redact

    text = redact(f"selfalign {' '.join(sys.argv[1:])}\n{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n"
                  + "".join(traceback.format_exception(err)))
    folders = ([run_dir / "logs"] if run_dir is not None else []) + [Path(tempfile.gettempdir()) / "selfalign-logs"]
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            log = folder / f"error-{stamp}-{os.getpid()}.log"
            log.write_text(text, encoding="utf-8", errors="backslashreplace")
            return log
        except OSError:
            continue
    return None


def _unexpected(err: Exception, command: str) -> None:
    """One line for an error that selfalign did not foresee: the stage, the error, where the
    traceback went, and what to do. Never the traceback itself."""
    stage = getattr(err, "selfalign_stage", None) or command
    text = str(err).strip().splitlines()
    what = f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
    log = write_error_log(err, _RUN_DIR[0] if _RUN_DIR else None)
    where = f"the traceback is in {log}" if log else "the traceback could not be written"
    _fail(f"stage {stage} failed with an unexpected {what}; {where}. Re-run the same command to resume "
          "from the last finished step; if it fails again, report it with that log", code=1)


def _guard(fn):  # noqa: ANN001, ANN202
    """Every failure becomes one line, never a traceback: known kinds (config, data, model, run
    directory, storage) with exit code 2; anything else with exit code 1, its stage, and its
    traceback in the run directory's logs/."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        from selfalign.io import DataError, describe_os_error
        from selfalign.models import ModelError
        from selfalign.rundir import RunDirError

        _RUN_DIR.clear()
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, ModelError, RunDirError) as e:
            _fail(str(e))
        except OSError as e:  # disk full, permission denied, ...: the cause and the file
            _fail(describe_os_error(e))
        except KeyboardInterrupt:
            _fail("interrupted; re-run the same command to resume")
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, traceback to a log
            _unexpected(e, click.get_current_context().info_name or fn.__name__)

    return wrapper


_config_opt = click.option("--config", "-c", default=None,
                           help="YAML config file, or a shipped config's name (default, smoke, llama2-7b, ...; "
                                "default: ./selfalign.yaml if the working directory holds one, else the shipped "
                                "`default`)")
_overrides = click.argument("overrides", nargs=-1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """selfalign: self-alignment with instruction backtranslation, with LoRA."""
    for stream in (sys.stdout, sys.stderr):  # any text a reader produced can be printed
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _stage_command(name: str, help_text: str) -> None:
    @main.command(name, help=help_text)
    @_config_opt
    @_overrides
    @_guard
    def cmd(config: str | None, overrides: tuple[str, ...], labels: str | None = None) -> None:
        from selfalign.hub import HubError
        from selfalign.pipeline import run_pipeline

        try:
            cfg = _load(config, overrides, (("curation.labels", "--labels", labels),))
            run_pipeline(cfg, until="responses" if name == "run" else name)
        except HubError as e:
            _fail(f"{e} (the run's local artifacts are complete; retry with `selfalign push`)")

    if name in ("run", "curate"):  # review.html's exported labels overrule the rater (labels.py)
        click.option("--labels", help="labels file from review.html: your keep/drop overrules the rater "
                     "(sets curation.labels)")(cmd)


_stage_command("run", "Run the whole pipeline (stages already done are skipped).")
_stage_command("seed", "Load the seed data into the run directory.")
_stage_command("train-backward", "Train the backward model p(instruction | response) on the seed data.")
_stage_command("augment", "Generate an instruction for each sampled unlabelled response.")
_stage_command("curate", "Rate the augmented pairs and keep those at or above the threshold.")
_stage_command("train-forward", "Train the forward model on seed + curated data.")


@main.command("review")
@_config_opt
@click.option("--run", "run_dir", default=None, help="run directory (default: run.out_dir)")
@click.option("--iteration", default=None, type=int, help="curation round (default: the last one rated)")
@click.option("--out", default=None, help="where to write the page (default: <run>/review.html)")
@_overrides
@_guard
def review_cmd(config: str | None, run_dir: str | None, iteration: int | None, out: str | None,
               overrides: tuple[str, ...]) -> None:
    """Write review.html: every rated pair of a curation round to read, filter and label in a browser."""
    from selfalign.review import write_review

    _RUN_DIR[:] = [Path(run_dir or _load(config, overrides).run.out_dir)]
    path = write_review(_RUN_DIR[0], iteration, out)
    print(f"review: {path} (open it in a browser; export your labels, then `selfalign curate --labels FILE`)")


@main.command("generate")
@_config_opt
@click.option("--adapter", default=None, help="LoRA adapter folder (default: the run's forward/)")
@click.option("--prompts", default=None, help="prompts file (default: data.eval_prompts)")
@click.option("-n", "n", default=None, type=int, help="number of prompts (sets forward.n_responses)")
@_overrides
@_guard
def generate_cmd(config: str | None, adapter: str | None, prompts: str | None, n: int | None, overrides: tuple[str, ...]) -> None:
    """Print responses of a trained model for prompts."""
    from selfalign.forward import load_prompts, sample_responses
    from selfalign.generation import GenParams, load_engine
    from selfalign.prompts import Templates
    from selfalign.report import print_responses
    from selfalign.sources import resolve_data

    cfg = _load(config, overrides, (("forward.n_responses", "-n", n),))
    if adapter is None:
        run_dir = Path(cfg.run.out_dir)
        final = run_dir / "forward"
        adapter = str(final if final.exists() else run_dir / f"forward_{cfg.curation.iterations}")
    if not Path(adapter, "adapter_config.json").is_file():
        _fail(f"{adapter}: no LoRA adapter here (train one with `selfalign run`, or pass --adapter)")
    src = prompts or resolve_data(cfg.data.eval_prompts, "prompts.jsonl", cfg)
    ps = load_prompts(src, cfg.forward.n_responses, cfg.data.eval_split)
    engine = load_engine(cfg, cfg.models.base, adapter=adapter, name="forward")
    texts = sample_responses(engine, ps, GenParams.from_config(cfg.generation.response, cfg.run.seed), cfg.forward.seed_tag,
                             Templates.for_config(cfg))
    print_responses([{"prompt": p, "response": t} for p, t in zip(ps, texts, strict=True)])


@main.command("push")
@_config_opt
@click.option("--run", "run_dir", default=None, help="run directory (default: run.out_dir)")
@click.option("--dry-run", is_flag=True, help="list what would be uploaded; contact nothing")
@click.option("--private", is_flag=True, default=None, help="create private repositories")
@click.option("--endpoint", default=None, help="a self-hosted Hub's URL")
@click.option("--merge", is_flag=True, default=None, help="also upload the merged forward model")
@_overrides
@_guard
def push_cmd(config: str | None, run_dir: str | None, dry_run: bool, private: bool | None,
             endpoint: str | None, merge: bool | None, overrides: tuple[str, ...]) -> None:
    """Publish the backward model, the curated dataset and the forward model to the Hub."""
    from selfalign.hub import HubError, push_run

    cfg = _load(config, overrides, (("hub.private", "--private", private), ("hub.endpoint", "--endpoint", endpoint),
                                    ("hub.merge", "--merge", merge)))
    _RUN_DIR[:] = [Path(run_dir or cfg.run.out_dir)]
    if not dry_run:
        _hold(_RUN_DIR[0])
    try:
        push_run(Path(run_dir or cfg.run.out_dir), cfg.hub, dry_run=dry_run)
    except HubError as e:
        _fail(str(e))


@main.command("evaluate")
@_config_opt
@click.option("--n-heldout", default=None, type=int,
              help="held-out seed pairs to rate, each also gets one planted bad copy (sets evaluate.n_heldout)")
@click.option("--n-prompts", default=None, type=int,
              help="held-out prompts for the pairwise win rate (sets evaluate.n_prompts)")
@click.option("--n-recovery", default=None, type=int,
              help="augmented pairs whose true (LIMA) prompt the base and backward models try to recover "
                   "(sets evaluate.n_recovery)")
@click.option("--heldout", default=None,
              help="held-out pairs: auto | oasst1 | seed | a seed-format file or Hub id (sets evaluate.heldout)")
@click.option("--judge-tokens", default=None, type=int,
              help="max new tokens of the pairwise judge (sets evaluate.judge_max_new_tokens; "
                   "null there: curation.max_new_tokens)")
@click.option("--n-human", default=None, type=int,
              help="prompts of the human-judged set, best- vs last-ranked OASST1 reply; 0 = none (sets evaluate.n_human)")
@click.option("--human", "human_path", default=None,
              help="OASST1 messages file of the human-judged set (sets evaluate.human; a file named there that "
                   "is absent is skipped, one given here is an error)")
@_overrides
@_guard
def evaluate_cmd(config: str | None, n_heldout: int | None, n_prompts: int | None, n_recovery: int | None,
                 heldout: str | None, judge_tokens: int | None, n_human: int | None, human_path: str | None,
                 overrides: tuple[str, ...]) -> None:
    """Evaluate a finished run offline: every curation mode's AUC on planted bad pairs and a
    human-judged set, backward NLL, instruction recovery, forward win rate. Re-running resumes.
    Settings: the config's `evaluate` section; the options override it."""
    from selfalign.evaluate import evaluate_run

    cfg = _load(config, overrides, (
        ("evaluate.n_heldout", "--n-heldout", n_heldout), ("evaluate.n_prompts", "--n-prompts", n_prompts),
        ("evaluate.n_recovery", "--n-recovery", n_recovery), ("evaluate.heldout", "--heldout", heldout),
        ("evaluate.judge_max_new_tokens", "--judge-tokens", judge_tokens), ("evaluate.n_human", "--n-human", n_human),
        ("evaluate.human", "--human", human_path)))
    _hold(cfg.run.out_dir)
    evaluate_run(cfg)


@main.command("ablate")
@_config_opt
@click.option("--seeds", default=None, type=int,
              help="training seeds per arm: run.seed, run.seed+1, ... (sets ablate.seeds)")
@click.option("--steps", default=None, type=int,
              help="optimizer steps of every arm (sets ablate.steps; null there: the steps of the run's forward "
                   "model, at most 20, else 16)")
@click.option("--n-heldout", default=None, type=int,
              help="held-out pairs whose reference NLL is measured (sets ablate.n_heldout)")
@click.option("--heldout", default=None,
              help="held-out pairs: auto | oasst1 | seed | a seed-format file or Hub id (sets ablate.heldout)")
@click.option("--judge", is_flag=True, default=None,
              help="also a pairwise win rate vs seed only, judged by the rater (sets ablate.judge; off by default: "
                   "at 135M the judge answers 'A' about 95% of the time)")
@click.option("--judge-prompts", default=None, type=int, help="held-out prompts for --judge (sets ablate.judge_prompts)")
@_overrides
@_guard
def ablate_cmd(config: str | None, seeds: int | None, steps: int | None, n_heldout: int | None, heldout: str | None,
               judge: bool | None, judge_prompts: int | None, overrides: tuple[str, ...]) -> None:
    """Data-quality ablation: seed only / + curated / + random / + all / + longest augmented pairs.
    Settings: the config's `ablate` section; the options override it."""
    from selfalign.ablate import ablate

    cfg = _load(config, overrides, (
        ("ablate.seeds", "--seeds", seeds), ("ablate.steps", "--steps", steps),
        ("ablate.n_heldout", "--n-heldout", n_heldout), ("ablate.heldout", "--heldout", heldout),
        ("ablate.judge", "--judge", judge), ("ablate.judge_prompts", "--judge-prompts", judge_prompts)))
    _hold(cfg.run.out_dir)
    ablate(cfg)


@main.command("plan")
@_config_opt
@click.option("--device-memory-gb", default=None, type=float,
              help="plan for a device with this much memory (default: the visible device)")
@click.option("--gpu", default=None, help="estimate the time on T4, L4, A100, H100 or cpu (default: the visible "
              "device, else by --device-memory-gb)")
@click.option("--show-config", is_flag=True, help="print the resolved config first")
@_overrides
@_guard
def plan_cmd(config: str | None, device_memory_gb: float | None, gpu: str | None, show_config: bool,
             overrides: tuple[str, ...]) -> None:
    """Estimate the memory and time of every stage from the config, without loading a model."""
    from selfalign.memory import suggestion
    from selfalign.plan_time import gpu_memory_gb, plan_lines

    if device_memory_gb is None and gpu:  # --gpu T4: its memory too
        device_memory_gb = gpu_memory_gb(gpu)
    cfg = _load(config, overrides, (("run.device_memory_gb", "--device-memory-gb", device_memory_gb),),
                show=show_config)
    too_big = []
    for stage, plan, line in plan_lines(cfg, gpu):
        click.echo(line)
        if plan is not None and not plan.fits:
            too_big.append((stage, plan))
    if too_big:
        _fail(f"{', '.join(s for s, _ in too_big)} will not fit; {suggestion(cfg, too_big[0][1])}")


from selfalign.cli_batch import add_batch_commands  # noqa: E402
from selfalign.cli_config import add_config_commands  # noqa: E402

add_batch_commands(main, _config_opt, _overrides, _guard, _load)  # `selfalign batch write|read`
add_config_commands(main, _guard, _fail)  # `selfalign config list|show|path|write`

if __name__ == "__main__":
    main()
