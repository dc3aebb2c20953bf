"""Labels files (labels.py) and the review page's data (review.py), without a browser."""

import json
import re
from pathlib import Path

import pytest

from selfalign.io import DataError
from selfalign.labels import (
    Label,
    apply_labels,
    human_pairs,
    is_labels_file,
    load_labels,
    rater_vs_labels,
    report_lines,
    write_labels,
)
from selfalign.records import RatedPair
from selfalign.review import page_rows, render_page


def rated(scores: list[float | None]) -> list[RatedPair]:
    return [RatedPair(f"ins {i}", f"resp {i}", f"id-{i}", "lima", s, "") for i, s in enumerate(scores)]


def test_load_labels_rejects_bad_rows_with_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "labels.jsonl"
    p.write_text('{"source_id": "a", "decision": "keep"}\n\n{"source_id": "b", "decision": "maybe"}\n')
    with pytest.raises(DataError, match=r"labels.jsonl:3: decision must be one of keep/drop, not 'maybe'"):
        load_labels(p)
    p.write_text('{"decision": "keep"}\n')
    with pytest.raises(DataError, match=r":1: a labels row needs a source_id"):
        load_labels(p)
    p.write_text("{not json\n")
    with pytest.raises(DataError, match=r":1: not JSON"):
        load_labels(p)
    with pytest.raises(DataError, match="labels file not found"):
        load_labels(tmp_path / "absent.jsonl")


def test_a_later_label_replaces_an_earlier_one(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    p.write_text('{"source_id": "a", "decision": "keep"}\n{"source_id": "a", "decision": "drop", "note": "off topic"}\n')
    got = load_labels(p)
    assert list(got) == ["a"] and got["a"].decision == "drop" and got["a"].note == "off topic"
    assert is_labels_file(p) and not is_labels_file(tmp_path / "absent")


def test_labels_overrule_the_rater_and_are_counted(tmp_path: Path) -> None:
    rs = rated([5.0, 4.5, 2.0, 1.0, None])
    kept = [r for r in rs if r.score is not None and r.score >= 4.0]
    p = write_labels(tmp_path / "l.jsonl", [Label("id-0", "drop"), Label("id-2", "keep"), Label("id-4", "keep"),
                                            Label("id-1", "keep"), Label("elsewhere", "drop")])
    out, info = apply_labels(rs, kept, p, 4.0)
    assert [r.source_id for r in out] == ["id-1", "id-2", "id-4"]  # in the order of the rated pairs
    assert [r.human for r in rs] == ["drop", "keep", "keep", "", "keep"]
    assert info["labelled"] == 4 and info["labels_unknown"] == 1
    assert (info["overruled_to_keep"], info["overruled_to_drop"], info["kept_after_labels"]) == (2, 1, 3)
    # no labels file: nothing changes, nothing counted
    assert apply_labels(rs, kept, None, 4.0) == (kept, {})


def test_precision_and_recall_of_the_rater_against_the_labels() -> None:
    rs = rated([5.0, 4.5, 4.0, 3.0, 2.0, None])
    labels = {f"id-{i}": Label(f"id-{i}", d) for i, d in enumerate(["keep", "drop", "keep", "keep", "drop", "keep"])}
    rows = {r["threshold"]: r for r in rater_vs_labels(rs, labels, 4.2)}
    assert sorted(rows) == [2.0, 3.0, 3.5, 4.0, 4.2, 4.5, 5.0]
    # t=4: rater keeps id-0,1,2 -> 2 of them kept by the person; the person kept 4 (id-0,2,3,5)
    assert rows[4.0] == {"threshold": 4.0, "rater_kept": 3, "human_kept": 4, "labelled": 6,
                         "precision": round(2 / 3, 4), "recall": 0.5}
    assert rows[2.0]["precision"] == 0.6 and rows[2.0]["recall"] == 0.75
    assert rows[5.0]["precision"] == 1.0 and rows[5.0]["recall"] == 0.25
    assert rows[4.2]["rater_kept"] == 2
    lines = report_lines({"curation_1": {"labels_file": "l.jsonl", "labelled": 6, "human_kept": 4, "human_dropped": 2,
                                         "overruled_to_keep": 1, "overruled_to_drop": 1, "kept_after_labels": 3,
                                         "rater_vs_labels": list(rows.values())}})
    assert "## The rater against your labels" in lines
    assert "| 4 | 3 | 4 | 0.667 | 0.500 |" in lines
    assert report_lines({"curation_1": {"kept": 3}}) == []


def test_labels_are_a_human_judged_set(tmp_path: Path) -> None:
    from selfalign.evaluate.human import HUMAN_BAD, HUMAN_GOOD

    rs = rated([5.0, 1.0])
    p = write_labels(tmp_path / "l.jsonl", [Label("id-0", "keep"), Label("id-1", "drop"),
                                            Label("x", "keep", instruction="own text", response="given here"),
                                            Label("y", "drop")])
    pairs, info = human_pairs(p, rs)
    assert [(x.instruction, x.source) for x in pairs] == [("ins 0", HUMAN_GOOD), ("ins 1", HUMAN_BAD),
                                                           ("own text", HUMAN_GOOD)]
    assert info["without_text"] == 1 and info["n_good"] == 2


HOSTILE = "</script><script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"><!-- &amp;"


def test_page_data_cannot_close_its_script_block() -> None:
    rows = page_rows([{"instruction": HOSTILE, "response": HOSTILE * 3, "source_id": "s</script>", "source": "x",
                       "score": float("nan"), "reasoning": HOSTILE, "parts": {"value": 0.5, "ifd": float("inf")}}],
                     [], 4.0)
    page = render_page({"title": HOSTILE, "key": "k", "n": 1}, rows)
    block = page.split('<script type="application/json" id="review-data">')[1].split("</script>")[0]
    assert "<" not in block and ">" not in block  # the block ends only where the page ends it
    data = json.loads(block)
    assert data["rows"][0]["ins"] == HOSTILE and data["rows"][0]["score"] is None
    assert data["rows"][0]["value"] == 0.5 and data["rows"][0]["parts"] == {}
    assert "unscored" in data["rows"][0]["flags"]
    assert re.search(r"<title>[^<]*&lt;/script&gt;", page)
    assert "https://" not in page and "http://" not in page.replace("http-equiv", "")  # nothing fetched


def test_page_rows_carry_flags_of_other_stages() -> None:
    rows = page_rows(
        [{"instruction": "i\u200b", "response": "r", "source_id": "a", "source": "lima", "score": 4.5, "reasoning": "",
          "response_cut": True, "forced_score": True}],
        [{"source_id": "a", "status": "ok"}, {"source_id": "b", "status": "echo", "instruction": "r", "response": "r"}],
        4.0, {"a": [{"flag": "contaminated", "detail": "benchmark alpaca_eval"}]}, {"b": "drop"})
    a, b = rows
    assert a["kept"] and a["flags"] == ["contaminated", "hidden characters", "response cut", "score forced"]
    assert a["details"] == ["contaminated: benchmark alpaca_eval"]
    assert not b["kept"] and b["flags"] == ["augment: echo"] and b["label"] == "drop"


def test_evaluate_reads_a_labels_file_as_its_human_judged_set(tmp_path: Path) -> None:
    from selfalign.config import Config
    from selfalign.evaluate.human import HUMAN_GOOD
    from selfalign.evaluate.run import human_set

    p = write_labels(tmp_path / "l.jsonl", [Label("a", "keep", instruction="i", response="r"),
                                            Label("b", "drop", instruction="j", response="s")])
    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path / "run")}, "evaluate": {"human": str(p)}})
    pairs, info = human_set(cfg, [])
    assert [x.source == HUMAN_GOOD for x in pairs] == [True, False] and info["kind"].startswith("labels file")


