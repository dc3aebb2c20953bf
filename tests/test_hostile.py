"""Hostile inputs, one table: every case of issues 6 and 16 with its expected outcome.

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
- Crash(stage): an unexpected exception (injected) inside a stage: exit 1, one `error:` line naming
  the stage and the log file, the traceback in `<out_dir>/logs/error-*.log`, none on the terminal.

Stages: `seed` / `unlabelled` (a data file, written as `file` names it: .gz and .zst are
compressed, a dict of files is a folder, None is a missing path), `cli` (a command line run in an
empty working directory; `{tmp}` is filled in), `generator` / `rater` (model
outputs), `pipeline`, `crash` (the function to break, and the command).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

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
    not_read: tuple[str, ...] = ()  # files of the folder listed as not read


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
class Crash:
    stage: str


@dataclass(frozen=True)
class Masked:
    """Issue 25: the secrets planted in the command line and the environment are in no file of the
    run directory and on no printed line."""

    secrets: tuple[str, ...]


@dataclass(frozen=True)
class Locked:
    """Issue 25: another process (a real one) holds the run directory: the command exits 2 with one
    line naming it (its pid), and writes nothing."""


@dataclass(frozen=True)
class Link:
    """A symlink in a data folder: to a folder holding `data` (beside the data folder), or, with
    None, to the folder it is in (a loop)."""

    data: Any = None


@dataclass(frozen=True)
class Case:
    name: str
    stage: str  # seed | unlabelled (a data file) | generator | rater (model outputs) | pipeline
    data: Any  # file bytes (file name "data.jsonl" unless `file` says), or the model's outputs
    expected: Rows | Error | Status | Unscored | Cut | Crash | Masked | Locked
    file: str = "data.jsonl"


GUANACO_MULTI = {"text": "### Human: What is tea?### Assistant: A drink.### Human: Hot?### Assistant: Usually."}
DEFAULT = ["--config", "default", "run.out_dir={tmp}/run"]


def plan(*overrides: str) -> list[str]:
    """`selfalign plan` with the default config: a bad value must stop it before it says 'fits'."""
    return ["plan", *DEFAULT, *overrides]


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
    # --- text safety and schema sniffing (issue 16)
    Case("lone surrogate in a value", "seed",
         jsonl(*GOOD_SEED, b'{"text": "### Human: Why\\ud800 is it?### Assistant: Because it is."}'),
         Rows(2, {3: "lone_surrogate"})),
    Case("lone surrogate in a key, LIMA", "unlabelled", jsonl(*GOOD_LIMA, b'{"conversations": ["q", "a b c"], "s\\udfff": 1}'),
         Rows(2, {3: "lone_surrogate"})),
    Case("invisible-only text (zero-width, BOM, word joiner)", "seed",
         jsonl(*GOOD_SEED, {"instruction": "\u200b\ufeff\u2060", "output": "An answer."},
               {"instruction": "Why?", "output": " \u200d\u00ad\u3164 "}),
         Rows(2, {3: "empty", 4: "empty"})),
    Case("invisible-only response, LIMA", "unlabelled", jsonl(*GOOD_LIMA, {"conversations": ["q", "\u200b\u200c \ufeff"]}),
         Rows(2, {3: "empty"})),
    Case("Guanaco conversations as unlabelled data", "unlabelled", jsonl(*GOOD_SEED, GUANACO_MULTI),
         Error("looks like Guanaco conversations (3 rows", None)),
    Case("a Guanaco row among LIMA rows", "unlabelled", jsonl(*GOOD_LIMA, GOOD_SEED[0]),
         Rows(2, {3: "guanaco_conversation"})),
    Case("deeply nested JSON", "seed", jsonl(*GOOD_SEED, b"[" * 100_000 + b"]" * 100_000, {"text": [[[[[[[[1]]]]]]]]}),
         Rows(2, {3: "bad_json", 4: "wrong_type"})),
    # --- formats (issue 16)
    Case(".jsonl.gz given directly", "seed", jsonl(*GOOD_SEED), Rows(2), file="data.jsonl.gz"),
    Case(".jsonl.zst given directly", "unlabelled", jsonl(*GOOD_LIMA, {"answer": 1}), Rows(2, {3: "missing_field"}),
         file="data.jsonl.zst"),
    Case(".json.gz holding an array", "seed", json.dumps(GOOD_SEED).encode(), Rows(2), file="data.json.gz"),
    Case(".json holding one object over several lines", "unlabelled", json.dumps(GOOD_LIMA[0], indent=2).encode(),
         Rows(1), file="data.json"),
    Case(".parquet", "unlabelled", [*GOOD_LIMA, {"conversations": ["q"], "source": "c"}], Rows(2, {3: "no_response"}),
         file="data.parquet"),
    Case(".parquet.zst", "seed", GOOD_SEED, Rows(2), file="data.parquet.zst"),
    Case("truncated .gz", "seed", gzip.compress(jsonl(*GOOD_SEED))[:-12], Error("not a readable gzip file", None),
         file="data.jsonl.gz"),
    Case("not parquet", "seed", b"PAR1 this is not parquet", Error("not a readable parquet file", None),
         file="data.parquet"),
    Case(".csv given directly", "seed", b"instruction,output\na,b\n", Error("format .csv is not read", None),
         file="data.csv"),
    Case("folder with .jsonl, .jsonl.gz, .csv and a hidden file", "seed",
         {"a.jsonl": jsonl(GOOD_SEED[0]), "b.jsonl.gz": jsonl(GOOD_SEED[1], {"text": 1}), "c.csv": b"x,y\n",
          ".notes.jsonl": jsonl(GOOD_SEED[0])},
         Rows(2, {2: "wrong_type"}, not_read=("c.csv", ".notes.jsonl")), file="folder"),
    Case("folder with no readable file", "unlabelled", {"a.csv": b"x\n", "b.xlsx": b"PK"},
         Error("folder holds no readable data file", None), file="folder"),
    Case("missing path", "seed", None, Error("file not found", None), file="nope.jsonl"),
    # --- paths and values in the config (issue 16): one line, before anything is loaded
    Case("empty data.seed", "cli", ["seed", *DEFAULT, "data.seed="], Error("'data.seed': must not be empty", None)),
    Case("blank data.unlabelled", "cli", ["seed", *DEFAULT, "data.unlabelled=' '"],
         Error("'data.unlabelled': must not be empty", None)),
    Case("typo in a data path (.jsonI), default config, no real data here", "cli",
         ["seed", *DEFAULT, "data.unlabelled=../shared/data/lima/train.jsonI"],
         Error("data.unlabelled: ../shared/data/lima/train.jsonI: file not found", None)),
    Case("unknown shipped sample", "cli", ["seed", *DEFAULT, "data.seed=sample:guanaco"],
         Error("data.seed: unknown shipped sample 'sample:guanaco' (one of sample:seed", None)),
    Case("lora.r=0", "cli", plan("lora.r=0"), Error("'lora.r': must be an integer >= 1 (got 0)", None)),
    Case("lora.dropout=5", "cli", plan("lora.dropout=5"), Error("'lora.dropout': must be a number in [0, 1) (got 5)", None)),
    Case("lora.dropout=nan", "cli", plan("lora.dropout=nan"), Error("'lora.dropout': must be a finite number in [0, 1)", None)),
    Case("run.seed=-1", "cli", plan("run.seed=-1"), Error("'run.seed': must be an integer in [0, 4294967295] (got -1)", None)),
    Case("run.seed=2**32", "cli", plan("run.seed=4294967296"), Error("'run.seed': must be an integer in [0, 4294967295]", None)),
    Case("data.seed_limit=0", "cli", plan("data.seed_limit=0"), Error("'data.seed_limit': must be an integer >= 1 (got 0)", None)),
    Case("learning rate inf", "cli", plan("train_forward.learning_rate=.inf"),
         Error("'train_forward.learning_rate': must be a finite number > 0", None)),
    Case("top_p=1.5", "cli", plan("generation.instruction.top_p=1.5"),
         Error("'generation.instruction.top_p': must be a number in (0, 1] (got 1.5)", None)),
    Case("curation.shots=9", "cli", plan("curation.shots=9"), Error("curation.shots=9 but selfalign/templates/rating_fewshot.json holds 5 worked examples", None)),
    Case("a bool for a number", "cli", plan("train_backward.batch_size=true"),
         Error("'train_backward.batch_size': must be a number, not true", None)),
    Case("no LoRA target module", "cli", plan("lora.target_modules=[]"), Error("'lora.target_modules'", None)),
    Case("the replaced key data.fallback_to_samples", "cli", plan("data.fallback_to_samples=true"),
         Error("unknown key 'data.fallback_to_samples' (use data.samples_if_absent", None)),
    # --- issue 25: data rows, identity, folders read partly, a run inside its data, huge rows
    Case("a key given twice in a row", "seed",
         jsonl(*GOOD_SEED, b'{"text": "### Human: Why?### Assistant: Because.", "text": "### Human: How?### Assistant: So."}'),
         Rows(2, {3: "duplicate_key"})),
    Case("a key given twice in a nested object, LIMA", "unlabelled",
         jsonl(*GOOD_LIMA, b'{"conversations": ["q", "an answer"], "meta": {"a": 1, "a": 2}}'), Rows(2, {3: "duplicate_key"})),
    Case("a human turn quoting '### Assistant:'", "seed",
         jsonl(*GOOD_SEED, {"text": "### Human: What does '### Assistant:' mean in the Guanaco format?### Assistant: "
                                    "It is the marker of the reply in the text."}), Rows(3)),
    Case("Guanaco turns that do not alternate (an unquoted marker)", "seed",
         jsonl(*GOOD_SEED, {"text": "### Human: What does ### Assistant: mean in it?### Assistant: It is the marker."}),
         Rows(2, {3: "ambiguous_turns"})),
    Case("a row over 4 MiB", "unlabelled", jsonl(*GOOD_LIMA, {"conversations": ["q", "x" * (5 << 20)]}),
         Rows(2, {3: "too_long"})),
    Case("two files of one name in two sub-folders", "unlabelled",
         {"a": {"train.jsonl": jsonl(GOOD_LIMA[0])}, "b": {"train.jsonl": jsonl(GOOD_LIMA[1])}}, Rows(2), file="folder"),
    Case("a symlinked sub-folder and a loop", "seed",
         {"a.jsonl": jsonl(GOOD_SEED[0]), "linked": Link({"b.jsonl": jsonl(GOOD_SEED[1])}), "loop": Link(None)},
         Rows(2, not_read=("loop/",)), file="folder"),
    Case("a run directory inside the data folder", "unlabelled",
         {"a.jsonl": jsonl(*GOOD_LIMA), "old_run": {"manifest.json": b"{}", "config.yaml": b"run: {}\n",
                                                    "augment": {"sample.jsonl": jsonl(GOOD_LIMA[0])}}},
         Rows(2, not_read=("old_run/",)), file="folder"),
    # --- issue 25: values of the command line and the YAML subset, one line before anything loads
    Case("generate -n -3", "cli", ["generate", *DEFAULT, "-n", "-3"],
         Error("'forward.n_responses' (-n): must be an integer >= 1 (got -3)", None)),
    Case("evaluate with a negative count", "cli", ["evaluate", *DEFAULT, "--n-prompts", "-2"],
         Error("'evaluate.n_prompts' (--n-prompts): must be an integer >= 1 (got -2)", None)),
    Case("push --dry-run with an invalid repository name", "cli", ["push", *DEFAULT, "--dry-run", "hub.name=my model"],
         Error("'hub.name': must be a Hub repository name", None)),
    Case("a leading-zero number (010)", "cli", plan("run.seed=010"), Error("leading zero (octal in YAML 1.1", None)),
    Case("a YAML set", "cli", plan("lora.target_modules=!!set {{q_proj: null}}"), Error("the tag !!set is not accepted", None)),
    Case("a base-60 looking value is a string", "cli", plan("run.threads=1:30"), Error("'run.threads': Input should be a valid integer", None)),
    # --- issue 25: secrets planted in an override, an option and the environment
    Case("credentials in hub.endpoint, a token in a query, HF_TOKEN", "cli",
         ["seed", *DEFAULT, "hub.endpoint=https://me:tok3nInUrl@hub.example.org",
          "ray.checkpoint_path=s3://b/c?token=tok3nInQuery", "data.seed=sample:seed", "data.unlabelled=sample:unlabelled"],
         Masked(("tok3nInUrl", "tok3nInQuery", "hf_tok3nInTheEnvironment"))),
    # --- issue 25: a second writer on one run directory
    Case("a second command on a run directory in use", "cli", ["augment", *DEFAULT, "data.seed=sample:seed",
                                                               "data.unlabelled=sample:unlabelled"], Locked()),
    Case("evaluate on a run directory in use", "cli", ["evaluate", *DEFAULT], Locked()),
    # --- an error nobody foresaw (issue 16): injected
    Case("unexpected exception in the seed stage", "crash", ("selfalign.seed.load_seed", "seed"), Crash("seed")),
    Case("unexpected exception in a prerequisite stage", "crash", ("selfalign.backward.train_backward", "augment"),
         Crash("train-backward")),
    # --- model outputs
    Case("instruction generator returns nothing", "generator", ["", "   \n ", "### Human:"], Status({"empty": 3})),
    Case("instruction generator continues the response, or writes French", "generator",
         ["It is a fine answer, and here is more of it.", "### B.S.\n\nA great read about concurrency",
          "Écrivez un poème sur la mer", "Response number 3 is a fine answer indeed", "What is this answer about?"],
         Status({"not_request": 4, "ok": 1})),
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
    from selfalign.sources import SAMPLES

    c = smoke_cfg.model_copy(deep=True)
    c.data.seed, c.data.unlabelled = str(SAMPLES / "seed.jsonl"), str(SAMPLES / "unlabelled.jsonl")
    c.train_backward.max_steps = 1
    return c


def cli(*args: str, out: bool = False) -> tuple[int, str] | tuple[int, str, str]:
    from selfalign.cli import main

    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr
    return (r.exit_code, r.stdout, r.stderr) if out else (r.exit_code, r.stderr)


def n_rows(data: Any, name: str = "data.jsonl") -> int:
    """The rows of a case's data, counted independently of the loaders."""
    if isinstance(data, Link):  # a loop is not read; a linked folder is
        return 0 if data.data is None else n_rows(data.data)
    if isinstance(data, dict):  # a folder: the rows of its readable files (a run directory is none)
        if "manifest.json" in data and "config.yaml" in data:
            return 0
        return sum(n_rows(v, k) for k, v in data.items() if not k.startswith(".") and ".csv" not in k)
    if isinstance(data, list):  # parquet rows
        return len(data)
    text = data.removeprefix(b"\xef\xbb\xbf")
    if text.lstrip().startswith(b"["):
        return len(json.loads(text))
    if name.endswith(".json") and text.lstrip().startswith(b"{"):
        return 1
    return sum(1 for line in text.split(b"\n") if line.strip())


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def write_data(path: Path, data: Any) -> None:
    """Write a case's data as its file name says: compressed (.gz, .zst), parquet, or a folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if data is None:
        return
    if isinstance(data, Link):
        if data.data is None:
            path.symlink_to(".", target_is_directory=True)
        else:
            target = path.parent.parent / f"{path.parent.name}-{path.name}-target"
            write_data(target, data.data)
            path.symlink_to(target, target_is_directory=True)
        return
    if isinstance(data, dict):
        path.mkdir()
        for name, content in data.items():
            write_data(path / name, content)
        return
    name = path.name
    codec = "gzip" if name.endswith(".gz") else "zstd" if name.endswith(".zst") else None
    if ".parquet" in name and isinstance(data, list):
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(data), buf)
        data = buf.getvalue().to_pybytes()
    if codec == "zstd":
        with pa.output_stream(str(path), compression="zstd") as f:
            f.write(data)
    else:
        path.write_bytes(gzip.compress(data) if codec == "gzip" and not data.startswith(b"\x1f\x8b") else data)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, cfg, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture) -> None:
    from selfalign.pipeline import Run

    src = tmp_path / case.file
    if case.stage in ("seed", "unlabelled", "pipeline"):
        write_data(src, case.data)
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
        assert len({k.source_id for k in kept}) == len(kept)  # ids unique within the run (issue 25)
        assert {r["line"]: r["reason"].split(":")[0] for r in rejects} == exp.rejects
        assert all(r["file"].startswith(str(src)) for r in rejects)
        assert len(kept) + len(rejects) == n_rows(case.data, src.name)  # no silent drop
        counts = run.manifest.data["counts"]
        assert counts["seed_rejected" if case.stage == "seed" else "unlabelled_rejected"] == len(exp.rejects)
        assert counts["seed_files_not_read" if case.stage == "seed" else "unlabelled_files_not_read"] == len(exp.not_read)
        if exp.not_read:  # one line lists every file of the folder that is not read, with the reason
            line = next(x for x in capsys.readouterr().out.splitlines() if "not read:" in x)
            n = len(exp.not_read)
            assert f"{n} file{'s' if n != 1 else ''} not read: " in line
            assert all(f"{name} (" in line for name in exp.not_read)
        if case.stage == "seed":
            assert not any(p.instruction.startswith("\ufeff") for p in kept)
        else:
            assert not any(r.response.startswith("\ufeff") for r in kept)

    elif isinstance(exp, Locked):
        import os
        import subprocess
        import sys

        run_dir = tmp_path / "run"
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys; from selfalign import lock; lock.acquire(sys.argv[1], 'selfalign run');"
             " print('locked', flush=True); sys.stdin.readline()", str(run_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")})
        try:
            assert holder.stdout.readline().strip() == "locked"
            code, err = cli(*[a.format(tmp=tmp_path) for a in case.data])
            assert code == 2 and err.count("\n") == 1 and f"is in use by pid {holder.pid} on " in err, err
            assert "`selfalign run`" in err
            assert sorted(p.name for p in run_dir.iterdir()) == [".selfalign.lock"]  # nothing written
        finally:
            holder.kill()
            holder.wait()

    elif isinstance(exp, Masked):
        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")
        monkeypatch.setenv("HF_TOKEN", "hf_tok3nInTheEnvironment")
        code, out, err = cli(*[a.format(tmp=tmp_path) for a in case.data], out=True)
        assert code == 0, err
        printed = out + err
        files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
        assert any(p.name == "config.yaml" for p in files) and any(p.name == "manifest.json" for p in files)
        for secret in exp.secrets:
            assert secret not in printed
            assert not [p for p in files if secret.encode() in p.read_bytes()], secret

    elif isinstance(exp, Error) and case.stage == "cli":
        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")  # an empty working directory: no ../shared/data here
        args = [a.format(tmp=tmp_path) for a in case.data]
        code, out, err = cli(*args, out=True)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        assert exp.says in err, err
        assert "fits" not in out  # `plan` stops before it says anything fits
        assert not (tmp_path / "run").exists()  # failed before anything was loaded or written

    elif isinstance(exp, Error):
        cmd = "seed" if case.stage == "seed" else "augment"  # augment reads its data before training
        key = "data.seed" if case.stage == "seed" else "data.unlabelled"
        code, err = cli(cmd, "--config", "smoke", f"run.out_dir={tmp_path / 'run'}",
                        f"models.base={tiny_model}", f"{key}={src}")
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
        assert exp.says in err, err
        assert (f"{src}:{exp.line}" if exp.line else str(src)) in err
        assert not (tmp_path / "run" / "backward").exists()  # failed before any training

    elif isinstance(exp, Crash):
        import importlib

        target, command = case.data
        module, name = target.rsplit(".", 1)

        def broken(*a: Any, **k: Any) -> None:
            raise ZeroDivisionError("injected failure")

        monkeypatch.setattr(importlib.import_module(module), name, broken)
        code, out, err = cli(command, "--config", "smoke",
                             f"run.out_dir={tmp_path / 'run'}", f"models.base={tiny_model}", "train_backward.max_steps=1",
                             out=True)
        assert code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
        assert f"stage {exp.stage} failed with an unexpected ZeroDivisionError: injected failure" in err
        assert "Traceback" not in out + err
        log = Path(re.search(r"the traceback is in (\S+\.log)", err).group(1))
        assert log.parent == tmp_path / "run" / "logs" and log.name.startswith("error-")
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "ZeroDivisionError: injected failure" in text
        assert "in broken" in text  # the frame that raised

    elif isinstance(exp, Status):
        import selfalign.augment as aug
        import selfalign.steps as steps
        from selfalign.generation import GenParams, HFEngine
        from selfalign.models import load_tokenizer
        from selfalign.records import UnlabelledResponse

        outputs = case.data
        monkeypatch.setattr(steps, "generate", _fake_generate(outputs))
        engine = HFEngine(None, load_tokenizer(str(tiny_model)), 2, "fake")
        responses = [UnlabelledResponse(f"Response number {i} is a fine answer.", f"r{i}") for i in range(len(outputs))]
        pairs = aug.augment(engine, responses, GenParams(), tmp_path / "augmented.jsonl")
        counts = aug.status_counts(pairs)
        assert len(pairs) == len(outputs) == sum(counts.values())  # every output counted
        assert {k: v for k, v in counts.items() if v} == exp.counts
        assert all(p.instruction == "" for p in pairs if p.status == "empty")

    elif isinstance(exp, Unscored):
        import selfalign.curate as cur
        from selfalign.config import CurationConfig
        from selfalign.generation import HFEngine
        from selfalign.models import load_tokenizer
        from selfalign.records import AugmentedPair

        monkeypatch.setattr(cur, "generate", _fake_generate([case.data] * 100))
        engine = HFEngine(None, load_tokenizer(str(tiny_model)), 2, "fake")
        pairs = [AugmentedPair(f"Question {i}?", f"Answer {i}.", f"p{i}", "s", "") for i in range(3)]
        settings = CurationConfig(mode="generate", retries=2, n_samples=1, shots=1, threshold=1.0,
                                       force_score=False)  # the unscored outcome, not the forced one
        rated = cur.rate_pairs(engine, pairs, settings, tmp_path / "rated.jsonl")
        assert [r.score for r in rated] == [None] * 3
        assert all(r.parse_failures == 3 and len(r.raw_outputs) == 3 for r in rated)  # first try + 2 retries
        stats = cur.curation_stats(rated, settings.threshold)
        assert stats["unscored"] == 3 and stats["kept"] == 0 and stats["parse_failure_rate"] == 1.0
        assert cur.select(rated, 1.0) == []  # never kept, whatever the threshold

    elif isinstance(exp, Cut):
        import selfalign.steps as steps
        from selfalign.pipeline import run_pipeline

        monkeypatch.setattr(steps, "generate", _fake_generate(["What is this text about?"] * 3))
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


def test_unexpected_error_before_the_run_starts_logs_and_the_rerun_is_not_refused(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure before the run directory holds a manifest leaves only logs/ there: re-running
    the same command must not refuse the folder as 'not a selfalign run'."""
    import selfalign.pipeline as pipeline

    real = pipeline.resolve_sources
    monkeypatch.setattr(pipeline, "resolve_sources", lambda cfg: 1 / 0)
    args = ("seed", "--config", "smoke", f"run.out_dir={tmp_path / 'run'}",
            f"models.base={tiny_model}")
    code, err = cli(*args)
    assert code == 1 and "stage seed failed with an unexpected ZeroDivisionError" in err
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["logs"]
    monkeypatch.setattr(pipeline, "resolve_sources", real)
    code, err = cli(*args)
    assert code == 0, err


def test_error_log_falls_back_when_the_run_directory_cannot_be_written(tmp_path: Path) -> None:
    from selfalign.cli import write_error_log

    blocker = tmp_path / "file"
    blocker.write_text("a file where the run directory should be")
    try:
        raise RuntimeError("boom \ud800")  # even an unwritable character reaches the log
    except RuntimeError as e:
        log = write_error_log(e, blocker / "run")
    assert log is not None and log.parent.name == "selfalign-logs" and "run" not in log.parts[-3:-1]
    text = log.read_text(encoding="utf-8")
    assert "RuntimeError: boom \\ud800" in text and "Traceback (most recent call last)" in text
    log.unlink()
