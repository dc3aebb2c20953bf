"""One GPU, several stages in one process: the rules that keep them from tripping over each other.

- `release()`: before any memory check and before any engine or model is loaded, what the previous
  stage held goes: its vLLM engine, its Trainer and model (unreachable once the stage returned, but
  often in reference cycles: `gc.collect()`), the blocks torch's caching allocator keeps
  reserved (`torch.cuda.empty_cache()`) and, on Linux, the C heap's free pages (`malloc_trim`). A vLLM engine starts in another process (vLLM's V1
  engine core), which cannot use this process's cached blocks: without `empty_cache` vLLM
  refuses to start after training.
- `free_memory(index)`: free device memory as this process can use it: the driver's free bytes
  plus what torch holds reserved but unallocated (cached blocks are not "used").
- `vllm_budget(free, total, utilization)`: vLLM's own start-up rule (vLLM 0.33.0 and 0.34.0,
  `vllm/v1/worker/gpu_worker.py` `Worker.init_device`): it raises ValueError "Free memory on device
  ... on startup is less than desired GPU memory utilization" unless free >= total x
  gpu_memory_utilization, and then sizes the engine (weights, activations, KV cache) to total x
  gpu_memory_utilization, not to the free memory.
- `capability_problem(index)`: compute capability 7.0 or later (Volta). torch's cu128 wheels
  (Colab, Kaggle) and bitsandbytes' cu128 build ship no sm_60 kernels: a P100 cannot run.
- `one_gpu_per_process(args)`: a process not launched by torchrun/accelerate uses one GPU. With
  several visible, transformers' TrainingArguments (5.x, `_setup_devices`) sets `n_gpu` to the
  device count and the Trainer wraps the model in DataParallel (for a 4-bit model it doubles the
  batch on GPU 0 and divides the loss's token count by n_gpu): we set `_n_gpu = 1`, as the Trainer
  itself does for a model-parallel model.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from selfalign.log import say

MIN_CAPABILITY = (7, 0)


def release() -> None:
    """Free what an earlier stage of this process held on the GPU (see the module docstring)."""
    if "selfalign.vllm_backend" in sys.modules:  # only if vLLM was used: importing it costs
        sys.modules["selfalign.vllm_backend"].release()
    gc.collect()
    _trim_heap()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim`): on a CPU the previous
    stage's freed tensors otherwise stay in this process's resident memory."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        pass


def free_memory(index: int | None = None) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device for this process: the driver's free memory plus the
    blocks torch reserved and does not use (free to this process's allocator)."""
    import torch

    free, total = torch.cuda.mem_get_info(index)
    cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
    return free + max(0, cached), total


def vllm_budget(free: int, total: int, utilization: float) -> tuple[int, str]:
    """(bytes a vLLM engine may use, "" or why vLLM would refuse to start) by vLLM's start-up rule."""
    requested = int(total * utilization)
    if free < requested:
        gib = 1024**3
        return requested, (f"vLLM refuses to start: free memory {free / gib:.1f} GiB < total {total / gib:.1f} GiB x "
                           f"generation.gpu_memory_utilization {utilization} = {requested / gib:.1f} GiB")
    return requested, ""


def capability_problem(index: int | None = None) -> str:
    """"" or why this GPU cannot run: compute capability before 7.0 (P100, K80). The caller
    (`models.pick_device`) raises it as its one-line error."""
    import torch

    cap = tuple(torch.cuda.get_device_capability(index))
    if cap >= MIN_CAPABILITY:
        return ""
    return (f"{torch.cuda.get_device_name(index)} has compute capability {cap[0]}.{cap[1]}; selfalign needs 7.0 or "
            "later (current torch cu128 and bitsandbytes builds have no kernels for it): on Kaggle pick the T4 x2 "
            "accelerator, on Colab a T4 or L4 runtime, or run.device=cpu")


def one_gpu_per_process(args: Any) -> Any:
    """Keep a non-distributed Trainer on one GPU (see the module docstring). Returns `args`."""
    import os

    _ = args.device  # transformers sets _n_gpu while it sets the device up
    n = getattr(args, "_n_gpu", 1)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and n > 1:  # not launched by torchrun/accelerate
        say(f"{n} GPUs visible to one process: training on one (`accelerate launch` trains on all)")
        args._n_gpu = 1
    return args
