"""The GPU paths that can be checked on a CPU: memory planning, the 7B/QLoRA configs, the
accelerate configs (parsed, and the DDP launch line run with --cpu), 4-bit refusal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from selfalign.config import load_config, packaged_config_path
from selfalign.memory import (
    KNOWN_SHAPES,
    GiB,
    MemoryPlanError,
    Shape,
    check,
    plan_run,
    plan_training,
    weight_bytes,
)
from selfalign.models import ModelError, load_model

LLAMA7B = KNOWN_SHAPES["meta-llama/Llama-2-7b-hf"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfalign.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_parameter_count_is_exact_on_a_real_model_and_llama2_7b(tiny_model: Path) -> None:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    cfg = load_config(packaged_config_path("smoke"))
    model, _ = load_model(str(tiny_model), cfg.models, device="cpu")
    shape = Shape.from_config(json.loads((tiny_model / "config.json").read_text()))
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert shape.lora_params(cfg.lora) == trainable
    # the published size of Llama-2-7B: 6,738,415,616 parameters
    assert Shape.from_config(LLAMA7B).n_params == 6_738_415_616


def test_weight_bytes_bf16_and_nf4() -> None:
    shape = Shape.from_config(LLAMA7B)
    assert weight_bytes(shape, 2, False) / GiB == pytest.approx(12.55, abs=0.01)
    # 4-bit: decoder linears at 4.5 bits, embeddings and lm_head stay fp16 (~3.9 GiB, as reported for QLoRA 7B)
    assert 3.5 < weight_bytes(shape, 2, True) / GiB < 4.2


def test_gradient_checkpointing_cuts_activation_memory() -> None:
    cfg = load_config(packaged_config_path("llama2-7b"))
    shape = Shape.from_config(LLAMA7B)
    on = plan_training(shape, cfg.lora, cfg.train_forward, 2, False, True)
    off = plan_training(shape, cfg.lora, cfg.train_forward.model_copy(update={"gradient_checkpointing": False}),
                        2, False, True)
    assert off.parts["activations"] > 8 * on.parts["activations"]
    assert off.total > 2 * on.total


def test_llama2_7b_config_is_refused_on_a_16gb_gpu_with_the_qlora_suggestion() -> None:
    r = cli("plan", "--config", "llama2-7b", "--device-memory-gb", "16")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "configs/llama2-7b-qlora-t4.yaml" in err[0]
    assert "curate: DOES NOT FIT" in r.stdout and "6.74B parameters" in r.stdout
    ok = cli("plan", "--config", "llama2-7b", "--device-memory-gb", "40")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(": fits: ") == 5


def test_qlora_t4_config_fits_a_t4_and_not_without_4bit() -> None:
    cfg = load_config(packaged_config_path("llama2-7b-qlora-t4"), ["run.device_memory_gb=15"])
    assert cfg.models.load_in_4bit and cfg.models.dtype == "float16"
    assert cfg.train_forward.gradient_checkpointing and cfg.train_forward.batch_size == 1
    plans = dict(plan_run(cfg))
    assert all(p is not None and p.fits for p in plans.values()), {k: p.format() for k, p in plans.items()}
    full = load_config(packaged_config_path("llama2-7b-qlora-t4"),
                       ["run.device_memory_gb=15", "models.load_in_4bit=false"])
    assert not dict(plan_run(full))["train-forward"].fits


def test_check_refuses_before_loading_and_can_be_turned_off(tmp_path: Path, tiny_model: Path) -> None:
    """A 7B model folder without weights: the check must refuse before any weight is read."""
    folder = tmp_path / "llama7b"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "config.json").write_text(json.dumps({**LLAMA7B, "model_type": "llama"}))
    cfg = load_config(packaged_config_path("llama2-7b"), [f"models.base={folder}", "run.device_memory_gb=8"])
    with pytest.raises(MemoryPlanError, match="will not fit; try 4-bit QLoRA"):
        check(cfg, str(folder), str(folder), "cuda", train=cfg.train_forward)
    off = cfg.model_copy(update={"run": cfg.run.model_copy(update={"memory_check": False})})
    assert check(off, str(folder), str(folder), "cuda", train=cfg.train_forward) is None
    # through the real stage: one error line, no traceback, nothing written
    r = cli("train-backward", "--config", "smoke", f"run.out_dir={tmp_path / 'run'}",
            f"models.base={folder}", "run.device_memory_gb=8", "run.device=cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: training (batch") and "will not fit" in r.stderr
    assert not (tmp_path / "run" / "backward").exists()


def test_load_in_4bit_on_cpu_is_one_clear_error(tiny_model: Path) -> None:
    cfg = load_config(packaged_config_path("smoke"), ["models.load_in_4bit=true"])
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        load_model(str(tiny_model), cfg.models, device="cpu")


def test_accelerate_configs_parse_with_peft_fsdp_settings() -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    ddp = load_config_from_file(str(packaged_config_path("accelerate/ddp")))
    assert ddp.distributed_type == DistributedType.MULTI_GPU
    fsdp = load_config_from_file(str(packaged_config_path("accelerate/fsdp")))
    assert fsdp.distributed_type == DistributedType.FSDP
    # PEFT + FSDP needs use_orig_params false and a transformer-layer wrap policy
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is False
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"


def test_accelerate_launch_line_with_the_ddp_config(tmp_path: Path, tiny_model: Path) -> None:
    """The documented `accelerate launch --config_file configs/accelerate/ddp.yaml -m selfalign.cli ...`
    line, with --cpu. accelerate runs several CPU processes only through MPI, so this is one
    process; the 2-process gloo run is tests/test_pipeline.py::test_training_under_torchrun_two_cpu_ranks."""
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate CLI not on PATH")
    r = subprocess.run(
        [accelerate, "launch", "--config_file", str(packaged_config_path("accelerate/ddp")), "--cpu", "--num_processes", "1",
         "-m", "selfalign.cli", "train-backward", "--config", "smoke", f"run.out_dir={tmp_path}/run",
         f"models.base={tiny_model}", "train_backward.max_steps=2", "run.threads=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / "run" / "backward" / "training_info.json").read_text())
    assert info["steps"] == 2 and info["name"] == "backward"
    assert not list((tmp_path / "run").glob("backward.*"))  # no .tmp / .work left behind
