"""One GPU, several stages in one process (issue 24): the memory rule between stages, vLLM's own
start-up rule, cached blocks, old GPUs, several GPUs visible to one process, the multi-GPU
instructions and the transformers floor. torch.cuda is faked (`FakeGpu`): a device whose free
memory is what a live vLLM engine and torch's reserved blocks leave."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest
from conftest import REPO
from fake_vllm import fake_cuda, install

from selfalign.config import load_config, packaged_config_path
from selfalign.memory import check_training, make_plan, visible_memory
from selfalign.memory_estimate import GiB
from selfalign.models import ModelError

T4 = "llama2-7b-qlora-t4"


class FakeGpu:
    """total bytes; `reserved` of them held by torch's allocator in this process (`allocated` in
    use), and a vLLM engine holding total x its utilization while alive (vLLM reserves it at start)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, total_gib: float = 15.0, capability=(7, 5), count=1,
                 vllm=None) -> None:
        import torch

        self.total, self.reserved, self.allocated, self.vllm = int(total_gib * GiB), 0, 0, vllm
        self.empty_cache_calls = 0
        fake_cuda(monkeypatch, count=count, capability=capability)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (self.free, self.total))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i=None: self.reserved)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Tesla T4")
        monkeypatch.setattr(torch.cuda, "empty_cache", self.empty_cache)

    @property
    def free(self) -> int:
        engines = self.vllm.alive if self.vllm else []
        held = sum(int(self.total * e.options.get("gpu_memory_utilization", 0.9)) for e in engines)
        return self.total - self.reserved - held

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1
        self.reserved = self.allocated


def _start_check(gpu: FakeGpu, fake) -> None:
    """The fake vLLM refuses to start as vLLM 0.33/0.34's Worker.init_device does."""
    real_llm = sys.modules["vllm"].LLM

    def llm(model: str, **options):
        if gpu.free < gpu.total * options["gpu_memory_utilization"]:
            raise ValueError("Free memory on device on startup is less than desired GPU memory utilization")
        return real_llm(model, **options)

    sys.modules["vllm"].LLM = llm


def test_a_live_vllm_engine_is_released_before_the_training_check(monkeypatch, tmp_path) -> None:
    """`selfalign run generation.backend=vllm` on one T4: curate's engine must not fail train-forward."""
    fake = install(monkeypatch)
    gpu = FakeGpu(monkeypatch, vllm=fake)
    from selfalign.vllm_backend import _CURRENT, VllmEngine

    engine = VllmEngine(None, lambda n: sys.modules["vllm"].LLM("m", max_model_len=n, gpu_memory_utilization=0.85),
                        context=4096, name="rater")
    engine.llm = engine.make_llm(4096)
    _CURRENT.append(engine)
    assert gpu.free < 3 * GiB  # the engine holds 85% of the T4
    cfg = load_config(packaged_config_path(T4), [f"models.cache_dir={tmp_path}"])
    plan = check_training(cfg, cfg.train_forward)  # raised MemoryPlanError before the fix
    assert plan is not None and plan.fits and not fake.alive


def test_vllm_starts_after_training_in_the_same_process(monkeypatch, tmp_path, tiny_model) -> None:
    """Training left 10 GiB reserved by torch's allocator; vLLM's engine (another process) cannot
    use them and refuses to start unless free >= total x gpu_memory_utilization."""
    fake = install(monkeypatch)
    gpu = FakeGpu(monkeypatch, vllm=fake)
    _start_check(gpu, fake)
    gpu.reserved = 10 * GiB  # the Trainer is gone: nothing allocated, all cached
    cfg = load_config(packaged_config_path("smoke"), ["generation.backend=vllm", f"models.cache_dir={tmp_path}",
                                                      "run.device=cuda"])
    from selfalign.generation import GenParams, load_engine

    engine = load_engine(cfg, str(tiny_model), stage="responses")
    texts = engine.generate(["Hello"], GenParams(max_new_tokens=4, temperature=0.0), None, "t", False, [0])
    assert texts and gpu.empty_cache_calls >= 1 and len(fake.alive) == 1


