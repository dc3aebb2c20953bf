"""The not_request status of augmentation: a generated instruction must read as a request for its
response (augment.reads_as_request), a transparent English heuristic: "?", a first word from
templates/request_words.json, "please"; never a copy of the response's start."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from selfalign.augment import (
    STATUSES,
    clean_instruction,
    copies_response,
    reads_as_request,
    status_counts,
    words,
)
from selfalign.prompts import Templates, shipped

RESPONSE = ("The box is just the beginning. Inside you will find a set of chisels, a mallet and a manual "
            "that walks you through your first dovetail joint, step by step.")

REQUESTS = [
    "How do I cut a dovetail joint?",
    "What comes in a beginner woodworking kit",  # question word, no "?"
    "Write a product description for a woodworking kit.",
    "**Explain** what a dovetail joint is",  # markdown emphasis
    "### Describe the contents of the box",  # markdown heading
    "1. List the tools a beginner needs",  # numbered list
    "- give me a short review of this kit",  # bullet, lower case
    "> Tell me about the kit",  # quote
    "\u201cSummarize this manual\u201d",  # curly quotes
    "I need a gift for a carpenter, please.",  # "please" anywhere
    "Let\u2019s plan a woodworking weekend",  # curly apostrophe
    "Wie funktioniert eine Schwalbenschwanzverbindung?",  # another language, but a question mark
    "\u8fd9\u4e2a\u76d2\u5b50\u91cc\u6709\u4ec0\u4e48\uff1f",  # Chinese with a fullwidth question mark
    "Box contents?",
]

NOT_REQUESTS = [
    "The box is just the beginning...",  # continues the response
    "### B.S.\n\nA great read about concurrency and the beginning of a new era.",  # a title, then prose
    "A great read about concurrency.",
    "I think this kit is a good one.",
    "Can't wait to see what I build next!",  # "can't" is not "can"
    "\u00c9crivez une description de ce kit",  # French imperative: not in the English list
    "Beschreibe den Inhalt der Kiste",  # German imperative
    "\u5199\u4e00\u7bc7\u5173\u4e8e\u8fd9\u4e2a\u76d2\u5b50\u7684\u4ecb\u7ecd",  # Chinese, no question mark
    "In 1990 the first kit was sold.",
    "Inside you will find a set of chisels, a mallet and a manual?",  # copies the response, "?" or not
    "What: the box is just the beginning. Inside you will find a set of chisels",  # request word, but a copy
]


@pytest.mark.parametrize("text", REQUESTS)
def test_requests(text: str) -> None:
    assert reads_as_request(text, RESPONSE)
    assert clean_instruction(text, RESPONSE, 1000)[1] == "ok"


@pytest.mark.parametrize("text", NOT_REQUESTS)
def test_not_requests(text: str) -> None:
    assert not reads_as_request(text, RESPONSE)
    instruction, status = clean_instruction(text, RESPONSE, 1000)
    assert status == "not_request" and instruction  # the text is kept on the record
    assert clean_instruction(text, RESPONSE, 1000, require_request=False)[1] == "ok"  # the switch


def test_other_statuses_come_first() -> None:
    assert clean_instruction("", RESPONSE, 1000) == ("", "empty")
    assert clean_instruction("A great read. " * 10, RESPONSE, 50)[1] == "too_long"
    assert clean_instruction(RESPONSE[:60], RESPONSE, 1000)[1] == "echo"  # the exact prefix keeps its status
    assert clean_instruction("Instruction: list the tools in the box", RESPONSE, 1000)[1] == "ok"  # echoed label cut
    assert "not_request" in STATUSES and len(set(STATUSES)) == len(STATUSES)


def test_copy_share_is_measured_on_word_trigrams_of_the_response_start() -> None:
    resp = " ".join(f"w{i}" for i in range(60))  # w0 w1 ... w59
    assert copies_response("w0 w1 w2 w3 w4 w5", resp)  # 4 of 4 trigrams
    assert copies_response("w0 w1 w2 w3 w4 x y", resp)  # 3 of 5 = 0.6: the boundary is a copy
    assert not copies_response("Write: w0 w1 w2 w3 x y", resp)  # 2 of 5
    assert not copies_response("w0 w1 w2 w3 w4", resp)  # 3 trigrams: too short to judge as a copy
    assert copies_response("W0, w1; w2! w3 w4 w5", resp)  # case and punctuation do not matter
    # the start is the instruction's length + 10 words: 6 words -> w0..w15
    assert copies_response("w10 w11 w12 w13 w14 w15", resp)
    assert not copies_response("w13 w14 w15 w16 w17 w18", resp)  # w16.. are past the start: 1 of 4
    assert not copies_response("w30 w31 w32 w33 w34 w35", resp)  # restated later on: not the start


def test_words_are_unicode_and_lowercased() -> None:
    assert words("\u00c9crivez un PO\u00c8ME, s'il vous pla\u00eet!") == ["\u00e9crivez", "un", "po\u00e8me", "s'il", "vous", "pla\u00eet"]
    assert words("** ## --") == []


def test_the_word_list_is_data_and_follows_templates_dir(tmp_path: Path) -> None:
    assert {"write", "explain", "how", "what", "please"} <= shipped().request_words
    folder = tmp_path / "templates"
    shutil.copytree(Path(str(resources.files("selfalign").joinpath("templates"))), folder)
    data = json.loads((folder / "request_words.json").read_text())
    data["words"] = [*data["words"], "beschreibe"]
    (folder / "request_words.json").write_text(json.dumps(data))
    own = Templates.load(folder)
    assert reads_as_request("Beschreibe den Inhalt der Kiste", RESPONSE, own.request_words)
    assert not reads_as_request("Beschreibe den Inhalt der Kiste", RESPONSE)  # the shipped list: no global state
    assert not reads_as_request("Beschreibe den Inhalt der Kiste", RESPONSE, shipped().request_words)


def test_augment_counts_not_request(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.augment as aug
    from selfalign.generation import GenParams, HFEngine
    from selfalign.models import load_tokenizer
    from selfalign.records import UnlabelledResponse

    outputs = ["What does the kit hold?", "The box is just the beginning...", "", "Explain dovetails"]

    def fake_generate(prompts, params, on_result=None, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        for i in range(len(prompts)):  # output i answers prompt i
            if on_result is not None:
                on_result(i, outputs[i])
        return outputs[: len(prompts)]

    engine = HFEngine(None, load_tokenizer(str(tiny_model)), 2, "fake")
    monkeypatch.setattr(engine, "generate", fake_generate)
    responses = [UnlabelledResponse(RESPONSE, f"r{i}") for i in range(4)]
    pairs = aug.augment(engine, responses, GenParams(), tmp_path / "on.jsonl")
    assert [p.status for p in pairs] == ["ok", "not_request", "empty", "ok"]
    counts = status_counts(pairs)
    assert counts["not_request"] == 1 and sum(counts.values()) == 4
    saved = [json.loads(x)["status"] for x in (tmp_path / "on.jsonl").read_text().splitlines()]
    assert sorted(saved) == sorted(p.status for p in pairs)
    off = aug.augment(engine, responses, GenParams(), tmp_path / "off.jsonl", require_request=False)
    assert [p.status for p in off] == ["ok", "ok", "empty", "ok"]
