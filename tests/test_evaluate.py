"""`selfalign evaluate`: planted corruptions, AUC, Wilson interval, the two-order pairwise rule,
and the reports of a finished tiny run (CPU, tiny random model)."""

import itertools
import json
import random
import re
import shutil
from pathlib import Path

import pytest

from selfalign.evaluate import (
    CORRUPTION_KINDS,
    TEXT_KINDS,
    first_sentence,
    judge_pairwise,
    pairwise_outcome,
    parse_verdict,
    plant_corruptions,
    precision_recall,
    replace_section,
    roc_auc,
    wilson_interval,
)
from selfalign.evaluate import judge as ev  # judge_pairwise calls generate from there
from selfalign.generation import Engine, HFEngine
from selfalign.records import SeedPair

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PAIRS = [
    SeedPair(f"Question number {i} about topic {t}?",
             f"Answer {i} starts here about {t}. It has a second sentence! And a third one? Yes, about {t}.", f"id{i}")
    for i, t in enumerate(["cats", "rust", "tea", "rome", "jazz", "chess", "bees", "snow"])
]


# --- planted corruptions ---------------------------------------------------------------------
def test_each_corruption_kind_does_what_it_says() -> None:
    bad = plant_corruptions(PAIRS, seed=0)
    assert len(bad) == len(PAIRS)
    kinds = [k for _, _, k in bad]
    assert sorted(kinds) == sorted(list(TEXT_KINDS) * 2)  # spread evenly
    instructions = [p.instruction for p in PAIRS]
    responses = [p.response for p in PAIRS]
    for p, (ins, resp, kind) in zip(PAIRS, bad, strict=True):
        if kind == "swapped_instruction":
            assert resp == p.response and ins != p.instruction and ins in instructions
        elif kind == "unrelated_response":
            assert ins == p.instruction and resp != p.response and resp in responses
        elif kind == "truncated":
            assert ins == p.instruction and resp == p.response.split(". ")[0] + "."
            assert p.response.startswith(resp) and len(resp) < len(p.response)
        else:
            assert kind == "boilerplate" and ins == p.instruction
            assert resp.startswith(p.response) and len(resp) > len(p.response)
            extra = resp[len(p.response):].lower()
            assert "home" in extra and "share" in extra and "cookie" in extra  # navigation, social, banner


def test_corruptions_are_deterministic_for_a_seed() -> None:
    assert plant_corruptions(PAIRS, seed=3) == plant_corruptions(PAIRS, seed=3)
    assert any(plant_corruptions(PAIRS, seed=s) != plant_corruptions(PAIRS, seed=0) for s in range(1, 5))
    tuples = [(p.instruction, p.response) for p in PAIRS]
    assert plant_corruptions(tuples, seed=3) == plant_corruptions(PAIRS, seed=3)
    only = plant_corruptions(PAIRS, seed=1, kinds=["truncated"])
    assert {k for _, _, k in only} == {"truncated"}
    with pytest.raises(ValueError):
        plant_corruptions(PAIRS[:1], seed=0)
    with pytest.raises(ValueError):
        plant_corruptions(PAIRS, seed=0, kinds=["nonsense"])


def test_first_sentence_always_cuts() -> None:
    assert first_sentence("One. Two. Three.") == "One."
    assert first_sentence("Line one\nline two") == "Line one"
    single = first_sentence("just one long sentence without any end mark at all")
    assert "just one long sentence without any end mark at all".startswith(single)
    assert 0 < len(single) < len("just one long sentence without any end mark at all")


# --- statistics ------------------------------------------------------------------------------
def _auc_bruteforce(labels: list[int], scores: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))


