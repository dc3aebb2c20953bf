import json
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfalign import rank
from selfalign.config import load_config
from selfalign.curate import (
    RATING_STOPS,
    curation_stats,
    parse_score,
    parse_score_detail,
    rate_pairs,
    reasoning_of,
    select,
    write_curated,
)
from selfalign.generation import HFEngine
from selfalign.prompts import shipped
from selfalign.records import AugmentedPair, RatedPair

# (rater output, expected score or None)
SCORE_TABLE = [
    ("The answer is complete.\nScore: 4", 4.0),
    ("Reasoning...\nscore: 4/5", 4.0),
    ("**Score:** 5", 5.0),
    ("Score: 4.5", 4.5),
    ("The answer is fine.\n3", 3.0),
    ("Good answer. Score: 2.", 2.0),
    ("SCORE: 1", 1.0),
    ("Score = 3", 3.0),
    ("Rating: 4", 4.0),
    ("My score is 5", 5.0),
    ("Score: 8/10", 4.0),
    ("Score: 9", None),  # out of range
    ("Score: 0", None),
    ("Score: 42", None),
    ("", None),
    ("I cannot rate this answer.", None),
    ("La respuesta es buena. Puntuación: cinco", None),  # another language, no number
    ("Score: 3\nOn reflection, Score: 5", 5.0),  # the last score line wins
    ("The list has 3 items and 2 errors, so overall the answer is weak.\nScore: 2", 2.0),
    ("Score:4", 4.0),
    ("  5  ", 5.0),
    ("Score: <rating>", None),
    ("(4)", 4.0),
    ("Score: 3/7", None),
]


