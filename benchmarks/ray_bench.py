#!/usr/bin/env python
"""Rows/s of the local executor vs the Ray executor (1 and 2 actors), on the tiny model and SmolLM2.

    python benchmarks/ray_bench.py [--tiny-rows 2000] [--smollm2-rows 48,150] [--out ray_bench.json]

Workload: augmentation (one backward prompt per unlabelled row, instruction sampling) over
unlabelled rows in 4 JSONL shards; the same engine settings for every variant.

- local: `load_engine` + `augment.augment` in this process (torch threads: 2, both cores).
- ray-1 / ray-2: `ray_exec.run_job` with 1 actor (2 torch threads) or 2 actors (1 thread each),
  inside a local Ray instance started beforehand (num_cpus=2, 512 MB object store; its start is
  reported apart, `ray_start_s`, as a cluster is started once per run). The time counts the
  actors' start (each loads the model), read, generation, write, checkpoint and merge.

rows/s = rows / wall seconds; ratio = Ray rows/s / local rows/s (1.0 = no overhead). With two
or more SmolLM2 sizes, each variant's time is also split into a fixed part and a per-row part
(a least-squares line through its (rows, seconds) points): Ray's fixed cost per job (worker
processes, actor start, job planning) is then reported apart from its steady-state throughput.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

RAY_BASE = ["run.executor=ray", "ray.num_cpus=2", "ray.object_store_mb=512"]


def write_rows(folder: Path, n: int, words: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(4):
        with open(folder / f"part-{s}.jsonl", "w", encoding="utf-8") as f:
            for i in range(s, n, 4):
                text = " ".join(f"word{(i * 7 + k) % 101}" for k in range(words // 2 + i % words))
                f.write(json.dumps({"source_id": f"r{i:06d}", "response": f"Answer {i}. {text}."}) + "\n")
    return folder


def run_local(cfg: Any, spec: str, shards: Path, out: Path) -> float:
    from selfalign.augment import augment
    from selfalign.generation import GenParams, load_engine
    from selfalign.records import UnlabelledResponse

    rows = [json.loads(x) for f in sorted(shards.glob("*.jsonl")) for x in f.read_text().splitlines()]
    t = time.perf_counter()
    engine = load_engine(cfg, spec, name="bench")
    responses = [UnlabelledResponse(r["response"], r["source_id"]) for r in rows]
    pairs = augment(engine, responses, GenParams.from_config(cfg.generation.instruction, cfg.run.seed), out,
                    cfg.generation.max_prompt_tokens)
    assert len(pairs) == len(rows)
    return time.perf_counter() - t


def run_ray(cfg: Any, spec: str, shards: Path, out: Path) -> float:
    from selfalign import ray_exec
    from selfalign.augment import AugmentStep
    from selfalign.prompts import Templates
    from selfalign.steps import ModelRef

    t = time.perf_counter()
    ray_exec.run_job(cfg, AugmentStep.from_config(cfg, Templates.for_config(cfg), "bench"), shards, out,
                     ModelRef(spec, None, "bench", "augment"))
    n = len(out.read_text().splitlines())
    assert n == sum(len(f.read_text().splitlines()) for f in shards.glob("*.jsonl")), n
    return time.perf_counter() - t


def bench_model(name: str, spec: str, rows: int, gen: list[str], tmp: Path) -> dict[str, Any]:
    import torch

    from selfalign.config import load_config

    shards = write_rows(tmp / f"{name}-rows", rows, words=40)
    common = [f"models.base={spec}", "run.memory_check=false", *gen]
    res: dict[str, Any] = {"model": name, "rows": rows, "settings": gen}
    torch.set_num_threads(2)
    res["local_s"] = round(run_local(load_config(None, [*common, "run.threads=2"]), spec, shards,
                                     tmp / f"{name}-local.jsonl"), 2)
    for actors, threads in ((1, 2), (2, 1)):
        cfg = load_config(None, [*common, *RAY_BASE, f"ray.concurrency={actors}", f"run.threads={threads}",
                                 f"ray.cpus_per_actor={0.75 / actors}"])
        out = tmp / f"{name}-ray{actors}" / "augmented.jsonl"
        res[f"ray{actors}_s"] = round(run_ray(cfg, spec, shards, out), 2)
        print(f"[ray_bench] {name}: local {res['local_s']} s, ray{actors} {res[f'ray{actors}_s']} s", flush=True)
    for k in ("local", "ray1", "ray2"):
        res[f"{k}_rows_per_s"] = round(rows / res[f"{k}_s"], 2)
    for k in ("ray1", "ray2"):
        res[f"{k}_vs_local"] = round(res[f"{k}_rows_per_s"] / res["local_rows_per_s"], 3)
    print(json.dumps(res), flush=True)  # each model as it finishes (a long run may be cut short)
    return res


def fits(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model with >= 2 sizes: each variant's seconds = fixed + rows x per-row (least squares)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == name]
        if len({r["rows"] for r in rs}) < 2:
            continue
        out[name] = {}
        for k in ("local", "ray1", "ray2"):
            xs, ys = [r["rows"] for r in rs], [r[f"{k}_s"] for r in rs]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
            out[name][k] = {"fixed_s": round(my - slope * mx, 2), "s_per_row": round(slope, 4)}
        for k in ("ray1", "ray2"):
            out[name][k]["steady_vs_local"] = round(out[name]["local"]["s_per_row"] / out[name][k]["s_per_row"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny-rows", type=int, default=2000)
    ap.add_argument("--smollm2-rows", default="48,150",
                    help="comma-separated sizes (150 = the default run's augmentation)")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from selfalign.config import RayConfig
    from selfalign.ray_exec import ray_cluster
    from selfalign.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="selfalign-ray-bench-"))
    results: list[dict[str, Any]] = []
    try:
        tiny = str(build_tiny_model(tmp / "tiny"))
        t = time.perf_counter()
        with ray_cluster(RayConfig(num_cpus=2, concurrency=2, cpus_per_actor=0.375)):
            start = round(time.perf_counter() - t, 1)
            results.append(bench_model("tiny-random", tiny, args.tiny_rows,
                                       ["generation.batch_size=32", "generation.max_prompt_tokens=64",
                                        "generation.instruction.max_new_tokens=8", "ray.block_rows=250"], tmp))
            if not args.skip_smollm2:
                for n in (int(x) for x in args.smollm2_rows.split(",")):
                    results.append(bench_model("smollm2", "smollm2", n,
                                               ["generation.batch_size=8", "generation.max_prompt_tokens=128",
                                                "generation.instruction.max_new_tokens=16", "ray.block_rows=8"], tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"ray_start_s": start, "results": results, "fits": fits(results)}
    print(json.dumps(report, indent=2))
    print(f"\n{'model':12} {'rows':>6} {'local r/s':>10} {'ray-1 r/s':>10} {'ray-2 r/s':>10} {'ray-1/local':>12} {'ray-2/local':>12}")
    for r in results:
        print(f"{r['model']:12} {r['rows']:>6} {r['local_rows_per_s']:>10} {r['ray1_rows_per_s']:>10} "
              f"{r['ray2_rows_per_s']:>10} {r['ray1_vs_local']:>12} {r['ray2_vs_local']:>12}")
    print(f"(Ray instance start, once per run: {start} s, not counted above)")
    for name, f in report["fits"].items():
        print(f"{name}: fixed s per job / s per row / steady-state rows/s vs local: " + ", ".join(
            f"{k} {v['fixed_s']} / {v['s_per_row']} / {v.get('steady_vs_local', 1.0)}" for k, v in f.items()))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
