"""The LLaMA-2 lane on CPU: the llama2-7b config code path end to end at tiny sizes, with the
real LLaMA-2 tokenizer (../shared/tokenizers, vocabulary 32,000) on tiny random models of context
4,096 -- the plain template for the base, Meta's chat template for the rater -- on the hf backend
and on the vLLM backend through a fake vllm package. Asserted on token ids: every prompt opens with
exactly one BOS (never `<s><s>`; Meta's chat format opens each [INST] turn with its own BOS, so a
3-shot rating prompt has 4, one per turn), every prompt + its new tokens within the context, long
LIMA responses cut to fit it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import GUANACO, LIMA, SHARED, need
from fake_vllm import fake_cuda, install

from selfalign.config import load_config, packaged_config_path

TOKENIZERS = SHARED.parent / "tokenizers"
BOS, EOS, CONTEXT = 1, 2, 4096


@pytest.fixture(scope="module")
def llama2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny-llama2 base (plain template) and chat (chat template) folders, and a LIMA subset with the
    two longest single-turn responses (about 4k tokens each) and two short ones."""
    if not (TOKENIZERS / "llama2" / "tokenizer.json").is_file():
        pytest.skip("../shared/tokenizers is absent")
    from selfalign.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("llama2")
    rows = [json.loads(x) for x in need(LIMA).read_text().splitlines()]
    single = sorted((r for r in rows if len(r["conversations"]) == 2), key=lambda r: len(r["conversations"][1]))
    (root / "lima.jsonl").write_text("".join(json.dumps(r) + "\n" for r in single[-2:] + single[100:102]))
    return {"base": build_tiny_model(root / "base", tokenizer_dir=TOKENIZERS / "llama2"),
            "chat": build_tiny_model(root / "chat", tokenizer_dir=TOKENIZERS / "llama2-chat"),
            "lima": root / "lima.jsonl"}


def lane_config(llama2: dict[str, Path], out: Path, *extra: str) -> Any:
    return load_config(packaged_config_path("llama2-7b"), [
        f"run.out_dir={out}", "run.threads=2", f"models.base={llama2['base']}", f"models.rater={llama2['chat']}",
        f"data.seed={need(GUANACO)}", "data.seed_limit=4", f"data.unlabelled={llama2['lima']}", "data.unlabelled_n=4",
        f"data.eval_prompts={LIMA.with_name('test.jsonl')}", "forward.n_responses=2",
        "train_backward.max_steps=1", "train_forward.max_steps=1", "train_backward.batch_size=1",
        "train_forward.batch_size=1", "train_backward.grad_accum=1", "train_forward.grad_accum=1",
        "generation.batch_size=2", "generation.instruction.max_new_tokens=16", "generation.response.max_new_tokens=16",
        "generation.max_instruction_chars=100000", "curation.retries=0", "curation.max_new_tokens=32",
        "generation.require_request=false",  # a random tiny model writes no requests
        "hygiene.benchmarks=[]",  # the config's Hub benchmarks: offline, a failed read costs ~50 s; tested apart
        *extra])


def check_ids(ids: list[int], new: int, limit: int = CONTEXT, turns: int = 1) -> None:
    """One BOS opening the prompt and one per further chat turn; the prompt + new tokens fit."""
    assert ids[0] == BOS and ids[1] != BOS and ids.count(BOS) == turns, ids[:8]
    assert len(ids) + new <= limit


INST = [518, 25580, 29962]  # "[INST]" after a BOS, LLaMA-2 ids


def turns(ids: list[int]) -> int:
    return sum(ids[i : i + 4] == [BOS, *INST] for i in range(len(ids))) or 1