def test_roc_auc_hand_computed() -> None:
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1]) == 1.0  # perfect
    assert roc_auc([1, 1, 0, 0], [0.1, 0.3, 0.8, 0.9]) == 0.0  # inverted
    assert roc_auc([1, 0, 1, 0], [3.0, 3.0, 3.0, 3.0]) == 0.5  # all tied
    # pos {0.8, 0.4} vs neg {0.4, 0.2}: 1 + 1 + 0.5 (tie) + 1 = 3.5 of 4 pairs
    assert roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.2]) == pytest.approx(0.875)
    assert roc_auc([True, False, False], [2.0, 5.0, 0.0]) == pytest.approx(0.5)
    assert roc_auc([1, 1], [0.1, 0.2]) is None and roc_auc([0, 0], [0.1, 0.2]) is None
    rng = random.Random(0)
    for _ in range(20):
        labels = [rng.randint(0, 1) for _ in range(15)] + [0, 1]
        scores = [float(rng.randint(0, 4)) for _ in labels]  # many ties
        assert roc_auc(labels, scores) == pytest.approx(_auc_bruteforce(labels, scores))


def test_precision_recall_never_keeps_unscored() -> None:
    r = precision_recall([1, 1, 1, 0, 0], [5.0, 4.0, None, 4.5, None], threshold=4.0)
    assert r == {"threshold": 4.0, "kept": 3, "precision": pytest.approx(2 / 3, abs=1e-4),
                 "recall": pytest.approx(2 / 3, abs=1e-4)}
    assert precision_recall([1, 0], [1.0, 2.0], 5.0)["precision"] is None


def test_wilson_interval_known_cases() -> None:
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(1, 10)
    assert lo == pytest.approx(0.0179, abs=1e-4) and hi == pytest.approx(0.4042, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- pairwise judging --------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "want"), [
    ("A is more complete.\nWinner: A", "A"),
    ("**Winner:** B", "B"),
    ("Winner: tie", "tie"),
    ("winner: Response B", "B"),
    ("Winner: A\nOn reflection, Winner: B", "B"),
    ("Both are fine.", None),
    ("", None),
])
def test_parse_verdict(text: str, want: str | None) -> None:
    assert parse_verdict(text) == want


def test_outcome_needs_both_orders() -> None:
    assert pairwise_outcome("A", "B") == "win"
    assert pairwise_outcome("B", "A") == "loss"
    for v1, v2 in [("A", "A"), ("B", "B"), ("tie", "B"), ("A", None), (None, None), ("tie", "tie")]:
        assert pairwise_outcome(v1, v2) == "tie"


@pytest.fixture
def fake_engine(tiny_model: Path) -> Engine:
    from selfalign.models import load_tokenizer

    return HFEngine(model=None, tokenizer=load_tokenizer(str(tiny_model)), batch_size=4, name="judge")


INSTR = [f"Tell me about item {i}" for i in range(4)]
FWD = [f"FORWARDTEXT answer {i}" for i in range(4)]
BASE = [f"BASELINETEXT answer {i}" for i in range(4)]


def test_position_biased_judge_gives_only_ties(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "generate", lambda engine, prompts, params, **kw: ["I like the first.\nWinner: A"] * len(prompts))
    s = judge_pairwise(fake_engine, INSTR, FWD, BASE)["summary"]
    assert (s["win"], s["tie"], s["loss"]) == (0, 4, 0)
    assert s["a_rate"] == 1.0 and s["unparsable_verdicts"] == 0 and s["verdicts"] == 8


def _prefers(word: str):  # noqa: ANN202
    def fake(engine, prompts, params, **kw):  # noqa: ANN001, ANN003, ANN202
        seen = []
        for p in prompts:
            a, b = p.index("Response A:"), p.index("Response B:")
            assert a < b
            seen.append("Winner: A" if word in p[a:b] else "Winner: B")
        return seen
    return fake


