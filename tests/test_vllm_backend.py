"""The vLLM backend with a fake vllm package (tests/fake_vllm.py; vllm needs a GPU): version check,
engine options, token-id requests, max_model_len from the prompts, one engine at a time, and the
4-bit configs' backend choice."""

import json
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO
from fake_vllm import fake_cuda, install

from selfalign.config import load_config, packaged_config_path
from selfalign.generation import GenParams, generate, load_engine
from selfalign.memory import choose_backend
from selfalign.vllm_backend import (
    VLLM_VERSIONS,
    VllmEngine,
    VllmError,
    check_vllm,
    engine_options,
    lora_rank_slot,
    lora_request_args,
    release,
    sampling_options,
)


def make_adapter(tmp_path: Path, name: str, r: int) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 2 * r}))
    return d


def test_engine_options_from_config(tmp_path: Path) -> None:
    cfg = load_config(packaged_config_path("llama2-7b"), ["run.seed=7", "generation.gpu_memory_utilization=0.6"])
    opts = engine_options(cfg, "/models/base", [make_adapter(tmp_path, "a", 16), make_adapter(tmp_path, "b", 64)],
                          4096, "bfloat16")
    assert opts["enable_lora"] is True and opts["max_lora_rank"] == 64 and opts["max_loras"] == 2
    assert opts["max_model_len"] == 4096 and opts["seed"] == 7 and opts["trust_remote_code"] is False
    assert opts["gpu_memory_utilization"] == 0.6 and opts["dtype"] == "bfloat16"
    assert "enable_lora" not in engine_options(cfg, "/m", [], 4096, "bfloat16")
    # vLLM 0.33 has no bitsandbytes quantization: a 4-bit config never asks for it
    t4 = load_config(packaged_config_path("llama2-7b-qlora-t4"))
    assert "quantization" not in engine_options(t4, "/m", [], 4096, "float16")


def test_lora_rank_is_rounded_to_a_rank_vllm_accepts(tmp_path: Path) -> None:
    assert [lora_rank_slot(r) for r in (1, 4, 8, 12, 64, 100, 512)] == [1, 8, 8, 16, 64, 128, 512]
    with pytest.raises(VllmError, match="largest max_lora_rank"):
        lora_rank_slot(1024)
    cfg = load_config(packaged_config_path("smoke"))
    assert engine_options(cfg, "/m", [make_adapter(tmp_path, "a", 4)], 512, "float16")["max_lora_rank"] == 8


def test_sampling_options() -> None:
    assert sampling_options(0.0, 0.9, 32, 1) == {"temperature": 0.0, "max_tokens": 32, "seed": 1}
    assert sampling_options(0.7, 0.9, 32, 1) == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "seed": 1}
    stopped = sampling_options(0.0, 0.9, 32, 1, ("Score: 4", "", "\n\n"))
    assert stopped["stop"] == ["Score: 4", "\n\n"] and stopped["include_stop_str_in_output"] is True


def test_stop_strings_reach_vllm_and_the_text_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake vLLM (like the real one without stops) returns text past the score line: the
    request carries the stop strings, and the engine's text ends with the one that came first."""
    fake = install(monkeypatch)
    fake.reply = lambda ids, sp: "Clear.\nScore: 4\nScore: 5 and more"
    eng = VllmEngine(_Tok(), lambda n: sys.modules["vllm"].LLM("m", max_model_len=n), context=64, name="rater",
                     make_sampling=sys.modules["vllm"].SamplingParams)
    stop = ("Score: 5", "Score: 4")
    assert generate(eng, ["<s> a b"], GenParams(0.0, 1.0, 16, 3, stop)) == ["Clear.\nScore: 4"]
    (sp,) = fake.engines[-1].requests[-1][1]  # one SamplingParams per prompt
    assert sp["stop"] == list(stop) and sp["include_stop_str_in_output"] is True
    assert generate(eng, ["<s> a b"], GenParams(0.0, 1.0, 16, 3)) == ["Clear.\nScore: 4\nScore: 5 and more"]
    assert "stop" not in fake.engines[-1].requests[-1][1][0]
    release()


def test_lora_request_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    a, b = make_adapter(tmp_path, "backward", 8), make_adapter(tmp_path, "forward_1", 8)
    assert lora_request_args(a) == lora_request_args(a)
    assert lora_request_args(a)[1] != lora_request_args(b)[1]
    assert lora_request_args(a)[0] == "backward" and lora_request_args(a)[1] > 0


def test_version_range_is_checked_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch)
    assert check_vllm() == "0.33.0"
    for old in ("0.6.3", "0.27.1", "0.35.0"):
        fake.version = old
        with pytest.raises(VllmError) as e:
            check_vllm()
        assert str(e.value).count("\n") == 0 and f"installed is {old}" in str(e.value)
        assert VLLM_VERSIONS in str(e.value)
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra[0] == f"vllm{VLLM_VERSIONS}"  # the extra installs what was checked


