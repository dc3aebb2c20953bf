"""Each stage's peak memory, recorded in the manifest beside its seconds (`benchmarks/plan_vs_measured.py`
holds it against the planner).

On Linux the process's peak resident set (VmHWM in /proc/self/status) is reset at a stage's start by
writing "5" to /proc/self/clear_refs (Linux >= 4.0, proc(5)) and read at its end; on a GPU also
torch's peak allocated and reserved bytes (reset with `torch.cuda.reset_peak_memory_stats`).
Elsewhere (macOS, a kernel refusing the write) the peak since the process started
(`resource.getrusage`) is recorded and marked as such.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_RESET = [False]


def reset_peak() -> None:
    """Called at a stage's start: the previous stage's memory is released first (`gpu.release`),
    so the stage's peak is its own."""
    from selfalign.gpu import release

    release()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _RESET[0] = True
    except OSError:
        _RESET[0] = False
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001 - measurement only: never fail a stage over it
        pass


def _vmhwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak() -> dict[str, Any]:
    """{"peak_rss_gib": ..., "peak_rss_since": "stage"|"process", "peak_cuda_*_gib": ...}."""
    out: dict[str, Any] = {}
    rss = _vmhwm() if _RESET[0] else None
    since = "stage"
    if rss is None:
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            since = "process"
        except (ImportError, OSError):
            return out
    out.update(peak_rss_gib=round(rss / 1024**3, 3), peak_rss_since=since)
    try:
        import torch

        if torch.cuda.is_available():
            out.update(peak_cuda_allocated_gib=round(torch.cuda.max_memory_allocated() / 1024**3, 3),
                       peak_cuda_reserved_gib=round(torch.cuda.max_memory_reserved() / 1024**3, 3))
    except Exception:  # noqa: BLE001
        pass
    return out
