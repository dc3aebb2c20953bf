"""Hostile inputs, one table: every case of issue 6 with its expected outcome.

Outcomes (never a traceback, never a silent drop):
- Rows(kept, rejects): the loader keeps `kept` rows and writes each bad line to the stage's
  rejects file with file:line and a reason; kept + rejected = every row of the file.
- Error(says, line): the CLI exits 2 with one `error:` line naming file:line (file alone when there
  is no line) and saying `says`.
- Status(counts): the instruction generator's outputs get these statuses (the manifest's
  `generated_status`); only `ok` pairs go on to curation.
- Unscored(): the rater's answers hold no usable score: each pair is unscored, its failed
  attempts counted (curation stats), and it is never kept.
- Cut(): a 1 MB response is kept, cut to the model's prompt budget where it is used, and the cut
  is counted in the manifest (augmentation and curation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import REPO

GOOD_SEED = [
    {"text": "### Human: How do I boil an egg for breakfast?### Assistant: Put the egg in boiling water for eight minutes."},
    {"text": "### Human: What is the capital of France and why is it there?### Assistant: The capital of France is "
             "Paris, which grew on the river Seine."},
]
GOOD_LIMA = [
    {"conversations": ["What is tea?", "Tea is a drink made from the dried leaves of a plant."], "source": "a"},
    {"conversations": ["Why is the sky blue?", "Air scatters blue light more than red light."], "source": "b"},
]
BIG = "All work and no play makes a dull answer. " * 25_000  # ~1 MB


def jsonl(*rows: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


@dataclass(frozen=True)
class Rows:
    kept: int
    rejects: dict[int, str] = field(default_factory=dict)  # line -> reason


@dataclass(frozen=True)
class Error:
    says: str
    line: int | None


@dataclass(frozen=True)
class Status:
    counts: dict[str, int]


@dataclass(frozen=True)
class Unscored:
    pass


@dataclass(frozen=True)
class Cut:
    pass


@dataclass(frozen=True)
class Case:
    name: str
    stage: str  # seed | unlabelled (a data file) | generator | rater (model outputs) | pipeline
    data: Any  # file bytes (file name "data.jsonl" unless `file` says), or the model's outputs
    expected: Rows | Error | Status | Unscored | Cut
    file: str = "data.jsonl"


CASES = [
    # --- data files
    Case("truncated JSONL last line", "seed", jsonl(*GOOD_SEED) + b'{"text": "### Human: How do',
         Rows(2, {3: "bad_json"})),
    Case("invalid UTF-8", "seed", jsonl(GOOD_SEED[0], b'{"text": "### Human: caf\xe9?### Assistant: yes"}', GOOD_SEED[1]),
         Rows(2, {2: "invalid_utf8"})),
    Case("invalid UTF-8, plain text", "unlabelled", b"A plain answer.\n\xff\xfe broken\nAnother answer.\n",
         Rows(2, {2: "invalid_utf8"}), file="data.txt"),
    Case("BOM", "seed", b"\xef\xbb\xbf" + jsonl(*GOOD_SEED), Rows(2)),
    Case("BOM, plain text", "unlabelled", b"\xef\xbb\xbfA plain answer.\r\nAnother answer.\r\n", Rows(2), file="data.txt"),
    Case("JSON array instead of JSONL", "seed", json.dumps([*GOOD_SEED, 7]).encode(), Rows(2, {3: "not_an_object"})),
    Case("JSON array that does not parse", "seed",
         b"[\n" + json.dumps(GOOD_SEED[0]).encode() + b',\n{"text": "### Human: Hi\n', Error("does not parse", 3)),
    Case("wrong field types", "seed",
         jsonl(*GOOD_SEED, {"text": 42}, {"instruction": ["a"], "output": "b"}, {"messages": "hi"}, "a string row"),
         Rows(2, {3: "wrong_type", 4: "wrong_type", 5: "wrong_type", 6: "not_an_object"})),
    Case("wrong field types, LIMA", "unlabelled", jsonl(*GOOD_LIMA, {"conversations": "nope"}, {"text": 3.5}),
         Rows(2, {3: "wrong_type", 4: "wrong_type"})),
    Case("missing field", "unlabelled", jsonl(*GOOD_LIMA, {"answer": "x"}), Rows(2, {3: "missing_field"})),
    Case("empty strings", "seed",
         jsonl(*GOOD_SEED, {"text": ""}, {"instruction": "", "output": "An answer."}, {"instruction": "Why?", "output": ""}),
         Rows(2, {3: "empty", 4: "empty", 5: "empty"})),
    Case("whitespace-only response", "seed",
         jsonl(*GOOD_SEED, {"text": "### Human: Why is the sky blue?### Assistant:  \n\t "}), Rows(2, {3: "empty"})),
    Case("whitespace-only response, LIMA", "unlabelled", jsonl(*GOOD_LIMA, {"conversations": ["Why?", " \n\t "]}),
         Rows(2, {3: "empty"})),
    Case("conversation list of odd length", "unlabelled",
         jsonl(*GOOD_LIMA, {"conversations": ["q", "a", "q2"]}, {"conversations": ["only a question"]}),
         Rows(2, {3: "multi_turn", 4: "no_response"})),
    Case("duplicate rows", "seed", jsonl(*GOOD_SEED, GOOD_SEED[0]), Rows(2, {3: "duplicate"})),
    Case("duplicate rows, LIMA", "unlabelled", jsonl(*GOOD_LIMA, GOOD_LIMA[1]), Rows(2, {3: "duplicate"})),
    Case("Guanaco text without '### Assistant:'", "seed",
         jsonl(*GOOD_SEED, {"text": "### Human: Why is the sky blue and not green?"}, {"text": "no markers at all"}),
         Rows(2, {3: "no_first_turn", 4: "no_markers"})),
    Case("no usable row", "seed", jsonl({"text": 42}, b"{not json"), Error("no usable seed pair", 1)),
    Case("no usable row, LIMA", "unlabelled", jsonl({"conversations": ["q", "a", "q2", "a2"]}),
         Error("no usable unlabelled response", 1)),
    Case("empty file", "seed", b"", Error("no usable seed pair", None)),
    # --- model outputs
    Case("instruction generator returns nothing", "generator", ["", "   \n ", "### Human:"], Status({"empty": 3})),
    Case("rater answers in another language", "rater", "Cette réponse est claire et utile. Note : quatre sur cinq.",
         Unscored()),
    Case("rater gives no score", "rater", "This answer is helpful and well written.", Unscored()),
    Case("rater returns nothing", "rater", "", Unscored()),
    Case("rater score out of range", "rater", "Good.\nScore: 7", Unscored()),
    # --- a 1 MB response through augmentation and curation
    Case("1 MB response", "pipeline", jsonl(*GOOD_LIMA, {"conversations": ["Tell me everything.", BIG]}), Cut()),
]


@pytest.fixture
def cfg(smoke_cfg):
    from selfalign.pipeline import SAMPLES

    c = smoke_cfg.model_copy(deep=True)
    c.data.seed, c.data.unlabelled = str(SAMPLES / "seed.jsonl"), str(SAMPLES / "unlabelled.jsonl")
    c.train_backward.max_steps = 1
    return c


def cli(*args: str) -> tuple[int, str]:
    from selfalign.cli import main

    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr
    return r.exit_code, r.stderr


def n_rows(data: bytes) -> int:
    text = data.removeprefix(b"\xef\xbb\xbf")
    if text.lstrip().startswith(b"["):
        return len(json.loads(text))
    return sum(1 for line in text.split(b"\n") if line.strip())


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, cfg, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.pipeline import Run

    src = tmp_path / case.file
    if isinstance(case.data, bytes):
        src.write_bytes(case.data)
    if case.stage == "seed":
        cfg.data.seed = str(src)
    elif case.stage in ("unlabelled", "pipeline"):
        cfg.data.unlabelled = str(src)
    exp = case.expected

    if isinstance(exp, Rows):
        run = Run(cfg)
        kept = run.seed() if case.stage == "seed" else run.sample()
        rejects = lines(run.path(*(("seed", "rejects.jsonl") if case.stage == "seed"
                                   else ("augment", "unlabelled_rejects.jsonl"))))
        assert len(kept) == exp.kept
        assert {r["line"]: r["reason"].split(":")[0] for r in rejects} == exp.rejects
        assert all(r["file"] == str(src) for r in rejects)
        assert len(kept) + len(rejects) == n_rows(case.data)  # no silent drop
        counts = run.manifest.data["counts"]
        assert counts["seed_rejected" if case.stage == "seed" else "unlabelled_rejected"] == len(exp.rejects)
        if case.stage == "seed":
            assert not any(p.instruction.startswith("\ufeff") for p in kept)
        else:
            assert not any(r.response.startswith("\ufeff") for r in kept)

    elif isinstance(exp, Error):
        cmd = "seed" if case.stage == "seed" else "augment"  # augment reads its data before training
        key = "data.seed" if case.stage == "seed" else "data.unlabelled"
        code, err = cli(cmd, "--config", str(REPO / "configs" / "smoke.yaml"), f"run.out_dir={tmp_path / 'run'}",
                        f"models.base={tiny_model}", f"{key}={src}")
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
        assert exp.says in err
        assert (f"{src}:{exp.line}" if exp.line else str(src)) in err
        assert not (tmp_path / "run" / "backward").exists()  # failed before any training

    elif isinstance(exp, Status):
        import selfalign.augment as aug
        from selfalign.generation import Engine, GenParams
        from selfalign.models import load_tokenizer
        from selfalign.records import UnlabelledResponse

        outputs = case.data
        monkeypatch.setattr(aug, "generate", _fake_generate(outputs))
        engine = Engine(None, load_tokenizer(str(tiny_model)), 2, "fake")
        responses = [UnlabelledResponse(f"Response number {i} is a fine answer.", f"r{i}") for i in range(len(outputs))]
        pairs = aug.augment(engine, responses, GenParams(), tmp_path / "augmented.jsonl")
        counts = aug.status_counts(pairs)
        assert len(pairs) == len(outputs) == sum(counts.values())  # every output counted
        assert {k: v for k, v in counts.items() if v} == exp.counts
        assert all(p.instruction == "" for p in pairs if p.status == "empty")

    elif isinstance(exp, Unscored):
        import selfalign.curate as cur
        from selfalign.config import CurationConfig
        from selfalign.generation import Engine
        from selfalign.models import load_tokenizer
        from selfalign.records import AugmentedPair

        monkeypatch.setattr(cur, "generate", _fake_generate([case.data] * 100))
        engine = Engine(None, load_tokenizer(str(tiny_model)), 2, "fake")
        pairs = [AugmentedPair(f"Question {i}?", f"Answer {i}.", f"p{i}", "s", "") for i in range(3)]
        settings = CurationConfig(mode="generate", retries=2, n_samples=1, shots=1, threshold=1.0)
        rated = cur.rate_pairs(engine, pairs, settings, tmp_path / "rated.jsonl")
        assert [r.score for r in rated] == [None] * 3
        assert all(r.parse_failures == 3 and len(r.raw_outputs) == 3 for r in rated)  # first try + 2 retries
        stats = cur.curation_stats(rated, settings.threshold)
        assert stats["unscored"] == 3 and stats["kept"] == 0 and stats["parse_failure_rate"] == 1.0
        assert cur.select(rated, 1.0) == []  # never kept, whatever the threshold

    elif isinstance(exp, Cut):
        import selfalign.augment as aug
        from selfalign.pipeline import run_pipeline

        monkeypatch.setattr(aug, "generate", _fake_generate(["What is this text about?"] * 3))
        run = run_pipeline(cfg, until="curate")
        counts = run.manifest.data["counts"]
        assert counts["sampled"] == 3 and counts["unlabelled_rejected"] == 0
        assert counts["generated_response_cut"] == 1 and counts["curation_1"]["response_cut"] == 1
        big = [p for p in lines(run.path("augment", "augmented.jsonl")) if p["response_cut"]]
        assert len(big) == 1 and big[0]["response"] == BIG.strip()  # the record keeps the whole response
        rated = [r for r in lines(run.path("curate_1", "rated.jsonl")) if r["response_cut"]]
        assert len(rated) == 1 and rated[0]["source_id"] == big[0]["source_id"]
    else:
        raise AssertionError(f"unknown expectation {exp!r}")


def _fake_generate(outputs: list[str]):  # noqa: ANN202
    """A stand-in for `generation.generate` that answers output i to prompt i."""
    def generate(engine, prompts, params, on_result=None, skip=None, **kw):  # noqa: ANN001, ANN003, ANN202
        texts = [outputs[i % len(outputs)] for i in range(len(prompts))]
        for i, t in enumerate(texts):
            if on_result is not None and i not in (skip or ()):
                on_result(i, t)
        return texts
    return generate
