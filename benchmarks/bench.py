#!/usr/bin/env python
"""Benchmark each selfalign stage against its naive baseline, on the same inputs.

    python benchmarks/bench.py [--model smollm2|tiny-random|PATH] [--repeats 3] [--quick] [--out bench.json]

Rows (ratio = ours / baseline, the claim; absolute numbers are context):

- augmentation: new tokens/s of `selfalign.generation.generate` (batched, sorted by length, left
  padded) vs one prompt at a time through `model.generate`; greedy, so outputs are compared.
- curation_generate / curation_logprob: pairs/s of `selfalign.curate.rate_pairs` (generate mode with
  the few-shot prefix cache, logprob mode) vs the naive rater (full few-shot prompt,
  `model.generate` one pair at a time, no prefix cache).
- curation_shots: seconds per pair of our generate mode with k shots vs 0 shots.
- training: trained (non-pad) tokens/s of `selfalign.train.train_lora` (length-grouped batches)
  vs a plain HF `Trainer` (random sampler, padding to the longest in the batch), same examples,
  same steps, same LoRA config.

Every figure is also given as a fraction of the machine's bound: fp32 matmul FLOP/s measured on
the spot, ~2N FLOPs per generated/scored token and ~4N per LoRA-trained token (N = parameters of
the base model). Each stage runs in its own spawned process; a psutil thread samples that
process's RSS every few ms and keeps the peak of each variant's timed runs. See
benchmarks/README.md for the formulas.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
SAMPLES = REPO / "src" / "selfalign" / "sample_data"
REAL_SEED = SHARED / "guanaco" / "guanaco_llama2_1k.jsonl"
REAL_UNLABELLED = SHARED / "lima" / "train.jsonl"

RSS_METHOD = (
    "one spawned process per stage (model loaded once per stage; training loads it inside each "
    "run); a psutil thread samples the process RSS every 5 ms; peak_rss_mb is the highest sample "
    "during a variant's timed runs (gc + malloc_trim before each), start_rss_mb the RSS when its "
    "first run started; stage_maxrss_mb is the process's getrusage maxrss (imports + model load "
    "+ every variant)"
)


@dataclass
class Sizes:
    # defaults = the settings of the shipped default config, so the ratios are those of a real run
    gen_batch_size: int = 0  # generation.batch_size: 0 = auto (the default config's setting)
    aug_prompts: int = 16  # LIMA responses sampled (sample_single_turn, seed 0)
    aug_response_tokens: int = 320  # generation.max_prompt_tokens: responses cut to this
    aug_new_tokens: int = 48  # generation.instruction.max_new_tokens, greedy
    cur_pairs: int = 6  # seed (instruction, response) pairs rated
    cur_shots: int = 3  # curation.shots (vs 0 in the curation_shots row)
    cur_response_tokens: int = 256  # curation.max_response_tokens
    cur_new_tokens: int = 64  # curation.max_new_tokens, greedy
    train_steps: int = 3  # optimizer steps; the data is exactly steps * batch examples
    train_batch_size: int = 4  # train_*.batch_size
    train_max_len: int = 256  # train_forward.max_seq_len
    train_max_len_backward: int = 320  # train_backward.max_seq_len


QUICK = Sizes(gen_batch_size=2, aug_prompts=4, aug_response_tokens=24, aug_new_tokens=6,
              cur_pairs=2, cur_shots=1, cur_response_tokens=24, cur_new_tokens=6,
              train_steps=2, train_batch_size=2, train_max_len=128, train_max_len_backward=128)

STAGES = ("augmentation", "curation", "training")
ROWS = ("augmentation", "curation_generate", "curation_logprob", "curation_shots", "training_backward",
        "training_forward")


# --------------------------------------------------------------------------------------------
# measurement helpers (used in the stage processes)
# --------------------------------------------------------------------------------------------


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssSampler:
    """Samples this process's RSS in a thread; records the peak per labelled window."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._label: str | None = None
        self._lock = threading.Lock()
        self.peak: dict[str, int] = {}
        self.start: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        with self._lock:
            if self._label is not None:
                self.peak[self._label] = max(self.peak.get(self._label, 0), rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self._interval)

    @contextlib.contextmanager
    def window(self, label: str) -> Iterator[None]:
        gc.collect()
        _malloc_trim()
        rss = self._proc.memory_info().rss
        with self._lock:
            self.start.setdefault(label, rss)
            self._label = label
        self._sample()
        try:
            yield
        finally:
            self._sample()
            with self._lock:
                self._label = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, label: str) -> dict[str, float]:
        mb = 1024 * 1024
        return {"peak_rss_mb": round(self.peak[label] / mb, 1), "start_rss_mb": round(self.start[label] / mb, 1)}


