"""The served engine: a `generation.Engine` whose requests go to an OpenAI-compatible endpoint
(`served` config section; docs/served-models.md), with the official `openai` client (async).

- Prompts are rendered here, as for the local engines, with the role's tokenizer (`served.api:
  completions`, the text goes to /v1/completions), or sent as messages (`api: chat`, the server
  applies its template): `ChatTokenizer` renders messages as a marker the engine reads back.
- Up to `served.concurrency` requests are in flight. Retries are ours (the client's are off, so
  each one is counted): on 429, 5xx, 408/409, timeouts and dropped connections, waiting the
  server's Retry-After (or retry-after-ms), else 0.5 s doubling to 8 s with jitter, at most
  `max_retry_wait`. A request still failing after `max_retries` retries fails its row, which
  the stage records as an error row (`engine_error: ServedRequestError ...`), retried on re-run.
- Every answer is appended to the stage's answer log (`<stage file>.answers.jsonl`, fsynced) as
  it arrives, keyed by the hash of its request: a killed run loses no answer, and a re-run (or a
  step's later round) sends only the requests the log has no answer for. A batch output file
  read back (`batch_files.py`) lands in the same log.
- Stop strings are not sent (OpenAI takes at most 4 and drops the matched one from the text):
  the answer is cut at the first stop string here, as every engine does (`prompts.cut_at_stop`).
  top_k is not sent either (not in OpenAI's API; `transformers serve` refuses unknown fields).
- Logprob mode: one token with `logprobs` (top alternatives); the probabilities of the candidates
  ("1".."5") are read from them, or, where the server returns none (transformers serve), the
  generated token is taken as the answer (probability 1). The ledger counts which was used.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfalign.config_served import ServedConfig
from selfalign.http_requests import (  # noqa: F401 - re-exported
    END,
    MARK,
    ChatTokenizer,
    ServedRequestError,
    parse_answer,
    request_body,
    request_key,
    split_messages,
)
from selfalign.ledger import Ledger
from selfalign.log import say
from selfalign.prompts import cut_at_stop
from selfalign.record_log import RecordLog


class AnswerLog:
    """The stage's answers by request id (append-only, fsynced: `record_log.RecordLog`)."""

    def __init__(self, path: Path) -> None:
        self.log = RecordLog(path)
        self.by_id = {r["custom_id"]: r for r in self.log.records if "custom_id" in r}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.by_id.get(key)

    def add(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        rec = {"custom_id": key, "body": body}
        self.log.append(rec)
        self.by_id[key] = rec
        return rec

    def close(self) -> None:
        self.log.close()


@dataclass
class Job:
    key: str
    url: str
    body: dict[str, Any]
    candidates: tuple[str, ...]
    on_done: Callable[[Any], None]


@dataclass
class HttpEngine:
    """A `generation.Engine` on a served model (see the module's docstring)."""

    tokenizer: Any
    cfg: ServedConfig
    model: str
    name: str = ""
    context: int | None = None
    role: str = ""
    ledger: Ledger = field(default_factory=Ledger)
    answers: AnswerLog | None = None
    make_client: Callable[[], Any] | None = None  # tests pass a factory; default: AsyncOpenAI from cfg
    # batch_files.write_batch: requests are collected here (id -> (url, body)), not sent
    collecting: dict[str, tuple[str, dict[str, Any]]] | None = None

    @property
    def batch_size(self) -> int:
        return self.cfg.concurrency

    def use_answer_log(self, path: Path) -> None:
        if self.answers is not None:
            self.answers.close()
        self.answers = AnswerLog(path)

    def close(self) -> None:
        if self.answers is not None:
            self.answers.close()
            self.answers = None

    # --- the Engine protocol -----------------------------------------------------------
    def generate(self, prompts: list[str], params: Any, on_result: Callable[[int, str], None] | None = None,
                 desc: str = "generate", progress: bool = True, seeds: list[int] | None = None) -> list[str]:
        seeds = seeds or [params.seed] * len(prompts)
        stop = tuple(getattr(params, "stop", ()))
        guided = self.cfg.guided and self.role in ("rater", "judge") and any(s.startswith("Score") for s in stop)
        out: list[str] = [""] * len(prompts)

        def done(i: int) -> Callable[[Any], None]:
            def f(text: Any) -> None:
                out[i] = cut_at_stop(str(text), stop).strip()
                if on_result is not None:
                    on_result(i, out[i])
            return f

        jobs = [self._job(p, params.temperature, params.top_p, params.max_new_tokens, s, (), guided, done(i))
                for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))]
        self.run_jobs(jobs, desc, progress)
        return out

    def next_token_probs(self, prompts: list[str], candidates: list[str], desc: str = "score",
                         progress: bool = True) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in prompts]

        def done(i: int) -> Callable[[Any], None]:
            def f(probs: Any) -> None:
                out[i] = list(probs)
            return f

        jobs = [self._job(p, 0.0, 1.0, 1, 0, tuple(candidates), False, done(i)) for i, p in enumerate(prompts)]
        self.run_jobs(jobs, desc, progress)
        return out

    # --- requests ------------------------------------------------------------------------
    def _job(self, prompt: str, temperature: float, top_p: float, max_tokens: int, seed: int,
             candidates: tuple[str, ...], guided: bool, on_done: Callable[[Any], None]) -> Job:
        url, body = request_body(self.cfg, self.model, prompt, temperature, top_p, max_tokens, seed, candidates, guided)
        return Job(request_key(url, body), url, body, candidates, on_done)

    def _finish(self, job: Job, body: dict[str, Any]) -> None:
        output, how = parse_answer(body, job.candidates)
        if job.candidates:
            self.ledger.scored_by[how] = self.ledger.scored_by.get(how, 0) + 1
        job.on_done(output)

    def run_jobs(self, jobs: list[Job], desc: str = "request", progress: bool = True,
                 send: bool = True) -> list[Job]:
        """Answer `jobs`: from the answer log where it holds them, else from the server (all of them
        sent before any failure is raised). Returns the jobs without an answer (send=False: not sent)."""
        todo = []
        for job in jobs:
            rec = self.answers.get(job.key) if self.answers is not None else None
            if rec is not None:
                self.ledger.from_log += 1
                self._finish(job, rec["body"])
            else:
                todo.append(job)
        if self.collecting is not None:  # writing a batch file: a placeholder answer (a parsable score)
            for job in todo:
                self.collecting[job.key] = (job.url, job.body)
                job.on_done([0.0] * len(job.candidates) if job.candidates else "Score: 5")
            return todo
        if not todo or not send:
            return todo
        failed = asyncio.run(self._send_all(todo, desc, progress))
        if failed:
            self.ledger.failures += len(failed)
            raise ServedRequestError(f"{len(failed)} of {len(todo)} requests to {self.cfg.base_url} failed after "
                                     f"{self.cfg.max_retries} retries; last: {failed[-1]}"[:400])
        return []

    def _client(self) -> Any:
        if self.make_client is not None:
            return self.make_client()
        from openai import AsyncOpenAI

        key = os.environ.get(self.cfg.api_key_env) or "none"  # local servers take any key
        return AsyncOpenAI(base_url=self.cfg.base_url, api_key=key, max_retries=0, timeout=self.cfg.timeout)

    async def _send_all(self, jobs: list[Job], desc: str, progress: bool) -> list[str]:
        from tqdm.auto import tqdm

        client = self._client()
        gate = asyncio.Semaphore(self.cfg.concurrency)
        failed: list[str] = []
        bar = tqdm(total=len(jobs), desc=f"{desc} ({self.name or self.model}, served)", disable=not progress,
                   leave=False)

        async def one(job: Job) -> None:
            async with gate:
                try:
                    body = await self._send(client, job)
                except ServedRequestError as e:
                    failed.append(str(e))
                    return
                finally:
                    bar.update(1)
            if self.answers is not None:
                self.answers.add(job.key, body)  # before the step's record: a crash between them re-reads it
            self.ledger.requests += 1
            self.ledger.add_usage(body.get("usage"))
            self._finish(job, body)

        try:
            await asyncio.gather(*(one(j) for j in jobs))
        finally:
            bar.close()
            await client.close()
        return failed

    async def _send(self, client: Any, job: Job) -> dict[str, Any]:
        import openai

        extra = {k: v for k, v in job.body.items() if k == "structured_outputs"}
        std = {k: v for k, v in job.body.items() if k not in extra}
        api = client.chat.completions if job.url.endswith("chat/completions") else client.completions
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = await api.create(**std, extra_body=extra or None)
                return resp.model_dump(mode="json")
            except openai.APIStatusError as e:
                if e.status_code not in (408, 409, 429) and e.status_code < 500:
                    raise ServedRequestError(f"HTTP {e.status_code}: {str(e)[:200]}") from None
                why, headers = f"HTTP {e.status_code}", e.response.headers
            except openai.APIConnectionError as e:  # timeouts and dropped connections
                why, headers = type(e).__name__, None
            if attempt == self.cfg.max_retries:
                raise ServedRequestError(why)
            self.ledger.retries += 1
            await asyncio.sleep(self.retry_wait(attempt, headers))
        raise AssertionError("unreachable")

    def retry_wait(self, attempt: int, headers: Any) -> float:
        """Seconds before retry `attempt` + 1: the server's Retry-After(-ms), else exponential backoff."""
        for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            value = headers.get(name) if headers is not None else None
            try:
                wait = float(value) * scale if value is not None else None
            except ValueError:
                wait = None
            if wait is not None and math.isfinite(wait) and wait >= 0:
                return min(wait, self.cfg.max_retry_wait)
        return min(0.5 * 2**attempt, 8.0, self.cfg.max_retry_wait) * (1 - 0.25 * random.random())


