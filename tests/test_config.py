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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
    assert load_config(tmp_path / "my.yaml") == load_config(packaged_config_path("smoke"))
