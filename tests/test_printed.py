"""What a person reads at the end of a run: numbers rounded to what they mean, ranked scores
explained once, training summaries that compare like with like and count what was left out."""

from __future__ import annotations

import re
from pathlib import Path

from selfalign.records import RatedPair
from selfalign.train import TrainResult


def _result(**kw: object) -> TrainResult:
    base = dict(adapter_dir=Path("x"), n_examples=181, n_tokens=1, n_target_tokens=1,
                dropped={"prompt_too_long": 1}, truncated=102, first_loss=2.491, last_loss=3.042, seconds=238.0,
                tokens_per_second=512.3, steps=46, loss_start=2.95, loss_end=2.61, loss_window=10,
                probe_before=2.4, probe_after=2.05, probe_n=16)
    return TrainResult(**{**base, **kw})


def test_training_summary_counts_what_was_dropped_or_cut_and_compares_means() -> None:
    line = _result().summary("of 160 seed + 22 curated", 256)
    assert "181 examples (of 160 seed + 22 curated)" in line
    assert "1 dropped (1 prompt_too_long)" in line and "102 cut at max_seq_len 256" in line
    assert "loss on 16 of these examples 2.40 before training, 2.05 after" in line  # the same examples
    assert "3.042" not in line and "2.491" not in line  # one batch against another is not shown
    quiet = _result(dropped={}, truncated=0, loss_window=1, probe_before=None, probe_after=None).summary("", 256)
    assert "dropped" not in quiet and "cut" not in quiet and "over the first step," in quiet  # no probe: the trend


def _ranked(value: float | None, score: float | None, sid: str) -> RatedPair:
    parts = {"value": value, "n_tokens": 10} if value is not None else {}
    return RatedPair("Q?", "A.", sid, "s", score, "IFD 0.939 (NLL 3.40 with the instruction, 3.62 without)",
                     [score] if score else [], parts=parts)


def test_ranked_pairs_print_what_their_score_means(capsys) -> None:  # noqa: ANN001
    from selfalign.report import print_rated

    rated = [_ranked(0.0, 4.5, "a"), _ranked(0.0, 4.5, "b"), _ranked(-1.23456, 2.0, "c"), _ranked(-9.0, 1.0, "d")]
    print_rated(rated, 4.0)
    out = capsys.readouterr().out
    assert out.count("score = 1 + 4 x the pair's rank among the 4 pairs rated together") == 2  # once a section
    assert "score 4.50 (value 0.000, tied with 1 other pairs)" in out and "(value -1.235)" in out
    prompt_based = [RatedPair("Q?", "A.", "x", "s", 4.0, "Fine.", [4.0])]
    print_rated(prompt_based, 4.0)
    assert "rank" not in capsys.readouterr().out


def test_ranked_reasoning_is_rounded(tiny_model: Path) -> None:
    from selfalign.config import load_config
    from selfalign.generation import load_engine
    from selfalign.prompts import shipped
    from selfalign.rank import score_likelihood
    from selfalign.records import AugmentedPair

    engine = load_engine(load_config(None, [f"models.base={tiny_model}"]), str(tiny_model))
    pairs = [AugmentedPair("What is a cat?", "A cat is a small animal that purrs.", "p", "s", "")]
    rec = score_likelihood(engine, pairs, "combined", 64, shipped(), progress=False)[0]
    assert not re.search(r"\d\.\d{4,}", rec.reasoning), rec.reasoning  # no float printed to 16 digits
    assert isinstance(rec.parts["ifd"], float) and len(repr(rec.parts["ifd"])) > 6  # the parts keep precision
