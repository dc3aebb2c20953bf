"""A Step: one generation stage's logic (prompts, parsing, records), written once.

Each generation stage is a Step (`augment.AugmentStep`, `curate.RateStep`, `rank.RankStep`,
`forward.RespondStep`). A Step turns input items into engine requests (`prepare`) and engine
outputs into records (`record`); `run` does both on a batch of items with any engine
(`generation.HFEngine`, `vllm_backend.VllmEngine`). Executors (`executors.py`: local, with the
record log and resume; `ray_exec.py`: Ray Data actors; `ray_llm.py`: Ray + vLLM processors) run
any Step without knowing which it is. A Step is plain data (config values and the run's
`prompts.Templates`), so it pickles to workers in other processes.

Seeds: a sampled request is seeded by `row_seed(run.seed, item id)`, so a row's output depends on
the row, its seed and the model, not on its batch, worker or on a resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any

from selfalign.generation import GenParams, generate, next_token_probs

ID = "source_id"  # every item has an id, and every record names the item it was made for


@dataclass(frozen=True)
class ModelRef:
    """The model a stage's engine serves: base model spec, LoRA adapter folder, display name, and
    the stage (the memory check sizes its prompts)."""

    spec: str
    adapter: Path | None
    name: str
    stage: str


def row_seed(seed: int, row_id: str) -> int:
    """A seed for one row from the run seed and its id: independent of batching and order."""
    return int(hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()[:8], 16)


@dataclass
class Request:
    """What an engine is asked for one item: a completion of `prompt` (rendered text, special
    tokens included) with `params`, or, when `candidates` is set, the probabilities of each
    candidate's first token as the next token (one forward pass)."""

    prompt: str
    params: GenParams
    candidates: tuple[str, ...] = ()


@dataclass
class Prepared:
    """One item with its request, or why it cannot run (`error`); `cut`: its text was cut to fit."""

    item: Any
    request: Request | None
    error: str = ""
    cut: bool = False


Record = Any  # a dataclass (AugmentedPair, RatedPair) or a dict (responses)
OnRecord = Callable[[Record], None]


def as_dict(record: Record) -> dict[str, Any]:
    return asdict(record) if is_dataclass(record) else dict(record)


