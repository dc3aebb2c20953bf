"""Optional vLLM backend (`pip install selfalign[vllm]`, needs a CUDA GPU).

Checked against the source of vLLM 0.33.0 and 0.34.0 (`VLLM_VERSIONS`, the range of the `vllm`
extra; a version outside it is refused at the start of a run with one line):

- `vllm.LLM(model, *, dtype, seed, gpu_memory_utilization, max_model_len, enable_lora,
  max_lora_rank, max_loras, trust_remote_code)`; `max_lora_rank` must be one of
  `MaxLoRARanks` (1, 8, 16, 32, 64, 128, 256, 320, 512): an adapter's rank is rounded up to one.
- No `quantization="bitsandbytes"`: it is not among 0.33's quantization methods (moved out of
  core in 0.28). 4-bit configs generate with the hf backend, or with vLLM in 16 bit where the
  planner says it fits (`memory.choose_backend`).
- Prompts go in as token ids (`vllm.inputs.TokensPrompt(prompt_token_ids=...)`). A text prompt
  is tokenized by vLLM with `add_special_tokens=True`, which adds a second BOS to a prompt whose
  text (chat template or plain template) already starts with `<s>`.
- `LLM.generate(prompts, sampling_params, *, lora_request=LoRARequest(name, int_id, path))`;
  `SamplingParams(temperature, top_p, max_tokens, seed, stop, include_stop_str_in_output)`:
  `stop` strings end a request (matched on the generated text only), and the returned text keeps
  the stop string with `include_stop_str_in_output=True` (the default False drops it).
- The engine is created on the first `generate` of a stage, with `max_model_len` = the longest
  prompt + the new tokens, capped by the model's context (every prompt was cut to fit it), and
  one engine lives at a time: `release()` shuts it down (`llm_engine.engine_core.shutdown()`,
  then `cleanup_dist_env_and_memory()`) before the next stage loads a model.

vllm is imported lazily, so this module is importable (and tested with a fake vllm module)
without vllm installed; no GPU run has been made with it.
"""

from __future__ import annotations

import gc
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.log import say
from selfalign.models import ModelError
from selfalign.prompts import cut_at_stop

VLLM_VERSIONS = ">=0.33,<0.35"  # keep in step with the `vllm` extra in pyproject.toml
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


class VllmError(ModelError):
    """vLLM missing, of an untested version, or asked for something it cannot do."""


