"""A fake `vllm` package with the 0.33/0.34 API surface selfalign uses, for CPU tests.

`vllm.LLM(**options)` records its options and the requests it gets; `llm_engine.engine_core.
shutdown()` marks it dead. Creating an engine while another is alive is recorded as an overlap
(vLLM would fail its free-memory check). The modules are put in sys.modules by `install`.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest


@dataclass
class FakeVllm:
    version: str = "0.33.0"
    reply: Callable[[list[int], Any], str] = lambda ids, sp: "Score: 4"
    engines: list[Any] = field(default_factory=list)
    overlaps: int = 0
    cleanups: int = 0

    @property
    def alive(self) -> list[Any]:
        return [e for e in self.engines if e.alive]


def install(monkeypatch: pytest.MonkeyPatch, fake: FakeVllm | None = None) -> FakeVllm:
    fake = fake or FakeVllm()

    class Core:
        def __init__(self, llm: Any) -> None:
            self.llm = llm

        def shutdown(self, timeout: float | None = None) -> None:
            self.llm.alive = False

    class LLM:
        def __init__(self, model: str, **options: Any) -> None:
            if fake.alive:
                fake.overlaps += 1
            if "quantization" in options and options["quantization"] not in (None, "fp8"):
                raise ValueError(f"Unknown quantization method: {options['quantization']}")
            self.options = {"model": model, **options}
            self.requests: list[tuple[list[Any], Any, Any]] = []
            self.alive = True
            self.llm_engine = SimpleNamespace(engine_core=Core(self))
            fake.engines.append(self)

        def generate(self, prompts: list[Any], sampling_params: Any = None, *, use_tqdm: bool = True,
                     lora_request: Any = None, **kw: Any) -> list[Any]:
            assert self.alive, "generate on a shut-down engine"
            self.requests.append((prompts, sampling_params, lora_request))
            out = []
            # vLLM's LLM.generate: one SamplingParams for every prompt, or a list paired one by one
            per_prompt = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
            if len(per_prompt) != len(prompts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
            for p, sp in zip(prompts, per_prompt, strict=True):
                ids = p["prompt_token_ids"] if isinstance(p, dict) else None
                if ids is None:
                    raise TypeError("the fake engine takes token ids only")
                if len(ids) + sp["max_tokens"] > self.options["max_model_len"]:
                    raise ValueError(f"prompt {len(ids)} + {sp['max_tokens']} > max_model_len")
                out.append(SimpleNamespace(outputs=[SimpleNamespace(text=" " + fake.reply(ids, sp) + " ")]))
            return out

    def tokens_prompt(**kw: Any) -> dict[str, Any]:  # a TypedDict in vLLM: a plain dict
        return dict(kw)

    def sampling_params(**kw: Any) -> dict[str, Any]:
        return dict(kw)

    def lora_request(lora_name: str, lora_int_id: int, lora_path: str = "") -> tuple[str, int, str]:
        return (lora_name, lora_int_id, lora_path)

    def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
        fake.cleanups += 1

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.__version__ = LLM, sampling_params, fake.version
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = tokens_prompt
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lora_request
    dist = types.ModuleType("vllm.distributed")
    ps = types.ModuleType("vllm.distributed.parallel_state")
    ps.cleanup_dist_env_and_memory = cleanup_dist_env_and_memory
    for name, mod in {"vllm": vllm, "vllm.inputs": inputs, "vllm.lora": lora, "vllm.lora.request": request,
                      "vllm.distributed": dist, "vllm.distributed.parallel_state": ps}.items():
        monkeypatch.setitem(sys.modules, name, mod)

    import importlib.metadata

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: fake.version if name == "vllm" else real_version(name))
    return fake


def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int = 1, capability: tuple[int, int] = (8, 0)) -> list[int]:
    """torch.cuda as seen on a machine with `count` GPUs of `capability`; returns the set_device calls."""
    import torch

    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(int(i)))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # True on a T4 as well
    return calls
