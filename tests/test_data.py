import json
from pathlib import Path

import pytest
from conftest import GUANACO, LIMA, OASST_SEED, need
from hypothesis import given
from hypothesis import strategies as st

from selfalign.io import DataError
from selfalign.records import RejectLog
from selfalign.seed import first_turn, is_english, join_guanaco, load_seed, split_guanaco
from selfalign.unlabelled import is_multi_turn, load_unlabelled, sample_single_turn


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- Guanaco seed -------------------------------------------------------------------------

def test_split_guanaco_multi_turn() -> None:
    text = "### Human: Hi there, what is 2+2?### Assistant: It is 4.### Human: And 3+3?### Assistant: 6."
    assert split_guanaco(text) == [("user", "Hi there, what is 2+2?"), ("assistant", "It is 4."),
                                   ("user", "And 3+3?"), ("assistant", "6.")]
    assert first_turn({"text": text}) == ("Hi there, what is 2+2?", "It is 4.", 2)


def test_split_guanaco_without_markers_is_a_counted_reject(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "s.jsonl", [
        {"text": "just some text with no markers at all"},
        {"text": "### Human: What is the capital of France and why is it there?### Assistant: The capital of France is Paris, on the Seine."},
    ])
    rejects = RejectLog()
    pairs = load_seed(str(f), rejects=rejects)
    assert len(pairs) == 1 and pairs[0].instruction.startswith("What is the capital")
    assert rejects.items[0].reason.startswith("no_markers") and rejects.items[0].where() == f"{f}:1"


@given(st.text())
def test_split_guanaco_never_raises(text: str) -> None:
    turns = split_guanaco(text)
    assert all(role in ("user", "assistant") for role, _ in turns)


@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]),
                          st.text(alphabet=st.characters(blacklist_characters="#"), min_size=1).map(str.strip)
                          .filter(bool)), max_size=6))
def test_split_join_round_trip(turns: list) -> None:
    assert split_guanaco(join_guanaco(turns)) == turns


def test_bad_rows_are_rejected_with_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    good = {"text": "### Human: How do I boil an egg for breakfast?### Assistant: Put the egg in boiling water for 8 minutes."}
    f.write_text(
        json.dumps(good) + "\n"
        + "{not json\n"
        + json.dumps({"text": 42}) + "\n"
        + json.dumps({"other": "x"}) + "\n"
        + json.dumps({"text": "### Human: What is it?### Assistant:    "}) + "\n"
        + json.dumps(good) + "\n"
    )
    rejects = RejectLog()
    pairs = load_seed(str(f), english_only=False, rejects=rejects)
    assert len(pairs) == 1
    reasons = {r.line: r.reason.split(":")[0] for r in rejects.items}
    assert reasons == {2: "bad_json", 3: "wrong_type", 4: "missing_field", 5: "empty", 6: "duplicate"}


def test_zero_usable_rows_is_a_clear_error(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "s.jsonl", [{"x": 1}])
    with pytest.raises(DataError, match="no usable seed pair"):
        load_seed(str(f))
    with pytest.raises(DataError, match="not found"):
        load_seed(str(tmp_path / "missing.jsonl"))


def test_seed_limit_and_folder_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"### Human: Question number {i} is what the user asks?### Assistant: The answer is {i}."} for i in range(10)]
    (tmp_path / "d").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d" / "train.parquet")
    assert len(load_seed(str(tmp_path / "d"), english_only=False)) == 10
    assert len(load_seed(str(tmp_path / "d" / "train.parquet"), english_only=False, limit=3)) == 3


def test_english_filter() -> None:
    assert is_english("How do I make a cup of tea for my friends?")
    assert not is_english("Me gradué hace poco de la carrera de medicina. ¿Me podrías aconsejar para "
                          "conseguir rápidamente un puesto de trabajo en un hospital de la ciudad?")
    assert not is_english("我最近毕业了，你能给我一些找工作的建议吗？")


def test_real_guanaco_subset() -> None:
    rejects = RejectLog()
    pairs = load_seed(str(need(GUANACO)), rejects=rejects)
    # The data README estimates ~390 English rows of 1,000.
    assert 340 <= len(pairs) <= 430
    assert all(p.instruction and p.response for p in pairs)
    assert sum(p.n_turns > 1 for p in pairs) > 50  # multi-turn rows keep their first turn
    assert len(pairs) + len(rejects) == 1000


def test_real_oasst_seed_instruction_output_format() -> None:
    pairs = load_seed(str(need(OASST_SEED)), english_only=False)
    assert len(pairs) == 186


# --- LIMA unlabelled ------------------------------------------------------------------------

