from pathlib import Path

import pytest

from selfalign.config import (
    Config,
    ConfigError,
    load_config,
    packaged_config_path,
    packaged_configs,
    parse_override,
)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [packaged_config_path(n) for n in packaged_configs() if not n.startswith("accelerate/")]


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "smoke.yaml", "llama2-7b.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert 1 <= cfg.curation.threshold <= 5


def test_default_config_is_offline_smollm2() -> None:
    cfg = load_config(packaged_config_path("default"))
    assert cfg.models.base == "smollm2" and cfg.models.rater == "smollm2"
    assert cfg.data.unlabelled_n == 150


def test_llama2_config_names_the_real_models() -> None:
    cfg = load_config(packaged_config_path("llama2-7b"))
    assert cfg.models.base == "meta-llama/Llama-2-7b-hf"
    assert cfg.models.rater == "meta-llama/Llama-2-7b-chat-hf"
    assert cfg.data.seed == "timdettmers/openassistant-guanaco"
    assert cfg.data.unlabelled == "GAIR/lima"
    for t in (cfg.train_backward, cfg.train_forward):  # LoRA rates, not the paper's full-finetune 1e-5
        assert 1e-4 <= t.learning_rate <= 3e-4 and t.max_seq_len == 2048 and t.gradient_checkpointing
    assert set(cfg.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert cfg.models.dtype in ("auto", "bfloat16") and not cfg.models.load_in_4bit


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "dup.yaml"
    p.write_text("run:\n  seed: 1\nmodels:\n  base: x\nrun:\n  seed: 2\n")
    with pytest.raises(ConfigError, match="key 'run' is given twice \\(line 5\\)"):
        load_config(p)


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["curation.threshold=4.5", "lora.target_modules=[q_proj, v_proj]",
                             "data.seed_limit=null", "run.force=true"])
    assert cfg.curation.threshold == 4.5
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.seed_limit is None
    assert cfg.run.force is True


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'lora.rank'"):
        load_config(None, ["lora.rank=8"])
    p = tmp_path / "c.yaml"
    p.write_text("curation:\n  treshold: 4\n")
    with pytest.raises(ConfigError, match="curation.treshold"):
        load_config(p)


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="'train_backward.batch_size'"):
        load_config(None, ["train_backward.batch_size=lots"])


def test_threshold_outside_scale_is_refused() -> None:
    with pytest.raises(ConfigError, match="curation.threshold"):
        load_config(None, ["curation.threshold=6"])


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError):
        parse_override("curation.threshold")
    with pytest.raises(ConfigError):
        load_config(None, ["run.seed.x=1"])


def test_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


from selfalign.rundir import flat as _flat  # noqa: E402  (dotted key -> value)


def test_class_defaults_and_shipped_default_yaml_agree() -> None:
    """One source of defaults: every key of the shipped default.yaml equals the class default,
    and the YAML spells out every key (so the documented file is the whole default)."""
    import yaml

    written = _flat(yaml.safe_load(packaged_config_path("default").read_text()))
    classes = _flat(Config().to_dict())
    assert sorted(written) == sorted(classes)
    assert {k: v for k, v in written.items() if classes[k] != v} == {}


def test_find_config_takes_files_and_shipped_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.config import find_config

    monkeypatch.chdir(tmp_path)  # from any directory
    assert find_config(None) == packaged_config_path("default")
    assert find_config("smoke") == find_config("smoke.yaml") == find_config("configs/smoke.yaml")
    assert find_config("smoke").is_file() and find_config("smoke").parent.name == "configs"
    mine = tmp_path / "smoke"  # a file of that name in the working directory wins
    mine.write_text("run: {seed: 3}\n")
    assert find_config("smoke") == mine
    with pytest.raises(ConfigError, match="config file not found: nope.yaml; shipped configs: default, "):
        find_config("nope.yaml")


