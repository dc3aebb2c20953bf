"""GPU clusters: the Ray executor's stages on `ray.data.llm` with vLLM (`run.executor: ray` and
`generation.backend: vllm`; `pip install "selfalign[ray,vllm]"` on every node: not ray's `llm`
extra, which pins vLLM 0.29.0).

`vLLMEngineProcessorConfig` + `build_processor` run vLLM engines as Ray actors (`ray.concurrency`
replicas of `ray.tensor_parallel_size` GPUs). Each row is one request of the stage's Step
(`steps.py`): `vllm_request` only translates the Step's request into vLLM's fields (token ids as
`tokenized_prompt`, so vLLM adds no second BOS; sampling parameters with the row's own seed; the
adapter of the stage as the row's `model`, a LoRA request whose path every node must see), and
`vllm_record` hands vLLM's output back to the Step for its record. The records are those of the
local executor.

Differences from the HF engine, by design of one request per row: curation in generate mode does
one rating pass per pair, stopped at the score line (no sampled retries, no curation.force_score;
`ratings` is empty when the output has no score); logprob mode reads the top-20 log-probabilities
of the token after "Score:"; the ranked modes need the HF engine. Rows vLLM fails on
(`should_continue_on_error`) are records with status error and vLLM's message.

ray.data.llm and vLLM are imported when a job is built: the request and record mapping below are
plain functions, unit-tested on CPU without vLLM.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

from selfalign.config import Config, ConfigError
from selfalign.prompts import cut_at_stop
from selfalign.steps import ID, ModelRef, Prepared, Step, as_dict
from selfalign.vllm_backend import engine_options, sampling_options

LOGPROBS = 20  # top log-probabilities returned for the token after "Score:" (logprob mode)


def ray_batch_size(cfg: Config) -> int:
    """Rows per engine call on Ray: ray.batch_size, else generation.batch_size, else 8 (auto)."""
    return cfg.ray.batch_size or cfg.generation.batch_size or 8


def processor_config(cfg: Config, base: str, adapters: list[str]) -> Any:
    """The `ray.data.llm.vLLMEngineProcessorConfig` of a stage: engine_kwargs from
    `vllm_backend.engine_options` (enable_lora, max_lora_rank, max_loras, max_model_len: the
    model's context, dtype, seed, gpu_memory_utilization) plus `ray.tensor_parallel_size`; prompts
    are rendered and tokenized by selfalign, and decoded by vLLM."""
    from ray.data.llm import vLLMEngineProcessorConfig

    opts = engine_options(cfg, base, adapters, _context(cfg, base),
                          "auto" if cfg.models.dtype == "auto" else cfg.models.dtype)
    model = opts.pop("model")
    opts["tensor_parallel_size"] = cfg.ray.tensor_parallel_size
    return vLLMEngineProcessorConfig(
        model_source=model, engine_kwargs=opts, batch_size=ray_batch_size(cfg), concurrency=cfg.ray.concurrency,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, should_continue_on_error=True,
    )


def _context(cfg: Config, base: str) -> int:
    """The model's own context (every prompt is cut to fit it); the training length when the driver
    cannot read the model's config."""
    from selfalign.models import model_context

    return model_context(base, cfg.models.trust_remote_code) or max(cfg.train_forward.max_seq_len,
                                                                    cfg.train_backward.max_seq_len)


@dataclass
class TokenizerEngine:
    """What a Step's `prepare` reads of an engine, for a vLLM processor's preprocessing."""

    tokenizer: Any
    context: int | None
    name: str = ""
    adapter: str | None = None  # the LoRA adapter of the stage: each request's `model`


@functools.cache
def _tokenizer(base: str, trust_remote_code: bool) -> Any:
    from selfalign.models import load_tokenizer

    return load_tokenizer(base, trust_remote_code)


def vllm_request(step: Step, engine: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The vLLM request of one input row: the Step's request as `tokenized_prompt` (and `prompt`,
    for logs) and `sampling_params`, the adapter as `model`, and `__row__` (the input row, for the
    record), `__error__` (a row that cannot run), `__cut__` and `__stop__`."""
    item, error = step.from_row(row)
    prep = step.prepare(engine, [item])[0] if item is not None else Prepared(item, None)
    error = error or prep.error
    req = prep.request
    if req is None:
        params: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1, "seed": 0}
        prompt, stop = " ", []
    elif req.candidates:
        params = {"temperature": 0.0, "max_tokens": 1, "logprobs": LOGPROBS, "seed": req.params.seed}
        prompt, stop = req.prompt, []
    else:
        p = req.params
        params = sampling_options(p.temperature, p.top_p, p.max_new_tokens, p.seed, p.stop, p.top_k)
        prompt, stop = req.prompt, list(p.stop)
    if error:  # vLLM still gets a request (a processor maps rows one to one): one token, discarded; the
        # keys stay, so that every row of a block has the same sampling_params fields in Arrow
        params = {**params, "temperature": 0.0, "max_tokens": 1}
        prompt = " "  # not the prompt that could not fit
    ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"] or [engine.tokenizer.eos_token_id or 0]
    out = {"prompt": prompt, "tokenized_prompt": ids, "sampling_params": params,
           "__row__": json.dumps(row, ensure_ascii=False, default=str), "__error__": error, "__cut__": prep.cut,
           "__stop__": json.dumps(stop), "__candidates__": json.dumps(list(req.candidates) if req else [])}
    if engine.adapter:
        out["model"] = engine.adapter
    return out


def score_probs(entry: Any, candidates: list[str]) -> list[float]:
    """Probabilities of each candidate ("1".."5") from one position's top log-probabilities: a dict
    token id -> {logprob, decoded_token, ...}, or the (key, value) pairs an Arrow map column reads
    back as."""
    wanted = [c.strip() for c in candidates]
    probs = [0.0] * len(wanted)
    items = entry.items() if isinstance(entry, dict) else (entry or [])
    for _, info in items:
        token = str((info or {}).get("decoded_token", "")).strip()
        if token in wanted:
            probs[wanted.index(token)] += math.exp(float(info["logprob"]))
    return probs


def vllm_record(step: Step, row: dict[str, Any]) -> dict[str, Any]:
    """The processor's output row as the Step's record: {"source_id", "record" (a JSON line)}."""
    src = json.loads(row["__row__"])
    item, _ = step.from_row(src)
    cut = bool(row.get("__cut__"))
    error = row.get("__error__") or (f"engine_error: {row['__inference_error__']}"
                                     if row.get("__inference_error__") else "")
    if error:
        rec = step.error_record(item, error, cut)
    else:
        candidates = json.loads(row.get("__candidates__") or "[]")
        if candidates:
            output: Any = score_probs((row.get("logprobs") or [None])[0], candidates)
        else:
            output = cut_at_stop(str(row.get("generated_text") or ""), json.loads(row.get("__stop__") or "[]")).strip()
        rec = step.record(Prepared(item, None, "", cut), output)
    return {ID: str(src[ID]), "record": json.dumps(as_dict(rec), ensure_ascii=False)}


def vllm_job(cfg: Config, step: Step, ds: Any, model: ModelRef) -> Any:
    """The stage's rows through a vLLM processor; returns (source_id, record) rows."""
    from ray.data.llm import build_processor

    from selfalign.models import resolve_model

    if getattr(step, "name", "") == "rank":
        raise ConfigError(f"curation.mode={cfg.curation.mode} reads the model's token probabilities of whole "
                          "responses: it needs generation.backend=hf (the vLLM processor rates with generate "
                          "or logprob)")
    base = resolve_model(model.spec, cfg.models.cache_dir)
    adapter = str(model.adapter) if model.adapter else None
    engine = TokenizerEngine(_tokenizer(base, cfg.models.trust_remote_code), _context(cfg, base), model.name, adapter)
    processor = build_processor(
        processor_config(cfg, base, [adapter] if adapter else []),
        preprocess=functools.partial(vllm_request, step, engine),
    )
    return processor(ds).map(functools.partial(vllm_record, step))