def load_http_engine(cfg: Any, spec: str, role: str, name: str) -> HttpEngine:
    """The served engine of `role`: the served model, the tokenizer of `served.tokenizer` (else the
    role's local model `spec`) to render and cut prompts, and the context that fits them."""
    from selfalign.models import load_tokenizer, model_context, resolve_model

    s: ServedConfig = cfg.served
    if role in ("rater", "judge") and cfg.curation.mode not in ("generate", "logprob"):
        from selfalign.config import ConfigError

        raise ConfigError(f"served.roles has {role}: curation.mode must be generate or logprob (the "
                          f"{cfg.curation.mode} mode reads the model's likelihoods of the response, no server gives them)")
    try:
        import openai  # noqa: F401
    except ImportError:
        from selfalign.config import ConfigError

        raise ConfigError("served.roles needs the openai client: pip install 'selfalign[http]'") from None
    path = resolve_model(s.tokenizer or spec, cfg.models.cache_dir)
    tok = load_tokenizer(path, cfg.models.trust_remote_code)
    if s.api == "chat":
        tok = ChatTokenizer(tok)
    context = s.context or model_context(path, cfg.models.trust_remote_code)
    model = s.models.get(role, s.model)  # type: ignore[call-overload]
    key = "set" if os.environ.get(s.api_key_env) else "not set"
    say(f"{name or role}: served model {model!r} at {s.base_url} ({s.api}, {s.concurrency} in flight, "
        f"key from ${s.api_key_env}: {key})")
    return HttpEngine(tok, s, model, name or role, context, role,
                      Ledger(model=model, base_url=s.base_url, price_input=s.price_input, price_output=s.price_output))


def answer_log_path(out_path: Path) -> Path:
    """The answer log beside a stage's record file: rated.jsonl -> rated.answers.jsonl."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".answers.jsonl")