class Step:
    """The base of every stage's step. Subclasses set `name` and implement `item_id`,
    `from_row`, `prepare`, `record` and `error_record`; steps with several rounds per item (rating
    with retries) or no generation (ranking by likelihood) override `run`."""

    name = "step"
    desc = "generate"  # the progress bar's label

    # --- what a subclass defines ---------------------------------------------------------
    def item_id(self, item: Any) -> str:
        raise NotImplementedError

    def from_row(self, row: dict[str, Any]) -> tuple[Any, str]:
        """An input row (as an executor reads it from a file) as an item, and "" or why it
        cannot be used; None as the item: the row is not for this step (it gets no record)."""
        raise NotImplementedError

    def prepare(self, engine: Any, items: Sequence[Any]) -> list[Prepared]:
        raise NotImplementedError

    def record(self, prep: Prepared, output: Any) -> Record:
        """The record of one item from the engine's output: a text, or candidate probabilities."""
        raise NotImplementedError

    def error_record(self, item: Any, reason: str, cut: bool = False) -> Record:
        raise NotImplementedError

    def load(self, rec: dict[str, Any]) -> Record:
        """A logged record (a JSON object) as the step's record type."""
        return rec

    # --- hooks of the executor, no-ops by default ----------------------------------------
    def resume(self, records: list[dict[str, Any]]) -> None:
        """Called with the records already logged before a resumed run (state across chunks)."""

    def finish(self, records: list[Record]) -> list[Record] | None:
        """Called with all records of the stage in input order once they are all done; returns
        the final records when they change (ranks among the whole set), else None."""
        return None

    def chunks(self, items: list[Any]) -> list[list[Any]]:
        """How the local executor hands items to `run`: one call with all of them (records stream
        out as they finish) unless a step needs smaller units of work."""
        return [items] if items else []

    # --- running -----------------------------------------------------------------------
    def run(self, engine: Any, items: Sequence[Any], on_record: OnRecord | None = None, progress: bool = True,
            isolate: bool = False) -> list[Record]:
        """One record per item, in order; `on_record` gets each as it is done (error records first).
        `isolate`: an engine failure is retried row by row and recorded on the rows it fails on
        (the Ray executors, where a batch must not fail the job); otherwise it is raised."""
        preps, out, emit = self.begin(engine, items, on_record)

        def ask(idx: list[int], bar: bool) -> None:
            execute(engine, [preps[i].request for i in idx],
                    lambda k, output: emit(idx[k], self.record(preps[idx[k]], output)), self.desc, bar)

        self.guarded([i for i, p in enumerate(preps) if not p.error], ask, preps, out, emit, isolate, progress)
        return out

    def begin(self, engine: Any, items: Sequence[Any], on_record: OnRecord | None
              ) -> tuple[list[Prepared], list[Record], Callable[[int, Record], None]]:
        """The items prepared, their records (None until done) and `emit(i, record)`, which fills
        one and hands it to `on_record`; the items that cannot run have their error records."""
        preps = self.prepare(engine, items)
        out: list[Record] = [None] * len(preps)

        def emit(i: int, rec: Record) -> None:
            out[i] = rec
            if on_record is not None:
                on_record(rec)

        for i, p in enumerate(preps):
            if p.error:
                emit(i, self.error_record(p.item, p.error, p.cut))
        return preps, out, emit

    def guarded(self, idx: list[int], run: Callable[[list[int], bool], None], preps: list[Prepared],
                out: list[Record], emit: Callable[[int, Record], None], isolate: bool, progress: bool) -> None:
        """`run(idx, progress)`, which emits the records of `idx`. When it raises and `isolate` is
        set, each item without a record runs alone, and one that fails alone gets an error record."""
        if not idx:
            return
        try:
            run(idx, progress)
        except Exception:
            if not isolate:
                raise
            for i in idx:  # one row at a time, so that a bad row fails alone
                if out[i] is not None:
                    continue
                try:
                    run([i], False)
                except Exception as e:  # noqa: BLE001 - recorded on the row
                    emit(i, self.error_record(preps[i].item, f"engine_error: {type(e).__name__}: {e}"[:500],
                                              preps[i].cut))


def execute(engine: Any, requests: list[Request], on_result: Callable[[int, Any], None], desc: str = "generate",
            progress: bool = True) -> None:
    """Run `requests` on `engine`; `on_result(k, output)` for each as it is ready. Generation
    requests of one call share their sampling settings but the seed (each its own); next-token
    requests share their candidates."""
    if not requests:
        return
    first = requests[0]
    if first.candidates:
        probs = next_token_probs(engine, [r.prompt for r in requests], list(first.candidates), desc=desc,
                                 progress=progress)
        for k, p in enumerate(probs):
            on_result(k, p)
        return
    if any(replace(r.params, seed=first.params.seed) != first.params for r in requests):
        raise ValueError("requests of one engine call must share their sampling settings (all but the seed)")
    generate(engine, [r.prompt for r in requests], first.params, on_result=on_result, desc=desc, progress=progress,
             seeds=[r.params.seed for r in requests])


def seeded(params: GenParams, row_id: str) -> GenParams:
    """`params` with the row's own seed (`row_seed` of the run seed and the row's id)."""
    return replace(params, seed=row_seed(params.seed, row_id))


def in_order(step: Step, items: list[Any], records: list[dict[str, Any]]) -> list[Record]:
    """The records of `items`, in their order (an item without a record is left out)."""
    by_id = {str(r[ID]): r for r in records}
    return [step.load(by_id[i]) for i in map(step.item_id, items) if i in by_id]