def test_labels_without_texts_take_them_from_the_runs_rated_pairs(tmp_path: Path) -> None:
    from dataclasses import asdict

    from selfalign.io import write_jsonl

    write_jsonl(tmp_path / "rated.jsonl", [asdict(r) for r in rated([4.0, 2.0])])
    p = write_labels(tmp_path / "l.jsonl", [Label("id-1", "drop")])
    pairs, _ = human_pairs(p, tmp_path / "rated.jsonl")
    assert [(x.instruction, x.response) for x in pairs] == [("ins 1", "resp 1")]
    assert human_pairs(p, tmp_path / "absent.jsonl")[0] == []


def test_cli_review_writes_the_page_and_says_what_is_missing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from selfalign.cli import main

    run = tmp_path / "run"
    (run / "curate_1").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"config": {"curation": {"mode": "generate", "threshold": 4.0}},
                                                   "stages": {"curate-1": {"rater": "smollm2"}}}))
    (run / "curate_1" / "rated.jsonl").write_text(json.dumps({"instruction": "i", "response": "r", "source_id": "a",
                                                              "source": "lima", "score": 4.5, "reasoning": "ok"}) + "\n")
    (run / "hygiene").mkdir()
    (run / "hygiene" / "flags.jsonl").write_text(json.dumps(
        {"source_id": "a", "set": "curated", "flag": "contaminated", "method": "13-gram", "benchmark": "alpaca_eval",
         "match": "<q>", "score": 0.8}) + "\n")
    res = CliRunner().invoke(main, ["review", "--run", str(run)])
    assert res.exit_code == 0, res.output
    assert f"review: {run / 'review.html'}" in res.output
    data = json.loads((run / "review.html").read_text().split('id="review-data">')[1].split("</script>")[0])
    assert data["meta"]["mode"] == "generate" and data["meta"]["rater"] == "smollm2" and data["rows"][0]["kept"]
    assert data["rows"][0]["flags"] == ["contaminated"] and data["meta"]["hygiene_rows"] == 1
    assert data["rows"][0]["details"] == ["contaminated: set curated, method 13-gram, benchmark alpaca_eval, score 0.8; "
                                          "match: <q>"]
    res = CliRunner().invoke(main, ["review", "--run", str(run), "--iteration", "2"])
    assert res.exit_code != 0 and "curate_2/rated.jsonl: not found (run `selfalign curate` first)" in res.output
