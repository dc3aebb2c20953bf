"""Batch files: a stage's requests to a served model in the OpenAI batch input format, and a batch
output file read back into the stage's answer log (`http_engine.AnswerLog`), for OpenAI's Batch
API (half price) or offline inference with `vllm run-batch -i in.jsonl -o out.jsonl --model ...`.

    selfalign batch write curate requests.jsonl      # runs the stages before, writes the requests
    selfalign batch read curate results.jsonl        # the answers into curate_1/rated.answers.jsonl
    selfalign curate                                 # answered requests are not sent again

Input line: {"custom_id", "method": "POST", "url": "/v1/completions" | "/v1/chat/completions",
"body"}; output line: {"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"} (vLLM's BatchRequestInput / BatchRequestOutput, OpenAI's batch files). `custom_id` is
the hash of the request (`http_engine.request_key`), so an answer matches its request whatever
the order of the output file. vllm run-batch takes /v1/chat/completions only: use
`served.api: chat` with it.

A batch file holds the first pass of each row: rows whose rating cannot be parsed, retries and
forced scores (curation.retries, force_score) go to the endpoint when the stage runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfalign.config import ConfigError
from selfalign.io import DataError, write_jsonl

COLLECT: dict[str, str] = {}  # {"stage": ..., "path": ...} while `selfalign batch write` runs


class BatchWritten(Exception):  # noqa: N818 - not an error: the pipeline stops once the file is written
    """The requests of a stage are written: the run stops there (the stage is not finished)."""

    def __init__(self, n: int, path: Path) -> None:
        super().__init__(f"{n} requests written to {path}")
        self.n, self.path = n, path


def stage_file(run_dir: Path, stage: str, iteration: int = 1) -> Path:
    """The record file of a generation stage (its answer log sits beside it)."""
    files = {"augment": Path("augment", "augmented.jsonl"), "curate": Path(f"curate_{iteration}", "rated.jsonl"),
             "responses": Path("responses.jsonl")}
    if stage not in files:
        raise ConfigError(f"batch files are for the stages {sorted(files)}, not {stage!r}")
    return Path(run_dir) / files[stage]


def collect(step: Any, engine: Any, items: list[Any], out_path: Path, path: Path) -> None:
    """Write the requests `step` would send for the items without a record (and without an answer
    in the answer log) to `path` as a batch input file, then stop the run (BatchWritten)."""
    from selfalign.record_log import RecordLog
    from selfalign.steps import ID

    log = RecordLog(out_path)
    done = {str(r[ID]) for r in log.records if ID in r and not str(r.get("error", "")).startswith("engine_error")}
    log.close()
    engine.collecting = {}
    step.run(engine, [it for it in items if step.item_id(it) not in done], on_record=None, progress=False)
    rows = [{"custom_id": k, "method": "POST", "url": url, "body": body} for k, (url, body) in engine.collecting.items()]
    write_jsonl(path, rows)
    engine.collecting = None
    raise BatchWritten(len(rows), path)


def read_batch(output: Path, answers: Path) -> dict[str, int]:
    """Add the answers of a batch output file to an answer log: {"added", "present", "failed"} (a
    failed line: an error, or a status other than 200; its request is sent when the stage runs)."""
    from selfalign.http_engine import AnswerLog

    output = Path(output)
    if not output.is_file():
        raise DataError(f"{output}: no such batch output file")
    log = AnswerLog(answers)
    counts = {"added": 0, "present": 0, "failed": 0}
    try:
        for n, line in enumerate(output.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, resp = row["custom_id"], row.get("response") or {}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise DataError(f"{output}:{n}: not a batch output line (custom_id, response)") from None
            if row.get("error") or resp.get("status_code", 200) != 200 or not resp.get("body"):
                counts["failed"] += 1
            elif log.get(key) is not None:
                counts["present"] += 1
            else:
                log.add(key, resp["body"])
                counts["added"] += 1
    finally:
        log.close()
    return counts