def test_content_judge_gives_wins_and_losses(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "generate", _prefers("FORWARDTEXT"))
    got = judge_pairwise(fake_engine, INSTR, FWD, BASE)
    s = got["summary"]
    assert (s["win"], s["tie"], s["loss"]) == (4, 0, 0) and s["win_rate"] == 1.0
    assert s["win_rate_ci95"][0] == pytest.approx(wilson_interval(4, 4)[0], abs=1e-4)
    assert all(it["verdict_x_as_a"] == "A" and it["verdict_x_as_b"] == "B" for it in got["items"])
    monkeypatch.setattr(ev, "generate", _prefers("BASELINETEXT"))
    s = judge_pairwise(fake_engine, INSTR, FWD, BASE)["summary"]
    assert (s["win"], s["tie"], s["loss"]) == (0, 0, 4)
    monkeypatch.setattr(ev, "generate", lambda engine, prompts, params, **kw: ["no idea"] * len(prompts))
    s = judge_pairwise(fake_engine, INSTR, FWD, BASE)["summary"]
    assert s["tie"] == 4 and s["unparsable_verdicts"] == 8


def test_replace_section_keeps_the_rest() -> None:
    text = "# report\n\n## Counts\n\nx\n\n## Evaluation\n\nold\n\n### sub\n\nold too\n\n## Later\n\nkept\n"
    new = replace_section(text, "## Evaluation\n\nnew\n")
    assert "old" not in new and "new" in new and "## Later\n\nkept" in new and new.count("## Evaluation") == 1
    assert replace_section("# r\n", "## Evaluation\n\nA\n") == "# r\n\n## Evaluation\n\nA\n"