def test_multi_turn_filtering_on_real_lima() -> None:
    rejects = RejectLog()
    responses = load_unlabelled(str(need(LIMA)), rejects=rejects)
    rows = [json.loads(x) for x in LIMA.read_text().splitlines()]
    n_multi = sum(is_multi_turn(r["conversations"]) for r in rows)
    assert n_multi == 30  # includes the odd-length row 1021
    assert rejects.counts() == {"multi_turn": 30}
    assert len(responses) == 1000
    odd = [r for r in rows if len(r["conversations"]) % 2 == 1]
    assert len(odd) == 1 and is_multi_turn(odd[0]["conversations"])  # the odd-length row


def test_unlabelled_rejects(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "u.jsonl", [
        {"conversations": ["q", "a real answer"], "source": "x"},
        {"conversations": ["q", "   "], "source": "x"},
        {"conversations": ["q"], "source": "x"},
        {"conversations": "nope"},
        {"text": "a plain text response"},
        {"conversations": ["q", "a real answer"], "source": "x"},
    ])
    rejects = RejectLog()
    out = load_unlabelled(str(f), rejects=rejects)
    assert [r.response for r in out] == ["a real answer", "a plain text response"]
    assert [r.reason.split(":")[0] for r in rejects.items] == ["empty", "no_response", "wrong_type", "duplicate"]


def test_sampling_is_reproducible_and_seeded(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "u.jsonl", [{"conversations": ["q", f"answer {i}"], "source": "s"} for i in range(200)])
    pool = load_unlabelled(str(f))
    a = sample_single_turn(pool, 50, seed=0)
    b = sample_single_turn(list(reversed(pool)), 50, seed=0)  # input order does not matter
    c = sample_single_turn(pool, 50, seed=1)
    assert [r.source_id for r in a] == [r.source_id for r in b]
    assert [r.source_id for r in a] != [r.source_id for r in c]
    assert len({r.source_id for r in a}) == 50
    assert len(sample_single_turn(pool, 500, seed=0)) == 200


def test_sampling_is_stable_across_machines() -> None:
    """The sample depends on sha256 only: pin the first ids for the real LIMA file."""
    pool = load_unlabelled(str(need(LIMA)))
    picked = sample_single_turn(pool, 150, seed=0)
    assert len(picked) == 150
    import hashlib

    expected = sorted(pool, key=lambda r: hashlib.sha256(f"0:{r.source_id}".encode()).hexdigest())[:3]
    assert [r.source_id for r in picked[:3]] == [r.source_id for r in expected]


def test_plain_text_unlabelled(tmp_path: Path) -> None:
    f = tmp_path / "u.txt"
    f.write_text("First response.\n\n   \nSecond response.\nFirst response.\n")
    rejects = RejectLog()
    out = load_unlabelled(str(f), rejects=rejects)
    assert [r.response for r in out] == ["First response.", "Second response."]
    assert [(r.line, r.reason) for r in rejects.items] == [(5, "duplicate")]


# --- where the data comes from (issue 16) --------------------------------------------------

def _sources(cfg):  # noqa: ANN001, ANN202
    from selfalign.sources import resolve_sources

    return resolve_sources(cfg)


def test_default_config_reads_the_real_data_from_the_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import REPO

    from selfalign.config import load_config

    need(GUANACO)
    monkeypatch.chdir(REPO)
    src = _sources(load_config(REPO / "selfalign.yaml"))  # this repository's config
    assert src["data.seed"].kind == "local" and src["data.seed"].resolved == str(GUANACO.resolve())
    assert src["data.unlabelled"].resolved == str(LIMA.resolve())


