"""Likelihood scores (IFD, end of turn, worst segment) on the tiny model: exact against a
direct computation, and independent of batching."""

from __future__ import annotations

import math

import pytest
import torch

from selfalign.config import ModelsConfig
from selfalign.likelihood import _segment_ratio, pair_likelihoods, token_logprobs
from selfalign.models import load_model

PAIRS = [("Name a colour.", "Blue is a colour of the sky."),
         ("Add two and two.", "Two and two make four, which is an even number."),
         ("Say hi.", "Hi!")]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(str(tiny_model), ModelsConfig(), device="cpu")


def _direct(model, ids: list[int], start: int) -> list[float]:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
    return lp[start - 1 :].tolist()


def test_token_logprobs_match_a_direct_pass_and_do_not_depend_on_batching(tiny) -> None:
    model, tok = tiny
    seqs = [tok(t)["input_ids"] for t in ("a b c d e f", "hello there", "one two three four five six seven")]
    starts = [2, 1, 3]
    one = token_logprobs(model, seqs, starts, tok.pad_token_id or 0, batch_size=1, progress=False)
    many = token_logprobs(model, seqs, starts, tok.pad_token_id or 0, batch_size=3, progress=False)
    for s, st, a, b in zip(seqs, starts, one, many, strict=True):
        assert len(a) == len(s) - st
        assert a == pytest.approx(_direct(model, s, st), abs=1e-4)
        assert b == pytest.approx(a, abs=1e-4)


def test_pair_likelihood_parts(tiny) -> None:
    model, tok = tiny
    res = pair_likelihoods(model, tok, PAIRS, batch_size=2, progress=False)
    again = pair_likelihoods(model, tok, PAIRS, batch_size=1, progress=False)
    for r, a in zip(res, again, strict=True):
        assert r.ifd == pytest.approx(r.nll_conditional / r.nll_unconditional)
        assert r.ifd == pytest.approx(a.ifd, rel=1e-4)
        assert math.isfinite(r.end_logprob) and r.end_logprob < 0
        assert r.n_tokens > 0 and r.nll_conditional > 0
    # the response cut to fewer tokens: its head and tail are scored, so its end still is
    cut = pair_likelihoods(model, tok, PAIRS[1:2], max_response_tokens=3, progress=False)[0]
    assert cut.n_tokens <= 3 and cut.cut and math.isfinite(cut.end_logprob)
    whole = pair_likelihoods(model, tok, PAIRS[1:2], max_response_tokens=256, progress=False)[0]
    assert not whole.cut and whole.n_tokens > 3


def test_role_margin_against_a_direct_pass(tiny) -> None:
    from selfalign.likelihood import NEUTRAL_TURN, instruction_roles
    from selfalign.prompts import shipped

    model, tok = tiny
    ins = ["Name a colour.", "Blue is a colour of the sky.", "Name a colour."]
    got = instruction_roles(model, tok, ins, batch_size=2, progress=False)
    assert got[0] == got[2]  # one score per distinct instruction
    for text, (user, assistant) in zip(ins, got, strict=True):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        rendered = shipped().render_prompt(tok, shipped().forward_messages("\u2063X\u2063"))
        pre_u = tok(rendered.split("\u2063X\u2063")[0], add_special_tokens=False)["input_ids"]
        pre_a = tok(shipped().render_prompt(tok, shipped().forward_messages(NEUTRAL_TURN)), add_special_tokens=False)["input_ids"]
        want_u = -sum(_direct(model, pre_u + ids, len(pre_u))) / len(ids)
        want_a = -sum(_direct(model, pre_a + ids, len(pre_a))) / len(ids)
        assert user == pytest.approx(want_u, abs=1e-4) and assistant == pytest.approx(want_a, abs=1e-4)
    parts = pair_likelihoods(model, tok, [(ins[1], "Yes.")], progress=False, roles=True)[0]
    assert parts.role_margin == pytest.approx(got[1][1] - got[1][0], abs=1e-4)
    assert math.isnan(pair_likelihoods(model, tok, [(ins[1], "Yes.")], progress=False)[0].role_margin)  # off


def test_head_and_tail() -> None:
    from selfalign.likelihood import head_and_tail

    ids = list(range(10))
    assert head_and_tail(ids, 10, 3) == ids
    assert head_and_tail(ids, 6, 2) == [0, 1, 2, 3, 8, 9]
    assert head_and_tail(ids, 4, 3) == [0, 1, 8, 9]  # the tail is at most half


def test_worst_segment_is_the_segment_the_instruction_explains_least() -> None:
    cond = [-1.0] * 6 + [-3.0] * 3  # last third: the instruction does not help
    uncond = [-3.0] * 9
    assert _segment_ratio(cond, uncond, 3) == pytest.approx(1.0)
    assert _segment_ratio(cond[:6], uncond[:6], 3) == pytest.approx(1 / 3)
    assert math.isnan(_segment_ratio([], [], 3))
