"""The transformers engine (`generation.backend: hf`): batched `generate` with prompts sorted by
length, left padding and a KV cache that grows in place; when all prompts share a long token
prefix (the few-shot rating prompt) its KV cache is computed once and reused by every batch.
Sampling draws each row with its own generator (`RowSampler`), so a row's text does not depend
on its batch. A LoRA adapter is applied by path when the model is loaded."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from selfalign.memory_estimate import MIN_SHARED_PREFIX
from selfalign.prompts import cut_at_stop

if TYPE_CHECKING:
    from selfalign.generation import GenParams


@dataclass
class HFEngine:
    """A loaded transformers model + tokenizer (with an optional adapter) and batching settings."""

    model: Any
    tokenizer: Any
    batch_size: int = 8
    name: str = ""
    prefix_cache: bool = True
    context: int | None = None  # the model's context (max_position_embeddings); prompts are cut to fit it
    _prefix: tuple[list[int], Any] | None = field(default=None, repr=False)  # reused across calls

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: list[str], params: GenParams, on_result: Callable[[int, str], None] | None = None,
                 desc: str = "generate", progress: bool = True, seeds: list[int] | None = None) -> list[str]:
        return _hf_generate(self, prompts, params, on_result, desc, progress, seeds)

    def next_token_probs(self, prompts: list[str], candidates: list[str], desc: str = "score",
                         progress: bool = True) -> list[list[float]]:
        return _hf_next_token_probs(self, prompts, candidates, desc, progress)


def _common_prefix_len(seqs: list[list[int]]) -> int:
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def _shared_prefix(engine: HFEngine, encoded: list[list[int]]) -> tuple[int, Any]:
    """(length, KV cache) of the token prefix shared by all prompts, or (0, None).

    The cache is kept on the engine: later calls whose prompts start with the same prefix (the
    next chunk of pairs, a retry round) reuse it instead of recomputing it.
    """
    if not engine.prefix_cache or len(encoded) < 2 and engine._prefix is None:
        return 0, None
    shortest = min(len(e) for e in encoded)
    memo = engine._prefix
    if memo is not None:
        ids = memo[0]
        if len(ids) < shortest and all(e[: len(ids)] == ids for e in encoded):
            return len(ids), memo[1]
    if len(encoded) < 2:
        return 0, None
    shared = min(_common_prefix_len(encoded), shortest - 1)  # every prompt keeps >= 1 new token
    if shared < MIN_SHARED_PREFIX:
        return 0, None
    ids = encoded[0][:shared]
    cache = engine.model(input_ids=torch.tensor([ids], device=engine.device), use_cache=True,
                         **_last_logits_only(engine.model)).past_key_values
    engine._prefix = (ids, cache)
    return shared, cache


@functools.cache
def _growing_cache_class() -> type:
    """GrowingCache, defined on first use (transformers is imported lazily)."""
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that writes new tokens into room reserved ahead, instead of
        concatenating the whole cache with each new token (`torch.cat` copies every cached key and
        value at every decoding step: ~60% of a decoding step on CPU with 2.7k-token rating
        prompts). The keys/values it returns are views of the reserved buffers."""

        def __init__(self, reserve: int) -> None:
            super().__init__()
            self.reserve = reserve
            self._kbuf: torch.Tensor | None = None
            self._vbuf: torch.Tensor | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n_old = self.keys.shape[-2] if self.keys.numel() else 0
            n = n_old + key_states.shape[-2]
            buf = self._kbuf
            # (re)allocate when there is no room, or when keys were replaced behind our back
            # (batch_repeat_interleave, batch_select_indices): copy what is cached
            if (buf is None or n > buf.shape[-2] or buf.shape[0] != key_states.shape[0]
                    or (n_old and self.keys.data_ptr() != buf.data_ptr())):
                b, h, _, d = key_states.shape
                kb = key_states.new_empty(b, h, n + self.reserve, d)
                vb = value_states.new_empty(b, h, n + self.reserve, value_states.shape[-1])
                if n_old:
                    kb[:, :, :n_old] = self.keys
                    vb[:, :, :n_old] = self.values
                self._kbuf, self._vbuf = kb, vb
            self._kbuf[:, :, n_old:n] = key_states
            self._vbuf[:, :, n_old:n] = value_states
            self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]
            return self.keys, self.values

    class GrowingCache(DynamicCache):
        def __init__(self, n_layers: int, reserve: int) -> None:
            Cache.__init__(self, layers=[GrowingLayer(reserve) for _ in range(n_layers)])

    return GrowingCache


