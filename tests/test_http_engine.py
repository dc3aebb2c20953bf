"""The served engine (http_engine.py) against a tiny in-process OpenAI-compatible server
(tests/fake_openai.py): answers, logprob scores, retries and faults, the answer log that makes a
re-run send only the missing requests, the ledger, and batch files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from selfalign.config import ConfigError, load_config
from selfalign.records import AugmentedPair

N = 10


def pairs(n: int = N, bad: int | None = None) -> list[AugmentedPair]:
    return [AugmentedPair(instruction=("BAD " if i == bad else "") + f"What is thing {i}?",
                          response=f"Thing {i} is a thing with {i} parts.", source_id=f"p{i}", source="t",
                          raw_generation="") for i in range(n)]


def served_cfg(tiny_model: Path, srv: FakeOpenAI, tmp_path: Path, *extra: str):  # noqa: ANN201
    return load_config(None, [f"models.base={tiny_model}", f"models.rater={tiny_model}", f"run.out_dir={tmp_path}/run",
                              "served.roles=[rater, backward, judge]", f"served.base_url={srv.base_url}",
                              "served.model=m", "served.max_retry_wait=0.2", "served.concurrency=4",
                              "curation.mode=generate", "curation.shots=0", *extra])


def rate(cfg, items: list[AugmentedPair], out: Path):  # noqa: ANN001, ANN201
    from selfalign.curate import step_for
    from selfalign.executors import run_served
    from selfalign.generation import load_engine
    from selfalign.http_engine import HttpEngine
    from selfalign.prompts import Templates

    engine = load_engine(cfg, cfg.models.rater, name="rater", stage="curate")
    assert isinstance(engine, HttpEngine)
    return run_served(step_for(cfg, Templates.for_config(cfg)), engine, items, out, "curate"), engine


def test_rating_under_faults_rates_every_pair_once_and_a_rerun_sends_only_the_failed(tiny_model: Path,
                                                                                   tmp_path: Path) -> None:
    from selfalign.ledger import take

    with FakeOpenAI() as srv:
        cfg = served_cfg(tiny_model, srv, tmp_path)
        srv.faults += ["429", "500", "drop", "delay:0.2", "503"]
        out = tmp_path / "curate_1" / "rated.jsonl"
        rated, engine = rate(cfg, pairs(bad=3), out)
        assert [r.source_id for r in rated] == [f"p{i}" for i in range(N)]
        good = [r for r in rated if r.source_id != "p3"]
        assert all(r.score == 4.0 and r.status == "ok" for r in good)
        bad = rated[3]
        assert bad.status == "error" and bad.error.startswith("engine_error: ServedRequestError") and "400" in bad.error
        assert sorted(srv.count.values()) == [1] * (N - 1)  # every good pair answered exactly once
        led = take("curate-1")["served"]
        assert led["requests"] == N - 1 and led["retries"] == 4 and led["failures"] == 2  # batch + alone
        assert led["prompt_tokens"] == sum(len(p.split()) for p in srv.count) and led["completion_tokens"] > 0
        assert len(srv.seen) == (N - 1) + 4 + 2
        answers = out.with_name("rated.answers.jsonl")
        assert len(answers.read_text().splitlines()) == N - 1
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["source_id"] for x in lines] == [f"p{i}" for i in range(N)]

        seen = len(srv.seen)
        rated2, _ = rate(cfg, pairs(bad=3), out)  # the error row is retried; the rest is not sent again
        assert len(srv.seen) == seen + 2 and sorted(srv.count.values()) == [1] * (N - 1)
        assert [r.score for r in rated2] == [r.score for r in rated]
        assert len(out.read_text().splitlines()) == N  # the retried row replaced, not added


def test_backward_and_forward_roles_generate_on_their_served_models(tiny_model: Path, tmp_path: Path) -> None:
    from selfalign.augment import AugmentStep
    from selfalign.executors import run_served
    from selfalign.forward import RespondStep, prompt_items
    from selfalign.generation import GenParams, load_engine
    from selfalign.prompts import Templates
    from selfalign.records import UnlabelledResponse

    with FakeOpenAI() as srv:
        cfg = served_cfg(tiny_model, srv, tmp_path, "served.roles=[backward, forward]", "generation.require_request=false",
                         "served.models={backward: bw-lora}")
        tpl = Templates.for_config(cfg)
        engine = load_engine(cfg, cfg.models.base, adapter=None, name="backward", stage="augment")
        items = [UnlabelledResponse(f"Response number {i} says something.", f"u{i}") for i in range(3)]
        out = run_served(AugmentStep.from_config(cfg, tpl, "backward"), engine, items, tmp_path / "aug.jsonl", "augment")
        assert [p.status for p in out] == ["ok"] * 3 and all(p.instruction.startswith("Q:") for p in out)
        assert {b["model"] for b in srv.seen} == {"bw-lora"} and srv.seen[0]["temperature"] == 1.0
        engine = load_engine(cfg, cfg.models.base, adapter=None, name="forward", stage="responses")
        step = RespondStep(tpl, GenParams.from_config(cfg.generation.response, 0), cfg.forward.seed_tag, "forward")
        rows = run_served(step, engine, prompt_items(["Hi?", "Why?"]), tmp_path / "responses.jsonl", "responses")
        assert [r["response"][:2] for r in rows] == ["Q:", "Q:"] and srv.seen[-1]["model"] == "m"
        assert len({b["seed"] for b in srv.seen[:3]}) == 3  # each row its own seed


def test_logprob_mode_reads_top_logprobs_or_falls_back_to_the_text(tiny_model: Path, tmp_path: Path) -> None:
    for logprobs, want, how in ((True, 4.1, "top_logprobs"), (False, 4.0, "text")):
        with FakeOpenAI(logprobs=logprobs) as srv:
            cfg = served_cfg(tiny_model, srv, tmp_path / how, "curation.mode=logprob")
            rated, engine = rate(cfg, pairs(4), tmp_path / how / "rated.jsonl")
            assert [r.score for r in rated] == [want] * 4
            assert engine.ledger.scored_by == {how: 4}
            assert all(b["max_tokens"] == 1 and b["prompt"].endswith(("Score:", "Score: ")) for b in srv.seen)


def test_chat_api_sends_messages_and_reads_the_score_token(tiny_model: Path, tmp_path: Path) -> None:
    with FakeOpenAI() as srv:
        cfg = served_cfg(tiny_model, srv, tmp_path, "curation.mode=logprob", "served.api=chat")
        rated, _ = rate(cfg, pairs(3), tmp_path / "rated.jsonl")
        assert [r.score for r in rated] == [4.1] * 3
        msgs = srv.seen[0]["messages"]
        assert msgs[-1]["role"] == "user" and "Thing 0 is a thing" in msgs[-1]["content"]
        assert "<|selfalign" not in json.dumps(srv.seen)


def test_the_key_comes_from_the_named_variable_and_is_never_printed(tiny_model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from selfalign.config import format_config
    from selfalign.generation import load_engine

    monkeypatch.setenv("SA_TEST_KEY", "sk-secret-123")
    with FakeOpenAI() as srv:
        cfg = served_cfg(tiny_model, srv, tmp_path, "served.api_key_env=SA_TEST_KEY")
        engine = load_engine(cfg, cfg.models.rater, name="rater", stage="curate")
        assert engine._client().api_key == "sk-secret-123"
        print(format_config(cfg))
    assert "sk-secret" not in capsys.readouterr().out + capsys.readouterr().err
    assert "sk-secret" not in repr(engine) + json.dumps(engine.ledger.to_dict())


def test_timeouts_are_retried_and_guided_requests_carry_the_score_regex(tiny_model: Path, tmp_path: Path) -> None:
    from selfalign.generation import GenParams, load_engine
    from selfalign.scoring import RATING_STOPS

    with FakeOpenAI() as srv:
        cfg = served_cfg(tiny_model, srv, tmp_path, "served.timeout=0.3", "served.guided=true")
        engine = load_engine(cfg, cfg.models.rater, name="rater", stage="curate")
        srv.faults += ["delay:0.8"]
        texts = engine.generate(["Please rate this."], GenParams(0.0, 1.0, 16, 0, RATING_STOPS), progress=False)
        assert texts == ["Fine. Score: 4"]  # cut at the first stop string, which stays in the text
        assert engine.ledger.retries == 1 and engine.ledger.requests == 1
        assert srv.seen[-1]["structured_outputs"]["regex"].endswith("Score: [1-5]")
        assert "stop" not in srv.seen[-1] and "top_k" not in srv.seen[-1]


def test_retry_wait_honours_retry_after_and_backs_off(tiny_model: Path, tmp_path: Path) -> None:
    from selfalign.http_engine import HttpEngine

    e = HttpEngine(None, served_cfg(tiny_model, FakeOpenAI(), tmp_path, "served.max_retry_wait=5").served, "m")
    assert e.retry_wait(0, {"retry-after": "2"}) == 2.0
    assert e.retry_wait(0, {"retry-after-ms": "150"}) == pytest.approx(0.15)
    assert e.retry_wait(0, {"retry-after": "600"}) == 5.0  # capped at max_retry_wait
    assert 0.375 <= e.retry_wait(0, None) <= 0.5 and 3.0 <= e.retry_wait(3, {}) <= 4.0


def test_ledger_cost_and_report_rows() -> None:
    from selfalign.ledger import Ledger, ledger_rows

    led = Ledger(model="m", requests=3, prompt_tokens=2_000_000, completion_tokens=500_000, price_input=0.15,
                 price_output=0.6)
    assert led.cost == pytest.approx(0.3 + 0.3)
    assert Ledger(prompt_tokens=10).cost is None  # no prices: no cost
    manifest = {"stages": {"augment": {"status": "done"}, "curate-1": {"served": led.to_dict()}}}
    assert ledger_rows(manifest) == [["curate-1", "m", 3, 0, 0, 0, 2_000_000, 500_000, "0.6000"]]


def test_batch_files_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    from selfalign.batch_files import BatchWritten, collect, read_batch
    from selfalign.curate import step_for
    from selfalign.executors import run_served
    from selfalign.generation import load_engine
    from selfalign.http_engine import answer_log_path
    from selfalign.prompts import Templates

    with FakeOpenAI() as srv:
        cfg = served_cfg(tiny_model, srv, tmp_path, "served.api=chat")
        step = step_for(cfg, Templates.for_config(cfg))
        out = tmp_path / "rated.jsonl"
        engine = load_engine(cfg, cfg.models.rater, name="rater", stage="curate")
        engine.use_answer_log(answer_log_path(out))
        with pytest.raises(BatchWritten) as written:
            collect(step, engine, pairs(6), out, tmp_path / "in.jsonl")
        engine.close()
        assert written.value.n == 6 and not srv.seen and out.read_text() == ""  # no request sent, no record
        lines = [json.loads(x) for x in (tmp_path / "in.jsonl").read_text().splitlines()]
        assert {x["method"] for x in lines} == {"POST"} and {x["url"] for x in lines} == {"/v1/chat/completions"}
        # answer 5 of them as a batch runner would (one failed line), in another order
        from urllib.request import Request, urlopen

        rows = []
        for i, x in enumerate(reversed(lines)):
            req = Request(srv.base_url + x["url"][3:], json.dumps(x["body"]).encode(),
                          {"Content-Type": "application/json"})
            body = json.loads(urlopen(req).read())
            resp = {"status_code": 500 if i == 0 else 200, "request_id": str(i), "body": None if i == 0 else body}
            rows.append({"id": str(i), "custom_id": x["custom_id"], "response": resp, "error": None})
        (tmp_path / "out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert read_batch(tmp_path / "out.jsonl", answer_log_path(out)) == {"added": 5, "present": 0, "failed": 1}
        assert read_batch(tmp_path / "out.jsonl", answer_log_path(out))["present"] == 5
        sent = len(srv.seen)
        engine = load_engine(cfg, cfg.models.rater, name="rater", stage="curate")
        rated = run_served(step, engine, pairs(6), out, "curate")
        assert len(srv.seen) == sent + 1 and engine.ledger.from_log == 5  # only the failed one is sent
        assert [r.score for r in rated] == [4.0] * 6


def test_served_roles_need_prompt_modes_and_the_local_executor(tiny_model: Path, tmp_path: Path) -> None:
    from selfalign.generation import load_engine

    with FakeOpenAI() as srv:
        cfg = served_cfg(tiny_model, srv, tmp_path, "curation.mode=combined")
        with pytest.raises(ConfigError, match="curation.mode"):
            load_engine(cfg, cfg.models.rater, name="rater", stage="curate")
        from selfalign.executors import run_stage
        from selfalign.steps import ModelRef

        ray = served_cfg(tiny_model, srv, tmp_path, "run.executor=ray")
        with pytest.raises(ConfigError, match="run.executor=local"):
            run_stage(ray, None, [], tmp_path / "x.jsonl", ModelRef(str(tiny_model), None, "rater", "curate"))
    with pytest.raises(ConfigError, match="served.roles"):
        load_config(None, ["served.roles=[writer]"])


def answer_batch(srv: FakeOpenAI, requests: Path, results: Path) -> None:
    """Answer a batch input file line by line, as a batch runner does (lines in reverse order)."""
    from urllib.request import Request, urlopen

    out = []
    for i, x in enumerate(reversed([json.loads(x) for x in requests.read_text().splitlines()])):
        req = Request(srv.base_url + x["url"][3:], json.dumps(x["body"]).encode(), {"Content-Type": "application/json"})
        out.append({"id": str(i), "custom_id": x["custom_id"], "error": None,
                    "response": {"status_code": 200, "request_id": str(i), "body": json.loads(urlopen(req).read())}})
    results.write_text("".join(json.dumps(r) + "\n" for r in out))


@pytest.mark.slow  # a smoke pipeline up to curation (~15 s)
def test_batch_write_and_read_commands_then_curate_sends_nothing(tiny_model: Path, tmp_path: Path) -> None:
    from selfalign.cli_batch import read_command, write_command
    from selfalign.pipeline import run_pipeline

    with FakeOpenAI() as srv:
        from selfalign.config import packaged_config_path

        cfg = load_config(packaged_config_path("smoke"), [
            f"run.out_dir={tmp_path}/run", f"models.base={tiny_model}", f"models.rater={tiny_model}",
            "generation.require_request=false", "run.threads=1", "curation.mode=generate",
            "served.roles=[rater]", f"served.base_url={srv.base_url}", "served.model=m"])
        n = write_command(cfg, "curate", tmp_path / "in.jsonl")
        assert n > 0 and not srv.seen
        answer_batch(srv, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
        assert read_command(cfg, "curate", tmp_path / "out.jsonl")["added"] == n
        sent = len(srv.seen)
        run_pipeline(cfg, until="curate")
        assert len(srv.seen) == sent  # every request was answered by the batch file
        rated = [json.loads(x) for x in (tmp_path / "run" / "curate_1" / "rated.jsonl").read_text().splitlines()]
        assert len(rated) == n and all(r["score"] == 4.0 for r in rated)
