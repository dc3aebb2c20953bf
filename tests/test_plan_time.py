"""`selfalign plan`'s time estimates, its printout, and each stage's measured peak memory."""

from __future__ import annotations

import pytest

from selfalign.config import load_config, packaged_config_path
from selfalign.memory_estimate import KNOWN_SHAPES, Shape
from selfalign.plan_time import DEVICES, format_seconds, stage_seconds

STAGES = ["train-backward", "augment", "curate", "train-forward", "responses"]


def cli(*args: str):
    """The command in this process (a subprocess costs ~10 s of imports)."""
    from click.testing import CliRunner

    from selfalign.cli import main

    return CliRunner().invoke(main, list(args))


def test_plan_prints_memory_and_an_estimated_time_per_stage_without_the_config() -> None:
    r = cli("plan", "--config", "llama2-7b-qlora-t4", "--gpu", "T4")
    assert r.exit_code == 0, r.output
    lines = [x for x in r.stdout.splitlines() if not x.startswith("#")]
    assert [x.split(":")[0] for x in lines] == STAGES
    assert all("fits" in x and "GiB" in x and "(estimate, T4)" in x for x in lines), lines
    assert "available 15.0 GiB (run.device_memory_gb)" in lines[0]  # --gpu T4 plans for its memory
    assert "lora:" not in r.stdout  # the resolved config is not printed...
    shown = cli("plan", "--config", "llama2-7b-qlora-t4", "--gpu", "T4", "--show-config")
    assert "lora:" in shown.stdout  # ...unless asked


def test_time_scales_with_the_device_and_the_work() -> None:
    cfg = load_config(packaged_config_path("llama2-7b-qlora-t4"))
    shape = Shape.from_config(KNOWN_SHAPES["meta-llama/Llama-2-7b-hf"])
    t4 = {s: stage_seconds(shape, cfg, s, DEVICES["T4"]) for s in STAGES}
    h100 = {s: stage_seconds(shape, cfg, s, DEVICES["H100"]) for s in STAGES}
    assert all(h100[s] < t4[s] / 3 for s in STAGES if s.startswith("train"))
    assert all(h100[s] < t4[s] for s in STAGES)  # generation at batch 2: launch-bound on any GPU
    # the T4 config's header: about 9 hours, nearly all of it LoRA training
    assert 3 * 3600 < sum(t4.values()) < 16 * 3600
    assert t4["train-forward"] + t4["train-backward"] > 0.7 * sum(t4.values())
    double = cfg.model_copy(update={"data": cfg.data.model_copy(update={"unlabelled_n": 2 * cfg.data.unlabelled_n})})
    assert stage_seconds(shape, double, "augment", DEVICES["T4"]) == pytest.approx(2 * t4["augment"], rel=0.05)
    assert format_seconds(30) == "~30 s" and format_seconds(5400) == "~1.5 h"


def test_each_stage_records_its_own_peak_memory(tmp_path) -> None:
    """VmHWM reset per stage: a stage after a big one reports its own, smaller peak."""
    from selfalign.manifest import Manifest

    m = Manifest(tmp_path)
    m.start("big", "k")
    block = bytearray(300 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    m.finish("big")
    del block
    m.start("small", "k")
    m.finish("small")
    big, small = m.data["stages"]["big"], m.data["stages"]["small"]
    assert big["peak_rss_gib"] - small["peak_rss_gib"] > 0.25, (big, small)
    assert small["peak_rss_since"] == "stage"


def test_curation_by_likelihood_is_planned_as_forward_passes(tiny_model) -> None:
    """The default curation mode (combined) never renders the rating prompt: its plan is the
    scoring passes' logits, not a 3-shot prompt's KV cache, and the auto batch size works on it."""
    from selfalign.memory import auto_batch_size, make_plan

    cfg = load_config(packaged_config_path("smoke"), ["curation.mode=combined", "generation.batch_size=0"])
    plan = make_plan(cfg, str(tiny_model), str(tiny_model), "cpu", stage="curate")
    assert plan.what.startswith("scoring (curate, combined") and "kv_cache" not in plan.parts
    assert auto_batch_size(cfg, str(tiny_model), str(tiny_model), "cpu", "curate")[0] >= 1
    gen = load_config(packaged_config_path("smoke"), ["curation.mode=generate"])
    assert "kv_cache" in make_plan(gen, str(tiny_model), str(tiny_model), "cpu", stage="curate").parts


def test_no_batch_is_planned_larger_than_the_stages_rows(tiny_model) -> None:
    from selfalign.memory import make_plan

    cfg = load_config(packaged_config_path("smoke"), ["forward.n_responses=2", "generation.batch_size=0",
                                                      "generation.max_batch_size=32"])
    assert "batch 2 x" in make_plan(cfg, str(tiny_model), str(tiny_model), "cpu", stage="responses").what
