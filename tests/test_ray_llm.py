"""The GPU-cluster path (ray.data.llm + vLLM), checked on CPU: the processor config, the request of
each row and the record made from vLLM's output row. vLLM itself cannot run here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from selfalign.config import load_config

pytest.importorskip("ray.data", reason="needs ray[data]")
pytest.importorskip("aiohttp", reason="ray.data.llm imports aiohttp (the dev extra installs it)")

from selfalign import ray_llm  # noqa: E402
from selfalign.steps import row_seed  # noqa: E402


def adapter_dir(tmp_path: Path, r: int = 8) -> Path:
    d = tmp_path / "backward"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": r}))
    return d


def test_processor_config_maps_engine_options(tmp_path: Path) -> None:
    cfg = load_config(None, ["generation.backend=vllm", "run.executor=ray", "ray.concurrency=3",
                             "ray.tensor_parallel_size=2", "ray.batch_size=48", "run.seed=7"])
    conf = ray_llm.processor_config(cfg, "/models/llama", [str(adapter_dir(tmp_path, r=32))])
    kw = conf.engine_kwargs
    assert conf.model_source == "/models/llama"
    assert (kw["enable_lora"], kw["max_lora_rank"], kw["max_loras"], kw["tensor_parallel_size"]) == (True, 32, 1, 2)
    assert kw["max_model_len"] >= cfg.train_forward.max_seq_len and kw["seed"] == 7
    assert "model" not in kw  # the model is model_source, not an engine kwarg
    assert (conf.batch_size, conf.concurrency, conf.should_continue_on_error) == (48, 3, True)
    assert not (conf.chat_template_stage or conf.tokenize_stage or conf.detokenize_stage)  # selfalign renders
    no_lora = ray_llm.processor_config(cfg, "/models/llama", [])
    assert "enable_lora" not in no_lora.engine_kwargs


def _engine(tok, adapter: str | None = None) -> ray_llm.TokenizerEngine:
    return ray_llm.TokenizerEngine(tok, 16384, "backward", adapter)  # the tiny model's context


def _augment(cfg):  # noqa: ANN001, ANN202
    from selfalign.augment import AugmentStep
    from selfalign.prompts import shipped

    return AugmentStep.from_config(cfg, shipped(), "backward")


def _curate(cfg):  # noqa: ANN001, ANN202
    from selfalign.curate import step_for
    from selfalign.prompts import shipped

    return step_for(cfg, shipped())


def test_requests_carry_the_prompt_seed_and_adapter_of_the_row(tiny_model: Path) -> None:
    from selfalign.models import load_tokenizer
    from selfalign.prompts import shipped

    tok = load_tokenizer(str(tiny_model))
    cfg = load_config(None, ["run.seed=3", "generation.instruction.max_new_tokens=40"])
    row = {"source_id": "lima:12", "response": "Paris is the capital of France.", "source": "lima"}
    req = ray_llm.vllm_request(_augment(cfg), _engine(tok, "/shared/run/backward"), row)
    assert req["prompt"] == shipped().render_prompt(tok, shipped().backward_messages(row["response"]))
    assert req["tokenized_prompt"] == tok(req["prompt"], add_special_tokens=False)["input_ids"]
    assert req["model"] == "/shared/run/backward"  # a LoRA request per row
    sp = req["sampling_params"]
    assert sp["seed"] == row_seed(3, "lima:12") and sp["max_tokens"] == 40 and sp["temperature"] == 1.0
    other = ray_llm.vllm_request(_augment(cfg), _engine(tok), {**row, "source_id": "lima:13"})
    assert other["sampling_params"]["seed"] != sp["seed"] and "model" not in other
    bad = ray_llm.vllm_request(_augment(cfg), _engine(tok), {"source_id": "x", "response": None})
    assert bad["__error__"].startswith("bad_row") and bad["sampling_params"]["max_tokens"] == 1
    assert bad["sampling_params"].keys() == sp.keys()  # an error row has the same fields (one Arrow schema)
    assert "stop" not in sp  # generation.instruction.stop is [] by default
    stopped = load_config(None, ['generation.instruction.stop=["\\n\\n"]'])
    req = ray_llm.vllm_request(_augment(stopped), _engine(tok), row)
    assert req["sampling_params"]["stop"] == ["\n\n"] and req["sampling_params"]["include_stop_str_in_output"]
    # the processor passes the request's columns through to its output row
    rec = ray_llm.vllm_record(_augment(stopped), {**req, **_out(row, generated_text=" What is it?\n\nMore text",
                                                                __stop__=req["__stop__"])})
    assert json.loads(rec["record"])["instruction"] == "What is it?"

    lp = load_config(None, ["curation.mode=logprob"])
    pair = {"source_id": "p1", "instruction": "Name the capital.", "response": "Paris.", "source": "s", "status": "ok",
            "raw_generation": ""}
    req = ray_llm.vllm_request(_curate(lp), _engine(tok), pair)
    assert req["prompt"].endswith("Score:") or req["prompt"].endswith("Score: ")
    assert req["sampling_params"]["logprobs"] == ray_llm.LOGPROBS and req["sampling_params"]["max_tokens"] == 1
    assert "stop" not in req["sampling_params"]

    from selfalign.curate import RATING_STOPS

    gen = load_config(None, ["curation.mode=generate", "curation.max_new_tokens=50"])
    req = ray_llm.vllm_request(_curate(gen), _engine(tok), pair)
    sp = req["sampling_params"]
    assert sp["stop"] == list(RATING_STOPS) and sp["include_stop_str_in_output"] is True and sp["max_tokens"] == 50


def test_a_llama2_prompt_reaches_vllm_with_one_bos() -> None:
    """The rendered prompt already starts with <s>: vLLM gets token ids (`tokenized_prompt`, which
    Ray 2.60 sends as a TokensPrompt), so it adds no second BOS."""
    from conftest import need

    from selfalign.models import load_tokenizer

    tok = load_tokenizer(str(need(Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "llama2")))
    row = {"source_id": "a", "response": "Paris is the capital of France.", "source": "lima"}
    req = ray_llm.vllm_request(_augment(load_config(None, [])), _engine(tok), row)
    assert req["prompt"].startswith("<s>")
    assert req["tokenized_prompt"][0] == tok.bos_token_id and req["tokenized_prompt"][1] != tok.bos_token_id


def _out(row: dict, **vllm: object) -> dict:
    return {"__row__": json.dumps(row), "__error__": "", "__cut__": False, "generated_text": "", "__stop__": "[]",
            "__candidates__": "[]", **vllm}


def test_records_from_vllm_rows_have_the_local_schema() -> None:
    from selfalign.records import AugmentedPair, RatedPair

    cfg = load_config(None, [])
    row = {"source_id": "a1", "response": "Some answer.", "source": "lima"}
    got = ray_llm.vllm_record(_augment(cfg), _out(row, generated_text=" What is it? "))
    rec = AugmentedPair(**json.loads(got["record"]))
    assert got["source_id"] == "a1" and rec.instruction == "What is it?" and rec.status == "ok"
    failed = ray_llm.vllm_record(_augment(cfg), _out(row, __inference_error__="CUDA OOM"))
    rec = AugmentedPair(**json.loads(failed["record"]))
    assert rec.status == "error" and "CUDA OOM" in rec.error

    gen_cfg = load_config(None, ["curation.mode=generate"])
    pair = {"source_id": "p1", "instruction": "Q?", "response": "A.", "source": "s", "raw_generation": "", "status": "ok"}
    stops = json.dumps(list(__import__("selfalign.curate").curate.RATING_STOPS))
    gen = ray_llm.vllm_record(_curate(gen_cfg), _out(pair, generated_text="Relevant.\nScore: 4", __stop__=stops))
    rated = RatedPair(**json.loads(gen["record"]))
    assert rated.score == 4.0 and rated.reasoning == "Relevant." and rated.raw_outputs == ["Relevant.\nScore: 4"]
    # text past the score line (a vLLM without stop strings) is cut there, as the local executor does
    past = ray_llm.vllm_record(_curate(gen_cfg), _out(pair, generated_text="Relevant.\nScore: 4\nScore: 1",
                                                      __stop__=stops))
    assert RatedPair(**json.loads(past["record"])).raw_outputs == ["Relevant.\nScore: 4"]

    lp = load_config(None, ["curation.mode=logprob"])
    cands = json.dumps([" 1", " 2", " 3", " 4", " 5"])
    top = {"101": {"logprob": math.log(0.6), "decoded_token": " 5"}, "102": {"logprob": math.log(0.2), "decoded_token": " 3"},
           "7": {"logprob": math.log(0.2), "decoded_token": " the"}}
    rated = RatedPair(**json.loads(ray_llm.vllm_record(_curate(lp), _out(pair, logprobs=[top],
                                                                         __candidates__=cands))["record"]))
    assert rated.score == pytest.approx((5 * 0.6 + 3 * 0.2) / 0.8)
    as_map = list(top.items())  # an Arrow map column reads back as (key, value) pairs
    assert ray_llm.score_probs(as_map, json.loads(cands)) == pytest.approx(ray_llm.score_probs(top, json.loads(cands)))


def test_build_processor_builds_the_vllm_stage(tmp_path: Path, tiny_model: Path) -> None:
    import ray
    from ray.data.llm import build_processor

    from selfalign.config import RayConfig
    from selfalign.ray_exec import ray_cluster

    cfg = load_config(None, ["generation.backend=vllm", "run.executor=ray"])
    with ray_cluster(RayConfig()):
        assert ray.is_initialized()
        processor = build_processor(ray_llm.processor_config(cfg, str(tiny_model), []),
                                    preprocess=lambda row: {"prompt": "x", "sampling_params": {"max_tokens": 1}})
        assert any("vLLMEngine" in name for name in processor.list_stage_names())