# --- instruction recovery: ROUGE-L, true prompts of LIMA rows -----------------------------
def _lcs_bruteforce(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    if a[0] == b[0]:
        return 1 + _lcs_bruteforce(a[1:], b[1:])
    return max(_lcs_bruteforce(a[1:], b), _lcs_bruteforce(a, b[1:]))


def test_rouge_l_f1_hand_computed() -> None:
    from selfalign.evaluate import lcs_length, rouge_l_f1

    assert rouge_l_f1("Write a poem about cats.", "write a poem about CATS") == 1.0  # case and punctuation
    # LCS "the cat on the mat" = 5 of 6 words on both sides: P = R = F1 = 5/6
    assert rouge_l_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "a c" = 2: P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert rouge_l_f1("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l_f1("b a", "a b") == pytest.approx(0.5)  # order matters: LCS 1
    assert rouge_l_f1("dogs bark", "cats meow") == 0.0
    assert rouge_l_f1("", "a b") == 0.0 and rouge_l_f1("a b", "?!") == 0.0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook case
    rng = random.Random(0)
    for _ in range(30):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        assert lcs_length(a, b) == lcs_length(b, a) == _lcs_bruteforce(a, b)


def test_true_prompts_use_the_source_ids_of_the_unlabelled_loader(tmp_path: Path) -> None:
    from selfalign.evaluate import recovery_pairs, true_prompts
    from selfalign.records import AugmentedPair
    from selfalign.unlabelled import load_unlabelled

    rows = [{"conversations": ["Name a red fruit.", "An apple is red."], "source": "s"},
            {"conversations": ["Hi", "Hello", "How are you?", "Fine"], "source": "multi_turn"},
            {"text": "A response without a prompt."},
            "not an object",
            {"conversations": ["  Why is the sky blue?  ", "Rayleigh scattering."], "source": "s"}]
    f = tmp_path / "lima.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = true_prompts(str(f))
    assert got == {"lima.jsonl:1": ("Name a red fruit.", "An apple is red."),
                   "lima.jsonl:5": ("Why is the sky blue?", "Rayleigh scattering.")}
    loaded = {r.source_id: r.response for r in load_unlabelled(str(f))}
    assert all(loaded[sid] == resp for sid, (_, resp) in got.items())  # same ids, same responses

    def pair(sid: str, resp: str) -> AugmentedPair:
        return AugmentedPair("Q?", resp, sid, "s", "Q?")

    augmented = [pair("lima.jsonl:3", "A response without a prompt."), pair("lima.jsonl:5", "Changed since."),
                 pair("lima.jsonl:1", "An apple is red."), pair("lima.jsonl:5", "Rayleigh scattering.")]
    picked, skipped = recovery_pairs(augmented, got, n=5)
    assert [(p.source_id, t) for p, t in picked] == [("lima.jsonl:1", "Name a red fruit."),
                                                    ("lima.jsonl:5", "Why is the sky blue?")]
    assert skipped == {"no_true_prompt": 1, "response_changed": 1}
    assert len(recovery_pairs(augmented, got, n=1)[0]) == 1


# --- held-out data: paths from options, not guessed ------------------------------------------
def test_heldout_file_comes_from_the_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import selfalign
    from selfalign.config import Config, load_config
    from selfalign.evaluate import load_heldout
    from selfalign.io import DataError

    assert Config().evaluate.oasst1_val is None  # the package names no file of a checkout
    sample = Path(selfalign.__file__).parent / "sample_data" / "seed.jsonl"
    cfg = load_config(None, [f"data.seed={sample}", f"run.out_dir={tmp_path / 'run'}"])
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"^evaluate.oasst1_val is not set \(held-out source oasst1\)"):
        load_heldout(cfg, run, 4, "oasst1")
    capsys.readouterr()
    _, info = load_heldout(cfg, run, 4, "auto")  # no file named: the unused seed rows, said
    assert info["source"] == "seed" and "no OASST1 validation file (evaluate.oasst1_val)" in capsys.readouterr().out
    missing = tmp_path / "nowhere" / "val.jsonl"
    with pytest.raises(DataError, match=re.escape(str(missing)) + r": not found .*--heldout PATH"):
        load_heldout(cfg, run, 4, "oasst1", oasst1_val=missing)
    capsys.readouterr()
    _, info = load_heldout(cfg, run, 4, "auto", oasst1_val=missing)  # falls back, and says so
    assert info["source"] == "seed" and f"{missing} not found" in capsys.readouterr().out
    val = tmp_path / "val.jsonl"
    val.write_text("".join(sample.read_text().splitlines(keepends=True)[-6:]))
    pairs, info = load_heldout(cfg, run, 4, "auto", oasst1_val=val)
    assert (info["source"], info["path"], len(pairs)) == ("oasst1", str(val), 4)
    with pytest.raises(DataError, match="file not found"):
        load_heldout(cfg, run, 4, str(tmp_path / "other.jsonl"))


# --- a finished tiny run ---------------------------------------------------------------------
def _valid_png(path: Path) -> None:
    import matplotlib.image as mpimg
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    assert mpimg.imread(str(path)).shape[0] > 50


@pytest.mark.slow  # > 8 s (the fast tier stays under 3 min; CI runs it)
def test_evaluate_finished_tiny_run(smoke_cfg, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign import record_log as sio
    from selfalign.evaluate import LENGTH, eval_modes, evaluate_run, load_heldout, write_eval_report
    from selfalign.evaluate import run as ev_run
    from selfalign.pipeline import run_pipeline

    cfg = smoke_cfg.model_copy(deep=True)
    cfg.data.seed_limit = 8
    cfg.data.unlabelled_n = 6
    run = run_pipeline(cfg)
    d = run.dir
    # a second iteration's model (a copy of M1 here) turns on the M2-vs-M1 comparison
    shutil.copytree(d / "forward_1", d / "forward_2")
    capsys.readouterr()

    trained = {json.loads(x)["instruction"] for x in (d / "seed" / "pairs.jsonl").read_text().splitlines()}
    unused, info = load_heldout(cfg, d, 5, "seed")
    assert len(unused) == 5 and info["excluded_as_trained"] == 8
    assert not {p.instruction for p in unused} & trained

    human = Path(__file__).parent / "data" / "oasst1_messages.jsonl"
    cfg.evaluate.n_heldout, cfg.evaluate.n_prompts, cfg.evaluate.n_recovery = 6, 3, 40
    cfg.evaluate.n_human, cfg.evaluate.human = 40, str(human)
    res = evaluate_run(cfg)
    out = capsys.readouterr().out
    assert "evaluate: done" in out
    saved = json.loads((d / "eval" / "evaluation.json").read_text())
    c = saved["curation"]
    assert c["n_good"] == 6 and c["n_bad"] == 6
    assert 0.0 <= c["roc_auc"] <= 1.0
    assert set(c["by_kind"]) <= {"good", *CORRUPTION_KINDS}
    assert set(c["modes"]) == {*eval_modes(), LENGTH} and c["mode"] == cfg.curation.mode
    for row in c["modes"].values():
        assert set(row["auc_by_kind"]) == set(c["kinds"]) and row["human_auc"] is not None
        lo, hi = row["auc_ci95"]
        assert lo - 1e-9 <= row["auc"] <= hi + 1e-9
        assert row["human_paired"]["n_prompts"] == 3 and 0.0 <= row["human_paired"]["win_rate"] <= 1.0
    assert all("auc_delta" in c["modes"][m]["human_paired"] for m in eval_modes())  # against length
    assert c["human"]["n_prompts"] == 3
    # 6 held-out pairs: every kind but one is planted (the shipped sample seed has no non-English prose)
    assert "other_language" in c["planted"]["skipped_kinds"] and "base_instruction" in c["kinds"]
    for mode in eval_modes():
        assert len((d / "eval" / f"rated_planted_{mode}.jsonl").read_text().splitlines()) == 12
        assert len((d / "eval" / f"rated_human_{mode}.jsonl").read_text().splitlines()) == 6
    heldout = [json.loads(x) for x in (d / "eval" / "heldout.jsonl").read_text().splitlines()]
    assert not {h["instruction"] for h in heldout} & trained
    b = saved["backward"]
    assert b["n_pairs"] == 6 and b["base"]["nll_per_token"] > 0 and b["backward"]["nll_per_token"] > 0
    assert len(b["examples"]) == 5
    r = saved["recovery"]  # the run's 6 augmented pairs: shipped OASST1 rows, each with its prompt
    assert r["augmented"] == 6 and r["n"] == 6 and r["skipped"] == {"no_true_prompt": 0, "response_changed": 0}
    assert r["nll"]["n_pairs"] == 6 and r["nll"]["base"]["nll_per_token"] > 0 and r["nll"]["backward"]["nll_per_token"] > 0
    recs = [json.loads(x) for x in (d / "eval" / "recovery.jsonl").read_text().splitlines()]
    aug = {json.loads(x)["source_id"]: json.loads(x) for x in (d / "augment" / "augmented.jsonl").read_text().splitlines()}
    prompts = {json.loads(x)["conversations"][1].strip(): json.loads(x)["conversations"][0].strip()
               for x in Path(r["source"]).read_text().splitlines()}
    for rec in recs:
        assert rec["true_prompt"] == prompts[aug[rec["source_id"]]["response"]]  # the row's own prompt
        assert (rec["backward_instruction"], rec["backward_status"]) == (aug[rec["source_id"]]["instruction"],
                                                                         aug[rec["source_id"]]["status"])
    for m in ("base", "backward"):
        assert r["rouge_l_f1"][m] == pytest.approx(sum(x[f"{m}_rouge_l_f1"] for x in recs) / 6, abs=1e-3)
        assert sum(r["status_share"][m].values()) == pytest.approx(1.0)
    assert len(r["examples"]) == 5
    comps = [(x["x"], x["y"]) for x in saved["forward"]["comparisons"]]
    assert comps == [("forward", "base"), ("forward", "forward_1")]
    for x in saved["forward"]["comparisons"]:
        assert x["win"] + x["tie"] + x["loss"] == x["n"] == 3 and x["ci_method"] == "wilson"
    assert set(saved["forward"]["lengths"]) == {"base", "forward", "forward_1"}
    assert res["curation"] == c

    for name in ("funnel", "scores", "loss", "eval_scores", "pairwise"):
        _valid_png(d / f"{name}.png")
    _valid_png(d / "eval" / "curation_modes.png")
    page = (d / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 6
    assert "Evaluation" in page and "Wilson" in page and "Curation modes" in page
    report = (d / "report.md").read_text()
    assert report.count("## Evaluation") == 1 and "## Counts" in report and "ROC AUC" in report
    assert "![funnel](funnel.png)" in report and "![curation_modes](eval/curation_modes.png)" in report
    modes_table = report[report.index("### Curation modes"):].split("\n\n")[1].splitlines()
    assert len(modes_table) == 2 + len(eval_modes()) + 1  # header, rule, one row per mode, length
    assert "### Instruction recovery: true prompts of 6 augmented pairs" in report and "ROUGE-L F1" in report
    assert "Instruction recovery: true vs generated prompts" in page
    # re-rendering replaces the section instead of adding a second one
    write_eval_report(d, saved)
    again = (d / "report.md").read_text()
    assert again.count("## Evaluation") == 1 and "## Responses of the forward model" in again

    # re-running reuses the ratings, responses and judgments (their inputs did not change)
    monkeypatch.setattr(sio.RecordLog, "append", lambda *a: pytest.fail("a rating was redone"))
    monkeypatch.setattr(ev_run, "model_responses", lambda *a: pytest.fail("responses were regenerated"))
    monkeypatch.setattr(ev_run, "judge_pairwise", lambda *a: pytest.fail("judgments were redone"))
    monkeypatch.setattr(ev_run, "evaluate_backward", lambda *a: pytest.fail("the backward model was re-measured"))
    monkeypatch.setattr(ev_run, "evaluate_recovery", lambda *a, **k: pytest.fail("recovery was redone"))
    rerun = evaluate_run(cfg, report=False)
    assert rerun["curation"] == c and rerun["forward"]["comparisons"] == saved["forward"]["comparisons"]
    assert rerun["backward"] == saved["backward"] and rerun["recovery"] == saved["recovery"]
    assert "backward model's measurement reused" in capsys.readouterr().out
    # a retrained backward adapter: both of its measurements are redone
    calls = []
    monkeypatch.setattr(ev_run, "evaluate_backward", lambda *a: calls.append("backward") or saved["backward"])
    monkeypatch.setattr(ev_run, "evaluate_recovery", lambda *a, **k: calls.append("recovery") or saved["recovery"])
    weights = next(p for p in (d / "backward").iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes() + b"\0")
    evaluate_run(cfg, report=False)
    assert calls == ["backward", "recovery"]


def test_human_set_comes_from_the_evaluate_section(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate.human: none named, or a file of the config that is absent: no human-judged set,
    said in one line; a file typed as an option or override that is absent: an error; found
    relative to the config file's folder as data paths are."""
    from selfalign.config import load_config
    from selfalign.evaluate.run import human_set
    from selfalign.io import DataError

    fixture = Path(__file__).parent / "data" / "oasst1_messages.jsonl"
    monkeypatch.chdir(tmp_path)
    pairs, info = human_set(load_config(None, ["evaluate.human=null"]), [])
    assert pairs == [] and "evaluate.human names no OASST1 messages file" in capsys.readouterr().out
    assert human_set(load_config(None, ["evaluate.n_human=0"]), [])[1]["note"] == "not asked for (evaluate.n_human: 0)"
    conf = tmp_path / "project"
    (conf / "oasst1").mkdir(parents=True)
    (conf / "c.yaml").write_text("evaluate:\n  human: oasst1/messages.jsonl\n  n_human: 2\n")
    pairs, info = human_set(load_config(conf / "c.yaml"), [])
    assert pairs == [] and info["note"] == "oasst1/messages.jsonl not found: no human-judged set (pass --human PATH)"
    with pytest.raises(DataError, match="missing.jsonl: not found"):
        human_set(load_config(conf / "c.yaml", values={"evaluate.human": "missing.jsonl"}), [])
    (conf / "oasst1" / "messages.jsonl").write_bytes(fixture.read_bytes())
    pairs, info = human_set(load_config(conf / "c.yaml"), [])
    assert info["n_prompts"] == 2 and len(pairs) == 4 and info["path"] == str(conf / "oasst1" / "messages.jsonl")
