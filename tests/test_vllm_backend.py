"""The vLLM backend's request building and option mapping, with a fake engine (vllm needs a GPU)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from selfalign.config import load_config, packaged_config_path
from selfalign.generation import GenParams, generate
from selfalign.vllm_backend import VllmEngine, engine_options, lora_request_args, sampling_options


def make_adapter(tmp_path: Path, name: str, r: int) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 2 * r}))
    return d


def test_engine_options_from_config(tmp_path: Path) -> None:
    cfg = load_config(packaged_config_path("llama2-7b"), ["run.seed=7"])
    opts = engine_options(cfg, "/models/base", [make_adapter(tmp_path, "a", 16), make_adapter(tmp_path, "b", 64)])
    assert opts["enable_lora"] is True and opts["max_lora_rank"] == 64 and opts["max_loras"] == 2
    # the 3-shot rating prompt (1536-token response + worked examples + 256 new) is longer than 2048
    assert opts["max_model_len"] == 3292 and opts["seed"] == 7 and opts["trust_remote_code"] is False
    assert "enable_lora" not in engine_options(cfg, "/m", [])


def test_sampling_options() -> None:
    assert sampling_options(0.0, 0.9, 32, 1) == {"temperature": 0.0, "max_tokens": 32, "seed": 1}
    assert sampling_options(0.7, 0.9, 32, 1) == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "seed": 1}


def test_lora_request_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    a, b = make_adapter(tmp_path, "backward", 8), make_adapter(tmp_path, "forward_1", 8)
    assert lora_request_args(a) == lora_request_args(a)
    assert lora_request_args(a)[1] != lora_request_args(b)[1]
    assert lora_request_args(a)[0] == "backward" and lora_request_args(a)[1] > 0


def test_generate_goes_through_the_fake_engine(tmp_path: Path) -> None:
    calls = []

    class FakeLLM:
        def generate(self, prompts, sp, lora_request=None):
            calls.append((prompts, sp, lora_request))
            return [SimpleNamespace(outputs=[SimpleNamespace(text=f" out:{p} ")]) for p in prompts]

    adapter = make_adapter(tmp_path, "backward", 8)
    eng = VllmEngine(FakeLLM(), tokenizer=None, adapter=str(adapter))
    seen = {}
    out = generate(eng, ["p1", "p2"], GenParams(1.0, 0.9, 16, 3), on_result=lambda i, t: seen.__setitem__(i, t))
    assert out == ["out:p1", "out:p2"] and seen == {0: "out:p1", 1: "out:p2"}
    prompts, sp, lora = calls[0]
    assert sp == {"temperature": 1.0, "top_p": 0.9, "max_tokens": 16, "seed": 3}
    assert lora == lora_request_args(adapter)


def test_vllm_is_not_imported_eagerly() -> None:
    import selfalign.generation  # noqa: F401
    import selfalign.vllm_backend  # noqa: F401

    assert "vllm" not in sys.modules or pytest.skip("vllm installed here")
