"""The install line of each GPU target (docs/gpu-and-colab.md, "Installs") resolves with the
project's pins: pip's resolver is asked (`pip install --dry-run --report --ignore-installed`),
nothing is installed.

What pip fetches: on pypi.org only each wheel's metadata (PEP 658). Behind an index without it
pip downloads the wheels it considers; the vLLM wheel (~240 MB) then comes once into pip's cache.
torch, whose CUDA wheels and nvidia-* dependencies weigh GBs, is given as a stub wheel of the
version under test with the dependencies of its CPU wheel (the CUDA wheels add only nvidia-*
packages and triton): the resolver checks every other package against that exact torch.

Colab's runtime, read from googlecolab/backend-info (pip-freeze.gpu.txt and os-info-gpu.txt at
commit a724079, 2026-08-19; read 2026-12-07): Python 3.13.15, torch 2.11.0+cu128, transformers
5.15.0, peft 0.20.0, accelerate 1.14.0, datasets 4.0.0, huggingface_hub 1.27.0, no vllm and no
bitsandbytes. The resolver runs on this interpreter's Python (3.11 here): a local project cannot
be resolved for another Python version.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO
from packaging.version import Version

COLAB = {"torch": "2.11.0", "transformers": "5.15.0", "peft": "0.20.0", "accelerate": "1.14.0",
         "datasets": "4.0.0", "huggingface_hub": "1.27.0"}
COLAB_READ = "2026-12-07 (googlecolab/backend-info a724079, 2026-08-19)"
VLLM_TORCH = "2.14.0"  # vLLM 0.33.0 and 0.34.0 both require torch==2.14.0


def recipes() -> dict[str, str]:
    """{comment: requirement} of the pip lines in the docs' Installs block."""
    text = (REPO / "docs" / "gpu-and-colab.md").read_text(encoding="utf-8")
    block = re.search(r"## Installs\n.*?```bash\n(.*?)```", text, re.S).group(1)
    out, comment = {}, ""
    for line in block.splitlines():
        if line.startswith("#"):
            comment = line.lstrip("# ")
        elif line.startswith("pip install"):
            out[comment] = re.search(r'"([^"]+)"', line).group(1)
    return out


def _index_reachable() -> bool:
    r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "packaging"], capture_output=True,
                       text=True, timeout=120)
    return r.returncode == 0 and "Available versions" in r.stdout


def stub_torch(folder: Path, version: str) -> Path:
    """A torch wheel of `version` with no code and the CPU wheel's dependencies (torch 2.13's)."""
    deps = [d for d in metadata.requires("torch") or [] if not d.startswith(("nvidia", "triton"))]
    name = f"torch-{version}"
    wheel = folder / f"{name}-py3-none-any.whl"
    meta = "\n".join(["Metadata-Version: 2.1", "Name: torch", f"Version: {version}",
                      *[f"Requires-Dist: {d}" for d in deps]]) + "\n"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{name}.dist-info/METADATA", meta)
        z.writestr(f"{name}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}.dist-info/RECORD", "")
    return wheel


def resolve(requirements: list[str], report: Path) -> dict[str, str]:
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                        "--report", str(report), *requirements], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{requirements} does not resolve:\n{r.stderr[-3000:]}"
    data = json.loads(report.read_text())
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in data["install"]}


def test_the_docs_name_one_recipe_per_target() -> None:
    r = recipes()
    assert list(r.values()) == ["selfalign[qlora]", "selfalign[qlora,vllm]", "selfalign[ray,vllm]"], r
    assert "Colab" in next(iter(r)) and all("ray[llm]" not in v for v in r.values())


@pytest.fixture(scope="module")
def index() -> None:
    # minutes of downloads behind an index without PEP 658 metadata (10 min the first time here):
    # CI runs these as a step of their own (.ci/run), outside the README's test command
    if not os.environ.get("SELFALIGN_RESOLVE_RECIPES"):
        pytest.skip("asks pip's resolver over the network: set SELFALIGN_RESOLVE_RECIPES=1 (.ci/run does)")
    try:
        ok = _index_reachable()
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("the package index cannot be reached: pip's resolver cannot be asked")


def _local(req: str) -> str:
    return req.replace("selfalign", str(REPO), 1)


@pytest.mark.slow
def test_colab_recipe_keeps_the_runtimes_packages(index, tmp_path: Path) -> None:
    """On Colab the recipe must not replace the runtime's torch (a CUDA 12.8 build for its driver)."""
    req = _local(recipes()[next(iter(recipes()))])
    pins = [f"{k}=={v}" for k, v in COLAB.items() if k != "torch"]
    got = resolve([req, str(stub_torch(tmp_path, COLAB["torch"])), *pins], tmp_path / "r.json")
    assert got["torch"] == COLAB["torch"] and got["transformers"] == COLAB["transformers"]
    assert "vllm" not in got and "bitsandbytes" in got, COLAB_READ


@pytest.mark.slow
@pytest.mark.parametrize("which", [1, 2])
def test_vllm_recipes_resolve_to_a_vllm_selfalign_accepts(index, tmp_path: Path, which: int) -> None:
    from packaging.specifiers import SpecifierSet

    from selfalign.vllm_backend import VLLM_VERSIONS

    req = _local(list(recipes().values())[which])
    got = resolve([req, str(stub_torch(tmp_path, VLLM_TORCH))], tmp_path / "r.json")
    assert Version(got["vllm"]) in SpecifierSet(VLLM_VERSIONS), got["vllm"]
    assert Version("5.2.0") <= Version(got["transformers"]) < Version("5.23")
    if "ray" in req:
        assert Version(got["ray"]) >= Version("2.60") and "aiohttp" in got and "pyarrow" in got
