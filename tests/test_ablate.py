"""`selfalign ablate`: the data-quality ablation on a tiny finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfalign.evaluate.stats import bootstrap_nll
from selfalign.records import AugmentedPair, RatedPair


def lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def _aug(i: int, length: int, status: str = "ok") -> AugmentedPair:
    return AugmentedPair(f"instruction {i}", "x" * length, f"id-{i}", "src", "", status)


def test_arm_data_sizes_and_longest() -> None:
    from selfalign.ablate import ARMS, arm_data

    augmented = [_aug(i, (i * 37) % 101 + 1) for i in range(20)] + [_aug(99, 10_000, "too_long")]
    curated = [RatedPair(p.instruction, p.response, p.source_id, p.source, 5.0, "") for p in augmented[:6]]
    arms = {d.arm: d.augmented for d in arm_data(augmented, curated, seed=3)}
    assert list(arms) == list(ARMS)
    assert arms["seed"] == [] and len(arms["curated"]) == 6 and len(arms["all"]) == 20
    assert len(arms["random"]) == len(arms["longest"]) == 6
    ok = [p for p in augmented if p.status == "ok"]
    assert all(p.status == "ok" for p in arms["random"] + arms["longest"] + arms["all"])
    shortest_kept = min(len(p.response) for p in arms["longest"])
    assert all(len(p.response) <= shortest_kept for p in ok if p not in arms["longest"])
    # the random sample is seeded: the same for a seed, another for another seed
    again = {d.arm: d.augmented for d in arm_data(augmented, curated, seed=3)}
    assert [p.source_id for p in again["random"]] == [p.source_id for p in arms["random"]]
    other = {d.arm: d.augmented for d in arm_data(augmented, curated, seed=4)}
    assert [p.source_id for p in other["random"]] != [p.source_id for p in arms["random"]]


def test_bootstrap_nll_delta_and_interval() -> None:
    tokens = [3, 5, 2, 7, 4, 6]
    a = [[1.0 * t + 0.3 * i for i, t in enumerate(tokens)], [1.1 * t + 0.2 * i for i, t in enumerate(tokens)]]
    shifted = [[x - 0.5 * t for x, t in zip(row, tokens, strict=True)] for row in a]  # 0.5 nats/token better
    got = bootstrap_nll({"seed": a, "better": shifted}, tokens, "seed", n_boot=500, seed=1)
    total = sum(tokens)
    want = (sum(a[0]) / total + sum(a[1]) / total) / 2
    assert got["seed"]["nll_per_token"] == pytest.approx(want, abs=1e-4)
    assert got["better"]["delta"] == pytest.approx(-0.5, abs=1e-4)
    assert got["better"]["delta_ci95"][0] <= -0.5 <= got["better"]["delta_ci95"][1]
    assert got["seed"]["delta"] == 0 and got["seed"]["delta_ci95"] == [0.0, 0.0]
    for arm in got.values():
        lo, hi = arm["ci95"]
        assert lo <= arm["nll_per_token"] <= hi and lo < hi  # seeds and pairs differ: a real spread
    with pytest.raises(ValueError, match="baseline"):
        bootstrap_nll({"x": a}, tokens, "seed")


@pytest.mark.slow  # over ~10 s
def test_ablate_tiny_run(smoke_cfg, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import selfalign.ablate as ablate_mod
    from selfalign.ablate import ARMS, ablate
    from selfalign.pipeline import run_pipeline

    cfg = smoke_cfg.model_copy(deep=True)
    cfg.data.seed_limit = 8
    cfg.data.unlabelled_n = 8
    run = run_pipeline(cfg)
    d = run.dir
    forward_steps = json.loads((d / "forward_1" / "training_info.json").read_text())["steps"]
    # a threshold that keeps some of the rated pairs only, so that (c), (d), (e) differ from (b)
    scores = sorted(r["score"] for r in lines(d / "curate_1" / "rated.jsonl") if r["score"] is not None)
    cfg.curation.threshold = scores[len(scores) // 2]
    capsys.readouterr()

    cfg.ablate.seeds, cfg.ablate.n_heldout, cfg.ablate.heldout = 2, 6, "seed"
    res = ablate(cfg)
    out = capsys.readouterr().out
    ab = d / "ablate"
    curated_ids = [r["source_id"] for r in lines(d / "curated_1" / "data.jsonl")]
    ok = [r for r in lines(d / "augment" / "augmented.jsonl") if r["status"] == "ok"]
    assert 0 < len(curated_ids) < len(ok)
    rows = {(r["arm"], r["seed"]): r for r in lines(ab / "results.jsonl") if r["arm"] != "base"}
    assert set(rows) == {(a, s) for a in ARMS for s in (0, 1)}
    assert res["steps"] == forward_steps and res["steps_from"].startswith("forward_1")
    longest = sorted(ok, key=lambda r: (-len(r["response"]), r["source_id"]))[: len(curated_ids)]
    for (arm, seed), r in rows.items():
        # the same optimizer steps for every arm, as trained
        info = json.loads((ab / f"{arm}-s{seed}" / "training_info.json").read_text())
        assert r["steps"] == info["steps"] == forward_steps
        want = {"seed": 0, "curated": len(curated_ids), "random": len(curated_ids), "all": len(ok),
                "longest": len(curated_ids)}[arm]
        assert r["n_augmented"] == len(r["augmented_ids"]) == want and r["n_seed"] == 8
        assert len(r["nll"]) == len(r["tokens"]) == res["heldout"]["n_measured"] == 6
    assert sorted(rows["curated", 0]["augmented_ids"]) == sorted(curated_ids)
    assert rows["longest", 1]["augmented_ids"] == [r["source_id"] for r in longest]
    assert set(rows["random", 0]["augmented_ids"]) <= {r["source_id"] for r in ok}
    # held-out pairs: none trained on by any arm
    trained = {json.loads(x)["instruction"] for x in (d / "seed" / "pairs.jsonl").read_text().splitlines()}
    assert res["heldout"]["excluded_as_trained"] >= len(trained)

    saved = json.loads((ab / "ablation.json").read_text())
    assert [a["arm"] for a in saved["arms"]] == list(ARMS)
    for a in saved["arms"]:
        lo, hi = a["ci95"]
        assert lo <= a["nll_per_token"] <= hi
        assert a["delta_ci95"][0] <= a["delta"] <= a["delta_ci95"][1]
        per_seed = list(a["per_seed"].values())
        assert len(per_seed) == 2 and min(per_seed) - 1e-3 <= a["nll_per_token"] <= max(per_seed) + 1e-3
    assert saved["arms"][0]["delta"] == 0 and saved["base_nll_per_token"] > 0
    report = (ab / "report.md").read_text()
    for label in ARMS.values():
        assert f"| {label} |" in report
    assert "95% interval" in report and "off by default" in report and "![ablation](ablation.png)" in report
    assert (ab / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.count("ablate ") >= 10 and "ablate: done" in out

    # a re-run trains nothing: every arm/seed is up to date
    calls = []
    monkeypatch.setattr(ablate_mod, "train_forward", lambda *a, **k: calls.append(a))
    res2 = ablate(cfg)
    out = capsys.readouterr().out
    assert calls == [] and sum("up to date, skipped" in ln for ln in out.splitlines() if "ablate " in ln) == 10
    assert [a["nll_per_token"] for a in res2["arms"]] == [a["nll_per_token"] for a in res["arms"]]
    monkeypatch.undo()

    # other steps: those arms start fresh (one seed here), nothing of the old adapters is reused;
    # --judge adds a win rate vs seed only
    cfg.ablate.seeds, cfg.ablate.steps, cfg.ablate.judge, cfg.ablate.judge_prompts = 1, forward_steps + 1, True, 2
    res3 = ablate(cfg)
    out = capsys.readouterr().out
    mine = [ln for ln in out.splitlines() if ln.startswith("[selfalign] ablate ")]
    assert not [ln for ln in mine if "skipped" in ln] and sum(": training " in ln for ln in mine) == len(ARMS)
    for arm in ARMS:
        assert json.loads((ab / f"{arm}-s0" / "training_info.json").read_text())["steps"] == forward_steps + 1
    assert res3["seeds"] == [0] and all(a["steps"] == [forward_steps + 1] for a in res3["arms"])
    assert "judge_vs_seed" not in res3["arms"][0]
    for a in res3["arms"][1:]:
        j = a["judge_vs_seed"]
        assert j["n"] == 2 and j["win"] + j["tie"] + j["loss"] == 2  # 2 prompts x 1 seed
    assert "judge win rate" in (ab / "report.md").read_text()
