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

Every score is computed from per-token log-probabilities of the response in two passes per pair
(conditioned on the rendered instruction prompt, and on the beginning of sequence only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from selfalign.prompts import forward_messages, render_prompt, render_target


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


def pair_likelihoods(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_response_tokens: int = 256,
                     segments: int = 3, batch_size: int = 8, progress: bool = True,
                     tail_tokens: int = 32) -> list[PairLikelihood]:
    """The likelihood parts of each (instruction, response) pair, two forward passes per pair."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    cond_seqs, cond_starts, uncond_seqs, n_resp, n_end, cuts = [], [], [], [], [], []
    for instruction, response in pairs:
        full = tokenizer(response, add_special_tokens=False)["input_ids"]
        resp = head_and_tail(full, max_response_tokens, tail_tokens)
        cuts.append(len(resp) < len(full))
        messages = forward_messages(instruction)
        prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        full_target = render_target(tokenizer, messages, response)
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
    out = []
    for c, u, n, e, was_cut in zip(cond, uncond, n_resp, n_end, cuts, strict=True):
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
            worst_segment_ratio=_segment_ratio(resp_c, resp_u, segments), n_tokens=len(resp_c), cut=was_cut))
    return out


def finite_or(x: float, default: float) -> float:
    return x if isinstance(x, float) and math.isfinite(x) else default