def _stage_setup(job: dict[str, Any]) -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    import selfalign.hf_engine as gen
    from selfalign.models import setup_threads

    setup_threads(job["threads"])
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    real_tqdm = gen.tqdm

    def quiet_tqdm(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return real_tqdm(*args, **kwargs)

    gen.tqdm = quiet_tqdm  # rate_pairs does not pass progress=False; keep the log readable


def _config(job: dict[str, Any]) -> Any:
    from selfalign.config import load_config

    return load_config(None, [f"models.cache_dir={job['cache_dir']}", f"run.device={job['device']}",
                              f"run.threads={job['threads']}",
                              f"generation.batch_size={job['sizes']['gen_batch_size']}"])


def _stop_ids(tok: Any) -> set[int]:
    return {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}


def _n_new(row: list[int], stops: set[int]) -> int:
    """Generated tokens of one output row: up to and including the first eos/pad."""
    for k, t in enumerate(row):
        if t in stops:
            return k + 1
    return len(row)


class GenCounter:
    """Wraps `model.generate` of an engine so that every call counts its new tokens exactly."""

    def __init__(self, engine: Any) -> None:
        self.tokens = 0
        self.calls = 0
        self._stops = _stop_ids(engine.tokenizer)
        model = engine.model
        orig = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            out = orig(*args, **kwargs)
            n_in = kwargs["input_ids"].shape[1]
            self.tokens += sum(_n_new(r, self._stops) for r in out[:, n_in:].tolist())
            self.calls += 1
            return out

        model.generate = generate  # instance attribute shadows the method

    def reset(self) -> None:
        self.tokens = 0
        self.calls = 0


def naive_generate(engine: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The naive baseline: one prompt at a time through `model.generate`, greedy, no cache reuse."""
    import torch

    tok, model = engine.tokenizer, engine.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out_texts = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]], device=engine.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=sorted(_stop_ids(tok)))
            out_texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out_texts


def _common_prefix_len(seqs: list[list[int]]) -> int:
    if len(seqs) < 2:
        return 0
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == seqs[0][i]:
            i += 1
        n = i
    return n


def _required_prompt_tokens(tok: Any, prompts: list[str]) -> dict[str, int]:
    """Prompt tokens any implementation must run: the shared prefix once, then each tail."""
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared = _common_prefix_len(enc)
    total = sum(len(e) for e in enc)
    return {"prompt_tokens_total": total, "shared_prefix_tokens": shared,
            "required_prompt_tokens": shared + total - shared * len(enc),
            "prompt_tokens_max": max(len(e) for e in enc)}


def _timed_runs(
    repeats: int, variants: dict[str, Callable[[], dict[str, Any]]], mem: RssSampler
) -> dict[str, dict[str, Any]]:
    """Runs every variant `repeats` times, interleaved and rotated (drift hits all alike).

    Each call returns {"seconds": s, "work": units, ...}; the first call's extra fields are kept.
    """
    out: dict[str, dict[str, Any]] = {n: {"seconds": [], "work": [], "first": None} for n in variants}
    names = list(variants)
    for rep in range(repeats):
        k = rep % len(names)  # rotate the order: no variant is always first (or always last)
        for name in names[k:] + names[:k]:
            fn = variants[name]
            with mem.window(name):
                got = fn()
            out[name]["seconds"].append(got.pop("seconds"))
            out[name]["work"].append(got.pop("work"))
            if "prefix_seconds" in got:
                out[name].setdefault("prefix_seconds", []).append(got.pop("prefix_seconds"))
            if out[name]["first"] is None:
                out[name]["first"] = got
            print(f"  [{name}] repeat {rep + 1}/{repeats}: {out[name]['seconds'][-1]:.2f} s, "
                  f"work {out[name]['work'][-1]}", flush=True)
    for name in variants:
        out[name].update(mem.report(name))
    return out


def _n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------


def stage_augmentation(job: dict[str, Any], mem: RssSampler) -> dict[str, Any]:
    from selfalign.generation import GenParams, generate, load_engine
    from selfalign.prompts import shipped, truncate_tokens

    s = Sizes(**job["sizes"])
    engine = load_engine(_config(job), job["model_path"], stage="augment")  # gen_batch_size 0: auto
    tok = engine.tokenizer
    prompts = [shipped().render_prompt(tok, shipped().backward_messages(truncate_tokens(tok, r, s.aug_response_tokens)[0]))
               for r in job["responses"]]
    params = GenParams(temperature=0.0, top_p=1.0, max_new_tokens=s.aug_new_tokens, seed=0)
    counter = GenCounter(engine)
    generate(engine, prompts[:1], GenParams(0.0, 1.0, 2), progress=False)  # warm-up, untimed
    required_prompt = _required_prompt_tokens(tok, prompts)["required_prompt_tokens"]

    def run(fn: Callable[[], list[str]]) -> dict[str, Any]:
        counter.reset()
        t0 = time.perf_counter()
        texts = fn()
        return {"seconds": time.perf_counter() - t0, "work": counter.tokens, "texts": texts,
                "generate_calls": counter.calls, "generated_tokens": counter.tokens,
                "required_tokens": required_prompt + counter.tokens}

    res = _timed_runs(job["repeats"], {
        "ours_batched": lambda: run(lambda: generate(engine, prompts, params, progress=False)),
        "naive_one_by_one": lambda: run(lambda: naive_generate(engine, prompts, s.aug_new_tokens)),
    }, mem)
    ours, naive = res["ours_batched"]["first"]["texts"], res["naive_one_by_one"]["first"]["texts"]
    prompt_info = _required_prompt_tokens(tok, prompts)
    return {"n_params": _n_params(engine.model), "batch_size": engine.batch_size, "variants": res,
            "prompt_tokens": prompt_info,
            "greedy_identical": sum(a == b for a, b in zip(ours, naive, strict=True)),
            "greedy_compared": len(prompts),
            "examples": [{"ours": a, "naive": b} for a, b in list(zip(ours, naive, strict=True))[:3]]}


def stage_curation(job: dict[str, Any], mem: RssSampler) -> dict[str, Any]:
    from selfalign.config import CurationConfig
    from selfalign.curate import parse_score, rate_pairs, rating_prompts
    from selfalign.generation import GenParams, generate, load_engine
    from selfalign.records import AugmentedPair
    from selfalign.scoring import score_suffix

    s = Sizes(**job["sizes"])
    engine = load_engine(_config(job), job["model_path"], stage="curate")  # gen_batch_size 0: auto
    engine.prefix_cache = True
    tok = engine.tokenizer
    pairs = [AugmentedPair(ins, resp, sid, "seed", "") for ins, resp, sid in job["pairs"]]
    cur_k = CurationConfig(mode="generate", shots=s.cur_shots, retries=0, n_samples=1,
                           max_new_tokens=s.cur_new_tokens, max_response_tokens=s.cur_response_tokens)
    cur_lp = cur_k.model_copy(update={"mode": "logprob"})
    cur_0 = cur_k.model_copy(update={"shots": 0})
    prompts_k = rating_prompts(engine, pairs, s.cur_shots, s.cur_response_tokens)[0]
    prompts_0 = rating_prompts(engine, pairs, 0, s.cur_response_tokens)[0]
    suffix, _ = score_suffix(tok)
    tok_k = _required_prompt_tokens(tok, prompts_k)
    tok_lp = _required_prompt_tokens(tok, [p + suffix for p in prompts_k])
    tok_0 = _required_prompt_tokens(tok, prompts_0)
    counter = GenCounter(engine)
    generate(engine, prompts_0[:1], GenParams(0.0, 1.0, 2), progress=False)  # warm-up, untimed
    tmp = Path(tempfile.mkdtemp(prefix="selfalign-bench-"))
    n_run = [0]

    import selfalign.hf_engine as gen_mod

    orig_shared_prefix = gen_mod._shared_prefix
    prefix_seconds = [0.0]

    def timed_shared_prefix(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig_shared_prefix(*a, **kw)
        finally:
            prefix_seconds[0] += time.perf_counter() - t

    gen_mod._shared_prefix = timed_shared_prefix

    def ours(cur: CurationConfig, prompt_tokens: int) -> dict[str, Any]:
        n_run[0] += 1
        log = tmp / f"rated-{n_run[0]}.jsonl"  # fresh RecordLog each run: nothing is skipped
        counter.reset()
        engine._prefix = None  # every run computes the prefix once, as one curation stage does
        prefix_seconds[0] = 0.0
        t0 = time.perf_counter()
        rated = rate_pairs(engine, pairs, cur, log, seed=0, max_response_tokens=s.cur_response_tokens)
        dt = time.perf_counter() - t0
        assert len(rated) == len(pairs)
        return {"seconds": dt, "work": len(rated), "generated_tokens": counter.tokens,
                "required_tokens": prompt_tokens + counter.tokens, "prefix_seconds": prefix_seconds[0],
                "outputs": [r.raw_outputs[0] if r.raw_outputs else "" for r in rated],
                "scores": [r.score for r in rated]}

    def naive() -> dict[str, Any]:
        counter.reset()
        t0 = time.perf_counter()
        texts = naive_generate(engine, prompts_k, s.cur_new_tokens)
        scores = [parse_score(t) for t in texts]
        dt = time.perf_counter() - t0
        return {"seconds": dt, "work": len(texts), "generated_tokens": counter.tokens,
                "required_tokens": tok_k["required_prompt_tokens"] + counter.tokens,
                "outputs": texts, "scores": scores}

    res = _timed_runs(job["repeats"], {
        "ours_generate_kshot": lambda: ours(cur_k, tok_k["required_prompt_tokens"]),
        "ours_logprob_kshot": lambda: ours(cur_lp, tok_lp["required_prompt_tokens"]),
        "naive_generate_kshot": naive,
        "ours_generate_0shot": lambda: ours(cur_0, tok_0["required_prompt_tokens"]),
    }, mem)
    a, b = res["ours_generate_kshot"]["first"], res["naive_generate_kshot"]["first"]
    return {"n_params": _n_params(engine.model), "batch_size": engine.batch_size, "variants": res,
            "prompt_tokens": {"kshot": tok_k, "kshot_logprob": tok_lp, "0shot": tok_0},
            "outputs_identical": sum(x == y for x, y in zip(a["outputs"], b["outputs"], strict=True)),
            "scores_equal": sum(x == y for x, y in zip(a["scores"], b["scores"], strict=True)),
            "compared": len(pairs)}


class CountingCollator:
    """Wraps a collator; counts non-pad tokens (attention mask) and all positions processed."""

    def __init__(self, inner: Any, counts: dict[str, int]) -> None:
        self.inner = inner
        self.counts = counts

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        mask = batch["attention_mask"]
        self.counts["tokens"] += int(mask.sum())
        self.counts["positions"] += int(mask.numel())
        self.counts["examples"] += int(mask.shape[0])
        return batch


def _plain_trainer_run(job: dict[str, Any], examples: list[Any], max_len: int, out_dir: Path,
                       counts: dict[str, int]) -> float:
    """The baseline: stock HF Trainer, random sampler, DataCollatorForSeq2Seq(padding='longest')."""
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from selfalign.models import load_model
    from selfalign.train import tokenize_examples

    cfg, s = _config(job), Sizes(**job["sizes"])
    set_seed(0)
    model, tok = load_model(job["model_path"], cfg.models, device=job["device"], trainable=True)
    counts["n_params"] = _n_params(model)  # the base model, before LoRA is added
    tok.padding_side = "right"
    rows = tokenize_examples(tok, examples, max_len).rows
    lora = cfg.lora
    model = get_peft_model(model, PeftLoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                                                 lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules)))
    model.config.use_cache = False
    on_cpu = next(model.parameters()).device.type == "cpu"
    t = cfg.train_forward
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=s.train_batch_size, max_steps=s.train_steps,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio,
        logging_steps=1, save_strategy="no", seed=0, data_seed=0, report_to="none",
        train_sampling_strategy="random", remove_unused_columns=False, use_cpu=on_cpu, bf16=False,
        dataloader_num_workers=0, optim="adamw_torch", gradient_checkpointing=False,
    )
    collator = CountingCollator(DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100), counts)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def stage_training(job: dict[str, Any], mem: RssSampler) -> dict[str, Any]:
    # imported before any timed window, so that their memory is in every variant's start RSS
    import random

    import datasets  # noqa: F401
    import peft  # noqa: F401
    from transformers import DataCollatorForSeq2Seq, Trainer  # noqa: F401

    import selfalign.train as train_mod
    from selfalign.backward import backward_examples
    from selfalign.config import ForwardConfig, TrainConfig
    from selfalign.forward import forward_examples
    from selfalign.models import load_tokenizer
    from selfalign.records import SeedPair
    from selfalign.train import tokenize_example, tokenize_examples, train_lora

    s = Sizes(**job["sizes"])
    cfg = _config(job)
    n = s.train_steps * s.train_batch_size
    tok = load_tokenizer(job["model_path"])
    seed_pairs = [SeedPair(*p) for p in job["train_pairs"]]
    kinds = {
        # response -> instruction: long prompt, short target (the loss is on the instruction only)
        "backward": (backward_examples(seed_pairs, tok, s.train_max_len_backward), s.train_max_len_backward,
                     cfg.train_backward),
        # instruction -> response, with the paper's seed tag
        "forward": (forward_examples(seed_pairs, [], ForwardConfig()), s.train_max_len, cfg.train_forward),
    }
    tmp = Path(tempfile.mkdtemp(prefix="selfalign-bench-train-"))
    orig_collator = train_mod.PadCollator
    n_run = [0]
    out: dict[str, Any] = {}
    for kind, (full_examples, max_len, base_cfg) in kinds.items():
        usable = [ex for ex in full_examples if not isinstance(tokenize_example(tok, ex, max_len), str)]
        if len(usable) < n:
            raise RuntimeError(f"only {len(usable)} {kind} examples fit max_len={max_len}, need {n}")
        # a seeded random sample of the whole seed set: its lengths are those of a real run
        examples = random.Random(0).sample(usable, n)
        lengths = [len(r["input_ids"]) for r in tokenize_examples(tok, examples, max_len).rows]
        full_lengths = [len(r["input_ids"]) for r in tokenize_examples(tok, usable, max_len).rows]
        tcfg = base_cfg.model_copy(update={
            "max_steps": s.train_steps, "batch_size": s.train_batch_size, "grad_accum": 1,
            "max_seq_len": max_len, "save_steps": 10**9, "group_by_length": True, "epochs": 1.0})
        tcfg = TrainConfig.model_validate(tcfg.model_dump())  # model_copy(update=...) does not validate

        def ours(examples: list[Any] = examples, tcfg: TrainConfig = tcfg, kind: str = kind) -> dict[str, Any]:
            n_run[0] += 1
            counts = {"tokens": 0, "positions": 0, "examples": 0}
            train_mod.PadCollator = lambda pad, keep=True: CountingCollator(orig_collator(pad, keep), counts)  # type: ignore[assignment]
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints a dict per step
                    res = train_lora(examples, tmp / f"ours-{n_run[0]}",
                                     cfg.models.model_copy(update={"base": job["model_path"]}), cfg.lora, tcfg,
                                     seed=0, device=job["device"], name="bench")
            finally:
                train_mod.PadCollator = orig_collator
            assert res.steps == s.train_steps, res.steps
            return {"seconds": res.seconds, "work": counts["tokens"], **counts,
                    "padding_fraction": 1 - counts["tokens"] / counts["positions"]}

        def baseline(examples: list[Any] = examples, max_len: int = max_len) -> dict[str, Any]:
            n_run[0] += 1
            counts = {"tokens": 0, "positions": 0, "examples": 0}
            with contextlib.redirect_stdout(io.StringIO()):
                dt = _plain_trainer_run(job, examples, max_len, tmp / f"base-{n_run[0]}", counts)
            return {"seconds": dt, "work": counts["tokens"], **counts,
                    "padding_fraction": 1 - counts["tokens"] / counts["positions"]}

        print(f"  training: {kind} examples", flush=True)
        timed = _timed_runs(job["repeats"], {f"{kind}_ours": ours, f"{kind}_baseline": baseline}, mem)
        res = {"ours_length_grouped": timed[f"{kind}_ours"], "baseline_padded_random": timed[f"{kind}_baseline"]}
        for name in res:
            got = res[name]["first"]
            if got["examples"] != n or got["tokens"] != sum(lengths):
                raise RuntimeError(f"{kind}/{name}: trained on {got['examples']} examples / {got['tokens']} "
                                   f"tokens, expected {n} / {sum(lengths)}: the variants must see the same data")
        out[kind] = {"variants": res, "example_lengths": lengths, "max_len": max_len,
                     "full_seed_padding": _simulated_padding(full_lengths, s.train_batch_size)}
    return {"n_params": out["forward"]["variants"]["baseline_padded_random"]["first"]["n_params"],
            "kinds": out, "variants": {f"{k}/{v}": d for k, o in out.items() for v, d in o["variants"].items()}}


def _simulated_padding(lengths: list[int], batch_size: int, seeds: int = 10) -> dict[str, Any]:
    """Padding fraction each sampler gives on a whole seed set (no training; context only):
    random order (the baseline) vs selfalign's LengthBucketSampler."""
    import torch

    from selfalign.train import LengthBucketSampler

    def padded(order: list[int]) -> int:
        return sum(max(lengths[i] for i in order[k:k + batch_size]) * len(order[k:k + batch_size])
                   for k in range(0, len(order), batch_size))

    real = sum(lengths)
    rnd, grp = [], []
    for sd in range(seeds):
        g = torch.Generator().manual_seed(sd)
        rnd.append(padded(torch.randperm(len(lengths), generator=g).tolist()))
        grp.append(padded(list(LengthBucketSampler(lengths, batch_size, seed=sd))))
    return {"examples": len(lengths), "batch_size": batch_size,
            "random_padding_fraction": round(1 - real / statistics.mean(rnd), 4),
            "grouped_padding_fraction": round(1 - real / statistics.mean(grp), 4)}


def stage_worker(stages: list[str], job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Entry point of a spawned process: runs the given stages in it, in order."""
    import resource

    import torch

    _stage_setup(job)
    fns = {"augmentation": stage_augmentation, "curation": stage_curation, "training": stage_training}
    results = {}
    for stage in stages:
        mem = RssSampler()
        t0 = time.perf_counter()
        try:
            out = fns[stage](job, mem)
        finally:
            mem.stop()
        out["stage_seconds"] = round(time.perf_counter() - t0, 2)
        out["stage_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out["torch_threads"] = torch.get_num_threads()
        results[stage] = out
    return results


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def measure_matmul_flops(threads: int, n: int = 1024, inner: int = 5, trials: int = 10) -> dict[str, Any]:
    """fp32 matmul FLOP/s with the benchmark's torch threads: the best of `trials` timings."""
    import torch

    from selfalign.models import setup_threads

    setup_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    rates = []
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        rates.append(2 * n**3 * inner / (time.perf_counter() - t0))
    return {"size": n, "trials": trials, "matmuls_per_trial": inner, "threads": torch.get_num_threads(),
            "best_flops": max(rates), "median_flops": statistics.median(rates)}


def load_inputs(args: argparse.Namespace, s: Sizes) -> dict[str, Any]:
    from selfalign.seed import load_seed
    from selfalign.unlabelled import load_unlabelled, sample_single_turn

    seed_path = Path(args.seed_data) if args.seed_data else REAL_SEED
    unl_path = Path(args.unlabelled_data) if args.unlabelled_data else REAL_UNLABELLED
    if not seed_path.exists():
        print(f"[bench] {seed_path} not found: using the shipped sample seed data", flush=True)
        seed_path = SAMPLES / "seed.jsonl"
    if not unl_path.exists():
        print(f"[bench] {unl_path} not found: using the shipped sample unlabelled data", flush=True)
        unl_path = SAMPLES / "unlabelled.jsonl"
    # the whole (English) seed set: training samples from it, so its lengths are a real run's
    seed = load_seed(str(seed_path))
    unl = sample_single_turn(load_unlabelled(str(unl_path)), s.aug_prompts, seed=0)
    need = max(s.cur_pairs, s.train_steps * s.train_batch_size)
    if len(seed) < need or len(unl) < s.aug_prompts:
        raise SystemExit(f"not enough data: {len(seed)} seed pairs (need {need}), "
                         f"{len(unl)} unlabelled responses (need {s.aug_prompts})")
    return {
        "responses": [r.response for r in unl],
        "pairs": [(p.instruction, p.response, p.source_id) for p in seed[: s.cur_pairs]],
        "train_pairs": [(p.instruction, p.response, p.source_id) for p in seed],
        "sources": {"seed": str(seed_path), "unlabelled": str(unl_path)},
    }


def _variant(stage: dict[str, Any], name: str, label: str, metric: str, flops_per_unit: Callable[[dict], float],
             peak: float, invert: bool = False) -> dict[str, Any]:
    """Median figures of one variant. invert: the metric is seconds per unit (lower is better)."""
    v = stage["variants"][name]
    rates = [w / t for w, t in zip(v["work"], v["seconds"], strict=True)]
    med_rate = statistics.median(rates)
    values = [1 / r for r in rates] if invert else rates
    first = v["first"]
    return {
        "variant": name, "label": label, "metric": metric,
        "value": statistics.median(values), "values": values,
        "seconds": v["seconds"], "work_units": v["work"],
        "fraction_of_peak": med_rate * flops_per_unit(first) / peak,
        "peak_rss_mb": v["peak_rss_mb"], "start_rss_mb": v["start_rss_mb"],
        **{k: first[k] for k in ("generated_tokens", "required_tokens", "padding_fraction",
                                 "tokens", "positions") if k in first},
    }


def build_rows(stages: dict[str, dict[str, Any]], peak: float, s: Sizes) -> list[dict[str, Any]]:
    rows = []

    def row(rid: str, stage: str, ours: dict, base: dict, note: str, extra: dict) -> None:
        rows.append({"id": rid, "stage": stage, "metric": ours["metric"], "ours": ours, "baseline": base,
                     "ratio": ours["value"] / base["value"], "note": note, "extra": extra})

    aug = stages["augmentation"]
    n = aug["n_params"]
    # FLOPs per generated token: 2N for it and for its share of the prompt tokens that must be run
    per_gen = lambda first, n=n: 2 * n * first["required_tokens"] / first["generated_tokens"]  # noqa: E731
    ours = _variant(aug, "ours_batched", f"generate(), batch {aug['batch_size']}", "new tokens/s", per_gen, peak)
    base = _variant(aug, "naive_one_by_one", "model.generate, one prompt at a time", "new tokens/s", per_gen, peak)
    row("augmentation", "augmentation", ours, base,
        f"greedy outputs identical {aug['greedy_identical']}/{aug['greedy_compared']}",
        {"greedy_identical": aug["greedy_identical"], "greedy_compared": aug["greedy_compared"],
         "prompts": s.aug_prompts, "max_new_tokens": s.aug_new_tokens, "prompt_tokens": aug["prompt_tokens"],
         "examples": aug["examples"]})

    cur = stages["curation"]
    n = cur["n_params"]
    # FLOPs per pair: 2N x the tokens any rater must run for it (shared prefix once, tails, output)
    per_pair = lambda first, n=n: 2 * n * first["required_tokens"] / len(first["scores"])  # noqa: E731
    k = s.cur_shots
    naive = _variant(cur, "naive_generate_kshot", f"model.generate one pair at a time, {k}-shot, no prefix cache",
                     "pairs/s", per_pair, peak)
    gen = _variant(cur, "ours_generate_kshot", f"rate_pairs generate, {k}-shot, prefix cache", "pairs/s",
                   per_pair, peak)
    lp = _variant(cur, "ours_logprob_kshot", f"rate_pairs logprob, {k}-shot, prefix cache", "pairs/s",
                  per_pair, peak)
    agree = {"outputs_identical": cur["outputs_identical"], "scores_equal": cur["scores_equal"],
             "compared": cur["compared"]}
    common = {"pairs": s.cur_pairs, "shots": k, "max_new_tokens": s.cur_new_tokens,
              "prompt_tokens": cur["prompt_tokens"]}
    row("curation_generate", "curation", gen, naive,
        f"greedy outputs identical {cur['outputs_identical']}/{cur['compared']}, "
        f"scores equal {cur['scores_equal']}/{cur['compared']}", {**agree, **common})
    row("curation_logprob", "curation", lp, naive, "one forward pass per pair, no generation", common)
    # cost per pair with k shots vs 0 shots. The prefix (instructions + worked examples) is
    # computed once per curation stage and then reused by every pair, so the per-pair cost is the
    # run's time minus the measured prefix time; the prefix time is reported next to it.
    def marginal(name: str, label: str) -> dict[str, Any]:
        v = _variant(cur, name, label, "s/pair, prefix excluded (lower is better)", per_pair, peak, invert=True)
        raw = cur["variants"][name]
        per = [(t - p) / w for t, p, w in zip(raw["seconds"], raw["prefix_seconds"], raw["work"], strict=True)]
        v.update(value=statistics.median(per), values=per, prefix_seconds=raw["prefix_seconds"])
        return v

    g_k = marginal("ours_generate_kshot", f"rate_pairs generate, {k}-shot")
    g_0 = marginal("ours_generate_0shot", "rate_pairs generate, 0-shot")
    pt = cur["prompt_tokens"]
    pre = statistics.median(g_k["prefix_seconds"])
    n_run = 150  # data.unlabelled_n: the pairs one curation stage rates
    amortized = (pre / n_run + g_k["value"]) / (statistics.median(g_0["prefix_seconds"]) / n_run + g_0["value"])
    row("curation_shots", "curation", g_k, g_0,
        f"per-pair cost {k}-shot/0-shot; prompt {pt['kshot']['prompt_tokens_max']} vs "
        f"{pt['0shot']['prompt_tokens_max']} tokens; the {k}-shot prefix takes {pre:.1f} s once per stage "
        f"({amortized:.2f}x with it spread over {n_run} pairs)",
        {**common, "prefix_seconds_kshot": g_k["prefix_seconds"], "amortized_ratio_150_pairs": amortized})

    tr = stages["training"]
    n = tr["n_params"]
    per_tok = lambda first, n=n: 4 * n  # noqa: E731 - FLOPs per LoRA-trained token
    for kind, what in (("backward", "response -> instruction"), ("forward", "instruction -> response")):
        t = tr["kinds"][kind]
        sub = {"variants": t["variants"]}
        ours = _variant(sub, "ours_length_grouped", "train_lora (length-grouped, target-only logits)",
                        "trained tokens/s", per_tok, peak)
        base = _variant(sub, "baseline_padded_random", "HF Trainer, random sampler, pad to longest",
                        "trained tokens/s", per_tok, peak)
        fs = t["full_seed_padding"]
        row(f"training_{kind}", "training", ours, base,
            f"{what}; padding {ours['padding_fraction']:.0%} vs {base['padding_fraction']:.0%}; on all "
            f"{fs['examples']} seed examples (simulated) {fs['grouped_padding_fraction']:.0%} vs "
            f"{fs['random_padding_fraction']:.0%}",
            {"steps": s.train_steps, "batch_size": s.train_batch_size, "max_seq_len": t["max_len"],
             "example_lengths": t["example_lengths"], "full_seed_padding": fs})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["row", "metric", "ours", "baseline", "ratio", "ours %peak", "base %peak", "RSS MB ours/base", "note"]
    lines = []
    for r in rows:
        o, b = r["ours"], r["baseline"]
        lines.append([r["id"], r["metric"], f"{o['value']:.4g}", f"{b['value']:.4g}", f"{r['ratio']:.2f}x",
                      f"{o['fraction_of_peak']:.2%}", f"{b['fraction_of_peak']:.2%}",
                      f"{o['peak_rss_mb']:.0f}/{b['peak_rss_mb']:.0f}", r["note"]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(head), "-+-".join("-" * w for w in widths), *map(fmt, lines)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="smollm2 (default), tiny-random, or a model folder")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="tiny random model, minimal sizes: seconds")
    p.add_argument("--out", default="bench.json", help="JSON output (default bench.json)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--cache-dir", default="~/.cache/selfalign", help="where smollm2/tiny-random are built")
    p.add_argument("--seed-data", default=None, help=f"default {REAL_SEED} (else the shipped sample)")
    p.add_argument("--unlabelled-data", default=None, help=f"default {REAL_UNLABELLED} (else the sample)")
    p.add_argument("--one-process", action=argparse.BooleanOptionalAction, default=None,
                   help="run all stages in one spawned process (default: only with --quick)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    for f in Sizes.__dataclass_fields__:
        p.add_argument("--" + f.replace("_", "-"), type=int, default=None, help=f"size override ({f})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    sizes = QUICK if args.quick else Sizes()
    sizes = Sizes(**{k: (getattr(args, k) if getattr(args, k) is not None else v)
                     for k, v in asdict(sizes).items()})
    if any(v < 1 for k, v in asdict(sizes).items() if k != "gen_batch_size") or sizes.gen_batch_size < 0:
        raise SystemExit("sizes must be >= 1 (cur_shots too: the shots row compares k with 0; "
                         "gen_batch_size 0 = auto)")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    spec = args.model or ("tiny-random" if args.quick else "smollm2")
    one_process = args.one_process if args.one_process is not None else args.quick
    stages = [x.strip() for x in args.stages.split(",") if x.strip()]
    bad = [x for x in stages if x not in STAGES]
    if bad or repeats < 1:
        raise SystemExit(f"unknown stage(s) {bad}" if bad else "--repeats must be >= 1")

    import torch
    import transformers

    from selfalign.models import resolve_model

    model_path = resolve_model(spec, args.cache_dir)
    print(f"[bench] model {spec} -> {model_path}; repeats {repeats}; sizes {asdict(sizes)}", flush=True)
    inputs = load_inputs(args, sizes)
    flops = measure_matmul_flops(args.threads)
    print(f"[bench] fp32 matmul peak {flops['best_flops'] / 1e9:.1f} GFLOP/s "
          f"({flops['threads']} threads)", flush=True)
    job = {"model_path": model_path, "cache_dir": args.cache_dir, "device": args.device,
           "threads": args.threads, "repeats": repeats, "sizes": asdict(sizes), **inputs}

    results: dict[str, dict[str, Any]] = {}
    ctx = mp.get_context("spawn")
    # one fresh process per stage; --quick (or --one-process) runs them all in one to save imports
    groups = [stages] if one_process else [[st] for st in stages]
    for group in groups:
        print(f"[bench] stage {'+'.join(group)} (spawned process)", flush=True)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            got = pool.submit(stage_worker, group, job).result()
        wall = round(time.perf_counter() - t0, 2)
        for stage, res in got.items():
            results[stage] = res | {"process_wall_seconds": wall, "process_stages": group}
        print(f"[bench] stage {'+'.join(group)} done in {wall:.1f} s", flush=True)

    rows = build_rows(results, flops["best_flops"], sizes) if set(stages) == set(STAGES) else []
    report = {
        "meta": {
            "model": spec, "model_path": model_path, "device": args.device, "repeats": repeats,
            "quick": args.quick, "sizes": asdict(sizes), "data": inputs["sources"],
            "n_params": next(iter(results.values()))["n_params"] if results else None,
            "matmul": flops, "peak_flops": flops["best_flops"],
            "flops_per_token": {"generated_or_scored": "2N", "lora_trained": "4N"},
            "rss_method": RSS_METHOD, "one_process": one_process, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "total_seconds": round(time.perf_counter() - t_start, 1),
        },
        "rows": rows,
        "stages": {k: {kk: vv for kk, vv in v.items() if kk != "variants"} |
                   {"variants": {n: {kk: vv for kk, vv in d.items() if kk != "first"}
                                 for n, d in v["variants"].items()}}
                   for k, v in results.items()},
    }
    if rows:
        print()
        print(format_table(rows))
        print(f"\nratio = ours / baseline; %peak = achieved FLOP/s (2N per generated/scored token, "
              f"4N per trained token, N = {report['meta']['n_params']:,}) / measured fp32 matmul "
              f"{flops['best_flops'] / 1e9:.1f} GFLOP/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"[bench] wrote {out} ({report['meta']['total_seconds']:.0f} s in all)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
