"""The wheel works alone: built from this checkout, installed into a fresh virtual environment,
`selfalign run --config smoke` completes in an empty directory (configs, templates and sample data
come from the installed package, not from the checkout)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _site_packages() -> list[str]:
    """Where this interpreter finds installed packages: its own site-packages (a virtual
    environment's when it runs in one, and the base's too if that venv includes them), and the
    user site-packages when enabled."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _share_site_packages(py: Path) -> None:
    """Let the new environment import this interpreter's packages, after its own.

    Not `system_site_packages=True`: that gives the base interpreter's site-packages, which in a
    user's virtual environment lack the dependencies installed there. A .pth file in the new
    environment's site-packages lists this interpreter's: its lines go on sys.path after that
    site-packages, so the wheel's selfalign comes first. They are plain paths, not `site.addsitedir`:
    the .pth files in them (an editable selfalign's among them) are not run."""
    target = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=py.parent).stdout.strip())
    (target / "_selfalign_test_deps.pth").write_text("".join(d + "\n" for d in _site_packages()))


def test_wheel_installs_and_runs_from_an_empty_directory(tmp_path: Path) -> None:
    # built from a copy: setuptools builds in-tree, and a stale build/ folder would leak into the wheel
    src = tmp_path / "checkout"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info",
                                                             "__pycache__", ".venv", ".*_cache"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
         cwd=tmp_path)
    (wheel,) = dist.glob("selfalign-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("selfalign/configs/default.yaml", "selfalign/configs/smoke.yaml",
                 "selfalign/configs/accelerate/ddp.yaml", "selfalign/templates/rating_prompt.txt",
                 "selfalign/sample_data/seed.jsonl"):
        assert part in names, part

    # The dependencies (torch, transformers, ...) come from this interpreter's site-packages;
    # selfalign itself only from the wheel.
    # No PYTHONPATH: a checkout's src/ there (and its egg-info) would be the selfalign pip finds
    # installed, and the one imported.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)], cwd=tmp_path,
         env=env)
    _share_site_packages(py)  # after the install: pip would take an editable selfalign there as installed

    work = tmp_path / "empty"
    work.mkdir()
    where = _run([str(py), "-c", "import selfalign; print(selfalign.__file__)"], cwd=work, env=env).stdout.strip()
    assert where.startswith(str(env_dir)), where  # not the checkout's src/
    r = _run([str(env_dir / "bin" / "selfalign"), "run", "--config", "smoke", "run.out_dir=out",
              "data.seed_limit=8", "data.unlabelled_n=6", "forward.n_responses=2"], cwd=work, env=env)
    assert "(shipped config 'smoke')" in r.stdout
    assert (work / "out" / "report.md").is_file() and (work / "out" / "forward" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # nothing written outside the run dir
