"""Issue 25 (reliability, round 3): one writer per run directory, record identity, a run inside
its data, folders read partly, bounded rows, secrets, file modes, templates checked at the
boundary, the YAML subset and the command-line values. Each test fails on the code before it."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from selfalign.config import ConfigError, load_config
from selfalign.io import DataError

SRC = Path(__file__).resolve().parent.parent / "src"
GOOD_LIMA = [{"conversations": [f"Question {i}?", f"Answer number {i} is a fine, helpful reply."], "source": "t"}
             for i in range(10)]


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    from selfalign.cli import main

    r = CliRunner(env=env).invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr
    return r.exit_code, r.stdout, r.stderr


def one_error_line(code: int, err: str) -> str:
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (code, err)
    return err


# --- one writer per run directory ---------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from selfalign import lock
    lock.acquire(sys.argv[1], "selfalign augment (the holder)")
    print("locked", flush=True)
    sys.stdin.readline()  # hold until told (or killed)
""")


def _start_holder(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_is_refused_with_the_holder_named_and_a_killed_holder_frees_it(smoke_cfg) -> None:
    from selfalign.pipeline import Run

    d = Path(smoke_cfg.run.out_dir)
    holder = _start_holder(d)
    try:
        with pytest.raises(Exception, match=rf"is in use by pid {holder.pid} on .*selfalign augment \(the holder\)"):
            Run(smoke_cfg)
        assert not (d / "manifest.json").exists()  # refused before writing anything
    finally:
        holder.kill()  # a crash: no clean-up runs
        holder.wait()
    run = Run(smoke_cfg)  # the kernel dropped the lock with the process
    assert (d / "manifest.json").is_file() and run.dir == d


@pytest.mark.slow  # ~5 s: two interpreters start
def test_two_cli_processes_on_one_run_directory(tmp_path: Path, tiny_model: Path) -> None:
    """Two real `selfalign` processes: the second exits 2 with one line naming the first."""
    d = tmp_path / "run"
    holder = _start_holder(d)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "selfalign.cli", "seed", "--config", "smoke", f"run.out_dir={d}",
            f"models.base={tiny_model}"]
    try:
        r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"is in use by pid {holder.pid}" in r.stderr and "Traceback" not in r.stderr
    finally:
        holder.stdin.write("\n")  # the holder ends normally this time
        holder.stdin.flush()
        holder.wait()
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads((d / ".selfalign.lock").read_text())
    assert info["pid"] != holder.pid and "seed" in info["command"]


def test_the_lock_is_reentrant_in_one_process_and_released_by_run_pipeline(smoke_cfg) -> None:
    from selfalign import lock
    from selfalign.pipeline import Run, run_pipeline

    Run(smoke_cfg)
    Run(smoke_cfg)  # a notebook may build two Runs on one directory
    with lock.scope():
        lock.acquire(smoke_cfg.run.out_dir)
    run_pipeline(smoke_cfg, until="seed")
    assert lock.is_locked_here(Path(smoke_cfg.run.out_dir))  # the two Runs above still hold it
    lock.release(smoke_cfg.run.out_dir)
    lock.release(smoke_cfg.run.out_dir)
    assert not lock.is_locked_here(Path(smoke_cfg.run.out_dir))


