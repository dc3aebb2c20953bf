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
from selfalign.memory import MemoryPlanError, check, plan_run
from selfalign.memory_estimate import KNOWN_SHAPES, GiB, Shape, plan_training, weight_bytes
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
    assert "--config llama2-7b-qlora-t4" in err[0]
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
            f"models.base={folder}", "run.device_memory_gb=8", "run.device=cpu", "hygiene.embeddings=none")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: training (batch") and "will not fit" in r.stderr
    assert not (tmp_path / "run" / "backward").exists()
    # the hygiene stage's embedder (the base model's hidden states) loads first: it is checked too
    e = cli("train-backward", "--config", "smoke", f"run.out_dir={tmp_path / 'run2'}",
            f"models.base={folder}", "run.device_memory_gb=8", "run.device=cpu", "hygiene.embeddings=base")
    assert e.returncode == 2 and "Traceback" not in e.stderr
    assert e.stderr.startswith("error: ") and "will not fit" in e.stderr and "cannot load" not in e.stderr
    assert not (tmp_path / "run2" / "backward").exists()


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


# --- placement: every process on its own device (LOCAL_RANK), FSDP untouched until the Trainer ---

class _Loads:
    """from_pretrained spy: records its kwargs and the order of events, loads on the CPU."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, events: list) -> None:
        from transformers import AutoModelForCausalLM

        self.kwargs: dict = {}
        real = AutoModelForCausalLM.from_pretrained.__func__

        def fake(cls, path, **kw):  # noqa: ANN001, ANN202
            events.append("from_pretrained")
            self.kwargs = kw
            kw = {k: v for k, v in kw.items() if k not in ("device_map", "quantization_config")}
            model = real(cls, path, **{**kw, "dtype": torch.float32})
            moves = []
            model.to = lambda *a, **k: moves.append(a) or model  # no CUDA here: record only
            self.moves = moves
            return model

        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(fake))


import torch  # noqa: E402
from fake_vllm import fake_cuda  # noqa: E402

from selfalign.models import pick_dtype, quantization_kwargs  # noqa: E402


def test_each_ddp_rank_loads_bf16_onto_its_own_gpu(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    set_device = fake_cuda(monkeypatch, count=2)
    events: list = []
    spy = _Loads(monkeypatch, events)
    cfg = load_config(packaged_config_path("llama2-7b"))
    load_model(str(tiny_model), cfg.models, device="auto", trainable=True)
    assert set_device == [1]  # plain "cuda" now means this rank's GPU
    assert spy.kwargs["device_map"] == {"": "cuda:1"} and spy.kwargs["dtype"] == torch.bfloat16
    assert spy.moves == []  # loaded in place: no copy on GPU 0 first


def test_each_ddp_rank_loads_4bit_onto_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setenv("LOCAL_RANK", "3")
    set_device = fake_cuda(monkeypatch, count=4, capability=(7, 5))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "bitsandbytes" else real(n, *a))
    cfg = load_config(packaged_config_path("llama2-7b-qlora-t4"))
    from selfalign.models import pick_device

    kw = quantization_kwargs(cfg.models, pick_device("auto"))
    assert set_device == [3] and kw["device_map"] == {"": "cuda:3"} and kw["dtype"] == torch.float16


def test_fsdp_moves_nothing_before_the_trainer_and_loads_low_memory(
        monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    """accelerate launch --config_file configs/accelerate/fsdp.yaml sets these on every rank."""
    for k, v in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true",
                 "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}.items():
        monkeypatch.setenv(k, v)
    set_device = fake_cuda(monkeypatch, count=2)
    events: list = []
    import accelerate

    monkeypatch.setattr(accelerate, "PartialState", lambda: events.append("process group"))
    spy = _Loads(monkeypatch, events)
    cfg = load_config(packaged_config_path("llama2-7b"))
    load_model(str(tiny_model), cfg.models, device="auto", trainable=True)
    # torch.distributed is up before from_pretrained: transformers' is_fsdp_enabled() (low-memory
    # loading: meta device on ranks > 0) needs it; FSDP's device_id is cuda:1 and the model is not moved
    assert events == ["process group", "from_pretrained"]
    assert "device_map" not in spy.kwargs and spy.moves == [] and set_device == [1]
    with pytest.raises(ModelError, match="FSDP"):
        quantization_kwargs(load_config(packaged_config_path("llama2-7b-qlora-t4")).models, "cuda:1")


def test_dtype_auto_is_bf16_only_with_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, capability=(7, 5))  # T4: is_bf16_supported() is True, but emulated
    assert pick_dtype("auto", "cuda:0") == torch.float16
    fake_cuda(monkeypatch, capability=(6, 0))  # P100
    assert pick_dtype("auto", "cuda") == torch.float16
    fake_cuda(monkeypatch, capability=(8, 0))  # A100
    assert pick_dtype("auto", "cuda:0") == torch.bfloat16
    assert pick_dtype("auto", "cpu") == torch.float32 and pick_dtype("float16", "cpu") == torch.float16


def test_more_ranks_than_gpus_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from selfalign.models import pick_device

    monkeypatch.setenv("LOCAL_RANK", "2")
    fake_cuda(monkeypatch, count=2)
    with pytest.raises(ModelError, match="needs GPU 2 .* 2 CUDA device"):
        pick_device("auto")


# --- the planner under FSDP, and with real token counts ---

def test_documented_70b_fsdp_line_is_planned_per_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 8 ... train-forward
    --config configs/llama2-7b.yaml models.base=meta-llama/Llama-2-70b-hf` on 8 x 80 GB."""
    spec = "meta-llama/Llama-2-70b-hf"
    cfg = load_config(packaged_config_path("llama2-7b"), [f"models.base={spec}", "run.device_memory_gb=80"])
    with pytest.raises(MemoryPlanError, match="will not fit"):  # one process: the whole 70B on one GPU
        check(cfg, spec, spec, "cuda", train=cfg.train_forward)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "8")
    plan = check(cfg, spec, spec, "cuda", train=cfg.train_forward)
    assert plan is not None and plan.fits and "FSDP over 8 GPUs" in plan.what
    assert plan.parts["weights"] == weight_bytes(Shape.from_config(KNOWN_SHAPES[spec]), 2, False) // 8
    assert Shape.from_config(KNOWN_SHAPES[spec]).n_params == 68_976_648_192  # Llama-2-70B, published


