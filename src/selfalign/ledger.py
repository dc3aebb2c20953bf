"""The ledger of a stage's requests to a served model (`http_engine.py`): requests sent, answers
taken from the stage's answer log instead (a resumed run, a read batch file), retries, failures,
prompt and completion tokens (the responses' `usage`) and the cost when `served.price_*` are set.

A stage's ledger is handed to the manifest when the stage finishes (`take`): manifest.json holds
it under the stage, the report shows it (`ledger_rows`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Ledger:
    model: str = ""
    base_url: str = ""
    requests: int = 0  # answers received from the server in this process
    from_log: int = 0  # answers read from the stage's answer log (not sent again)
    retries: int = 0  # retried attempts (429, 5xx, timeouts, dropped connections)
    failures: int = 0  # requests that failed after all retries (their rows are error rows)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price_input: float | None = None  # per million tokens
    price_output: float | None = None
    scored_by: dict[str, int] = field(default_factory=dict)  # logprob mode: top_logprobs | text

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        usage = usage or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)

    @property
    def cost(self) -> float | None:
        if self.price_input is None and self.price_output is None:
            return None
        return round((self.prompt_tokens * (self.price_input or 0) + self.completion_tokens * (self.price_output or 0))
                     / 1e6, 6)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"] = self.cost
        return d

    def line(self) -> str:
        cost = f", cost {self.cost:.4f}" if self.cost is not None else ""
        return (f"{self.requests} requests ({self.from_log} answers from the log), {self.retries} retries, "
                f"{self.failures} failed; {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens{cost}")


_PENDING: dict[str, Ledger] = {}  # stage name -> the ledger of its served engine, until the manifest takes it


def register(stage: str, ledger: Ledger) -> None:
    _PENDING[stage] = ledger


def take(stage: str) -> dict[str, Any]:
    """{"served": ledger} for `stage` if a served engine ran it in this process (once), else {}."""
    led = _PENDING.pop(stage.split("-")[0], None)  # "curate-2" is the curate stage's
    return {"served": led.to_dict()} if led is not None else {}


def ledger_rows(manifest: dict[str, Any]) -> list[list[Any]]:
    """The report's table rows: one per stage whose engine was served."""
    rows = []
    for name, st in manifest.get("stages", {}).items():
        d = st.get("served")
        if d:
            rows.append([name, d.get("model", ""), d.get("requests", 0), d.get("from_log", 0), d.get("retries", 0),
                         d.get("failures", 0), d.get("prompt_tokens", 0), d.get("completion_tokens", 0),
                         "" if d.get("cost") is None else f"{d['cost']:.4f}"])
    return rows


LEDGER_HEADER = ["stage", "model", "requests", "from log", "retries", "failed", "prompt tokens",
                 "completion tokens", "cost"]
