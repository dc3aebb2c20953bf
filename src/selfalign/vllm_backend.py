"""Optional vLLM backend (`pip install selfalign[vllm]`, needs a GPU).

One engine serves the base model and every LoRA adapter (backward model, M0, M1) through
`LoRARequest`s, with `max_lora_rank` read from the adapters' configs. vllm is imported lazily, so
this module can be imported (and its request building tested) without vllm installed.

Not run on the project's CPU machines; the request building and option mapping are unit-tested
with a fake engine object.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.memory import generation_context


def adapter_rank(adapter: str | Path) -> int:
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return int(cfg.get("r", 16))


def engine_options(cfg: Config, base_path: str, adapters: list[str | Path]) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)` from the run config."""
    opts: dict[str, Any] = {
        "model": base_path,
        "seed": cfg.run.seed,
        "trust_remote_code": cfg.models.trust_remote_code,
        # room for the longest prompt + output of any stage (rating prompts with worked examples
        # are longer than the training length)
        "max_model_len": max(cfg.train_forward.max_seq_len, cfg.train_backward.max_seq_len,
                             generation_context(cfg, None)),
        "dtype": "auto" if cfg.models.dtype == "auto" else cfg.models.dtype,
    }
    if adapters:
        opts["enable_lora"] = True
        opts["max_lora_rank"] = max(adapter_rank(a) for a in adapters)
        opts["max_loras"] = len(adapters)
    if cfg.models.load_in_4bit:
        opts["quantization"] = "bitsandbytes"
    return opts


def sampling_options(temperature: float, top_p: float, max_new_tokens: int, seed: int) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams(...)`; temperature 0 means greedy."""
    if temperature <= 0:
        return {"temperature": 0.0, "max_tokens": max_new_tokens, "seed": seed}
    return {"temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens, "seed": seed}


def lora_request_args(adapter: str | Path) -> tuple[str, int, str]:
    """(name, stable positive integer id, path) for `vllm.lora.request.LoRARequest`."""
    path = str(Path(adapter).resolve())
    return Path(path).name, zlib.crc32(path.encode()) % (2**31 - 1) + 1, path


@dataclass
class VllmEngine:
    """Same role as `generation.Engine`; `llm` is a `vllm.LLM` (or a fake with `.generate`)."""

    llm: Any
    tokenizer: Any
    adapter: str | None = None
    name: str = ""
    make_sampling: Callable[..., Any] = field(default=dict)
    make_lora: Callable[..., Any] | None = None

    def generate(self, prompts: list[str], params: Any) -> list[str]:
        sp = self.make_sampling(**sampling_options(params.temperature, params.top_p, params.max_new_tokens, params.seed))
        kwargs: dict[str, Any] = {}
        if self.adapter is not None:
            args = lora_request_args(self.adapter)
            kwargs["lora_request"] = self.make_lora(*args) if self.make_lora else args
        outputs = self.llm.generate(prompts, sp, **kwargs)
        return [o.outputs[0].text.strip() for o in outputs]


_ENGINES: dict[str, Any] = {}


def load_vllm_engine(cfg: Config, spec: str, adapter: str | Path | None, name: str, tokenizer: Any) -> VllmEngine:
    """A VllmEngine; the `vllm.LLM` for a base model is created once and shared by adapters."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise RuntimeError("generation.backend=vllm needs vllm: pip install 'selfalign[vllm]' (GPU only)") from None
    from selfalign.models import resolve_model

    base = resolve_model(spec, cfg.models.cache_dir)
    if base not in _ENGINES:
        # enable LoRA up front so later adapters (M0, M1) reuse the same engine
        opts = engine_options(cfg, base, [adapter] if adapter else [])
        opts.setdefault("enable_lora", True)
        opts.setdefault("max_lora_rank", max(cfg.lora.r, 16))
        _ENGINES[base] = LLM(**opts)
    return VllmEngine(_ENGINES[base], tokenizer, str(adapter) if adapter else None, name,
                      make_sampling=SamplingParams, make_lora=LoRARequest)
