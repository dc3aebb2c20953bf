"""GPU clusters: the Ray executor's stages on `ray.data.llm` with vLLM (`run.executor: ray` and
`generation.backend: vllm`; `pip install "ray[llm]"`, which installs vLLM).

`vLLMEngineProcessorConfig` + `build_processor` run vLLM engines as Ray actors (`ray.concurrency`
replicas of `ray.tensor_parallel_size` GPUs). Each row is one request: the prompt rendered by
selfalign (the same templates and truncation as the HF engine), its own `sampling_params` with the
seed `row_seed(run.seed, source_id)` (results do not depend on batching), and the adapter of the
stage (backward model, M0, M1) as the row's `model` (a LoRA request; the path must be on storage
every node sees). The records have the schema of the local executor.

Differences from the HF engine, by design of one request per row: curation in generate mode does
one greedy rating per pair, stopped at the score line (no sampled retries, no curation.force_score;
`ratings` is empty when the output has no score);
logprob mode reads the top-20 log-probabilities of the token after "Score:". Rows vLLM fails on
(`should_continue_on_error`) are records with status error and vLLM's message.

ray.data.llm and vLLM are imported when a job is built: the request and record mapping below are
plain functions, unit-tested on CPU without vLLM.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict
from typing import Any

from selfalign.config import Config, ConfigError
from selfalign.ray_rows import ray_batch_size as _batch_size
from selfalign.ray_rows import row_seed
from selfalign.ray_rows import unlabelled_row as _unlabelled
from selfalign.records import AugmentedPair, RatedPair
from selfalign.vllm_backend import engine_options, sampling_options

LOGPROBS = 20  # top log-probabilities returned for the token after "Score:" (logprob mode)


def processor_config(cfg: Config, base: str, adapters: list[str]) -> Any:
    """The `ray.data.llm.vLLMEngineProcessorConfig` of a stage: engine_kwargs from
    `vllm_backend.engine_options` (enable_lora, max_lora_rank, max_loras, max_model_len: the
    model's context, dtype, seed, gpu_memory_utilization) plus `ray.tensor_parallel_size`; prompts are rendered and decoded by selfalign and vLLM."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from selfalign.models import model_context

    # the model's own context (every prompt is cut to fit it); the training length when the driver
    # cannot read the model's config. "auto": vLLM picks the dtype on the GPU workers.
    context = model_context(base, cfg.models.trust_remote_code) or max(cfg.train_forward.max_seq_len,
                                                                       cfg.train_backward.max_seq_len)
    opts = engine_options(cfg, base, adapters, context, "auto" if cfg.models.dtype == "auto" else cfg.models.dtype)
    model = opts.pop("model")
    opts["tensor_parallel_size"] = cfg.ray.tensor_parallel_size
    return vLLMEngineProcessorConfig(
        model_source=model, engine_kwargs=opts, batch_size=_batch_size(cfg), concurrency=cfg.ray.concurrency,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, should_continue_on_error=True,
    )


@functools.cache
def _config(cfg: str) -> Config:
    """The run config from its JSON (parsed once per worker, not once per row)."""
    return Config.model_validate(json.loads(cfg))


@functools.cache
def _tokenizer(base: str, trust_remote_code: bool) -> Any:
    from selfalign.models import load_tokenizer

    return load_tokenizer(base, trust_remote_code)


def vllm_request(cfg: str, step: str, base: str, adapter: str | None, row: dict[str, Any],
                 tokenizer: Any = None) -> dict[str, Any]:
    """The request of one row: prompt, sampling_params (with the row's seed), model (the adapter),
    and `__row__` (the input row, for the record) and `__error__` (a row that cannot be used)."""
    from selfalign.prompts import (
        backward_messages,
        forward_messages,
        rating_messages,
        render_prompt,
        truncate_tokens,
    )

    c = _config(cfg)
    tok = tokenizer or _tokenizer(base, c.models.trust_remote_code)
    seed = row_seed(c.run.seed, str(row["source_id"]))
    error, cut, prompt = "", False, " "
    if step == "augment":
        r, error = _unlabelled(row)
        g = c.generation.instruction
        params = sampling_options(g.temperature, g.top_p, g.max_new_tokens, seed, g.stop)
        if not error:
            text, cut = truncate_tokens(tok, r.response, c.generation.max_prompt_tokens)
            prompt = render_prompt(tok, backward_messages(text))
    elif step == "curate":
        cur = c.curation
        text, cut = truncate_tokens(tok, str(row["response"]), cur.max_response_tokens)
        prompt = render_prompt(tok, rating_messages(str(row["instruction"]), text, cur.shots))
        if cur.mode == "logprob":
            from selfalign.curate import _score_suffix

            prompt += _score_suffix(tok)[0]
            params = {"temperature": 0.0, "max_tokens": 1, "logprobs": LOGPROBS, "seed": seed}
        else:  # stops at the score line, as the local executor (curate.RATING_STOPS)
            from selfalign.curate import RATING_STOPS

            params = sampling_options(0.0, 1.0, cur.max_new_tokens, seed, RATING_STOPS)
    else:
        g = c.generation.response
        prompt = render_prompt(tok, forward_messages(str(row["prompt"]), c.forward.seed_tag))
        params = sampling_options(g.temperature, g.top_p, g.max_new_tokens, seed, g.stop)
    if error:  # vLLM still gets a request (a processor maps rows one to one): one token, discarded; the
        # other keys stay, so that every row of a block has the same sampling_params fields in Arrow
        params = {**params, "temperature": 0.0, "max_tokens": 1}
    out = {"prompt": prompt, "sampling_params": params, "__row__": json.dumps(row, ensure_ascii=False, default=str),
           "__error__": error, "__cut__": cut}
    if adapter:
        out["model"] = adapter
    return out


def score_probs(entry: Any) -> list[float]:
    """Probabilities of "1".."5" from one position's top log-probabilities: a dict token id ->
    {logprob, decoded_token, ...}, or the (key, value) pairs an Arrow map column reads back as."""
    probs = [0.0] * 5
    items = entry.items() if isinstance(entry, dict) else (entry or [])
    for _, info in items:
        token = str((info or {}).get("decoded_token", "")).strip()
        if token in ("1", "2", "3", "4", "5"):
            probs[int(token) - 1] += math.exp(float(info["logprob"]))
    return probs


def vllm_record(cfg: str, step: str, name: str, row: dict[str, Any]) -> dict[str, Any]:
    """The processor's output row as the stage's record: {"source_id", "record" (a JSON line)}."""
    from selfalign.augment import error_pair, make_pair
    from selfalign.curate import error_rated, parse_score_detail, reasoning_of
    from selfalign.prompts import cut_at_stop

    c = _config(cfg)
    src = json.loads(row["__row__"])
    sid = str(src["source_id"])
    error = row.get("__error__") or (f"engine_error: {row['__inference_error__']}"
                                     if row.get("__inference_error__") else "")
    text = str(row.get("generated_text") or "").strip()
    cut = bool(row.get("__cut__"))
    rec: dict[str, Any]
    if step == "augment":
        r, _ = _unlabelled(src)
        g = c.generation.instruction
        text = cut_at_stop(text, g.stop).strip()
        settings = {"temperature": g.temperature, "top_p": g.top_p, "max_new_tokens": g.max_new_tokens,
                    "seed": row_seed(c.run.seed, sid), "model": name}
        pair = error_pair(r, settings, error, cut) if error else make_pair(r, text, settings, cut,
                                                                           c.generation.max_instruction_chars,
                                                                           c.generation.require_request)
        rec = asdict(pair)
    elif step == "curate":
        p = AugmentedPair(**{k: v for k, v in src.items() if k in AugmentedPair.__dataclass_fields__})
        if error:
            rated = error_rated(p, error, cut)
        elif c.curation.mode == "logprob":
            pr = score_probs((row.get("logprobs") or [None])[0])
            total = sum(pr)
            score = sum((i + 1) * x for i, x in enumerate(pr)) / total if total > 0 else None
            dist = ", ".join(f"{i + 1}:{x / total:.2f}" for i, x in enumerate(pr)) if total else ""
            rated = RatedPair(p.instruction, p.response, sid, p.source, score, f"next-token probabilities {dist}",
                              [score] if score else [], [], 0, cut)
        else:
            from selfalign.curate import RATING_STOPS

            text = cut_at_stop(text, RATING_STOPS).strip()
            score, _ = parse_score_detail(text)
            rated = RatedPair(p.instruction, p.response, sid, p.source, score, reasoning_of(text),
                              [score] if score is not None else [], [text], int(score is None), cut)
        rec = asdict(rated)
    else:
        rec = {"prompt": src["prompt"], "response": cut_at_stop(text, c.generation.response.stop).strip(), "model": name}
        if error:
            rec.update(status="error", error=error)
    return {"source_id": sid, "record": json.dumps(rec, ensure_ascii=False)}


def vllm_job(cfg: Config, step: str, ds: Any, spec: str, adapter: str | None, name: str) -> Any:
    """The stage's rows through a vLLM processor; returns (source_id, record) rows."""
    from ray.data.llm import build_processor

    from selfalign.curate import RANKED_MODES
    from selfalign.models import resolve_model

    if step == "curate" and cfg.curation.mode in RANKED_MODES:
        raise ConfigError(f"curation.mode={cfg.curation.mode} reads the model's token probabilities of whole "
                          "responses: it needs generation.backend=hf (the vLLM processor rates with generate "
                          "or logprob)")
    base = resolve_model(spec, cfg.models.cache_dir)
    if step == "curate":  # only `ok` pairs are rated, as in the local executor
        ds = ds.filter(lambda r: r.get("status") == "ok")
    conf = json.dumps(cfg.to_dict())
    processor = build_processor(
        processor_config(cfg, base, [adapter] if adapter else []),
        preprocess=functools.partial(vllm_request, conf, step, base, adapter),
    )
    return processor(ds).map(functools.partial(vllm_record, conf, step, name))