def test_llama2_lane_hf_backend(llama2: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.augment
    import selfalign.curate
    import selfalign.forward  # noqa: F401
    import selfalign.steps
    from selfalign.generation import generate
    from selfalign.pipeline import run_pipeline

    seen: list[tuple[str, Any, list[str], int]] = []
    stage_of = {"augment": "selfalign.augment", "responses": "selfalign.forward"}  # single-pass steps, by label
    for mod in (selfalign.steps, selfalign.curate):
        def spy(engine, prompts, params, *a, _m=mod.__name__, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            name = "selfalign.curate" if _m == "selfalign.curate" else stage_of[k.get("desc", "")]
            seen.append((name, engine, list(prompts), params.max_new_tokens))
            return generate(engine, prompts, params, *a, **k)

        monkeypatch.setattr(mod, "generate", spy)
    cfg = lane_config(llama2, tmp_path / "run", "run.device=cpu")
    run = run_pipeline(cfg)
    stages = {m.rsplit(".", 1)[1] for m, *_ in seen}
    assert stages == {"augment", "curate", "forward"}
    longest_rating = 0
    for mod, engine, prompts, new in seen:
        assert engine.context == CONTEXT and engine.tokenizer.pad_token_id == EOS  # no pad in LLaMA-2: EOS
        for p in prompts:
            ids = engine.tokenizer(p, add_special_tokens=False)["input_ids"]
            check_ids(ids, new, turns=4 if mod.endswith("curate") else 1)  # curate: 3 shots + the pair
            if mod.endswith("curate"):
                assert "[INST]" in p and "### Human" not in p  # Meta's chat template for the rater
                longest_rating = max(longest_rating, len(ids) + new)
            else:
                assert "### Human: " in p and "[INST]" not in p  # the plain template for the base
    # the 3-shot prompt of a ~4k-token LIMA response is cut to the context, not to 3,292 tokens
    assert 4000 < longest_rating <= CONTEXT
    rated = [json.loads(x) for x in run.path("curate_1", "rated.jsonl").read_text().splitlines()]
    assert len(rated) == 4 and sum(r["response_cut"] for r in rated) == 2
    assert (run.path("forward", "adapter_model.safetensors")).is_file()


# not slow: the Colab and lower-bound lanes (.ci/lane) run this file's fast tests
def test_llama2_lane_vllm_backend(llama2: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation stages on a fake GPU through the fake vllm; training stages on the CPU."""
    from selfalign.pipeline import run_pipeline

    def reply(ids: list[int], sp: dict) -> str:
        return "Clear and complete.\nScore: 5" if sp["max_tokens"] == 32 else "Explain this topic."

    fake = install(monkeypatch)
    fake.reply = reply
    # hygiene.embeddings=none: the fake GPU runs no torch op, and the embedder is an HF forward pass
    # (tested on the CPU by the hf lane above), not a vLLM path
    cfg = lane_config(llama2, tmp_path / "run", "generation.backend=vllm", "run.device_memory_gb=40",
                      "hygiene.embeddings=none")
    run_pipeline(cfg, until="train-backward")
    for until in ("curate", "train-forward", "responses"):
        with monkeypatch.context() as m:
            if until != "train-forward":
                fake_cuda(m)
            run_pipeline(cfg, until=until)
    assert len(fake.engines) == 3 and fake.overlaps == 0 and len(fake.alive) == 1  # augment, curate, responses
    for e in fake.engines:
        longest = 0
        for prompts, sps, _lora in e.requests:
            assert isinstance(sps, list) and len(sps) == len(prompts)  # one SamplingParams per prompt: its seed
            for p, sp in zip(prompts, sps, strict=True):
                ids = p["prompt_token_ids"]
                check_ids(ids, sp["max_tokens"], e.options["max_model_len"], turns(ids))
                longest = max(longest, len(p["prompt_token_ids"]) + sp["max_tokens"])
        # max_model_len: the longest prompt + new tokens, never past the context
        assert e.options["max_model_len"] == longest <= CONTEXT
        assert e.options["gpu_memory_utilization"] == 0.85 and "quantization" not in e.options
    augment, curate, responses = fake.engines
    assert all(turns(p["prompt_token_ids"]) == 4 for p in curate.requests[0][0])
    assert curate.options["max_model_len"] > 4000 and "enable_lora" not in curate.options  # the chat rater
    assert augment.options["enable_lora"] and augment.requests[0][2][0] == "backward"
    assert responses.requests[0][2][0] == "forward_1"
    curated = (tmp_path / "run" / "curated" / "data.jsonl").read_text().splitlines()
    assert len(curated) == 4  # every pair rated 5 through the fake engine


@pytest.mark.slow  # over ~10 s
def test_rating_prompts_of_all_lima_pairs_fit_llama2_context() -> None:
    """All 1,000 single-turn LIMA pairs (their instructions cut to the 128 tokens a generated one can
    have) rated with the llama2-7b config: 13.8% would run past 4,096 tokens with the 256 new tokens;
    after the cut none does, and every cut is counted."""
    if not (TOKENIZERS / "llama2-chat" / "tokenizer.json").is_file():
        pytest.skip("../shared/tokenizers is absent")
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from selfalign.curate import rating_prompts
    from selfalign.prompts import count_tokens, shipped, truncate_tokens
    from selfalign.records import AugmentedPair

    cfg = load_config(packaged_config_path("llama2-7b"))
    cur, tok = cfg.curation, AutoTokenizer.from_pretrained(TOKENIZERS / "llama2-chat")
    rows = [json.loads(x) for x in need(LIMA).read_text().splitlines()]
    pairs = [AugmentedPair(truncate_tokens(tok, r["conversations"][0], 128)[0], r["conversations"][1], str(i), "lima", "")
             for i, r in enumerate(rows) if len(r["conversations"]) == 2]
    before = [count_tokens(tok, shipped().render_prompt(tok, shipped().rating_messages(
        p.instruction, truncate_tokens(tok, p.response, cur.max_response_tokens)[0], cur.shots))) for p in pairs]
    over = sum(b + cur.max_new_tokens > CONTEXT for b in before)
    assert len(pairs) == 1000 and over == 138  # 13.8% (measured)
    prompts, cut = rating_prompts(SimpleNamespace(tokenizer=tok, context=CONTEXT), pairs, cur.shots,
                                  cur.max_response_tokens, cur.max_new_tokens)
    after = [count_tokens(tok, p) for p in prompts]
    assert max(after) + cur.max_new_tokens <= CONTEXT and max(after) > CONTEXT - cur.max_new_tokens - 16
    long = sum(len(tok(p.response, add_special_tokens=False)["input_ids"]) > cur.max_response_tokens for p in pairs)
    assert sum(cut) >= max(long, over) and all(c for b, c in zip(before, cut, strict=True)
                                                if b + cur.max_new_tokens > CONTEXT)
