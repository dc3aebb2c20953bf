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
from selfalign.ray_exec import row_seed  # noqa: E402


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


def test_requests_carry_the_prompt_seed_and_adapter_of_the_row(tiny_model: Path) -> None:
    from selfalign.models import load_tokenizer
    from selfalign.prompts import backward_messages, render_prompt

    tok = load_tokenizer(str(tiny_model))
    cfg = load_config(None, ["run.seed=3", "generation.instruction.max_new_tokens=40"])
    conf = json.dumps(cfg.to_dict())
    row = {"source_id": "lima:12", "response": "Paris is the capital of France.", "source": "lima"}
    req = ray_llm.vllm_request(conf, "augment", str(tiny_model), "/shared/run/backward", row, tok)
    assert req["prompt"] == render_prompt(tok, backward_messages(row["response"]))
    assert req["model"] == "/shared/run/backward"  # a LoRA request per row
    sp = req["sampling_params"]
    assert sp["seed"] == row_seed(3, "lima:12") and sp["max_tokens"] == 40 and sp["temperature"] == 1.0
    other = ray_llm.vllm_request(conf, "augment", str(tiny_model), None, {**row, "source_id": "lima:13"}, tok)
    assert other["sampling_params"]["seed"] != sp["seed"] and "model" not in other
    bad = ray_llm.vllm_request(conf, "augment", str(tiny_model), None, {"source_id": "x", "response": None}, tok)
    assert bad["__error__"].startswith("bad_row") and bad["sampling_params"]["max_tokens"] == 1
    assert bad["sampling_params"].keys() == sp.keys()  # an error row has the same fields (one Arrow schema)
    assert "stop" not in sp  # generation.instruction.stop is [] by default
    stopped = load_config(None, ['generation.instruction.stop=["\\n\\n"]'])
    req = ray_llm.vllm_request(json.dumps(stopped.to_dict()), "augment", str(tiny_model), None, row, tok)
    assert req["sampling_params"]["stop"] == ["\n\n"] and req["sampling_params"]["include_stop_str_in_output"]
    rec = ray_llm.vllm_record(json.dumps(stopped.to_dict()), "augment", "backward",
                              _out(row, generated_text=" What is it?\n\nMore text"))
    assert json.loads(rec["record"])["instruction"] == "What is it?"

    lp = load_config(None, ["curation.mode=logprob"])
    pair = {"source_id": "p1", "instruction": "Name the capital.", "response": "Paris.", "source": "s", "status": "ok"}
    req = ray_llm.vllm_request(json.dumps(lp.to_dict()), "curate", str(tiny_model), None, pair, tok)
    assert req["prompt"].endswith("Score:") or req["prompt"].endswith("Score: ")
    assert req["sampling_params"]["logprobs"] == ray_llm.LOGPROBS and req["sampling_params"]["max_tokens"] == 1
    assert "stop" not in req["sampling_params"]

    from selfalign.curate import RATING_STOPS

    gen = load_config(None, ["curation.mode=generate", "curation.max_new_tokens=50"])
    req = ray_llm.vllm_request(json.dumps(gen.to_dict()), "curate", str(tiny_model), None, pair, tok)
    sp = req["sampling_params"]
    assert sp["stop"] == list(RATING_STOPS) and sp["include_stop_str_in_output"] is True and sp["max_tokens"] == 50


def _out(row: dict, **vllm: object) -> dict:
    return {"__row__": json.dumps(row), "__error__": "", "__cut__": False, "generated_text": "", **vllm}


def test_records_from_vllm_rows_have_the_local_schema() -> None:
    from selfalign.records import AugmentedPair, RatedPair

    conf = json.dumps(load_config(None, []).to_dict())
    row = {"source_id": "a1", "response": "Some answer.", "source": "lima"}
    got = ray_llm.vllm_record(conf, "augment", "backward", _out(row, generated_text=" What is it? "))
    rec = AugmentedPair(**json.loads(got["record"]))
    assert got["source_id"] == "a1" and rec.instruction == "What is it?" and rec.status == "ok"
    failed = ray_llm.vllm_record(conf, "augment", "backward", _out(row, __inference_error__="CUDA OOM"))
    rec = AugmentedPair(**json.loads(failed["record"]))
    assert rec.status == "error" and "CUDA OOM" in rec.error

    pair = {"source_id": "p1", "instruction": "Q?", "response": "A.", "source": "s", "raw_generation": "", "status": "ok"}
    gen = ray_llm.vllm_record(conf, "curate", "rater", _out(pair, generated_text="Relevant.\nScore: 4"))
    rated = RatedPair(**json.loads(gen["record"]))
    assert rated.score == 4.0 and rated.reasoning == "Relevant." and rated.raw_outputs == ["Relevant.\nScore: 4"]
    # text past the score line (a vLLM without stop strings) is cut there, as the local executor does
    past = ray_llm.vllm_record(conf, "curate", "rater", _out(pair, generated_text="Relevant.\nScore: 4\nScore: 1"))
    assert RatedPair(**json.loads(past["record"])).raw_outputs == ["Relevant.\nScore: 4"]

    lp = json.dumps(load_config(None, ["curation.mode=logprob"]).to_dict())
    top = {"101": {"logprob": math.log(0.6), "decoded_token": " 5"}, "102": {"logprob": math.log(0.2), "decoded_token": " 3"},
           "7": {"logprob": math.log(0.2), "decoded_token": " the"}}
    rated = RatedPair(**json.loads(ray_llm.vllm_record(lp, "curate", "rater", _out(pair, logprobs=[top]))["record"]))
    assert rated.score == pytest.approx((5 * 0.6 + 3 * 0.2) / 0.8)
    as_map = list(top.items())  # an Arrow map column reads back as (key, value) pairs
    assert ray_llm.score_probs(as_map) == pytest.approx(ray_llm.score_probs(top))


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