# --- record identity --------------------------------------------------------------------------
def test_two_files_of_one_name_in_two_folders_give_distinct_ids(tmp_path: Path) -> None:
    from selfalign.unlabelled import load_unlabelled

    for sub in ("a", "b"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        rows = [{"conversations": [f"q{sub}{i}", f"Answer {sub} {i} with some words."]} for i in range(10)]
        (tmp_path / "data" / sub / "train.jsonl").write_text(jsonl(rows))
    got = load_unlabelled(str(tmp_path / "data"))
    ids = [r.source_id for r in got]
    assert len(got) == 20 and len(set(ids)) == 20
    assert ids[0] == "a/train.jsonl:1" and ids[10] == "b/train.jsonl:1"
    single = load_unlabelled(str(tmp_path / "data" / "a" / "train.jsonl"))
    assert single[0].source_id == "train.jsonl:1"  # a file given directly keeps its ids


def test_a_duplicate_seed_id_is_one_error_line_before_any_model_loads(tmp_path: Path, tiny_model: Path) -> None:
    seed = tmp_path / "seed.jsonl"
    seed.write_text(jsonl([{"id": "7", "instruction": "Why is the sky blue today?", "output": "Air scatters blue."},
                           {"id": "7", "instruction": "How do I boil an egg well?", "output": "Boil it 8 minutes."}]))
    code, _, err = cli("train-backward", "--config", "smoke", f"run.out_dir={tmp_path / 'run'}",
                       f"models.base={tiny_model}", f"data.seed={seed}", "data.seed_english_only=false")
    assert "two rows have the id '7'" in one_error_line(code, err) and f"{seed}:1 and {seed}:2" in err
    assert not (tmp_path / "run" / "backward").exists()


@pytest.mark.slow  # ~7 s: trains the backward model for one step
def test_crash_and_resume_with_colliding_file_names_loses_nothing(smoke_cfg, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.steps as steps
    from selfalign.pipeline import run_pipeline

    for sub in ("a", "b"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        rows = [{"conversations": [f"q{sub}{i}", f"Answer {sub} {i}: a fine reply."]} for i in range(10)]
        (tmp_path / "data" / sub / "train.jsonl").write_text(jsonl(rows))
    smoke_cfg.data.unlabelled, smoke_cfg.data.unlabelled_n = str(tmp_path / "data"), 20
    smoke_cfg.train_backward.max_steps = 1
    budget = {"n": 7}

    def generate(engine, prompts, params, on_result=None, skip=None, **kw):  # noqa: ANN001, ANN003, ANN202
        for i in range(len(prompts)):
            if i in (skip or ()):
                continue
            if budget["n"] == 0:
                raise RuntimeError("simulated crash")
            budget["n"] -= 1
            on_result(i, f"What is answer {i} about?")
        return [f"What is answer {i} about?" for i in range(len(prompts))]

    monkeypatch.setattr(steps, "generate", generate)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(smoke_cfg, until="augment")
    budget["n"] = 10**6
    run_pipeline(smoke_cfg, until="augment")
    out = Path(smoke_cfg.run.out_dir)
    final = [json.loads(x) for x in (out / "augment" / "augmented.jsonl").read_text().splitlines()]
    sample = [json.loads(x) for x in (out / "augment" / "sample.jsonl").read_text().splitlines()]
    assert len(sample) == 20 and len({r["source_id"] for r in sample}) == 20
    assert len(final) == 20 and {r["source_id"] for r in final} == {r["source_id"] for r in sample}
    assert len({r["response"] for r in final}) == 20  # nothing lost, nothing mixed


# --- a run inside its data, folders read partly -----------------------------------------------
def test_a_run_directory_inside_the_data_folder_is_never_read(smoke_cfg, tmp_path: Path, capsys) -> None:
    from selfalign.pipeline import Run

    data = tmp_path / "unlabelled"
    data.mkdir()
    (data / "train.jsonl").write_text(jsonl(GOOD_LIMA))
    smoke_cfg.data.unlabelled, smoke_cfg.data.unlabelled_n = str(data), 100
    smoke_cfg.run.out_dir = str(data / "run")
    first = Run(smoke_cfg).sample()
    assert len(first) == 10
    (data / "run" / "augment" / "extra.jsonl").write_text(jsonl(GOOD_LIMA[:3] + [{"text": "A new row, not data."}]))
    capsys.readouterr()
    Run(smoke_cfg).sample()  # the run's own files are not part of the data's fingerprint
    assert "sample: up to date, skipped" in capsys.readouterr().out
    (data / "run" / "augment" / "sample.jsonl").unlink()  # a re-run that samples again
    again = Run(smoke_cfg).sample()
    assert [r.source_id for r in again] == [r.source_id for r in first]
    assert "run/ (a selfalign run directory)" in capsys.readouterr().out
    # another run's folder (manifest + config, no lock file) is not data either
    other = data / "old_run"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    (other / "config.yaml").write_text("run: {}\n")
    (other / "rows.jsonl").write_text(jsonl([{"text": "Not data."}]))
    from selfalign.unlabelled import load_unlabelled

    assert len(load_unlabelled(str(data))) == 10


def test_symlinked_folders_are_read_and_loops_listed_as_not_read(tmp_path: Path, capsys) -> None:
    from selfalign.records import RejectLog
    from selfalign.unlabelled import load_unlabelled

    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "more.jsonl").write_text(jsonl(GOOD_LIMA[5:]))
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text(jsonl(GOOD_LIMA[:5]))
    (data / "linked").symlink_to(real, target_is_directory=True)
    (data / "loop").symlink_to(data, target_is_directory=True)
    rejects = RejectLog()
    got = load_unlabelled(str(data), rejects=rejects)
    assert len(got) == 10  # the linked folder's rows are read, once
    assert [name for name, _ in rejects.not_read] == [str(data / "loop")]
    assert "1 file not read: loop/ (link to a folder already read (a loop?))" in capsys.readouterr().out


# --- one huge row -----------------------------------------------------------------------------
def test_a_huge_response_is_never_tokenized_whole(tiny_model: Path) -> None:
    from selfalign.models import load_tokenizer
    from selfalign.prompts import MAX_CHARS_PER_TOKEN, fit_prompt, truncate_tokens

    tok = load_tokenizer(str(tiny_model))
    seen: list[int] = []

    class Spy:
        def __call__(self, text: str, **kw: Any) -> Any:
            seen.append(len(text))
            return tok(text, **kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(tok, name)

    huge = "word " * 2_000_000  # 10 MB
    prompt, cut = fit_prompt(Spy(), lambda t: f"<{t}>", huge, 64, 200)
    assert cut and len(prompt) < 64 * MAX_CHARS_PER_TOKEN
    text, cut = truncate_tokens(Spy(), huge, 64)
    assert cut and len(text) < 64 * MAX_CHARS_PER_TOKEN
    assert max(seen) <= 65 * MAX_CHARS_PER_TOKEN + 10  # never the whole 10 MB
    assert fit_prompt(tok, lambda t: t, "a short answer", 64, None) == ("a short answer", False)


def test_a_row_over_the_bound_is_a_counted_reject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.readers as readers
    from selfalign.records import RejectLog
    from selfalign.unlabelled import load_unlabelled

    monkeypatch.setattr(readers, "MAX_ROW_BYTES", 1000)
    f = tmp_path / "d.jsonl"
    f.write_text(jsonl([*GOOD_LIMA[:2], {"text": "x" * 2000}]))
    rejects = RejectLog()
    assert len(load_unlabelled(str(f), rejects=rejects)) == 2
    assert rejects.counts() == {"too_long": 1} and rejects.items[0].line == 3


# --- secrets ---------------------------------------------------------------------------------
SECRET_URL, SECRET_OVR, SECRET_ENV, SECRET_OPT = "s3cr3tInConfigUrl", "s3cr3tInOverride", "hf_s3cr3tFromTheEnvironment42", \
    "s3cr3tInOption"


def _plant(tmp_path: Path, tiny_model: Path) -> tuple[Path, list[str], dict[str, str]]:
    from selfalign.config import packaged_config_path

    text = packaged_config_path("smoke").read_text()
    text = re.sub(r"\n  endpoint: null[^\n]*\n", f"\n  endpoint: https://user:{SECRET_URL}@hub.example.org\n", text)
    assert SECRET_URL in text
    cfg = tmp_path / "secret.yaml"
    cfg.write_text(text)
    args = ["--config", str(cfg), f"run.out_dir={tmp_path / 'run'}", f"models.base={tiny_model}",
            f"models.rater={tiny_model}", f"ray.checkpoint_path=s3://bucket/ck?X-Amz-Signature={SECRET_OVR}&token={SECRET_OVR}",
            "train_backward.max_steps=1", "train_forward.max_steps=1"]
    return cfg, args, {"HF_TOKEN": SECRET_ENV, "MY_ENGINE_API_KEY": SECRET_OPT}


def _scan(folder: Path, printed: str) -> None:
    secrets = (SECRET_URL, SECRET_OVR, SECRET_ENV, SECRET_OPT)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"{s} written in {f}"
    for s in secrets:
        assert s not in printed, f"{s} printed"


def test_planted_secrets_are_never_written_or_printed_fast(tmp_path: Path, tiny_model: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, args, env = _plant(tmp_path, tiny_model)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, out, err = cli("seed", *args, "hub.namespace=me")
    assert code == 0, err
    assert "https://***@hub.example.org" in out and (tmp_path / "run" / "config.yaml").is_file()
    stored = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert stored["hub"]["endpoint"] == "https://***@hub.example.org"
    code, out2, err2 = cli("seed", *args, "hub.namespace=me")  # the resume is not refused by the masking
    assert code == 0 and "seed: up to date" in out2, err2
    import selfalign.seed

    monkeypatch.setattr(selfalign.seed, "load_seed", lambda *a, **k: 1 / 0)
    code, out3, err3 = cli("seed", *args, "run.force=true", "data.seed_limit=3",
                           f"hub.endpoint=https://x:{SECRET_OPT}@h")  # an error log holds argv
    assert code != 0 and list((tmp_path / "run" / "logs").glob("error-*.log"))
    code, out4, err4 = cli("push", *args, "--dry-run", f"--endpoint=https://x:{SECRET_OPT}@h.example")
    _scan(tmp_path / "run", out + err + out2 + err2 + out3 + err3 + out4 + err4)


@pytest.mark.slow
def test_planted_secrets_in_a_whole_run_and_a_dry_run_push(tmp_path: Path, tiny_model: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, args, env = _plant(tmp_path, tiny_model)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, out, err = cli("run", *args)
    assert code == 0, err
    code, out2, err2 = cli("push", *args, "--dry-run", f"--endpoint=https://u:{SECRET_OPT}@hub.example.org")
    assert code == 0 and "https://***@hub.example.org" in out2, err2
    from selfalign.cards import Repos, RunInfo, model_card

    card = model_card(RunInfo.load(tmp_path / "run"), Repos.make("me", "x", f"https://u:{SECRET_OPT}@hub.example.org"),
                      "forward")
    assert "https://***@hub.example.org" in card
    _scan(tmp_path / "run", out + err + out2 + err2 + card)


def test_redaction_covers_urls_queries_headers_keys_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.redact import redact, redact_obj

    monkeypatch.setenv("SOME_ENGINE_API_KEY", "k-123456789")
    text = redact("https://u:pw@h/x?api_key=abc&n=1 ws://tok@h2 Authorization: Bearer zzz "
                  "X-Api-Key: qqq key k-123456789 hf_abcdefghijklmnopqrstuv ?token=t1")
    for s in ("pw", "api_key=abc", "tok@", "zzz", "qqq", "k-123456789", "hf_abcdefghijklmnopqrstuv", "t1"):
        assert s not in text, (s, text)
    assert "n=1" in text and "https://***@h/x" in text
    masked = redact_obj({"engine": {"api_key": "abc", "headers": {"Authorization": "xyz"}, "url": "http://a:b@c"},
                         "curation": {"max_new_tokens": 5}})
    assert masked == {"engine": {"api_key": "***", "headers": {"Authorization": "***"}, "url": "http://***@c"},
                      "curation": {"max_new_tokens": 5}}


# --- file modes -------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomically_written_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    from selfalign.io import atomic_write_text

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")  # what open() gives
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode)


# --- templates ---------------------------------------------------------------------------------
def test_fill_never_reads_data_as_a_template() -> None:
    from selfalign.prompts import fill, shipped

    assert fill("I: {instruction} R: {response}", instruction="use {response} here", response="R1") == \
        "I: use {response} here R: R1"
    text = shipped().pairwise_messages("Q {response_b}", "A says {response_b} {instruction}", "B")[0]["content"]
    assert text.count("A says {response_b} {instruction}") == 1 and "Q {response_b}" in text


BAD_TEMPLATES = {
    "templates.json": ('{"backward": {"user": "no placeholder"}}', "lacks the placeholder {response}"),
    "rating_fewshot.json": ("[{", "not valid JSON"),
    "pairwise_prompt.txt": ("{instruction} {response_a}", "lacks the placeholder {response_b}"),
    "request_words.json": ('{"words": [1]}', "must be an object with a list of strings"),
    "model_card.md": ("# {{ kind }} {% if %}", "not a valid Jinja template (line 1"),
    "dataset_card.md": ("# {{ title }} by {{ author }}", "names author, which cards are not rendered with"),
}
COMMANDS = [["run"], ["seed"], ["train-backward"], ["augment"], ["curate"], ["train-forward"], ["generate"],
            ["evaluate"], ["ablate"], ["plan"], ["push", "--dry-run"]]


# every command with one bad file (cycling through them), and every bad file with `plan`
TEMPLATE_CASES = [(c, sorted(BAD_TEMPLATES)[i % len(BAD_TEMPLATES)]) for i, c in enumerate(COMMANDS)] + \
    [(["plan"], name) for name in sorted(BAD_TEMPLATES)]


@pytest.mark.parametrize("command,name", TEMPLATE_CASES, ids=[f"{c[0]}-{n}" for c, n in TEMPLATE_CASES])
def test_every_command_checks_the_templates_before_anything_loads(tmp_path: Path, tiny_model: Path,
                                                                  command: list[str], name: str) -> None:
    folder = tmp_path / "tpl"
    folder.mkdir()
    text, says = BAD_TEMPLATES[name]
    (folder / name).write_text(text)
    code, _, err = cli(*command, "--config", "smoke", f"run.out_dir={tmp_path / 'run'}", f"models.base={tiny_model}",
                       f"run.templates_dir={folder}")
    assert says in one_error_line(code, err) and str(folder / name) in err
    assert not (tmp_path / "run").exists()


def test_a_missing_templates_json_section_falls_back_to_the_shipped_one(tmp_path: Path) -> None:
    from selfalign.prompts import Templates, shipped

    (tmp_path / "templates.json").write_text('{"forward": {"user": "Please: {instruction}"}}')
    tpl = Templates.load(tmp_path)
    assert tpl.sections["backward"] == shipped().sections["backward"]
    assert tpl.forward_messages("x")[-1]["content"] == "Please: x"
    with pytest.raises(ConfigError, match=r"curation.shots=6 but .*rating_fewshot.json holds 5"):
        tpl.validate(6)


# --- the YAML subset ---------------------------------------------------------------------------
YAML_CASES = [
    ("run:\n  out_dir: 1:30\n", {"run.out_dir": "1:30"}),  # a string, not base-60 90
    ("data:\n  eval_split: 2020-01-01\n", {"data.eval_split": "2020-01-01"}),  # a string, not a date
    ("run:\n  seed: 010\n", "leading zero"),
    ("run:\n  seed: 0o10\n", {"run.seed": 8}),
    ("run:\n  seed: 0x10\n", {"run.seed": 16}),
    ("lora:\n  target_modules: !!set {q_proj, v_proj}\n", "the tag !!set is not accepted"),
    ("? [a, b]\n: 1\n", "a complex key"),
    ("run: !!python/object/apply:os.getcwd []\n", "the tag !!python/object/apply:os.getcwd is not accepted"),
    ("base: &b {r: 4, alpha: 8}\nlora:\n  <<: *b\n  alpha: 16\n", "unknown key 'base'"),
    ("x: &x [*x]\n", "recursive alias"),
    ("run: {seed: 1, seed: 2}\n", "key 'seed' is given twice"),
]


@pytest.mark.parametrize("text,expected", YAML_CASES, ids=[c[0].splitlines()[-1][:30] for c in YAML_CASES])
def test_the_yaml_subset(tmp_path: Path, text: str, expected: Any) -> None:
    from selfalign.rundir import flat

    f = tmp_path / "c.yaml"
    f.write_text(text)
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as e:
            load_config(f)
        assert expected in str(e.value) and "\n" not in str(e.value) and str(f) in str(e.value)
    else:
        got = flat(load_config(f).to_dict())
        assert {k: got[k] for k in expected} == expected


def test_merge_keys_are_supported_with_the_own_keys_winning(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train_backward: &t {epochs: 2, learning_rate: 0.001}\ntrain_forward:\n  <<: *t\n  epochs: 3\n")
    cfg = load_config(f)
    assert (cfg.train_forward.epochs, cfg.train_forward.learning_rate) == (3, 0.001)
    assert cfg.train_backward.epochs == 2


def test_alias_expansion_is_bounded(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("x: &s " + "a" * 10_000 + "\ny: [" + ", ".join(["*s"] * 10_000) + "]\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand to over"):
        load_config(f)
    assert time.perf_counter() - t0 < 5


def test_overrides_read_the_same_subset() -> None:
    with pytest.raises(ConfigError, match=r"override 'run.seed=010'.*leading zero"):
        load_config(None, ["run.seed=010"])
    assert load_config(None, ["run.out_dir=1:30"]).run.out_dir == "1:30"


# --- command-line values ----------------------------------------------------------------------
@pytest.mark.parametrize("args,says", [
    (["generate", "-n", "-3"], "'forward.n_responses' (-n): must be an integer >= 1 (got -3)"),
    (["evaluate", "--n-heldout", "-1"], "'evaluate.n_heldout' (--n-heldout): must be an integer >= 2"),
    (["evaluate", "--n-recovery", "-5"], "'evaluate.n_recovery' (--n-recovery): must be an integer >= 0"),
    (["ablate", "--seeds", "0"], "'ablate.seeds' (--seeds): must be an integer >= 1"),
    (["plan", "--device-memory-gb", "-2"], "'run.device_memory_gb' (--device-memory-gb): must be a number > 0"),
    (["push", "--dry-run", "hub.name=bad name!"], "'hub.name': must be a Hub repository name"),
    (["push", "--dry-run", "hub.namespace=a--b"], "'hub.namespace': must be a Hub repository name"),
    (["push", "--dry-run", "hub.name=" + "x" * 90], "'hub.name': must be at most 86 characters"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_command_line_values_are_checked_like_config_values(tmp_path: Path, args: list[str], says: str) -> None:
    code, out, err = cli(*args, "--config", "smoke", f"run.out_dir={tmp_path / 'run'}")
    assert says in one_error_line(code, err)
    assert "fits" not in out and "dry run" not in out


def test_push_dry_run_refuses_a_repository_id_the_hub_would_refuse(tmp_path: Path) -> None:
    from selfalign.cards import Repos
    from selfalign.hub import HubError, check_repo_ids

    with pytest.raises(HubError, match="invalid Hub repository id"):
        check_repo_ids(Repos.make("bad name", "x", "https://h"), "bad name")  # e.g. a namespace from whoami
    check_repo_ids(Repos.make("me", "selfalign", "https://h"), "me")


# --- data rows ---------------------------------------------------------------------------------
def test_duplicate_keys_and_quoted_markers(tmp_path: Path) -> None:
    from selfalign.records import RejectLog
    from selfalign.seed import load_seed

    f = tmp_path / "s.jsonl"
    f.write_text("\n".join([
        '{"instruction": "Why is the sky blue?", "output": "Air scatters blue light."}',
        '{"instruction": "What is tea made of?", "output": "Leaves.", "output": "Stones."}',
        json.dumps({"text": "### Human: What does '### Assistant:' mean in this format?### Assistant: It marks the reply."}),
        json.dumps({"text": "### Human: What does ### Assistant: mean here?### Assistant: It marks the reply."}),
        '{"messages": [{"role": "user", "content": "a", "content": "b"}]}',
    ]) + "\n")
    rejects = RejectLog()
    pairs = load_seed(str(f), english_only=False, rejects=rejects)
    assert [p.instruction for p in pairs] == ["Why is the sky blue?", "What does '### Assistant:' mean in this format?"]
    assert {r.line: r.reason.split(":")[0] for r in rejects.items} == {2: "duplicate_key", 4: "ambiguous_turns",
                                                                       5: "duplicate_key"}
    assert "'output' is given twice" in rejects.items[0].reason


def test_a_data_error_never_names_the_file_wrong(tmp_path: Path) -> None:
    from selfalign.unlabelled import load_unlabelled

    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "text": "b"}\n')
    with pytest.raises(DataError, match=re.escape(f"{f}: no usable unlabelled response (1 rejected (1 duplicate_key)")):
        load_unlabelled(str(f))
