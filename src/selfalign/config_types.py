"""Value types for the config: each numeric key carries its allowed range, so a bad value is
one line naming the key and the range before any model loads."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

# --- value types with their allowed range --------------------------------------------------
# Every numeric key carries its range here, so a bad value is one line naming the key and the
# range before any model loads (not a peft/transformers error after minutes of loading).

# torch.manual_seed takes 64 bits but numpy's legacy seeding only [0, 2**32 - 1]: the common range.
SEED_MAX = 2**32 - 1


def _number(v: Any) -> Any:
    """A bool is not a number here (pydantic would read `true` as 1)."""
    if isinstance(v, bool):
        raise ValueError(f"must be a number, not {str(v).lower()}")
    return v


def _int_range(lo: int | None, hi: int | None = None, extra: str = "") -> Any:
    what = (f"in [{lo}, {hi}]" if hi is not None else f">= {lo}") + extra

    def check(v: int) -> int:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError(f"must be an integer {what}")
        return v

    return Annotated[int, BeforeValidator(_number), AfterValidator(check)]


def _float_range(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    what = f"in {left}{lo:g}, {hi:g}{right}" if hi is not None else (f"> {lo:g}" if lo_open else f">= {lo:g}")

    def check(v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number {what}")
        if v < lo or (lo_open and v == lo) or (hi is not None and (v > hi or (hi_open and v == hi))):
            raise ValueError(f"must be a number {what}")
        return v

    return Annotated[float, BeforeValidator(_number), AfterValidator(check)]


def _non_empty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


PosInt = _int_range(1)
NonNegInt = _int_range(0)
Seed = _int_range(0, SEED_MAX)
Probability = _float_range(0.0, 1.0)
PosFloat = _float_range(0.0, lo_open=True)
NonNegFloat = _float_range(0.0)
Text = Annotated[str, AfterValidator(_non_empty)]


def _some_text(v: str) -> str:
    if not v:
        raise ValueError("must not be empty")
    return v


StopString = Annotated[str, AfterValidator(_some_text)]  # whitespace is a stop string ("\n\n")


# A part of a Hub repository id (hub.namespace, hub.name), by the Hub's rules: letters, digits,
# "-", "_", "." (not first or last), no "--" or "..", and a whole id (`<namespace>/<name>-backward`)
# of at most 96 characters.
_REPO_PART = __import__("re").compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9])?$")


def _repo_part(v: str) -> str:
    if not _REPO_PART.match(v) or "--" in v or ".." in v or v.endswith(".git"):
        raise ValueError("must be a Hub repository name: letters, digits, '-', '_' and '.' (not first or last, "
                         "no '--' or '..')")
    if len(v) > 86:  # <namespace>/<name>-backward within the Hub's 96 characters
        raise ValueError("must be at most 86 characters (repository ids are at most 96)")
    return v


RepoPart = Annotated[str, AfterValidator(_repo_part)]
