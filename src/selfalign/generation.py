"""One generation interface for augmentation, curation and response sampling.

`generate(engine, prompts, params)` returns one completion per prompt, in order, from any engine:
`hf_engine.HFEngine` (transformers, the default) or `vllm_backend.VllmEngine`. `load_engine`
loads the configured one, after the memory check.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from selfalign.config import Config, SamplingConfig
from selfalign.hf_engine import HFEngine
from selfalign.log import say

# `past_key_values` works on every transformers 5.x; newer releases warn that it is renamed.
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")
warnings.filterwarnings("ignore", message=".*past_key_values.*cache_params.*")


@dataclass
class GenParams:
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 64
    seed: int = 0
    # generation ends at the first of these strings; the returned text ends with it ("Score: 4")
    stop: tuple[str, ...] = ()
    # sampling draws from the top_k most likely tokens (after the temperature, before top_p): 50 is
    # what transformers' generate applies when a model sets none; vLLM is given it too, so that
    # every engine samples from the same distribution (0: no top-k)
    top_k: int = 50

    @classmethod
    def from_config(cls, s: SamplingConfig, seed: int = 0) -> GenParams:
        return cls(s.temperature, s.top_p, s.max_new_tokens, seed, tuple(s.stop))


class Engine(Protocol):
    """What the stages use of a generation engine; implemented by `HFEngine` (transformers, here)
    and `vllm_backend.VllmEngine`. The stages call `generate` / `next_token_probs` below."""

    tokenizer: Any
    name: str
    batch_size: int
    context: int | None  # the model's context; prompts are cut to fit it (None: no limit)

    def generate(self, prompts: list[str], params: GenParams, on_result: Callable[[int, str], None] | None = None,
                 desc: str = "generate", progress: bool = True, seeds: list[int] | None = None) -> list[str]: ...

    def next_token_probs(self, prompts: list[str], candidates: list[str], desc: str = "score",
                         progress: bool = True) -> list[list[float]]: ...


def context_limit(engine: Any, max_new_tokens: int) -> int | None:
    """Most prompt tokens that leave room for `max_new_tokens` in the engine's context (None: no limit)."""
    ctx = getattr(engine, "context", None)
    return ctx - max_new_tokens if ctx else None


def load_engine(cfg: Config, spec: str, adapter: str | Path | None = None, name: str = "",
                stage: str | None = None, role: str | None = None) -> Any:
    """An Engine for the configured backend (`hf` by default, or the optional `vllm`), or the served
    engine (`http_engine.py`) when the `role` (default: the stage's, `config_served.role_of`) is
    one of `served.roles`.

    `stage` (augment, curate, responses) sizes the memory check, with the prompt lengths counted
    with the model's tokenizer; None plans for the longest. With models.load_in_4bit the vllm
    backend serves the 16-bit model only where it fits (vLLM has no bitsandbytes 4-bit), else
    the hf backend generates (memory.choose_backend says which, in one printed line)."""
    from selfalign import memory
    from selfalign.gpu import release
    from selfalign.models import load_model, load_tokenizer, pick_device, resolve_model

    release()  # before the memory check: an earlier stage's engine, Trainer and cached blocks go first
    from selfalign.config_served import role_of

    role = role or role_of(stage)
    if role in cfg.served.roles:
        from selfalign.http_engine import load_http_engine

        return load_http_engine(cfg, spec, role, name)
    lora = cfg.lora if adapter is not None else None
    path, device = resolve_model(spec, cfg.models.cache_dir), pick_device(cfg.run.device)
    tok = load_tokenizer(path, cfg.models.trust_remote_code)
    backend, _plan, why = memory.choose_backend(cfg, spec, path, device, lora, stage, tok)
    if why:
        say(f"{name or spec}: {why}")
    if backend == "vllm":
        from selfalign.vllm_backend import load_vllm_engine

        if cfg.run.memory_check and _plan is not None and not _plan.fits:
            raise memory.MemoryPlanError(
                f"{_plan.format()}: it will not fit; try a larger generation.gpu_memory_utilization, "
                "generation.backend=hf (with models.load_in_4bit=true on a small GPU), or run.memory_check=false")
        return load_vllm_engine(cfg, spec, adapter, name or spec, tok)

    batch = cfg.generation.batch_size
    if batch == 0:
        batch, why = memory.auto_batch_size(cfg, spec, path, device, stage, lora, tok)
        say(f"{name or spec}: generation batch size {batch} (auto: {why})")
        cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"batch_size": batch})})
    memory.check(cfg, spec, path, device, lora=lora, stage=stage, tokenizer=tok)  # at the batch size used
    model, tok = load_model(spec, cfg.models, device=cfg.run.device, adapter=adapter)
    text = model.config.get_text_config(decoder=True)
    return HFEngine(model, tok, batch, name or spec, context=getattr(text, "max_position_embeddings", None))


def context_length(engine: Any) -> int | None:
    """Tokens the engine's model attends to (prompt + new tokens), or None when unknown (vLLM)."""
    config = getattr(getattr(engine, "model", None), "config", None)
    if config is None:
        return None
    n = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def overlong_prompts(engine: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """For each prompt, "" or why it cannot run: its tokens + `max_new_tokens` exceed the engine's
    context (`engine.context`, or its model's; unknown: no limit)."""
    limit = getattr(engine, "context", None) or context_length(engine)
    if limit is None:
        return [""] * len(prompts)
    out = []
    for p in prompts:
        n = len(engine.tokenizer(p, add_special_tokens=False)["input_ids"])
        out.append(f"prompt_too_long: {n} prompt tokens + {max_new_tokens} new > context {limit}"
                   if n + max_new_tokens > limit else "")
    return out


def generate(
    engine: Engine,
    prompts: list[str],
    params: GenParams,
    on_result: Callable[[int, str], None] | None = None,
    desc: str = "generate",
    progress: bool = True,
    seeds: list[int] | None = None,
) -> list[str]:
    """Completions for `prompts` (already rendered text), in input order, from any `Engine`.

    `on_result(i, text)` is called as each completion is ready, so a caller can persist it.
    `seeds`: one per prompt (default: `params.seed` for all); a sampled prompt's text depends on
    its seed, not on the other prompts of its batch.
    """
    if not prompts:
        return []
    return engine.generate(prompts, params, on_result, desc, progress, seeds)


def next_token_probs(
    engine: Engine, prompts: list[str], candidates: list[str], desc: str = "score", progress: bool = True
) -> list[list[float]]:
    """For each prompt, the probabilities of each candidate's first token as the next token.

    One forward pass per batch, no generation (the fast curation mode); the hf engine shares the
    prefix cache like `generate`."""
    return engine.next_token_probs(prompts, candidates, desc, progress)
