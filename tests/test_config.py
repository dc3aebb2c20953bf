from pathlib import Path

import pytest

from selfalign.config import Config, ConfigError, load_config, parse_override

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "smoke.yaml", "llama2-7b.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert 1 <= cfg.curation.threshold <= 5


def test_default_config_is_offline_smollm2() -> None:
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.models.base == "smollm2" and cfg.models.rater == "smollm2"
    assert cfg.data.unlabelled_n == 150


def test_llama2_config_names_the_real_models() -> None:
    cfg = load_config(REPO / "configs" / "llama2-7b.yaml")
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