def test_an_old_vllm_stops_the_run_before_any_stage(monkeypatch: pytest.MonkeyPatch, smoke_cfg) -> None:
    from selfalign.pipeline import run_pipeline

    fake = install(monkeypatch)
    fake.version = "0.6.3"
    cfg = smoke_cfg.model_copy(update={"generation": smoke_cfg.generation.model_copy(update={"backend": "vllm"})})
    with pytest.raises(VllmError, match="tested with vllm"):
        run_pipeline(cfg)
    assert not Path(cfg.run.out_dir).exists()


class _Tok:
    """Whitespace 'tokenizer': one token per word, BOS (1) where the text says <s>."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [1 if w == "<s>" else 10 + len(w) for w in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_requests_are_token_ids_and_max_model_len_follows_the_prompts(tmp_path: Path) -> None:
    made: list[int] = []
    calls = []

    class LLM:
        def generate(self, prompts, sp, lora_request=None):
            calls.append((prompts, sp, lora_request))
            return [type("O", (), {"outputs": [type("C", (), {"text": " ok "})]}) for _ in prompts]

    def make_llm(n: int) -> LLM:
        made.append(n)
        return LLM()

    adapter = make_adapter(tmp_path, "backward", 8)
    eng = VllmEngine(_Tok(), make_llm, context=64, adapter=str(adapter), name="backward")
    out = generate(eng, ["<s> a b c", "<s> a b c d e f"], GenParams(1.0, 0.9, 16, 3))
    assert out == ["ok", "ok"] and made == [7 + 16]  # longest prompt (7 tokens) + 16 new
    prompts, sp, lora = calls[0]
    assert prompts == [{"prompt_token_ids": [1, 11, 11, 11]}, {"prompt_token_ids": [1, 11, 11, 11, 11, 11, 11]}]
    # one SamplingParams per prompt, each with its own seed, top-k as the HF engine samples
    assert sp == [{"temperature": 1.0, "top_p": 0.9, "max_tokens": 16, "seed": 3, "top_k": 50}] * 2
    assert lora == lora_request_args(adapter)
    generate(eng, ["<s> a"], GenParams(1.0, 0.9, 16, 3))  # fits: the same engine
    assert made == [23]
    with pytest.raises(VllmError, match="over the model's context 64"):
        generate(eng, ["<s> " + "a " * 60], GenParams(1.0, 0.9, 16, 3))
    release()


def test_one_engine_at_a_time_released_before_the_next_stage_and_before_training(
        monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path) -> None:
    fake = install(monkeypatch)
    fake_cuda(monkeypatch)
    cfg = load_config(packaged_config_path("smoke"),
                      ["generation.backend=vllm", "run.device_memory_gb=40", f"models.cache_dir={tmp_path}"])
    a = load_engine(cfg, str(tiny_model), name="augment", stage="augment")
    generate(a, ["hello there"] * 3, GenParams(1.0, 0.9, 8, 0))
    assert len(fake.alive) == 1 and fake.engines[0].options["gpu_memory_utilization"] == 0.85
    assert a.context == 16384 and fake.engines[0].options["max_model_len"] <= 16384
    b = load_engine(cfg, str(tiny_model), name="curate", stage="curate")  # the next stage
    assert not fake.alive and fake.cleanups == 1  # shut down before the next one is made
    generate(b, ["rate this"], GenParams(0.0, 1.0, 8, 0))
    assert len(fake.alive) == 1 and fake.overlaps == 0
    monkeypatch.undo()  # back to a CPU-only torch: training loads the model on the CPU
    fake2 = install(monkeypatch, fake)
    from selfalign.models import load_model

    load_model(str(tiny_model), cfg.models, device="cpu")  # e.g. train-forward after curation
    assert not fake2.alive and fake.overlaps == 0


def test_4bit_configs_generate_with_hf_or_fp16_vllm_where_it_fits() -> None:
    t4 = packaged_config_path("llama2-7b-qlora-t4")
    small = load_config(t4, ["generation.backend=vllm", "run.device_memory_gb=15"])
    spec = small.models.base
    backend, plan, why = choose_backend(small, spec, spec, "cuda", None, "curate")  # the rater: no adapter
    assert backend == "hf" and "no bitsandbytes" in why and plan is not None and plan.fits
    big = load_config(t4, ["generation.backend=vllm", "run.device_memory_gb=40"])
    backend, plan, why = choose_backend(big, spec, spec, "cuda", None, "curate")
    assert backend == "vllm" and plan.what.startswith("vLLM fp16") and plan.fits and "16-bit" in why
    plain = load_config(packaged_config_path("llama2-7b"), ["generation.backend=vllm", "run.device_memory_gb=40"])
    assert choose_backend(plain, spec, spec, "cuda", plain.lora, "curate")[0] == "vllm"


def test_vllm_is_not_imported_eagerly() -> None:
    import selfalign.generation  # noqa: F401
    import selfalign.vllm_backend  # noqa: F401

    assert "vllm" not in sys.modules or pytest.skip("vllm installed here")
