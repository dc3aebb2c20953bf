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
