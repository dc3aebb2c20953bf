"""The served engine on real parts: `transformers serve` (transformers' `serving` extra) serving the
SmolLM2 folder on a free loopback port, the CLI in subprocesses, faults through a loopback proxy
(tests/fault_proxy.py): 429 with Retry-After, 5xx, dropped connections, delays, the server killed
mid-stage and restarted, and kill -9 of selfalign mid-stage. All slow (a real model generates)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, slow_smollm2
from fault_proxy import FaultProxy

pytestmark = [pytest.mark.slow, slow_smollm2,
              pytest.mark.skipif(importlib.util.find_spec("fastapi") is None or shutil.which("transformers") is None,
                                 reason="transformers serve needs the `serving` extra: pip install 'transformers[serving]'")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`transformers serve <folder>` on a loopback port; `start()` / `kill()` (SIGKILL)."""

    def __init__(self, folder: str) -> None:
        self.folder, self.port, self.proc = folder, free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 240) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([shutil.which("transformers"), "serve", self.folder, "--host", "127.0.0.1",
                                      "--port", str(self.port), "--device", "cpu", "--dtype", "float32",
                                      "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        end = time.time() + wait
        while time.time() < end:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("transformers serve did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def server():  # noqa: ANN201
    from selfalign.models import resolve_model

    srv = Served(resolve_model("smollm2", "~/.cache/selfalign"))
    srv.start()
    yield srv
    srv.kill()


def selfalign(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "selfalign.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def common(tiny: Path, folder: str, url: str, out: Path, *extra: str) -> list[str]:
    """A smoke run whose rater is SmolLM2 on the endpoint; short rating prompts, a few pairs."""
    return ["--config", "smoke", f"run.out_dir={out}", f"models.base={tiny}", "models.rater=smollm2",
            "generation.require_request=false", "data.unlabelled_n=6", "curation.mode=generate",
            "curation.shots=0", "curation.max_response_tokens=48", "curation.max_new_tokens=12",
            "curation.retries=0", "curation.force_score=false", "run.threads=1",
            "served.roles=[rater]", f"served.base_url={url}", f"served.model={folder}", "served.concurrency=2",
            "served.max_retries=30", "served.max_retry_wait=4", *extra]


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_run_with_the_rater_on_transformers_serve_matches_the_local_engine(server: Served, tiny_model: Path,
                                                                           tmp_path: Path) -> None:
    from selfalign.records import RatedPair

    args = common(tiny_model, server.folder, server.url + "/v1", tmp_path / "run")
    r = selfalign(["run", *args])
    assert r.returncode == 0, r.stderr[-3000:]
    rated = rows(tmp_path / "run" / "curate_1" / "rated.jsonl")
    assert len(rated) == 6 and all(x["status"] == "ok" for x in rated)
    assert set(rated[0]) == set(RatedPair.__dataclass_fields__)  # the local engine's schema
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    led = manifest["stages"]["curate-1"]["served"]
    assert led["requests"] == 6 and led["failures"] == 0 and led["prompt_tokens"] > 6 * 50
    assert "## Served-model requests" in (tmp_path / "run" / "report.md").read_text()
    # the same stage on the in-process HF engine: greedy ratings, the same texts
    local = tmp_path / "local"
    shutil.copytree(tmp_path / "run", local)
    shutil.rmtree(local / "curate_1")
    r = selfalign(["curate", *args, f"run.out_dir={local}", "served.roles=[]", "run.force=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    mine = {x["source_id"]: x for x in rated}
    theirs = rows(local / "curate_1" / "rated.jsonl")
    assert {x["source_id"] for x in theirs} == set(mine)
    same = sum(x["raw_outputs"] == mine[x["source_id"]]["raw_outputs"] for x in theirs)
    assert same >= 5, [(x["raw_outputs"], mine[x["source_id"]]["raw_outputs"]) for x in theirs]


def test_faults_and_a_server_restart_rate_every_pair_exactly_once(server: Served, tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    with FaultProxy(server.url) as proxy:
        args = common(tiny_model, server.folder, proxy.base_url, tmp_path / "run", "data.unlabelled_n=10")
        assert selfalign(["augment", *args]).returncode == 0
        proxy.faults += ["429", "500", "drop", "delay:1.0", "503", "drop", "429"]

        restarted: list[int] = []

        def restart() -> None:  # the server dies after the first answers and comes back
            end = time.time() + 600
            while sum(proxy.answered.values()) < 3 and time.time() < end:
                time.sleep(0.2)
            restarted.append(sum(proxy.answered.values()))
            server.kill()
            time.sleep(2)
            server.start()

        t = threading.Thread(target=restart)
        t.start()
        r = selfalign(["curate", *args])
        t.join()
        assert r.returncode == 0, r.stderr[-3000:]
        assert restarted and restarted[0] < 10  # the server was killed mid-stage
        rated = rows(tmp_path / "run" / "curate_1" / "rated.jsonl")
        assert len(rated) == 10 and all(x["status"] == "ok" for x in rated), [x["error"] for x in rated]
        assert sorted(proxy.answered.values()) == [1] * 10  # every pair rated exactly once
        led = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["curate-1"]["served"]
        assert led["requests"] == 10 and led["failures"] == 0
        # every request received was answered once or failed and was retried: counts add up
        assert len(proxy.received) == 10 + led["retries"]
        assert led["retries"] >= sum(proxy.injected.values())


def test_kill_9_mid_stage_then_a_rerun_sends_only_the_missing_requests(server: Served, tiny_model: Path,
                                                                       tmp_path: Path) -> None:
    from selfalign.http_engine import request_key

    with FaultProxy(server.url) as proxy:
        args = common(tiny_model, server.folder, proxy.base_url, tmp_path / "run", "data.unlabelled_n=8")
        assert selfalign(["augment", *args]).returncode == 0
        r = selfalign(["curate", *args], {"SELFALIGN_CRASH_AFTER_RECORDS": "3"})
        assert r.returncode == -9  # killed after its 3rd logged answer
        answers = tmp_path / "run" / "curate_1" / "rated.answers.jsonl"
        logged = {x["custom_id"] for x in rows(answers)}
        assert 0 < len(logged) < 8
        before = len(proxy.received)
        r = selfalign(["curate", *args])
        assert r.returncode == 0, r.stderr[-3000:]
        resent = [request_key("/v1/completions", b) for b in proxy.received[before:]]
        assert not set(resent) & logged  # nothing answered before the kill is sent again
        assert len(resent) == 8 - len(logged)  # only the missing ones
        assert len(rows(tmp_path / "run" / "curate_1" / "rated.jsonl")) == 8
        assert all(n == 1 for k, n in proxy.answered.items() if request_key("/v1/completions", json.loads(k)) in logged)
