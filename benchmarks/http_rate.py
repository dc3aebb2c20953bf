"""Pairs rated per second by a served model at 1, 4 and 8 requests in flight, against the in-process
HF engine on the same model, printed as ratios (served / HF) in one run.

    python benchmarks/http_rate.py                       # SmolLM2 on `transformers serve`, 32 pairs
    python benchmarks/http_rate.py --pairs 8 --max-new-tokens 8      # a quick check that it works
    python benchmarks/http_rate.py --base-url http://host:8000/v1 --served-model NAME   # any server

Without --base-url it starts `transformers serve` (transformers' `serving` extra) on the model
folder on a free loopback port, and stops it at the end. The pairs are the shipped sample seed
pairs (instruction, response); the rating is curation's generate mode (greedy, `--shots` worked
examples). Every variant rates the same pairs; no answer is cached between them. The server and
this process share the machine's CPU: the ratios are for this machine, not for a GPU server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def pairs_from_samples(n: int) -> list:
    from selfalign.records import AugmentedPair

    path = Path(__file__).resolve().parent.parent / "src" / "selfalign" / "sample_data" / "seed.jsonl"
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        text = json.loads(line)["text"]
        if "### Assistant:" not in text:
            continue
        human, assistant = text.split("### Assistant:", 1)
        out.append(AugmentedPair(instruction=human.replace("### Human:", "").strip(),
                                 response=assistant.split("### Human:")[0].strip(), source_id=f"b{i}",
                                 source="sample", raw_generation=""))
        if len(out) == n:
            break
    return out


def start_server(folder: str, threads: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([shutil.which("transformers") or "transformers", "serve", folder, "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu", "--dtype", "float32", "--log-level", "warning",
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(480):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url + "/v1"
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("transformers serve did not start (pip install 'transformers[serving]')")


def rate_seconds(step, engine, pairs) -> float:  # noqa: ANN001
    t = time.perf_counter()
    rated = step.run(engine, pairs, progress=False)
    dt = time.perf_counter() - t
    bad = [r for r in rated if r.status != "ok"]
    if bad:
        raise SystemExit(f"{len(bad)} pairs failed: {bad[0].error}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="model spec (resolved as models.base)")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--in-flight", default="1,4,8")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process and of the server")
    ap.add_argument("--base-url", default=None, help="a running server (default: start transformers serve)")
    ap.add_argument("--served-model", default=None, help="the model name the server serves (default: the folder)")
    ap.add_argument("--serve-args", default="", help="extra `transformers serve` options, e.g. --continuous-batching")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    a = ap.parse_args()

    import torch

    from selfalign.config import load_config
    from selfalign.curate import step_for
    from selfalign.generation import load_engine
    from selfalign.models import resolve_model
    from selfalign.prompts import Templates

    torch.set_num_threads(a.threads)
    folder = resolve_model(a.model, "~/.cache/selfalign")
    pairs = pairs_from_samples(a.pairs)
    base = [f"models.base={a.model}", f"models.rater={a.model}", "curation.mode=generate", f"curation.shots={a.shots}",
            f"curation.max_new_tokens={a.max_new_tokens}", "curation.retries=0", "curation.force_score=false",
            f"run.threads={a.threads}", "run.device=cpu"]
    proc = None
    results: dict[str, float] = {}
    try:
        url = a.base_url
        if url is None:
            proc, url = start_server(folder, a.threads, a.serve_args.split())
        model = a.served_model or folder
        cfg = load_config(None, base)
        step = step_for(cfg, Templates.for_config(cfg))
        hf = load_engine(cfg, a.model, name="hf", stage="curate")
        rate_seconds(step, hf, pairs[:2])  # warm-up (prefix cache, threads)
        results["hf"] = len(pairs) / rate_seconds(step, hf, pairs)
        del hf
        for n in [int(x) for x in a.in_flight.split(",")]:
            c = load_config(None, [*base, "served.roles=[rater]", f"served.base_url={url}", f"served.model={model}",
                                   f"served.concurrency={n}"])
            engine = load_engine(c, a.model, name=f"served x{n}", stage="curate")
            if n == 1:
                rate_seconds(step, engine, pairs[:2])  # warm-up of the server
            results[f"served_{n}"] = len(pairs) / rate_seconds(step, engine, pairs)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"\npairs rated per second ({len(pairs)} pairs, shots {a.shots}, max_new_tokens {a.max_new_tokens}, "
          f"threads {a.threads}; server {'transformers serve' if a.base_url is None else a.base_url})")
    print(f"{'engine':<12} {'pairs/s':>8} {'vs hf':>6}")
    for k, v in results.items():
        print(f"{k:<12} {v:>8.3f} {v / results['hf']:>6.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"pairs_per_second": results, "args": vars(a)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