def test_the_vllm_plan_is_vllms_startup_rule(monkeypatch, tiny_model) -> None:
    gpu = FakeGpu(monkeypatch, total_gib=16.0)
    cfg = load_config(packaged_config_path("smoke"), ["generation.backend=vllm", "generation.gpu_memory_utilization=0.85"])
    plan = make_plan(cfg, str(tiny_model), str(tiny_model), "cuda:0", stage="responses", vllm=True)
    assert plan.available == int(16 * GiB * 0.85)  # total x utilization (was free x utilization: 13.6 vs 13.6)
    gpu.reserved = 3 * GiB  # another stage's cache still held: 13 GiB free < 13.6 GiB requested
    plan = make_plan(cfg, str(tiny_model), str(tiny_model), "cuda:0", stage="responses", vllm=True)
    assert not plan.fits and "vLLM refuses to start" in plan.format()
    gpu.reserved = 0
    monkeypatch.setattr(gpu, "total", int(40 * GiB))
    gpu.allocated = gpu.reserved = 0
    # 30 GiB used by another process: free 10 of 40; the old rule (free x 0.85 = 8.5 GiB) said it fits
    monkeypatch.setattr(FakeGpu, "free", property(lambda self: 10 * GiB))
    plan = make_plan(cfg, str(tiny_model), str(tiny_model), "cuda:0", stage="responses", vllm=True)
    assert not plan.fits


def test_cached_blocks_are_not_counted_as_used(monkeypatch) -> None:
    """After QLoRA training on a T4 ~9-10 GiB stay reserved by torch: free to this process."""
    gpu = FakeGpu(monkeypatch)
    gpu.reserved, gpu.allocated = int(9.5 * GiB), int(0.5 * GiB)
    free, _ = visible_memory("cuda:0")
    assert free == gpu.total - gpu.allocated


def test_release_empties_the_cache(monkeypatch) -> None:
    from selfalign.gpu import release

    gpu = FakeGpu(monkeypatch)
    gpu.reserved = 9 * GiB
    release()
    assert gpu.empty_cache_calls == 1 and gpu.free == gpu.total


def test_a_p100_is_refused_with_the_gpus_to_pick(monkeypatch) -> None:
    from selfalign.models import pick_device

    FakeGpu(monkeypatch, capability=(6, 0))
    with pytest.raises(ModelError, match="compute capability 6.0.*T4.*L4"):
        pick_device("auto")
    FakeGpu(monkeypatch, capability=(7, 0))  # V100
    assert pick_device("auto") == "cuda:0"


def test_several_gpus_one_process_trains_on_one(monkeypatch, tiny_model, tmp_path) -> None:
    """Kaggle's 2 x T4 with `selfalign run`: TrainingArguments says n_gpu 2 (transformers 5.x
    `_setup_devices`), the Trainer would wrap the model in DataParallel."""
    import torch
    import transformers

    from selfalign import train as train_mod
    from selfalign.train import TrainExample, train_lora

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    seen: dict = {}

    def setup(self):  # what _setup_devices does with 2 GPUs and no launcher, on this CPU
        self._n_gpu = 2
        return torch.device("cpu")

    monkeypatch.setattr(transformers.TrainingArguments, "_setup_devices", property(setup))

    class Stop(Exception):
        pass

    class Trainer:
        def __init__(self, model, args, **kw) -> None:
            seen["n_gpu"] = args.n_gpu
            raise Stop

    monkeypatch.setattr(train_mod, "_trainer_class", lambda: Trainer)
    import selfalign.models as models

    real_load, real_pick = models.load_model, models.pick_device

    def load_on_cpu(*a, **k):
        with monkeypatch.context() as m:
            m.setattr(models, "pick_device", real_pick)
            return real_load(*a, **{**k, "device": "cpu"})

    monkeypatch.setattr(models, "pick_device", lambda d="auto": "cuda:0")  # the device train_lora plans for
    monkeypatch.setattr(models, "load_model", load_on_cpu)
    cfg = load_config(packaged_config_path("smoke"))
    with pytest.raises(Stop):
        train_lora([TrainExample([{"role": "user", "content": "hi"}], "there")] * 2, tmp_path / "a", cfg.models.model_copy(
            update={"base": str(tiny_model)}), cfg.lora, cfg.train_forward, device="cuda")
    assert seen["n_gpu"] == 1


