"""Row helpers shared by the Ray executors (`ray_exec.py`: HF engine actors; `ray_llm.py`: vLLM)."""

from __future__ import annotations

import hashlib
from typing import Any

from selfalign.config import Config
from selfalign.records import UnlabelledResponse


def row_seed(seed: int, source_id: str) -> int:
    """A seed for one row from the run seed and its id: independent of batching and order."""
    return int(hashlib.sha256(f"{seed}:{source_id}".encode()).hexdigest()[:8], 16)


def unlabelled_row(row: dict[str, Any]) -> tuple[UnlabelledResponse, str]:
    """The row as an UnlabelledResponse, and "" or why it cannot be used."""
    from selfalign.unlabelled import response_of

    source = row.get("source") if isinstance(row.get("source"), str) else ""
    try:
        return UnlabelledResponse(response_of(row), str(row["source_id"]), source), ""
    except ValueError as e:
        text = row.get("response") if isinstance(row.get("response"), str) else ""
        return UnlabelledResponse(text, str(row["source_id"]), source), f"bad_row: {e}"


def ray_batch_size(cfg: Config) -> int:
    return cfg.ray.batch_size or cfg.generation.batch_size or 8
