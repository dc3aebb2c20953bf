from pathlib import Path

import pytest
from conftest import slow_smollm2

from selfalign.config import load_config
from selfalign.generation import GenParams, generate, load_engine, next_token_probs
from selfalign.hf_engine import _common_prefix_len
from selfalign.prompts import shipped

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
    prompts = [shipped().render_prompt(engine.tokenizer, shipped().rating_messages(i, r, 3)) + "Score:" for i, r in PAIRS]
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
    prompts = [shipped().render_prompt(engine.tokenizer, shipped().rating_messages(i, r, 3)) for i, r in PAIRS]
    p = GenParams(temperature=0, max_new_tokens=24)
    cached = generate(engine, prompts, p, progress=False)
    engine.prefix_cache = False
    assert cached == generate(engine, prompts, p, progress=False)
    assert all(cached)


def test_prefix_cache_is_reused_across_calls(tiny_model: Path) -> None:
    cfg = load_config(None, ["generation.batch_size=2"])
    engine = load_engine(cfg, str(tiny_model))
    prompts = [shipped().render_prompt(engine.tokenizer, shipped().rating_messages(i, r, 3)) + "Score:" for i, r in PAIRS]
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


def test_growing_cache_matches_dynamic_cache_and_writes_in_place(tiny_model: Path) -> None:
    """The KV cache with reserved room returns exactly what DynamicCache returns, step after step,
    without reallocating while it has room; it reallocates (copying) when keys are replaced."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.cache_utils import DynamicCache

    from selfalign.hf_engine import growing_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    n_layers = model.config.num_hidden_layers
    grow, ref = growing_cache(model, reserve=4), DynamicCache()
    g = torch.Generator().manual_seed(0)
    ptrs = []
    for n in [5, 1, 1, 1, 1, 1]:  # prefill, then decoding; 5 + 4 fits the reserve, the 5th step not
        for layer in range(n_layers):
            k, v = torch.randn(2, 2, n, 8, generator=g), torch.randn(2, 2, n, 8, generator=g)
            gk, gv = grow.update(k, v, layer)
            rk, rv = ref.update(k, v, layer)
            assert torch.equal(gk, rk) and torch.equal(gv, rv)
        ptrs.append(grow.layers[0]._kbuf.data_ptr())
        assert grow.get_seq_length() == ref.get_seq_length()
    assert len(set(ptrs[:5])) == 1 and ptrs[5] != ptrs[4]  # in place while there is room
    grow.batch_repeat_interleave(2)  # replaces the keys: the next update must copy them
    ref.batch_repeat_interleave(2)
    k, v = torch.randn(4, 2, 1, 8, generator=g), torch.randn(4, 2, 1, 8, generator=g)
    for layer in range(n_layers):
        assert torch.equal(grow.update(k, v, layer)[0], ref.update(k, v, layer)[0])


def test_auto_batch_size_follows_the_memory_budget(tiny_model: Path) -> None:
    from selfalign.memory import auto_batch_size

    cfg = load_config(None, ["generation.batch_size=0", "generation.max_batch_size=32"])
    big, why = auto_batch_size(cfg, str(tiny_model), str(tiny_model), "cpu", "augment")
    assert big == 32 and "per prompt" in why  # a tiny model: capped by max_batch_size
    smollm2_like = load_config(None, ["generation.batch_size=0", "generation.memory_budget_gb=0.001"])
    one, _ = auto_batch_size(smollm2_like, str(tiny_model), str(tiny_model), "cpu", "curate")
    assert one == 1  # never 0
    mid = load_config(None, ["generation.batch_size=0", "generation.memory_budget_gb=0.05"])
    b, _ = auto_batch_size(mid, str(tiny_model), str(tiny_model), "cpu", "curate")
    assert 1 < b < 32
    with pytest.raises(Exception, match="batch_size"):
        load_config(None, ["generation.batch_size=-1"])


def test_cut_at_stop_keeps_the_first_completed_stop_string() -> None:
    from selfalign.prompts import cut_at_stop

    assert cut_at_stop("Good.\nScore: 4\nMore text", ("Score: 4", "Score: 5")) == "Good.\nScore: 4"
    # the string completed first wins, not the first listed
    assert cut_at_stop("a Score:5 b Score: 4", ("Score: 4", "Score:5")) == "a Score:5"
    assert cut_at_stop("no stop here", ("Score: 4",)) == "no stop here"
    assert cut_at_stop("text", ()) == "text"


def test_stop_strings_come_from_the_config() -> None:
    cfg = load_config(None, ['generation.instruction.stop=["\\n\\n", "###"]'])
    assert GenParams.from_config(cfg.generation.instruction, 3).stop == ("\n\n", "###")
    assert GenParams.from_config(load_config(None, []).generation.response).stop == ()


def _stop_from(text: str) -> str:
    """A stop string taken from a greedy output after its first few characters: it is produced,
    and not at once. Plain ASCII without spaces: outputs are stripped, and a byte-level model can
    write half a character (decoded as U+FFFD)."""
    body = text.strip()
    for i in range(len(body) // 3, len(body) - 3):
        if all(c.isascii() and c.isalnum() for c in body[i : i + 3]):
            return body[i : i + 3]
    raise AssertionError(f"no stop string to pick from the tiny model's greedy output {body!r}")


def _count_new_tokens(engine) -> list[int]:
    """Record how many tokens each `model.generate` call produced (per batch, padding included)."""
    seen: list[int] = []
    real = engine.model.generate

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    engine.model.generate = counting
    return seen


def test_stop_strings_cut_generation(tiny_model: Path) -> None:
    cfg = load_config(None, ["generation.batch_size=1"])
    engine = load_engine(cfg, str(tiny_model))
    steps = _count_new_tokens(engine)
    prompts = ["short", "a much longer prompt than the others here", "mid length prompt"]
    free = generate(engine, prompts, GenParams(temperature=0, max_new_tokens=24), progress=False)
    free_steps = list(steps)
    for k, (prompt, full) in enumerate(zip(prompts, free, strict=True)):
        stop = _stop_from(full)
        out = generate(engine, [prompt], GenParams(temperature=0, max_new_tokens=24, stop=(stop,)), progress=False)[0]
        assert out.endswith(stop) and full.startswith(out) and len(out) < len(full)
        assert out.count(stop) == 1  # cut at its first occurrence
        assert steps[-1] < free_steps[k]  # generation stopped there, not only the text was cut


def test_batched_generation_with_stops_matches_one_by_one(tiny_model: Path) -> None:
    cfg = load_config(None, ["generation.batch_size=1"])
    engine = load_engine(cfg, str(tiny_model))
    prompts = ["short", "a much longer prompt than the others here", "mid length prompt", "another prompt"]
    free = generate(engine, prompts, GenParams(temperature=0, max_new_tokens=24), progress=False)
    # each row stops at its own string, at a different step; rows that stopped wait for the others
    stops = tuple(_stop_from(t) for t in free[:2])
    params = GenParams(temperature=0, max_new_tokens=24, stop=stops)
    one_by_one = generate(engine, prompts, params, progress=False)
    engine.batch_size = 4
    batched = generate(engine, prompts, params, progress=False)
    assert batched == one_by_one
    assert batched[0].endswith(stops[0]) and batched[1].endswith(stops[1])
    assert all(f.startswith(b) for f, b in zip(free, batched, strict=True))