LLAMA2_CHAT_TOK = REPO.parent / "shared" / "tokenizers" / "llama2-chat"


def test_t4_curation_plan_counts_the_real_prompt_and_the_prefix_cache(tmp_path: Path) -> None:
    """The rater's folder: LLaMA-2-7B's config.json and the real LLaMA-2-chat tokenizer."""
    if not LLAMA2_CHAT_TOK.is_dir():
        pytest.skip("../shared/tokenizers/llama2-chat is absent")
    folder = tmp_path / "llama-2-7b-chat"
    shutil.copytree(LLAMA2_CHAT_TOK, folder)
    (folder / "config.json").write_text(json.dumps({**LLAMA7B, "model_type": "llama", "max_position_embeddings": 4096}))
    cfg = load_config(packaged_config_path("llama2-7b-qlora-t4"), [f"models.rater={folder}", "run.device_memory_gb=15"])
    curate = dict(plan_run(cfg))["curate"]
    # 3 worked examples + a 1536-token response + a 128-token instruction + 256 new tokens: 4,417 tokens,
    # more than LLaMA-2's context, so prompts are cut to it; the rows are 4,096 tokens, not 3,292
    assert "x 4096 tokens counted, capped by the context 4096" in curate.what
    shared = curate.parts["prefix_cache"] / (2 * 32 * 4096 * 2)  # tokens of fp16 KV cache
    assert 2400 < shared < 2600  # the 3-shot prefix, once per stage (~1.2 GiB)
    assert curate.parts["kv_cache"] == cfg.generation.batch_size * Shape.from_config(LLAMA7B).kv_bytes(4097, 2)
    assert curate.fits


def test_notebook_picks_the_config_by_the_gpu_found() -> None:
    from selfalign.memory import QLORA_CONFIG, config_for_gpu

    t4 = config_for_gpu(14.7, (7, 5))  # Colab's T4 reports 14.7 GiB
    assert t4[0] == QLORA_CONFIG == "llama2-7b-qlora-t4" and "fp16" in t4[2]
    assert load_config(packaged_config_path(t4[0]), t4[1]).models.load_in_4bit
    kaggle = config_for_gpu(14.7, (7, 5), count=2)  # Kaggle 2 x T4: the DDP launch line
    assert kaggle[0] == QLORA_CONFIG and "$(selfalign config path accelerate/ddp) --num_processes 2" in kaggle[2]
    assert config_for_gpu(15.9, (6, 0))[0] == QLORA_CONFIG  # Kaggle P100: fp16, no bf16
    assert config_for_gpu(79.1, (8, 0)) == ("llama2-7b", [], "79 GiB: LLaMA-2-7B in 16 bit with LoRA")
    assert config_for_gpu(23.6, (8, 6))[1] == ["generation.batch_size=2"]
    assert config_for_gpu(31.7, (7, 0))[1] == ["generation.batch_size=2", "models.dtype=float16"]  # V100 32 GB
    plans = dict(plan_run(load_config(packaged_config_path("llama2-7b"), ["generation.batch_size=2",
                                                                              "run.device_memory_gb=23.6"])))
    assert all(p is not None and p.fits for p in plans.values())  # a 24 GB GPU (RTX 4090: 23.6 GiB usable)
    assert config_for_gpu(None)[0] == "default"
    plans = dict(plan_run(load_config(packaged_config_path(t4[0]), [*t4[1], "run.device_memory_gb=14.7"])))
    assert all(p is not None and p.fits for p in plans.values())  # the T4 choice fits a T4


def test_fsdp_training_arguments_are_for_the_gpu_though_the_weights_wait_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path) -> None:
    import transformers

    from selfalign.train import TrainExample, train_lora

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    fake_cuda(monkeypatch)
    spy = _Loads(monkeypatch, [])
    seen: dict = {}

    class Stop(Exception):
        pass

    def args(**kw):  # noqa: ANN003, ANN202
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(transformers, "TrainingArguments", args)
    cfg = load_config(packaged_config_path("llama2-7b"), ["run.device_memory_gb=80"])
    with pytest.raises(Stop):
        train_lora([TrainExample([{"role": "user", "content": "hi"}], "hello")], tmp_path / "a",
                   cfg.models.model_copy(update={"base": str(tiny_model)}), cfg.lora, cfg.train_forward)
    # a GPU run, though the weights are still on the CPU (the spy loads fp32 there; bf16 was asked for)
    assert seen["use_cpu"] is False and spy.kwargs["dtype"] == torch.bfloat16 and "device_map" not in spy.kwargs