def test_the_multi_gpu_instructions_run_curation_before_the_launch() -> None:
    """train-forward runs its prerequisites; the generation stages refuse several processes: the
    single-process command must reach curation."""
    from selfalign.memory import config_for_gpu
    from selfalign.pipeline import SINGLE_PROCESS_STAGES, STAGES

    why = config_for_gpu(14.7, (7, 5), count=2)[2]
    first = re.search(r"run `selfalign ([a-z-]+)`", why).group(1)
    launched = re.search(r"selfalign\.cli ([a-z-]+)", why).group(1)
    assert STAGES.index(first) >= STAGES.index("curate")
    assert launched == "train-forward" and not {s.split("-")[0] for s in SINGLE_PROCESS_STAGES} - set(STAGES[:STAGES.index(first) + 1]) - {"responses"}


def test_transformers_floor_has_train_sampling_strategy() -> None:
    """TrainingArguments(train_sampling_strategy=...) (train.py) first exists in transformers 5.2.0."""
    import dataclasses

    from packaging.requirements import Requirement
    from transformers import TrainingArguments

    assert "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(Requirement(d).specifier for d in deps if Requirement(d).name == "transformers")
    assert not spec.contains("5.1.0") and spec.contains("5.2.0")


def test_t4_training_plan_counts_the_kbit_fp32_casts() -> None:
    cfg = load_config(packaged_config_path(T4), ["run.device_memory_gb=15"])
    plan = make_plan(cfg, cfg.models.base, cfg.models.base, "cuda", train=cfg.train_forward)
    # embeddings + lm_head + norms of LLaMA-2-7B (~262M parameters) from fp16 to fp32: ~0.5 GiB
    assert 0.45 * GiB < plan.parts["kbit fp32 casts"] < 0.55 * GiB and plan.fits


def test_no_install_line_names_ray_llm() -> None:
    """ray 2.60's `llm` extra pins vllm==0.29.0, which selfalign's vLLM check refuses."""
    files = [REPO / "pyproject.toml", REPO / "README.md", *(REPO / "docs").glob("*.md"),
             *(REPO / "src" / "selfalign").rglob("*.py"), *(REPO / "src" / "selfalign" / "configs").glob("*.yaml")]
    bad = [str(f.relative_to(REPO)) for f in files if re.search(r"pip install[^\n`]*ray\[llm\]", f.read_text())
           or re.search(r'"ray\[llm\][^"]*"', f.read_text())]
    assert not bad, bad



# --- done in the previous round; these fail on the code before it ---

class _WordTok:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": ([1] if add_special_tokens else []) + [7] * len(text.split())}


def test_the_local_vllm_path_seeds_each_prompt(monkeypatch) -> None:
    fake = install(monkeypatch)
    from selfalign.generation import GenParams
    from selfalign.vllm_backend import VllmEngine, release

    eng = VllmEngine(_WordTok(), lambda n: sys.modules["vllm"].LLM("m", max_model_len=n), context=64, name="b",
                     make_sampling=sys.modules["vllm"].SamplingParams)
    eng.generate(["a b", "c d"], GenParams(1.0, 0.9, 8, 3), None, "g", False, [5, 9])
    assert [sp["seed"] for sp in fake.engines[-1].requests[-1][1]] == [5, 9]
    release()


def test_overlong_prompts_uses_the_engines_context_for_vllm() -> None:
    from types import SimpleNamespace

    from selfalign.generation import overlong_prompts

    engine = SimpleNamespace(context=10, tokenizer=_WordTok())  # a VllmEngine has no .model
    out = overlong_prompts(engine, ["a b", "a " * 9], 4)
    assert out[0] == "" and out[1].startswith("prompt_too_long: 9 prompt tokens + 4 new > context 10")