def growing_cache(model: Any, reserve: int, prefix: Any = None, batch: int = 1) -> Any:
    """An empty KV cache with `reserve` tokens of room per layer, or one holding `prefix` (a
    cache of one row) repeated for `batch` rows plus `reserve` tokens of room."""
    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    cache = _growing_cache_class()(n_layers, reserve)
    if prefix is not None:
        for layer, src in zip(cache.layers, prefix.layers, strict=True):
            layer.update(src.keys.expand(batch, -1, -1, -1), src.values.expand(batch, -1, -1, -1))
    return cache


def _last_logits_only(model: Any) -> dict[str, Any]:
    """Only the last position's logits are used: skip the lm_head (hidden x vocab) everywhere else."""
    from selfalign.models import accepts_logits_to_keep

    return {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}


def _batch(
    encoded: list[list[int]], idx: list[int], shared: int, pad: int, prefix_cache: Any,
    model: Any = None, new_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """input_ids, attention_mask and cache kwargs for one batch.

    Rows are [shared prefix | left padding | own tail]: the padding sits between the cached
    prefix and each prompt's own tokens, masked out. The KV cache (holding the prefix, repeated
    for the batch, when there is one) has room reserved for the tails and `new_tokens`, so that
    decoding writes in place instead of copying the cache at every step.
    """
    tails = [encoded[i][shared:] for i in idx]
    width = max(len(t) for t in tails)
    ids = torch.full((len(idx), shared + width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    if shared:
        ids[:, :shared] = torch.tensor(encoded[idx[0]][:shared])
        mask[:, :shared] = 1
    for r, t in enumerate(tails):
        ids[r, shared + width - len(t) :] = torch.tensor(t)
        mask[r, shared + width - len(t) :] = 1
    kwargs: dict[str, Any] = {}
    if model is not None:  # None: no cache given (the model makes its own, or none is needed)
        kwargs["past_key_values"] = growing_cache(model, width + new_tokens + 1, prefix_cache, len(idx))
    return ids, mask, kwargs


@functools.cache
def _stop_criteria_class() -> type:
    """StopOnText, defined on first use (transformers is imported lazily)."""
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        """Stops a row once its generated text holds one of `stop`. Only the generated tokens are
        decoded (transformers' `stop_strings` also matches across the prompt's last tokens, so a
        stop of "\\n\\n" would end at once after a prompt ending in "\\n"), and the match is
        on decoded text, as `cut_at_stop` cuts. A string completed at this step lies within its
        last len(string) tokens (each decodes to a character or more), so only a short tail is
        decoded at each step."""

        def __init__(self, tokenizer: Any, stop: Sequence[str], start: int) -> None:
            self.tokenizer, self.stop, self.start = tokenizer, tuple(s for s in stop if s), start
            self.window = max(len(s) for s in self.stop) + 4  # + room for a cut first token

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            tail = input_ids[:, self.start :][:, -self.window :]
            texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in self.stop) for t in texts], dtype=torch.bool,
                                device=input_ids.device)

    return StopOnText


def _stop_kwargs(tokenizer: Any, stop: Sequence[str], prompt_len: int) -> dict[str, Any]:
    """`stopping_criteria` for `model.generate` (none without stop strings). A batch runs until all
    its rows have stopped; rows that stopped get padding, and their text is cut by `cut_at_stop`."""
    if not any(stop):
        return {}
    from transformers import StoppingCriteriaList

    return {"stopping_criteria": StoppingCriteriaList([_stop_criteria_class()(tokenizer, stop, prompt_len)])}