def test_default_config_without_the_real_data_uses_the_named_samples(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import REPO

    from selfalign.config import load_config
    from selfalign.sources import SAMPLES

    monkeypatch.chdir(tmp_path)  # an empty folder: no ../shared/data beside it
    (tmp_path / "selfalign.yaml").write_text((REPO / "selfalign.yaml").read_text())  # this repository's config
    cfg = load_config(tmp_path / "selfalign.yaml")
    src = _sources(cfg)
    assert [s.kind for s in src.values()] == ["sample"] * 3
    assert src["data.seed"].resolved == str(SAMPLES / "seed.jsonl")
    assert "../shared/data is absent" in src["data.seed"].note and "data.samples_if_absent" in src["data.seed"].note


def test_cli_in_an_empty_folder_says_it_uses_the_samples(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "selfalign.yaml").write_text((REPO / "selfalign.yaml").read_text())  # found without --config
    r = subprocess.run([sys.executable, "-m", "selfalign.cli", "seed",
                        "run.out_dir=run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    first = [x for x in r.stdout.splitlines() if x.startswith("[selfalign]")][:4]
    assert first[0].startswith("[selfalign] data.seed: ../shared/data/guanaco/guanaco_llama2_1k.jsonl -> ")
    assert "(shipped sample); ../shared/data is absent" in first[0]
    assert first[3] == "[selfalign] note: this run uses the small OASST1 samples shipped with selfalign, not real data"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data_sources"]["data.seed"]["kind"] == "sample"
    from selfalign.report import data_lines

    assert "**This run used the small OASST1 samples shipped with selfalign, not real data.**" in data_lines(
        manifest["data_sources"])


def test_relative_paths_resolve_against_cwd_then_the_config_files_folder(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.config import load_config

    conf = tmp_path / "project"
    (conf / "data").mkdir(parents=True)
    write_jsonl(conf / "data" / "seed.jsonl", [{"text": "### Human: Hi?### Assistant: Hello."}])
    (conf / "c.yaml").write_text("data:\n  seed: data/seed.jsonl\n  unlabelled: sample:unlabelled\n"
                                 "  eval_prompts: sample:prompts\n  samples_if_absent: null\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    s = _sources(load_config(conf / "c.yaml"))["data.seed"]
    assert s.resolved == str(conf / "data" / "seed.jsonl") and s.kind == "local"
    assert s.describe() == f"data.seed: data/seed.jsonl -> {conf / 'data' / 'seed.jsonl'}"
    (work / "data").mkdir()  # the working directory comes first
    write_jsonl(work / "data" / "seed.jsonl", [])
    assert _sources(load_config(conf / "c.yaml"))["data.seed"].resolved == str(work / "data" / "seed.jsonl")


def test_a_missing_file_in_a_folder_that_exists_is_an_error_not_the_samples(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.config import load_config

    (tmp_path / "real" / "lima").mkdir(parents=True)
    (tmp_path / "c.yaml").write_text("data:\n  seed: real/guanaco.jsonI\n  samples_if_absent: real\n"
                                     "  unlabelled: sample:unlabelled\n  eval_prompts: sample:prompts\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^data.seed: real/guanaco.jsonI: file not found \(looked in "):
        _sources(load_config(tmp_path / "c.yaml"))
    # with the folder absent, the config file's path is replaced by the sample; a typed one never is
    (tmp_path / "real" / "lima").rmdir()
    (tmp_path / "real").rmdir()
    assert _sources(load_config(tmp_path / "c.yaml"))["data.seed"].kind == "sample"
    # any path that is not under data.samples_if_absent stays strict
    with pytest.raises(DataError, match="data.unlabelled: elsewhere/lima.jsonl: file not found"):
        _sources(load_config(tmp_path / "c.yaml", ["data.unlabelled=elsewhere/lima.jsonl"]))
    with pytest.raises(DataError, match="never replaced by the shipped samples"):
        _sources(load_config(tmp_path / "c.yaml", ["data.seed=real/guanaco.jsonl"]))


def test_hub_ids_and_paths_are_told_apart() -> None:
    from selfalign.sources import is_hub_id

    assert is_hub_id("GAIR/lima") and is_hub_id("timdettmers/openassistant-guanaco")
    for path in ("seed.jsonl", "data/seed.jsonI", "data/seed.JSONL", "a/b/c", "../x/y", "/abs/x", "x/y.jsonl.gz",
                 "lima", "data/t.csv"):
        assert not is_hub_id(path), path


def test_data_formats_give_the_same_rows(tmp_path: Path) -> None:
    """.jsonl, .jsonl.gz, .jsonl.zst, .json (array), .json.gz, .parquet, .parquet.gz: same pairs."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"### Human: Question number {i} about the world?### Assistant: The answer is {i}."}
            for i in range(5)]
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl").write_bytes(raw)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    with pa.output_stream(str(tmp_path / "a.jsonl.zst"), compression="zstd") as f:
        f.write(raw)
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "a.parquet.gz").write_bytes(gzip.compress((tmp_path / "a.parquet").read_bytes()))
    want = [(p.instruction, p.response) for p in load_seed(str(tmp_path / "a.jsonl"))]
    assert len(want) == 5
    for name in ("a.jsonl.gz", "a.jsonl.zst", "a.json", "a.json.gz", "a.parquet", "a.parquet.gz"):
        assert [(p.instruction, p.response) for p in load_seed(str(tmp_path / name))] == want, name


def test_is_blank() -> None:
    from selfalign.readers import is_blank

    for text in ("", " \t\n", "\u200b", "\ufeff\u200d\u2060", "\u00ad", "\u3164", "\u2800", "\x00\x07", "\u0301"):
        assert is_blank(text), repr(text)
    for text in ("a", " . ", "\u200b1", "😀", "中"):
        assert not is_blank(text), repr(text)


def test_seed_limit_counts_the_rows_it_did_not_use(tmp_path: Path) -> None:
    rows = [{"text": f"### Human: What is item {i} of the list?### Assistant: It is the item {i}."} for i in range(6)]
    rejects = RejectLog()
    pairs = load_seed(str(write_jsonl(tmp_path / "s.jsonl", rows)), limit=2, rejects=rejects)
    assert len(pairs) == 2 and rejects.past_limit == 4 and len(rejects) == 0