@pytest.mark.parametrize("text,expected", SCORE_TABLE)
def test_parse_score_table(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


def test_parse_score_reports_why() -> None:
    assert parse_score_detail("Score: 9") == (None, "out_of_range")
    assert parse_score_detail("no number here") == (None, "no_score")
    assert parse_score_detail(None) == (None, "no_score")  # type: ignore[arg-type]


def test_score_table_is_large_enough() -> None:
    assert len(SCORE_TABLE) >= 20


def test_reasoning_drops_the_score_line() -> None:
    assert reasoning_of("It is clear and complete.\nScore: 5") == "It is clear and complete."


def test_rating_prompt_is_the_papers_table_1_verbatim() -> None:
    p = shipped().rating_prompt
    assert p.startswith("Below is an instruction from an user and a candidate answer. Evaluate whether or not "
                        "the answer is a good example of how AI Assistant should respond to the user's instruction. "
                        "Please assign a score using the following 5-point scale:\n1: It means the answer is incomplete,")
    # the paper's typos are kept
    assert "from an user" in p and "It provide a complete, clear, and comprehensive response" in p
    assert "3: It means the answer is helpful but not written by an AI Assistant." in p
    assert "mentions comments section, or share on social media, etc." in p
    assert "engaging and insightful." in p
    assert 'Please first provide a brief reasoning you used to derive the rating score, and then write "Score: <rating>" in the last line.' in p
    assert p.rstrip().endswith("{instruction}\n\n{response}")
    assert [line[:2] for line in p.splitlines() if line[:1].isdigit()] == ["1:", "2:", "3:", "4:", "5:"]


def test_fewshot_examples_cover_low_and_high_scores() -> None:
    shots = shipped().rating_fewshot
    assert len(shots) >= 3
    first3 = {s["score"] for s in shots[:3]}
    assert min(first3) <= 2 and max(first3) >= 4
    for s in shots:
        assert parse_score(f"{s['reasoning']}\nScore: {s['score']}") == s["score"]


def test_rating_messages_prepend_k_shots() -> None:
    m0 = shipped().rating_messages("Do X", "Done.", 0)
    m3 = shipped().rating_messages("Do X", "Done.", 3)
    assert len(m0) == 1 and len(m3) == 7
    assert m3[1]["role"] == "assistant" and "Score:" in m3[1]["content"]
    assert m3[-1]["content"].endswith("Do X\n\nDone.\n")
    with pytest.raises(ValueError):
        shipped().rating_messages("x", "y", 99)


def rated(scores: list[float | None]) -> list[RatedPair]:
    return [RatedPair(f"i{k}", f"r{k}", str(k), "s", s, "") for k, s in enumerate(scores)]


def test_threshold_selection() -> None:
    rs = rated([5, 4.5, 4, 3.99, 3, None, 1])
    assert [r.score for r in select(rs, 4.0)] == [5, 4.5, 4]
    assert [r.score for r in select(rs, 4.5)] == [5, 4.5]
    assert [r.score for r in select(rs, 5.0)] == [5]
    stats = curation_stats(rs, 4.0)
    assert stats["kept"] == 3 and stats["unscored"] == 1 and stats["histogram"]["4"] == 2


def test_curated_folder_loads_with_datasets(tmp_path: Path) -> None:
    import datasets

    kept = rated([5, 4])
    out = write_curated(kept, tmp_path / "curated", {"base": "b", "rater": "r", "threshold": 4, "kept": 2})
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows == 2 and ds[0]["instruction"] == "i0" and ds[0]["score"] == 5
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "threshold" in card and "from an user" in card


class FakeTok:
    """Renders and tokenizes nothing: the fake engine below only needs the text."""

    chat_template = None
    bos_token = ""
    eos_token = "</s>"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": list(range(len(text.split())))}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join("w" for _ in ids)


def test_rate_pairs_retries_failures_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rater that first answers without a score is retried; a crash mid-way loses nothing."""
    import selfalign.curate as curate

    calls: list[int] = []

    def fake_generate(engine, prompts, params, on_result=None, desc="", progress=True, seeds=None):
        calls.append(len(prompts))
        assert params.stop == RATING_STOPS  # every rating pass stops at the score line
        out = []
        for p in prompts:
            if "NOSCORE" in p and params.temperature == 0:
                out.append("I refuse to give a number.")
            elif "NEVER" in p:
                out.append("Je ne sais pas.")
            else:
                out.append("Clear and complete.\nScore: 5")
        return out

    monkeypatch.setattr(curate, "generate", fake_generate)
    engine = HFEngine(model=None, tokenizer=FakeTok())
    pairs = [AugmentedPair(f"instr {k}", resp, str(k), "s", "") for k, resp in
             enumerate(["fine answer", "NOSCORE answer", "NEVER answer"])]
    cur = load_config(None, ["curation.retries=2", "curation.mode=generate", "curation.force_score=false"]).curation
    out = rate_pairs(engine, pairs, cur, tmp_path / "rated.jsonl")
    assert [r.score for r in out] == [5.0, 5.0, None]
    assert out[1].parse_failures == 1 and len(out[1].raw_outputs) == 2
    assert out[2].parse_failures == 3  # first try + 2 retries
    assert calls == [3, 2, 1]
    stats = curation_stats(out, 4.0)
    assert stats["parse_failure_rate"] == round(4 / 6, 3)
    # re-running finds every record in the log and rates nothing again
    calls.clear()
    again = rate_pairs(engine, pairs, cur, tmp_path / "rated.jsonl")
    assert calls == [] and [r.score for r in again] == [5.0, 5.0, None]
    lines = (tmp_path / "rated.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len({json.loads(x)["source_id"] for x in lines}) == 3


def test_rating_stops_are_score_lines_the_parser_reads() -> None:
    for stop in RATING_STOPS:
        assert parse_score(f"Some reasoning.\n{stop}") == float(stop[-1])
        assert reasoning_of(f"Some reasoning.\n{stop}") == "Some reasoning."
    assert {s[-1] for s in RATING_STOPS} == set("12345")


def _forcing_generate(seen: list[tuple[list[str], object]]):
    """A rater that rambles past its budget on LONG pairs and answers " 4" after a forced "Score:"."""

    def fake_generate(engine, prompts, params, on_result=None, desc="", progress=True, seeds=None):
        seen.append((prompts, params))
        return [" 4\nand more" if p.endswith("Score:") else
                "It rambles on and on" if "LONG" in p else "Fine.\nScore: 5" for p in prompts]

    return fake_generate


@pytest.mark.parametrize("force", [True, False])
def test_force_score_reads_the_score_after_the_unfinished_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool) -> None:
    import selfalign.curate as curate

    seen: list[tuple[list[str], object]] = []
    monkeypatch.setattr(curate, "generate", _forcing_generate(seen))
    engine = HFEngine(model=None, tokenizer=FakeTok())
    pairs = [AugmentedPair("instr 0", "fine answer", "0", "s", ""), AugmentedPair("instr 1", "LONG answer", "1", "s", "")]
    cur = load_config(None, ["curation.mode=generate", "curation.retries=1",
                             f"curation.force_score={str(force).lower()}"]).curation
    out = rate_pairs(engine, pairs, cur, tmp_path / "rated.jsonl")
    stats = curation_stats(out, 4.0)
    assert out[0].score == 5.0 and not out[0].forced_score
    assert out[1].parse_failures == 2  # first pass + 1 retry; the forced pass is not a parse failure
    assert stats["parse_failure_rate"] == round(2 / 3, 3)  # over generated outputs, not forced ones
    if not force:
        assert out[1].score is None and not out[1].forced_score and len(seen) == 2
        assert stats["forced_score"] == 0
        return
    prompts, params = seen[-1]
    assert len(prompts) == 1 and prompts[0].endswith("It rambles on and on\nScore:")
    assert params.temperature == 0 and params.max_new_tokens <= 4
    assert out[1].score == 4.0 and out[1].forced_score and out[1].ratings == [4.0]
    assert out[1].raw_outputs[-1] == "It rambles on and on\nScore: 4"
    assert (stats["forced_score"], stats["forced_scored"]) == (1, 1)


def test_force_score_on_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    """The forced pass on a real engine: pairs without a score get one more output, the first one
    plus a "Score:" line, and a score only from that line."""
    from selfalign.generation import load_engine

    cfg = load_config(None, ["curation.mode=generate", "curation.shots=0", "curation.retries=0", "curation.max_new_tokens=6",
                             "curation.force_score=true", "generation.batch_size=2"])
    engine = load_engine(cfg, str(tiny_model))
    pairs = [AugmentedPair(f"instruction {k}?", f"response number {k}.", str(k), "s", "") for k in range(3)]
    out = rate_pairs(engine, pairs, cfg.curation, tmp_path / "r.jsonl")
    assert any(r.forced_score for r in out), "the tiny model wrote a score: nothing was forced"
    for r in out:
        assert r.forced_score == (parse_score(r.raw_outputs[0]) is None)
        if r.forced_score:
            assert len(r.raw_outputs) == 2 and r.raw_outputs[1].startswith(r.raw_outputs[0].rstrip())
            line = r.raw_outputs[1].splitlines()[-1]
            assert line.startswith("Score:") and r.score == parse_score(line)


def test_logprob_mode_gives_expected_score(tiny_model: Path, tmp_path: Path) -> None:
    from selfalign.generation import load_engine

    cfg = load_config(None, [f"models.base={tiny_model}", "curation.mode=logprob"])
    engine = load_engine(cfg, str(tiny_model))
    pairs = [AugmentedPair(f"instruction {k}?", f"response number {k}.", str(k), "s", "") for k in range(3)]
    out = rate_pairs(engine, pairs, cfg.curation, tmp_path / "r.jsonl")
    assert all(r.score is not None and 1.0 <= r.score <= 5.0 for r in out)
    assert all("next-token probabilities" in r.reasoning for r in out)


@given(st.text())
def test_parse_score_never_raises_and_stays_in_range(text: str) -> None:
    score, status = parse_score_detail(text)
    assert status in ("ok", "no_score", "out_of_range")
    assert (score is None) == (status != "ok")
    if score is not None:
        assert 1.0 <= score <= 5.0


@given(st.integers(1, 5), st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=200))
def test_parse_score_round_trip(n: int, reasoning: str) -> None:
    """Any reasoning without digits, then the requested last line, parses back to the score."""
    assert parse_score(f"{reasoning}\nScore: {n}") == n


def _ranked_pairs(n: int = 5) -> list[AugmentedPair]:
    return [AugmentedPair(f"Write about item {k}.", f"Item {k} is a thing. " * (k + 1), str(k), "s", "")
            for k in range(n)]


@pytest.mark.parametrize("mode", ["likelihood", "combined", "quality"])
def test_likelihood_modes_write_parts_and_rank_scores(tiny_model: Path, tmp_path: Path, mode: str) -> None:
    import math

    from selfalign.generation import load_engine
    from selfalign.likelihood import pair_likelihoods

    cfg = load_config(None, [f"models.base={tiny_model}", f"curation.mode={mode}"])
    engine = load_engine(cfg, str(tiny_model))
    pairs = _ranked_pairs()
    out = rate_pairs(engine, pairs, cfg.curation, tmp_path / "r.jsonl", max_response_tokens=12)
    direct = pair_likelihoods(engine.model, engine.tokenizer, [(p.instruction, p.response) for p in pairs], 12,
                              progress=False, roles=True)
    # the combined value, computed here apart: each signal's robust z among the 5, sum of the negative parts
    signals = [[math.log(max(1 - d.ifd, 1e-4)) for d in direct], [d.end_logprob for d in direct],
               [-d.worst_segment_ratio for d in direct], [d.role_margin for d in direct]]
    # the quality value adds the full z-scores of -NLL(response | instruction) and log(1 + characters)
    quality = [[-d.nll_conditional for d in direct], [math.log(1 + len(p.response)) for p in pairs]]

    def z(col: list[float]) -> list[float]:
        med = statistics.median(col)
        mad = 1.4826 * statistics.median(abs(v - med) for v in col)
        return [(v - med) / mad for v in col]

    zs, zq = [z(col) for col in signals], [z(col) for col in quality]
    for k, (r, d) in enumerate(zip(out, direct, strict=True)):
        assert r.parts["ifd"] == pytest.approx(d.ifd, abs=1e-4)
        assert r.parts["role_margin"] == pytest.approx(d.role_margin, abs=1e-4)
        want = 1 - d.ifd if mode == "likelihood" else sum(min(0.0, z[k]) for z in zs)
        if mode == "quality":
            want += zq[0][k] + zq[1][k]
            assert r.parts["z"]["length"] == pytest.approx(zq[1][k], abs=1e-3)
        assert r.parts["value"] == pytest.approx(want, abs=1e-3)
        assert r.response_cut == d.cut
    assert any(r.response_cut for r in out)  # the long responses were cut to 12 tokens (head and tail)
    # scores are the rank of the value: 1 for the lowest, 5 for the highest, ties sharing their mean rank
    values = [r.parts["value"] for r in out]
    for r in out:
        below = sum(v < r.parts["value"] - 1e-9 for v in values)
        tied = sum(abs(v - r.parts["value"]) <= 1e-9 for v in values)
        assert r.score == pytest.approx(1 + 4 * (below + (tied - 1) / 2) / 4, abs=1e-3)
    saved = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [s["score"] for s in saved] == [r.score for r in out] and all("parts" in s for s in saved)


def test_likelihood_mode_resumes_without_rescoring(tiny_model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.generation import load_engine

    cfg = load_config(None, [f"models.base={tiny_model}", "curation.mode=combined"])
    engine = load_engine(cfg, str(tiny_model))
    pairs = _ranked_pairs(6)
    whole = rate_pairs(engine, pairs, cfg.curation, tmp_path / "whole.jsonl")
    monkeypatch.setattr(rank, "CHUNK", 2)
    real, calls, kill = rank.score_likelihood, [], [True]

    def failing(engine, chunk, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append([p.source_id for p in chunk])
        if len(calls) == 2 and kill.pop():
            raise RuntimeError("killed")
        return real(engine, chunk, *a, **k)

    monkeypatch.setattr(rank, "score_likelihood", failing)
    with pytest.raises(RuntimeError, match="killed"):
        rate_pairs(engine, pairs, cfg.curation, tmp_path / "r.jsonl")
    calls.clear()
    kill.append(False)
    again = rate_pairs(engine, pairs, cfg.curation, tmp_path / "r.jsonl")
    assert calls == [["2", "3"], ["4", "5"]]  # the first chunk was not scored again
    assert [r.score for r in again] == [r.score for r in whole]
    # z-scores divide by a spread of a few pairs: float32 batch effects (1e-4) may show, scaled
    assert [r.parts["value"] for r in again] == pytest.approx([r.parts["value"] for r in whole], abs=1e-3)


def test_role_margins_are_computed_once_per_instruction_across_chunks(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfalign.likelihood as likelihood
    from selfalign.generation import load_engine

    cfg = load_config(None, [f"models.base={tiny_model}", "curation.mode=combined"])
    engine = load_engine(cfg, str(tiny_model))
    # 3 instructions, each with two responses that land in different chunks of 2 (as evaluate's
    # good pairs and their planted copies, or a prompt's best and last human-judged replies)
    pairs = [AugmentedPair(f"Write about item {k % 3}.", f"Item {k} is a thing. " * (k + 1), str(k), "s", "")
             for k in range(6)]
    whole = rate_pairs(engine, pairs, cfg.curation, tmp_path / "whole.jsonl")
    monkeypatch.setattr(rank, "CHUNK", 2)
    real, scored = likelihood.token_logprobs, []

    def counting(model, seqs, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if a[3:4] == ("instruction roles",) or k.get("desc") == "instruction roles":
            scored.append(len(seqs))
        return real(model, seqs, *a, **k)

    monkeypatch.setattr(likelihood, "token_logprobs", counting)
    chunked = rate_pairs(engine, pairs, cfg.curation, tmp_path / "r.jsonl")
    assert sum(scored) == 2 * 3  # two passes (user, assistant) per distinct instruction, not per pair
    assert [r.parts["role_margin"] for r in chunked] == pytest.approx([r.parts["role_margin"] for r in whole],
                                                                      abs=1e-4)
    # a resumed run reads the known instructions' NLLs from the records it already has
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    (tmp_path / "r.jsonl").write_text("\n".join(lines[:3]) + "\n")
    scored.clear()
    again = rate_pairs(engine, pairs, cfg.curation, tmp_path / "r.jsonl")
    assert sum(scored) == 0 and [r.score for r in again] == [r.score for r in chunked]


@pytest.mark.parametrize("mode", ["likelihood", "combined", "quality"])
def test_rank_step_batches_rank_like_the_local_stage(tiny_model: Path, tmp_path: Path, mode: str) -> None:
    from selfalign.generation import load_engine
    from selfalign.rank import RankStep

    cfg = load_config(None, [f"models.base={tiny_model}", f"curation.mode={mode}"])
    engine = load_engine(cfg, str(tiny_model))
    pairs = _ranked_pairs(4)
    local = rate_pairs(engine, pairs, cfg.curation, tmp_path / "local.jsonl", max_response_tokens=256)
    step = RankStep(shipped(), mode, 256)  # as a Ray actor runs it: batch by batch, ranked at the end
    rows = step.run(engine, pairs[:2], isolate=True) + step.run(engine, pairs[2:], isolate=True)
    assert all(r.score is None for r in rows)  # rows alone have no rank
    ranked = step.finish(rows)
    assert [r.score for r in ranked] == [r.score for r in local]
    assert [r.parts["value"] for r in ranked] == pytest.approx([r.parts["value"] for r in local], abs=1e-3)


def test_robust_z_median_mad_and_its_fallbacks() -> None:
    from selfalign.rank import robust_z

    z = robust_z([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, deviations 2 1 0 1 97: MAD 1
    assert z == pytest.approx([-2 / 1.4826, -1 / 1.4826, 0.0, 1 / 1.4826, 97 / 1.4826])
    z = robust_z([5.0, 5.0, 5.0, 5.0, 9.0])  # MAD 0: the mean absolute deviation (0.8) x 1.2533
    assert z == pytest.approx([0.0, 0.0, 0.0, 0.0, 4 / (0.8 * 1.2533)])
    assert robust_z([2.0, 2.0]) == [0.0, 0.0] and robust_z([]) == []


def test_combined_value_penalizes_each_bad_signal_and_never_rewards() -> None:
    from selfalign.rank import combine

    def rec(sid: str, ifd: float, end: float, seg: float, role: float) -> RatedPair:
        return RatedPair("i", "r", sid, "s", None, "", parts={"ifd": ifd, "end_logprob": end, "worst_segment_ratio": seg,
                                                           "role_margin": role, "n_tokens": 10})

    typical = [rec(str(k), 0.8 + 0.01 * k, -1.0 - 0.1 * k, 1.0 + 0.01 * k, 0.5 - 0.1 * k) for k in range(6)]
    truncated = rec("cut", 0.8, -9.0, 1.0, 0.5)  # only the end signal is bad
    mismatched = rec("swap", 0.999, -1.0, 1.0, 0.5)  # only the explained share is bad
    best = rec("best", 0.5, -0.1, 0.9, 2.0)  # better than typical on every signal
    error = RatedPair("i", "r", "err", "s", None, "", status="error", error="boom")
    out = {r.source_id: r for r in combine([*typical, truncated, mismatched, best, error])}
    assert out["best"].parts["value"] == 0.0 and all(v > 0 for v in out["best"].parts["z"].values())
    assert out["cut"].parts["z"]["end"] < -3 and out["cut"].parts["value"] < min(out[str(k)].parts["value"]
                                                                                 for k in range(6))
    assert out["swap"].parts["z"]["explained"] < -3 and out["swap"].parts["value"] < out["0"].parts["value"]
    assert out["err"].parts == {}  # no likelihood parts: no value
    assert all(r.parts["value"] <= 0 for r in out.values() if r.parts)


def test_quality_value_adds_fluency_and_length_to_the_combined_penalties() -> None:
    from selfalign.rank import combine

    def rec(sid: str, response: str, nll: float, ifd: float = 0.8, end: float = -1.0) -> RatedPair:
        return RatedPair("i", response, sid, "s", None, "", parts={
            "ifd": ifd, "end_logprob": end, "worst_segment_ratio": 1.0, "role_margin": 0.5, "n_tokens": 10,
            "nll_conditional": nll})

    typical = [rec(str(k), "x" * (100 + 10 * k), 2.0 + 0.05 * k, 0.8 + 0.01 * k, -1.0 - 0.1 * k) for k in range(6)]
    fluent_long = rec("good", "x" * 400, 1.5)  # typical on the combined signals, more fluent and longer
    terse = rec("terse", "x" * 20, 3.0)  # less fluent and shorter
    cut = rec("cut", "x" * 400, 1.5, end=-12.0)  # fluent and long, but it does not end where it ends
    recs = [*typical, fluent_long, terse, cut]
    comb = {r.source_id: r for r in combine(recs)}
    qual = {r.source_id: r for r in combine(recs, "quality")}
    assert comb["good"].parts["value"] == comb["terse"].parts["value"] == 0.0  # combined cannot tell them apart
    assert qual["good"].parts["value"] > max(qual[str(k)].parts["value"] for k in range(6)) > qual["terse"].parts["value"]
    assert qual["good"].parts["z"]["fluency"] > 0 and qual["terse"].parts["z"]["length"] < 0
    # the combined penalty stays: the truncated reply ranks below the one that ends well
    assert qual["cut"].parts["value"] < qual["good"].parts["value"]
    assert {"explained", "end", "segments", "role"} <= set(qual["good"].parts["z"])


def test_rank_scores_ties_singletons_and_unvalued() -> None:
    from selfalign.rank import rank_scores

    def rec(v):  # noqa: ANN001, ANN202
        return RatedPair("i", "r", str(v), "s", None, "", parts={"value": v})

    out = rank_scores([rec(0.3), rec(None), rec(0.1), rec(0.3)])
    assert [r.score for r in out] == [pytest.approx(4.0), None, 1.0, pytest.approx(4.0)]
    assert rank_scores([rec(2.0)])[0].score == 5.0


def test_revalue_turns_one_likelihood_mode_into_the_other(tiny_model: Path, tmp_path: Path) -> None:
    from selfalign.executors import finish
    from selfalign.generation import load_engine
    from selfalign.rank import RankStep, revalue

    cfg = load_config(None, [f"models.base={tiny_model}", "curation.mode=likelihood"])
    engine = load_engine(cfg, str(tiny_model))
    pairs = _ranked_pairs(5)
    lik = rate_pairs(engine, pairs, cfg.curation, tmp_path / "l.jsonl")
    comb = rate_pairs(engine, pairs, cfg.curation.model_copy(update={"mode": "combined"}), tmp_path / "c.jsonl")
    derived = finish(RankStep(shipped(), "combined"), revalue(lik, "combined"), tmp_path / "d.jsonl")
    assert [r.parts["value"] for r in derived] == pytest.approx([r.parts["value"] for r in comb], abs=1e-3)
    assert [r.score for r in derived] == [r.score for r in comb]
    qual = rate_pairs(engine, pairs, cfg.curation.model_copy(update={"mode": "quality"}), tmp_path / "q.jsonl")
    derived = finish(RankStep(shipped(), "quality"), revalue(comb, "quality"), tmp_path / "dq.jsonl")
    assert [r.parts["value"] for r in derived] == pytest.approx([r.parts["value"] for r in qual], abs=1e-3)
    assert [r.score for r in derived] == [r.score for r in qual]
