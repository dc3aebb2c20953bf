from pathlib import Path

import pytest
from conftest import slow_smollm2

from selfalign.config import load_config
from selfalign.generation import (
    GenParams,
    _common_prefix_len,
    generate,
    load_engine,
    next_token_probs,
)
from selfalign.prompts import rating_messages, render_prompt

PAIRS = [("What is 2+2?", "2+2 equals 4."),
         ("Name a fruit.", "An apple is a fruit, and it is red or green. Many people eat apples."),
         ("Tell me a joke about cats", "Why did the cat sit on the computer? To watch the mouse!")]


def test_common_prefix_len() -> None:
    assert _common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert _common_prefix_len([[5], [6]]) == 0
    assert _common_prefix_len([]) == 0


def test_prefix_cache_gives_the_same_probabilities(tiny_model: Path) -> None:
    cfg = load_config(None, ["generation.batch_size=2"])
    engine = load_engine(cfg, str(tiny_model))
    prompts = [render_prompt(engine.tokenizer, rating_messages(i, r, 3)) + "Score:" for i, r in PAIRS]
    cands = [" 1", " 2", " 3", " 4", " 5"]
    with_cache = next_token_probs(engine, prompts, cands, progress=False)
    engine.prefix_cache = False
    without = next_token_probs(engine, prompts, cands, progress=False)
    for a, b in zip(with_cache, without, strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-7)


def test_generate_keeps_order_and_reports_each_result(tiny_model: Path) -> None:
    cfg = load_config(None, ["generation.batch_size=2"])
    engine = load_engine(cfg, str(tiny_model))
    prompts = ["short", "a much longer prompt than the others here", "mid length prompt"]
    seen: dict[int, str] = {}
    out = generate(engine, prompts, GenParams(temperature=0, max_new_tokens=5),
                   on_result=lambda i, t: seen.__setitem__(i, t), progress=False)
    assert len(out) == 3 and seen == dict(enumerate(out))
    # greedy is deterministic
    assert out == generate(engine, prompts, GenParams(temperature=0, max_new_tokens=5), progress=False)


@pytest.mark.slow
@slow_smollm2
def test_prefix_cache_generation_matches_plain_on_smollm2() -> None:
    cfg = load_config(None, ["generation.batch_size=3"])
    engine = load_engine(cfg, "smollm2")
    prompts = [render_prompt(engine.tokenizer, rating_messages(i, r, 3)) for i, r in PAIRS]
    p = GenParams(temperature=0, max_new_tokens=24)
    cached = generate(engine, prompts, p, progress=False)
    engine.prefix_cache = False
    assert cached == generate(engine, prompts, p, progress=False)
    assert all(cached)


def test_prefix_cache_is_reused_across_calls(tiny_model: Path) -> None:
    cfg = load_config(None, ["generation.batch_size=2"])
    engine = load_engine(cfg, str(tiny_model))
    prompts = [render_prompt(engine.tokenizer, rating_messages(i, r, 3)) + "Score:" for i, r in PAIRS]
    cands = [" 1", " 2", " 3", " 4", " 5"]
    next_token_probs(engine, prompts, cands, progress=False)
    memo = engine._prefix
    assert memo is not None and len(memo[0]) >= 32
    # a later call with one prompt (a retry) reuses the same cache object and gives the same numbers
    again = next_token_probs(engine, prompts[2:], cands, progress=False)
    assert engine._prefix is memo
    engine.prefix_cache = False
    plain = next_token_probs(engine, prompts[2:], cands, progress=False)
    assert again[0] == pytest.approx(plain[0], rel=1e-3, abs=1e-7)