@pytest.mark.slow  # > 10 s (the fast tier; CI runs it)
def test_config_command_writes_an_editable_copy(tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "selfalign.cli", *a], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)

    listed = cli("config", "list")
    assert listed.returncode == 0 and {ln.split("\t")[0] for ln in listed.stdout.splitlines()} == set(packaged_configs())
    assert cli("config", "show", "smoke").stdout == packaged_config_path("smoke").read_text()
    assert cli("config", "path", "accelerate/ddp").stdout.strip() == str(packaged_config_path("accelerate/ddp"))
    w = cli("config", "write", "my.yaml", "--from", "smoke")
    assert w.returncode == 0 and (tmp_path / "my.yaml").read_text() == packaged_config_path("smoke").read_text()
    again = cli("config", "write", "my.yaml")
    assert again.returncode == 2 and again.stderr.strip() == "error: my.yaml exists: use --force to overwrite it"
    assert load_config(tmp_path / "my.yaml").to_dict() == load_config(packaged_config_path("smoke")).to_dict()


def _numeric_keys() -> list[tuple[str, type]]:
    """Every int and float key of the config, found from the classes (nested sections too)."""
    import typing

    from pydantic import BaseModel

    out: list[tuple[str, type]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
            base = args[0]
            if typing.get_origin(base) is typing.Annotated:
                base = typing.get_args(base)[0]
            if isinstance(base, type) and issubclass(base, BaseModel):
                walk(base, f"{prefix}{name}.")
            elif base in (int, float):
                out.append((f"{prefix}{name}", base))

    walk(Config, "")
    return out


NUMERIC = _numeric_keys()


def test_numeric_keys_are_found() -> None:
    keys = {k for k, _ in NUMERIC}
    assert {"lora.r", "lora.dropout", "run.seed", "data.seed_limit", "train_forward.learning_rate",
            "generation.instruction.top_p", "curation.threshold"} <= keys
    assert len(NUMERIC) >= 40


@pytest.mark.parametrize("key,kind", NUMERIC, ids=[k for k, _ in NUMERIC])
def test_every_numeric_key_has_a_range(key: str, kind: type) -> None:
    """By class: each numeric key refuses a huge negative value, a bool and (floats) nan and inf,
    each with one line that names the key and says what is allowed."""
    bad = ["-1000000000000", "true"] + ([".nan", ".inf", "-.inf"] if kind is float else ["1.5"])
    for value in bad:
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{key}={value}"])
        msg = str(e.value)
        assert "\n" not in msg and f"'{key}':" in msg
        if value != "1.5":
            assert "must be" in msg and any(c in msg for c in "[(>") or "not true" in msg, msg


def test_the_defaults_and_every_shipped_config_are_in_range() -> None:
    for path in [None, *CONFIGS]:
        load_config(path)  # raises if a shipped value is out of its range


@pytest.mark.parametrize("override,says", [
    ("lora.r=0", "'lora.r': must be an integer >= 1 (got 0)"),
    ("lora.dropout=1", "'lora.dropout': must be a number in [0, 1) (got 1)"),
    ("run.seed=-1", "'run.seed': must be an integer in [0, 4294967295] (got -1)"),
    ("data.seed_limit=0", "'data.seed_limit': must be an integer >= 1 (got 0)"),
    ("train_backward.warmup_ratio=1.01", "'train_backward.warmup_ratio': must be a number in [0, 1]"),
    ("generation.response.top_p=0", "'generation.response.top_p': must be a number in (0, 1] (got 0)"),
    ("train_forward.max_steps=-2", "'train_forward.max_steps': must be an integer >= -1 (-1 or 0: train for `epochs`)"),
    ("curation.iterations=3", "'curation.iterations': must be an integer in [1, 2] (got 3)"),
    ("data.seed=", "'data.seed': must not be empty"),
    ("models.base=' '", "'models.base': must not be empty"),
    ("run.out_dir=", "'run.out_dir': must not be empty"),
])
def test_bad_values_name_the_key_and_the_range(override: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert says in str(e.value)


def test_edge_values_are_accepted() -> None:
    cfg = load_config(None, ["lora.dropout=0", "run.seed=4294967295", "generation.response.top_p=1",
                             "train_forward.learning_rate=1e-4", "generation.batch_size=0", "data.seed_limit=null",
                             "train_backward.max_steps=0", "curation.retries=0"])
    assert cfg.run.seed == 2**32 - 1 and cfg.train_forward.learning_rate == 1e-4


def test_load_config_records_the_config_files_folder_and_the_overrides(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "c.yaml"
    p.parent.mkdir()
    p.write_text("data:\n  seed: local/seed.jsonl\n")
    cfg = load_config(p, ["data.unlabelled=x.jsonl"])
    assert cfg.config_dir == p.parent.resolve()
    assert cfg.is_overridden("data.unlabelled") and not cfg.is_overridden("data.seed")
    assert load_config(None).config_dir is None
    assert cfg.model_copy(deep=True).config_dir == p.parent.resolve()


# --- the shipped default names no checkout path; this repository's own selfalign.yaml ------------
# `configs/default.yaml` before it named the Hub ids (commit af224a3), flattened: `selfalign run` in
# this checkout must resolve to exactly this config, as it did then. The evaluate and ablate
# sections hold what were then the defaults of `selfalign evaluate` / `selfalign ablate`.
DEFAULT_YAML_BEFORE = {
    "run.out_dir": "runs/default", "run.seed": 0, "run.force": False, "run.threads": 0, "run.device": "auto",
    "run.memory_check": True, "run.device_memory_gb": None, "run.templates_dir": None, "run.executor": "local",
    "models.base": "smollm2", "models.rater": "smollm2", "models.cache_dir": "~/.cache/selfalign",
    "models.dtype": "auto", "models.trust_remote_code": False, "models.load_in_4bit": False,
    "data.seed": "../shared/data/guanaco/guanaco_llama2_1k.jsonl", "data.seed_split": "train",
    "data.seed_limit": 160, "data.seed_english_only": True,
    "data.unlabelled": "../shared/data/lima/train.jsonl", "data.unlabelled_split": "train",
    "data.unlabelled_n": 150, "data.eval_prompts": "../shared/data/lima/test.jsonl", "data.eval_split": "test",
    "data.samples_if_absent": "../shared/data", "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.05,
    "lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "train_backward.epochs": 1.0,
    "train_backward.max_steps": -1, "train_backward.learning_rate": 0.0003, "train_backward.batch_size": 4,
    "train_backward.grad_accum": 1, "train_backward.max_seq_len": 320, "train_backward.warmup_ratio": 0.03,
    "train_backward.weight_decay": 0.0, "train_backward.logging_steps": 1, "train_backward.save_steps": 10,
    "train_backward.group_by_length": True, "train_backward.gradient_checkpointing": False,
    "train_forward.epochs": 1.0, "train_forward.max_steps": -1, "train_forward.learning_rate": 0.0003,
    "train_forward.batch_size": 4, "train_forward.grad_accum": 1, "train_forward.max_seq_len": 256,
    "train_forward.warmup_ratio": 0.03, "train_forward.weight_decay": 0.0, "train_forward.logging_steps": 1,
    "train_forward.save_steps": 10, "train_forward.group_by_length": True,
    "train_forward.gradient_checkpointing": False, "generation.backend": "hf", "generation.batch_size": 0,
    "generation.max_batch_size": 32, "generation.memory_budget_gb": None,
    "generation.gpu_memory_utilization": 0.85, "generation.max_prompt_tokens": 320,
    "generation.instruction.temperature": 1.0, "generation.instruction.top_p": 0.9,
    "generation.instruction.max_new_tokens": 48, "generation.instruction.stop": [],
    "generation.response.temperature": 0.7, "generation.response.top_p": 0.9,
    "generation.response.max_new_tokens": 128, "generation.response.stop": [],
    "generation.max_instruction_chars": 1000, "generation.require_request": True, "curation.mode": "combined",
    "curation.shots": 3, "curation.threshold": 4.0, "curation.n_samples": 1, "curation.retries": 0,
    "curation.force_score": True, "curation.temperature": 0.7, "curation.max_new_tokens": 64,
    "curation.max_response_tokens": 256, "curation.iterations": 1,
    "forward.seed_tag": "Answer in the style of an AI Assistant.",
    "forward.augmented_tag": "Answer with knowledge from web search.", "forward.use_seed": True,
    "forward.n_responses": 5, "hub.push": False, "hub.namespace": None, "hub.name": "selfalign",
    "hub.private": False, "hub.endpoint": None, "hub.merge": False, "ray.address": None, "ray.concurrency": 1,
    "ray.batch_size": 0, "ray.block_rows": 64, "ray.cpus_per_actor": 0.5, "ray.gpus_per_actor": 0.0,
    "ray.tensor_parallel_size": 1, "ray.num_cpus": 2, "ray.object_store_mb": 512, "ray.checkpoint_path": None,
}
EVALUATE_BEFORE = {
    "evaluate.n_heldout": 40, "evaluate.n_prompts": 20, "evaluate.n_recovery": 40, "evaluate.n_human": 40,
    "evaluate.heldout": "auto", "evaluate.oasst1_val": "../shared/data/oasst1/seed_en_val_first_turn.jsonl",
    "evaluate.human": "../shared/data/oasst1/en_validation_messages.jsonl", "evaluate.judge_max_new_tokens": None,
    "ablate.seeds": 2, "ablate.steps": None, "ablate.n_heldout": 60, "ablate.heldout": "auto", "ablate.judge": False,
    "ablate.judge_prompts": 20,
}


# issue 27: the budget and the hygiene stages (the repository's config names the local benchmark copies)
HYGIENE = {
    "curation.max_kept": None,
    "hygiene.benchmarks": ["../shared/data/benchmarks/alpaca_eval_prompts.jsonl", "../shared/data/lima/test.jsonl"],
    "hygiene.include_heldout": True, "hygiene.keep_contaminated": False,
    "hygiene.drop_methods": ["exact", "ngram"], "hygiene.ngram": 6, "hygiene.min_words": 4,
    "hygiene.ngram_threshold": 0.5, "hygiene.embeddings": "base", "hygiene.embedding_layer": 8,
    "hygiene.embedding_max_tokens": 64, "hygiene.embedding_threshold": 0.68, "hygiene.minhash_threshold": 0.7,
    "hygiene.minhash_perm": 128, "hygiene.diversity_threshold": 0.68,
}


def test_the_repositorys_selfalign_yaml_is_the_default_run_of_before() -> None:
    cfg = load_config(REPO / "selfalign.yaml")
    new = ("served.", "curation.labels")  # keys added since, at their defaults (checked against default.yaml above)
    assert {k: v for k, v in _flat(cfg.to_dict()).items() if not k.startswith(new)} == {
        **DEFAULT_YAML_BEFORE, **EVALUATE_BEFORE, **HYGIENE}


def test_the_shipped_default_names_the_datasets_by_hub_id() -> None:
    for cfg in (load_config(packaged_config_path("default")), Config()):
        d = cfg.data
        assert (d.seed, d.seed_split) == ("timdettmers/openassistant-guanaco", "train")
        assert (d.unlabelled, d.unlabelled_split) == ("GAIR/lima", "train")
        assert (d.eval_prompts, d.eval_split) == ("GAIR/lima", "test")
        assert d.samples_if_absent is None
        assert cfg.evaluate.oasst1_val is None and cfg.evaluate.human is None
    # apart from where the data comes from, the same run as this repository's
    before = {k: v for k, v in DEFAULT_YAML_BEFORE.items() if not k.startswith("data.")}
    now = _flat(load_config(packaged_config_path("default")).to_dict())
    assert {k: now[k] for k in before} == before


def test_the_package_names_no_path_of_the_checkout() -> None:
    pkg = REPO / "src" / "selfalign"
    files = [p for p in pkg.rglob("*") if p.suffix in (".py", ".yaml", ".json", ".txt", ".md")]
    assert len(files) > 20
    assert [str(p.relative_to(pkg)) for p in files if "../shared" in p.read_text(encoding="utf-8")] == []


def test_the_smoke_config_needs_nothing_beside_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.sources import resolve_sources

    monkeypatch.chdir(tmp_path)
    cfg = load_config(packaged_config_path("smoke"))
    assert [s.kind for s in resolve_sources(cfg).values()] == ["sample"] * 3
    assert cfg.data.samples_if_absent is None and cfg.evaluate.oasst1_val is None and cfg.evaluate.human is None


def _cli(*args: str):  # noqa: ANN202
    from click.testing import CliRunner

    from selfalign.cli import main

    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr
    return r


def test_without_config_a_selfalign_yaml_in_the_working_directory_is_used(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.config import find_config

    monkeypatch.chdir(tmp_path)
    assert find_config(None) == packaged_config_path("default")
    r = _cli("evaluate", "run.out_dir=nowhere")  # no run there: the config is printed, then one error line
    assert r.stdout.splitlines()[0] == f"# config: {packaged_config_path('default')} (shipped config 'default')"
    (tmp_path / "selfalign.yaml").write_text("evaluate:\n  n_prompts: 7\n")
    assert find_config(None) == tmp_path / "selfalign.yaml"
    assert find_config("default") == packaged_config_path("default")  # named: the shipped one
    r = _cli("evaluate", "run.out_dir=nowhere")
    assert r.stdout.splitlines()[0] == "# config: selfalign.yaml (found in the working directory)"
    assert "  n_prompts: 7\n" in r.stdout
    assert r.exit_code == 2 and r.stderr.startswith("error: nowhere: no finished selfalign run here")
    shipped = _cli("evaluate", "--config", "default", "run.out_dir=nowhere")
    assert "(shipped config 'default')" in shipped.stdout.splitlines()[0] and "  n_prompts: 20\n" in shipped.stdout
    # `config write` copies the shipped default, whatever the working directory holds
    w = _cli("config", "write", "my.yaml")
    assert w.exit_code == 0 and (tmp_path / "my.yaml").read_text() == packaged_config_path("default").read_text()


# --- command options are overrides of config keys, validated as they are ---------------------
@pytest.mark.parametrize("args,key", [
    (["generate", "-n", "-3"], "'forward.n_responses' (-n): must be an integer >= 1 (got -3)"),
    (["generate", "-n", "0"], "'forward.n_responses' (-n): must be an integer >= 1 (got 0)"),
    (["evaluate", "--n-heldout", "-1"], "'evaluate.n_heldout' (--n-heldout): must be an integer >= 2 (got -1)"),
    (["evaluate", "--n-prompts", "0"], "'evaluate.n_prompts' (--n-prompts): must be an integer >= 1 (got 0)"),
    (["evaluate", "--n-recovery", "-2"], "'evaluate.n_recovery' (--n-recovery): must be an integer >= 0 (got -2)"),
    (["evaluate", "--n-human", "-1"], "'evaluate.n_human' (--n-human): must be an integer >= 0 (got -1)"),
    (["evaluate", "--judge-tokens", "0"], "'evaluate.judge_max_new_tokens' (--judge-tokens): must be an integer >= 1"),
    (["evaluate", "--heldout", ""], "'evaluate.heldout' (--heldout): must not be empty"),
    (["ablate", "--seeds", "-1"], "'ablate.seeds' (--seeds): must be an integer >= 1 (got -1)"),
    (["ablate", "--steps", "0"], "'ablate.steps' (--steps): must be an integer >= 1 (got 0)"),
    (["ablate", "--n-heldout", "1"], "'ablate.n_heldout' (--n-heldout): must be an integer >= 2 (got 1)"),
    (["ablate", "--judge-prompts", "-5"], "'ablate.judge_prompts' (--judge-prompts): must be an integer >= 1"),
    (["plan", "--device-memory-gb", "-4"], "'run.device_memory_gb' (--device-memory-gb): must be a number > 0"),
])
def test_a_bad_count_option_is_refused_in_one_line(args: list[str], key: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.ablate
    import selfalign.evaluate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(selfalign.evaluate, "evaluate_run", lambda *a, **k: pytest.fail("evaluate ran"))
    monkeypatch.setattr(selfalign.ablate, "ablate", lambda *a, **k: pytest.fail("ablate ran"))
    r = _cli(args[0], "--config", "smoke", "run.out_dir=run", *args[1:])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: config error in "), r.stderr
    assert key in r.stderr and "+ options" in r.stderr
    assert "# resolved config" not in r.stdout and sorted(tmp_path.iterdir()) == []  # refused before anything ran


def test_evaluate_and_ablate_settings_come_from_the_config_and_options_override_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.ablate
    import selfalign.evaluate

    got = []
    monkeypatch.setattr(selfalign.evaluate, "evaluate_run", lambda cfg, *a, **k: got.append(cfg))
    monkeypatch.setattr(selfalign.ablate, "ablate", lambda cfg, *a, **k: got.append(cfg))
    c = tmp_path / "c.yaml"
    c.write_text("evaluate:\n  n_heldout: 7\n  n_human: 0\n  human: oasst1/messages.jsonl\n"
                 "ablate:\n  seeds: 3\n  judge: true\n  steps: 11\n")

    r = _cli("evaluate", "--config", str(c))
    assert r.exit_code == 0, r.stderr
    ev = got.pop().evaluate
    assert (ev.n_heldout, ev.n_human, ev.human, ev.n_prompts) == (7, 0, "oasst1/messages.jsonl", 20)
    assert "evaluate:\n  n_heldout: 7\n" in r.stdout  # the printed config holds the section
    r = _cli("evaluate", "--config", str(c), "--n-heldout", "9", "--n-prompts", "4", "--human", "x.jsonl",
             "--judge-tokens", "33", "--heldout", "seed", "--n-recovery", "0")
    assert r.exit_code == 0, r.stderr
    cfg = got.pop()
    ev = cfg.evaluate
    assert (ev.n_heldout, ev.n_prompts, ev.n_human, ev.human, ev.judge_max_new_tokens, ev.heldout, ev.n_recovery) == (
        9, 4, 0, "x.jsonl", 33, "seed", 0)
    assert cfg.is_overridden("evaluate.n_heldout") and not cfg.is_overridden("evaluate.n_human")
    assert "evaluate:\n  n_heldout: 9\n  n_prompts: 4\n" in r.stdout

    r = _cli("ablate", "--config", str(c))
    assert r.exit_code == 0, r.stderr
    ab = got.pop().ablate
    assert (ab.seeds, ab.judge, ab.steps, ab.n_heldout, ab.judge_prompts) == (3, True, 11, 60, 20)
    assert "ablate:\n  seeds: 3\n  steps: 11\n" in r.stdout
    r = _cli("ablate", "--config", str(c), "--seeds", "1", "--steps", "5", "--n-heldout", "8", "--judge-prompts", "2",
             "--heldout", "seed")
    assert r.exit_code == 0, r.stderr
    ab = got.pop().ablate
    assert (ab.seeds, ab.steps, ab.n_heldout, ab.judge_prompts, ab.heldout, ab.judge) == (1, 5, 8, 2, "seed", True)
    # an override of the key and the option: the option wins, being the more specific
    r = _cli("ablate", "--config", str(c), "ablate.seeds=4")
    assert got.pop().ablate.seeds == 4
    r = _cli("ablate", "--config", str(c), "ablate.seeds=4", "--seeds", "2")
    assert got.pop().ablate.seeds == 2


def test_evaluate_and_ablate_settings_do_not_make_a_run_directory_refuse_the_config() -> None:
    """`selfalign ablate --seeds 3` on a finished run opens its run directory with that config:
    the evaluate and ablate settings are not the run's."""
    from selfalign.rundir import config_changes

    cfg = load_config(packaged_config_path("smoke"))
    other = load_config(packaged_config_path("smoke"), ["ablate.seeds=5", "evaluate.n_heldout=9", "evaluate.human=x.jsonl"])
    assert config_changes(cfg.to_dict(), other) == []


def test_selection_and_endpoint_throughput_settings_resume_a_run_directory() -> None:
    """The budget, the diversity threshold and a labels file are applied by the selection, redone on
    every run (like the threshold); a served endpoint's concurrency, retries and prices do not change
    its answers. None of them makes a run directory refuse the config; a rater change does."""
    from selfalign.rundir import config_changes

    cfg = load_config(packaged_config_path("smoke"))
    other = load_config(packaged_config_path("smoke"), [
        "curation.max_kept=10", "hygiene.diversity_threshold=0.5", "curation.labels=l.jsonl",
        "served.concurrency=2", "served.max_retries=1", "served.timeout=5", "served.price_input=0.5"])
    assert config_changes(cfg.to_dict(), other) == []
    rater = load_config(packaged_config_path("smoke"), ["served.model=other", "hygiene.ngram=8"])
    assert sorted(k for k, _, _ in config_changes(cfg.to_dict(), rater)) == ["hygiene.ngram", "served.model"]