@functools.cache
def _row_sampler_class() -> type:
    """RowSampler, defined on first use (transformers is imported lazily)."""
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        """Samples each row's next token with the row's own generator (temperature, top-k, top-p,
        in the order transformers applies them),
        and leaves only that token: decoding is then greedy over it. So a row's text depends on its
        prompt, its seed and the model, not on the batch it shares (transformers' sampling draws
        the whole batch from one global generator)."""

        def __init__(self, seeds: list[int], temperature: float, top_p: float, top_k: int = 0) -> None:
            self.gens = [torch.Generator().manual_seed(s) for s in seeds]
            self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            logits = scores.float() / self.temperature
            if 0 < self.top_k < logits.shape[-1]:  # only the top_k most likely tokens
                kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if self.top_p < 1.0:  # the smallest set of tokens whose probability reaches top_p
                srt, idx = torch.sort(logits, descending=True)
                p = srt.softmax(-1)
                above = p.cumsum(-1) - p  # the probability of the tokens ranked above each one
                drop = torch.zeros_like(above, dtype=torch.bool).scatter(-1, idx, above >= self.top_p)
                logits = logits.masked_fill(drop, float("-inf"))
            probs = logits.softmax(-1).cpu()
            out = torch.full_like(scores, float("-inf"))
            for r, gen in enumerate(self.gens):
                out[r, int(torch.multinomial(probs[r], 1, generator=gen))] = 0.0
            return out

    return RowSampler


def _sample_kwargs(params: GenParams, seeds: list[int]) -> dict[str, Any]:
    """Greedy decoding; with a temperature, each row sampled with its own seed (`RowSampler`)."""
    if params.temperature <= 0:
        return {"do_sample": False}
    from transformers import LogitsProcessorList

    sampler = _row_sampler_class()(seeds, params.temperature, params.top_p, params.top_k)
    return {"do_sample": False, "logits_processor": LogitsProcessorList([sampler])}


@torch.inference_mode()
def _hf_generate(
    engine: HFEngine,
    prompts: list[str],
    params: GenParams,
    on_result: Callable[[int, str], None] | None,
    desc: str,
    progress: bool,
    seeds: list[int] | None,
) -> list[str]:
    seeds = list(seeds) if seeds is not None else [params.seed] * len(prompts)
    tok, model = engine.tokenizer, engine.model
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared, prefix_cache = _shared_prefix(engine, encoded)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[str | None] = [None] * len(prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stop = [t for t in {tok.eos_token_id, tok.pad_token_id} if t is not None]
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt")
    for start in range(0, len(order), engine.batch_size):
        idx = order[start : start + engine.batch_size]
        ids, mask, kwargs = _batch(encoded, idx, shared, pad, prefix_cache, model, params.max_new_tokens)
        out = model.generate(
            input_ids=ids.to(engine.device),
            attention_mask=mask.to(engine.device),
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=stop,
            **_sample_kwargs(params, [seeds[i] for i in idx]),
            **_stop_kwargs(tok, params.stop, ids.shape[1]),
            **kwargs,
        )
        new = out[:, ids.shape[1] :]
        for r, i in enumerate(idx):
            text = cut_at_stop(tok.decode(new[r], skip_special_tokens=True), params.stop).strip()
            results[i] = text
            if on_result is not None:
                on_result(i, text)
        bar.update(len(idx))
    bar.close()
    return [r if r is not None else "" for r in results]


@torch.inference_mode()
def _hf_next_token_probs(
    engine: HFEngine, prompts: list[str], candidates: list[str], desc: str, progress: bool
) -> list[list[float]]:
    tok, model = engine.tokenizer, engine.model
    cand_ids = [tok(c, add_special_tokens=False)["input_ids"][-1] for c in candidates]
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if not encoded:
        return []
    shared, prefix_cache = _shared_prefix(engine, encoded)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[list[float]] = [[] for _ in prompts]
    last_only = _last_logits_only(model)  # once, not per batch (it inspects the forward signature)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt")
    for start in range(0, len(order), engine.batch_size):
        idx = order[start : start + engine.batch_size]
        ids, mask, kwargs = _batch(encoded, idx, shared, pad, prefix_cache,
                                   model if prefix_cache is not None else None)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        logits = model(
            input_ids=ids[:, shared:].to(engine.device),  # the prefix is in the cache
            attention_mask=mask.to(engine.device),
            position_ids=pos.to(engine.device),
            use_cache=prefix_cache is not None,
            **last_only,
            **kwargs,
        ).logits[:, -1, :]
        probs = torch.softmax(logits.float(), dim=-1)[:, cand_ids]
        for r, i in enumerate(idx):
            results[i] = probs[r].tolist()
        bar.update(len(idx))
    bar.close()
    return results