def check_vllm() -> str:
    """The installed vllm version; VllmError (one line) when it is missing or outside VLLM_VERSIONS.
    Reads the package metadata only: importing vllm takes seconds and initialises CUDA."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet

    try:
        v = version("vllm")
    except PackageNotFoundError:
        raise VllmError("generation.backend=vllm needs vllm: pip install 'selfalign[vllm]' (CUDA GPU only)") from None
    if v not in SpecifierSet(VLLM_VERSIONS, prereleases=True):
        raise VllmError(f"generation.backend=vllm is tested with vllm{VLLM_VERSIONS}, installed is {v}: "
                        "pip install 'selfalign[vllm]', or generation.backend=hf")
    return v


def adapter_rank(adapter: str | Path) -> int:
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return int(cfg.get("r", 16))


def lora_rank_slot(r: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds rank `r`."""
    for slot in LORA_RANKS:
        if r <= slot:
            return slot
    raise VllmError(f"LoRA rank {r} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


def engine_options(cfg: Config, base_path: str, adapters: list[str | Path], max_model_len: int,
                   dtype: str) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)`. `dtype`: "bfloat16" or "float16" (never 4-bit)."""
    opts: dict[str, Any] = {
        "model": base_path,
        "seed": cfg.run.seed,
        "trust_remote_code": cfg.models.trust_remote_code,
        "max_model_len": max_model_len,
        "dtype": dtype,
        "gpu_memory_utilization": cfg.generation.gpu_memory_utilization,
    }
    if adapters:
        opts["enable_lora"] = True
        opts["max_lora_rank"] = lora_rank_slot(max(adapter_rank(a) for a in adapters))
        opts["max_loras"] = len(adapters)
    return opts


def sampling_options(temperature: float, top_p: float, max_new_tokens: int, seed: int,
                     stop: Sequence[str] = (), top_k: int = 0) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams(...)`; temperature 0 means greedy. `stop`: the
    strings that end generation, kept in the returned text (as `generation.GenParams.stop`)."""
    if temperature <= 0:
        opts: dict[str, Any] = {"temperature": 0.0, "max_tokens": max_new_tokens, "seed": seed}
    else:
        opts = {"temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens, "seed": seed}
        if top_k > 0:  # vLLM's SamplingParams(top_k=...): 0 or -1 is none
            opts["top_k"] = top_k
    if any(stop):
        opts.update(stop=[s for s in stop if s], include_stop_str_in_output=True)
    return opts


def lora_request_args(adapter: str | Path) -> tuple[str, int, str]:
    """(name, stable positive integer id, path) for `vllm.lora.request.LoRARequest`."""
    path = str(Path(adapter).resolve())
    return Path(path).name, zlib.crc32(path.encode()) % (2**31 - 1) + 1, path


@dataclass
class VllmEngine:
    """A `generation.Engine` on vLLM. `make_llm(max_model_len)` builds the `vllm.LLM` (or a
    fake) on the first `generate`, sized to that call's prompts; the stages pass all their prompts
    in the first call (`batch_size` is large, so curation rates in one chunk)."""

    tokenizer: Any
    make_llm: Callable[[int], Any]
    context: int | None = None  # the model's context: max_model_len never exceeds it
    adapter: str | None = None
    name: str = ""
    make_sampling: Callable[..., Any] = field(default=dict)
    make_lora: Callable[..., Any] | None = None
    make_prompt: Callable[..., Any] = field(default=dict)  # vllm.inputs.TokensPrompt
    batch_size: int = 1 << 20  # vLLM batches by itself: one chunk per stage
    llm: Any = None
    max_model_len: int = 0

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids as the hf backend encodes them: the rendered text holds its BOS already."""
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def generate(self, prompts: list[str], params: Any, on_result: Callable[[int, str], None] | None = None,
                 desc: str = "generate", progress: bool = True, seeds: list[int] | None = None) -> list[str]:
        """`generation.Engine.generate`: vLLM batches by itself, so all prompts go in one call, each
        with its own seed (`seeds`, default `params.seed`); `on_result(i, text)` is called for each
        of them, in order."""
        texts = self._generate(prompts, params, seeds or [params.seed] * len(prompts)) if prompts else []
        if on_result is not None:
            for i, t in enumerate(texts):
                on_result(i, t)
        return texts

    def next_token_probs(self, prompts: list[str], candidates: list[str], desc: str = "score",
                         progress: bool = True) -> list[list[float]]:
        raise VllmError("curation.mode=logprob (and likelihood, combined, quality) needs generation.backend=hf")

    def _generate(self, prompts: list[str], params: Any, seeds: list[int]) -> list[str]:
        ids = self.encode(prompts)
        need = max(len(i) for i in ids) + params.max_new_tokens
        if self.context and need > self.context:
            raise VllmError(f"{self.name}: a prompt of {need - params.max_new_tokens} tokens + {params.max_new_tokens} "
                            f"new tokens is over the model's context {self.context}")
        if self.llm is None or need > self.max_model_len:
            from selfalign.gpu import release as release_all

            release_all()  # this engine's older LLM, and the cached blocks vLLM's start-up check counts as used
            self.max_model_len = need
            say(f"{self.name}: vLLM engine, max_model_len {need} (longest prompt + new tokens"
                  f"{f', context {self.context}' if self.context else ''})")
            self.llm = self.make_llm(need)
            _CURRENT.append(self)
        stop = getattr(params, "stop", ())
        sp = [self.make_sampling(**sampling_options(params.temperature, params.top_p, params.max_new_tokens, seed,
                                                    stop, getattr(params, "top_k", 0))) for seed in seeds]  # one per prompt: its own seed
        kwargs: dict[str, Any] = {}
        if self.adapter is not None:
            args = lora_request_args(self.adapter)
            kwargs["lora_request"] = self.make_lora(*args) if self.make_lora else args
        outputs = self.llm.generate([self.make_prompt(prompt_token_ids=i) for i in ids], sp, **kwargs)
        return [cut_at_stop(o.outputs[0].text, stop).strip() for o in outputs]


_CURRENT: list[VllmEngine] = []  # the engine holding a live vllm.LLM (at most one)


def release() -> None:
    """Shut down the live vLLM engine, if any, and free its GPU memory (vLLM 0.33: the engine
    core client's `shutdown()`, then `vllm.distributed.parallel_state.cleanup_dist_env_and_memory`)."""
    if not _CURRENT:
        return
    while _CURRENT:
        engine = _CURRENT.pop()
        llm, engine.llm, engine.max_model_len = engine.llm, None, 0
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:  # a fake vllm in tests, or vllm missing
        return
    cleanup_dist_env_and_memory()


def load_vllm_engine(cfg: Config, spec: str, adapter: str | Path | None, name: str, tokenizer: Any) -> VllmEngine:
    """A VllmEngine for the base model `spec` with an optional LoRA adapter; the `vllm.LLM` is made
    on its first `generate`."""
    check_vllm()
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise VllmError(f"generation.backend=vllm: vllm does not import ({e})") from None
    from selfalign.models import is_cuda, model_context, pick_device, pick_dtype, resolve_model

    device = pick_device(cfg.run.device)
    if not is_cuda(device):
        raise VllmError(f"generation.backend=vllm needs a CUDA GPU (device is {device}): generation.backend=hf")
    base = resolve_model(spec, cfg.models.cache_dir)
    dtype = str(pick_dtype(cfg.models.dtype, device)).removeprefix("torch.")
    if dtype == "float32":
        dtype = "float16"
    adapters = [adapter] if adapter else []

    def make_llm(max_model_len: int) -> Any:
        return LLM(**engine_options(cfg, base, adapters, max_model_len, dtype))

    return VllmEngine(tokenizer, make_llm, model_context(base, cfg.models.trust_remote_code),
                      str(adapter) if adapter else None, name, make_sampling=SamplingParams,
                      make_lora=LoRARequest, make_prompt=TokensPrompt)
