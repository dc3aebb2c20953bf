"""Model-likelihood scores of (instruction, response) pairs: forward passes, no generation.

- IFD, the instruction-following difficulty (Li et al. 2024, "From Quantity to Quality";
  "Superfiltering"): NLL(response | instruction) / NLL(response). Below 1 the instruction makes
  the response easier to predict; near or above 1 it does not help (a mismatched pair).
- end: log p(end of turn | instruction, response): a response cut mid-sentence rarely ends there.
  A response longer than `max_response_tokens` keeps its beginning and its last `tail_tokens`
  tokens (joined), so that its end is always scored.
- worst segment: the response split into `segments` parts, the largest per-part ratio of
  conditional to unconditional NLL: a part the instruction does not explain (appended boilerplate)
  scores near 1 even when the rest of the response is on topic.
- role margin: mean NLL of the instruction written as the assistant's reply to a neutral user turn
  (`templates.json` "role_check") minus its mean NLL written as the user's turn. Above 0 the text
  reads more like a user's request than like an assistant's answer; an "instruction" that
  continues or paraphrases its response (what an untrained backward model writes) scores near
  or below 0.

The response scores come from per-token log-probabilities of the response in two passes per pair
(conditioned on the rendered instruction prompt, and on the beginning of sequence only); the
role margin (only with `roles=True`) from two short passes per distinct instruction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from selfalign.prompts import Templates, clip_chars, shipped


@dataclass
class PairLikelihood:
    """Per-pair parts of the likelihood scores (all in nats)."""

    nll_conditional: float  # mean NLL of the response tokens given the instruction prompt
    nll_unconditional: float  # mean NLL of the response tokens given only BOS
    ifd: float  # nll_conditional / nll_unconditional
    end_logprob: float  # log p(end-of-turn tokens | instruction, response)
    worst_segment_ratio: float  # max over segments of conditional / unconditional segment NLL
    n_tokens: int  # response tokens scored (after the cut to max_response_tokens)
    cut: bool = False  # the response was longer than max_response_tokens (its middle was left out)
    nll_instruction_user: float = float("nan")  # mean NLL of the instruction as the user's turn
    nll_instruction_assistant: float = float("nan")  # ... as the assistant's reply to a neutral turn
    role_margin: float = float("nan")  # nll_instruction_assistant - nll_instruction_user


@torch.inference_mode()
def token_logprobs(model: Any, sequences: list[list[int]], starts: list[int], pad: int, batch_size: int = 8,
                   desc: str = "likelihood", progress: bool = True) -> list[list[float]]:
    """For each sequence, log p(token_t | tokens_<t) for t >= start (the scored part).

    Right-padded batches sorted by length; the result is independent of the batching (tested).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[list[float]] = [[] for _ in sequences]
    bar = tqdm(total=len(sequences), desc=desc, disable=not progress, unit="seq")
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, : len(sequences[i])] = torch.tensor(sequences[i])
            mask[r, : len(sequences[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for r, i in enumerate(idx):
            out[i] = logp[r, starts[i] - 1 : len(sequences[i]) - 1].tolist()
        bar.update(len(idx))
    bar.close()
    return out


def _mean_nll(lp: list[float]) -> float:
    return -sum(lp) / len(lp) if lp else float("nan")


def _segment_ratio(cond: list[float], uncond: list[float], segments: int) -> float:
    n = min(len(cond), len(uncond))
    if n == 0:
        return float("nan")
    k = max(1, min(segments, n))
    bounds = [round(j * n / k) for j in range(k + 1)]
    ratios = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        u = _mean_nll(uncond[a:b])
        if b > a and u > 0:
            ratios.append(_mean_nll(cond[a:b]) / u)
    return max(ratios) if ratios else float("nan")


def head_and_tail(ids: list[int], max_tokens: int, tail_tokens: int) -> list[int]:
    """`ids` when it fits in `max_tokens`, else its first tokens and its last `tail_tokens` ones."""
    if len(ids) <= max_tokens:
        return ids
    tail = min(tail_tokens, max_tokens // 2)
    return ids[: max_tokens - tail] + (ids[-tail:] if tail else [])


def _head_tail_ids(tokenizer: Any, text: str, max_tokens: int) -> tuple[list[int], bool]:
    """The token ids of `text`, or, for a text far longer than `max_tokens` tokens, of its head and its
    tail only (cut by characters, `prompts.clip_chars`): a huge response is never tokenized whole.
    `head_and_tail` keeps the same first and last tokens from either; True when the text was cut."""
    budget = len(clip_chars(text, max_tokens + 1))
    if len(text) <= 2 * budget:
        return tokenizer(text, add_special_tokens=False)["input_ids"], False
    head = tokenizer(text[:budget], add_special_tokens=False)["input_ids"]
    return head + tokenizer(text[-budget:], add_special_tokens=False)["input_ids"], True


NEUTRAL_TURN = "Hi"  # the role check's user turn when a templates.json override has no "role_check"
_MARK = "\u2063SELFALIGN\u2063"  # stands for the text in a rendered template, to find where it starts


def _prefix(tokenizer: Any, messages_of: Any, tpl: Templates) -> list[int]:
    """Token ids of the rendered prompt `render_prompt(messages_of(text))` before `text`."""
    rendered = tpl.render_prompt(tokenizer, messages_of(_MARK))
    head = rendered.split(_MARK)[0] if _MARK in rendered else rendered
    return tokenizer(head, add_special_tokens=False)["input_ids"]


def instruction_roles(model: Any, tokenizer: Any, instructions: list[str], max_tokens: int = 128,
                      batch_size: int = 8, progress: bool = True,
                      cache: dict[str, tuple[float, float]] | None = None,
                      templates: Templates | None = None) -> list[tuple[float, float]]:
    """(mean NLL as the user's turn, mean NLL as the assistant's reply to the neutral turn of
    `templates.json` "role_check") of each instruction's first `max_tokens` tokens; each distinct
    instruction is scored once. An instruction as the user's turn is what the run's forward prompt
    renders; as the assistant's reply, the text after that prompt for the neutral user turn.

    `cache` (instruction -> its two NLLs) holds instructions scored before, e.g. by an earlier
    chunk of the same rating run: they are not scored again, and the new ones are added to it."""
    got = cache if cache is not None else {}
    distinct = [t for t in dict.fromkeys(instructions) if t not in got]
    if not distinct:
        return [got[t] for t in instructions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    tpl = templates or shipped()
    user = _prefix(tokenizer, tpl.forward_messages, tpl)
    turn = tpl.sections.get("role_check", {}).get("user_turn", NEUTRAL_TURN)
    assistant = tokenizer(tpl.render_prompt(tokenizer, tpl.forward_messages(turn)), add_special_tokens=False)["input_ids"]
    ids = [tokenizer(clip_chars(t, max_tokens + 1), add_special_tokens=False)["input_ids"][:max_tokens] for t in distinct]
    seqs = [user + x for x in ids] + [assistant + x for x in ids]
    starts = [len(user)] * len(ids) + [len(assistant)] * len(ids)
    lps = token_logprobs(model, seqs, starts, pad, batch_size, "instruction roles", progress)
    got.update({t: (_mean_nll(lps[k]), _mean_nll(lps[len(ids) + k])) for k, t in enumerate(distinct)})
    return [got[t] for t in instructions]


def pair_likelihoods(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_response_tokens: int = 256,
                     segments: int = 3, batch_size: int = 8, progress: bool = True,
                     tail_tokens: int = 32, max_instruction_tokens: int = 128,
                     roles: bool = False, role_cache: dict[str, tuple[float, float]] | None = None,
                     templates: Templates | None = None) -> list[PairLikelihood]:
    """The likelihood parts of each (instruction, response) pair: two forward passes per pair;
    with `roles`, also the role margin (two short passes per distinct instruction,
    `instruction_roles`, which reuses and fills `role_cache`; NaN without). The likelihood
    curation modes ask for it: the combined and quality modes read it (`rank.COMBINED_SIGNALS`)."""
    tpl = templates or shipped()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    cond_seqs, cond_starts, uncond_seqs, n_resp, n_end, cuts = [], [], [], [], [], []
    for instruction, response in pairs:
        full, clipped = _head_tail_ids(tokenizer, response, max_response_tokens)
        resp = head_and_tail(full, max_response_tokens, tail_tokens)
        cuts.append(clipped or len(resp) < len(full))
        messages = tpl.forward_messages(instruction)
        prompt = tokenizer(tpl.render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        full_target = tpl.render_target(tokenizer, messages, response)
        end_ids = tokenizer(full_target[len(response):], add_special_tokens=False)["input_ids"] if \
            full_target.startswith(response) else []
        cond_seqs.append(prompt + resp + end_ids)
        cond_starts.append(len(prompt))
        uncond_seqs.append(bos + resp)
        n_resp.append(len(resp))
        n_end.append(len(end_ids))
    cond = token_logprobs(model, cond_seqs, cond_starts, pad, batch_size, "likelihood | instruction", progress)
    uncond = token_logprobs(model, uncond_seqs, [max(1, len(bos))] * len(pairs), pad, batch_size,
                            "likelihood", progress)
    nan = float("nan")
    role_nlls = instruction_roles(model, tokenizer, [i for i, _ in pairs], max_instruction_tokens, batch_size,
                                  progress, role_cache, tpl) if roles else [(nan, nan)] * len(pairs)
    out = []
    for c, u, n, e, was_cut, (nu_i, na_i) in zip(cond, uncond, n_resp, n_end, cuts, role_nlls, strict=True):
        resp_c = c[:n]
        # without BOS the first response token has no context: it is not scored in either pass
        resp_u = u if bos else [float("nan")] + u
        if not bos:
            resp_c = resp_c[1:]
            resp_u = resp_u[1:]
        nc, nu = _mean_nll(resp_c), _mean_nll(resp_u)
        out.append(PairLikelihood(
            nll_conditional=nc, nll_unconditional=nu, ifd=nc / nu if nu > 0 else float("nan"),
            end_logprob=sum(c[n : n + e]) if e else float("nan"),
            worst_segment_ratio=_segment_ratio(resp_c, resp_u, segments), n_tokens=len(resp_c), cut=was_cut,
            nll_instruction_user=nu_i, nll_instruction_assistant=na_i, role_margin=na_i - nu_i))
    return out


def finite_or(x: float, default: float) -> float:
    return x if isinstance(x, float) and math.isfinite(x) else default
