"""notebooks/selfalign.ipynb runs top to bottom (nbclient), so it cannot rot.

The `parameters` cell is replaced: the offline default config (SmolLM2-135M) with tiny sizes, no
install, and a push to the loopback fake Hub of tests/hub_server.py. The kernel is started with a
kernel spec written here that runs this interpreter (sys.executable), not whatever an installed
`python3` spec points at. Takes about 1-2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from conftest import REPO, slow_smollm2  # noqa: E402
from hub_server import FakeHub, allow_hub_requests  # noqa: E402

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[dev]')")

NOTEBOOK = REPO / "notebooks" / "selfalign.ipynb"
TOKEN = "hf_notebook_test_token_7c2d9e"
KERNEL = "selfalign-test-python"

# Small enough for 2 CPU cores. 10 responses fill the 5 high + 5 low lists; logprob curation always
# yields a score and threshold 1 keeps every scored pair, so the curated set is never empty.
TINY = [
    "data.seed_limit=8", "data.unlabelled_n=10", "curation.threshold=1.0", "forward.n_responses=5", "run.threads=2",
    "train_backward.max_steps=2", "train_forward.max_steps=2",
    "train_backward.max_seq_len=128", "train_forward.max_seq_len=128",
    "generation.max_prompt_tokens=128", "generation.instruction.max_new_tokens=12",
    "generation.response.max_new_tokens=12",
    "curation.mode=logprob", "curation.shots=1", "curation.max_response_tokens=96",
    "generation.require_request=false",  # a random tiny model never writes a request
]


def test_committed_notebook_is_clean() -> None:
    """Committed without outputs, with exactly one `parameters` cell."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def _kernel_manager(tmp: Path):  # noqa: ANN202
    """A KernelManager whose only spec runs this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "selfalign test", "language": "python"}))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)


def _text(cell) -> str:  # noqa: ANN001
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@slow_smollm2
@pytest.mark.slow  # over ~10 s
def test_notebook_runs_offline_and_pushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    out_dir = tmp_path / "run"
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the kernel inherits the environment
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's frozen-modules warning
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # the test Hub takes binary files by LFS, not xet
    allow_hub_requests(monkeypatch)  # a user's HF_HUB_OFFLINE=1 would block the loopback Hub in the kernel
    with FakeHub(tmp_path / "hub-storage", {TOKEN: "alice"}) as hub:
        params.source = "\n".join([
            'CONFIG = "selfalign.yaml"',  # this repository's config (the default run on ../shared/data)
            f"OVERRIDES = {TINY!r}",
            f"OUT_DIR = {str(out_dir)!r}",
            "INSTALL = False",
            'SELFALIGN_SRC = "."',
            "PUSH = True",
            "HUB_NAMESPACE = None",
            'HUB_NAME = "nb"',
            "HUB_PRIVATE = False",
            f"HUB_ENDPOINT = {hub.url!r}",
        ])
        client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=600,
                                         resources={"metadata": {"path": str(REPO)}})
        client.execute()
        repos = set(hub.repos)

    out = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert f"Python: {sys.executable}" in out  # the kernel runs this interpreter
    assert "logged in to " + hub.url + " as alice" in out
    assert "=== 5 augmented pairs" in out and out.count("  instruction: ") >= 5
    assert "=== 5 high-scored pairs" in out and "=== 5 low-scored pairs" in out
    assert len(re.findall(r"^\[\d\] score \d\.\d\d$", out, flags=re.M)) == 10
    assert "=== 5 responses of the forward model ===" in out and out.count("    response: ") == 5
    for url in (f"{hub.url}/alice/nb-backward", f"{hub.url}/datasets/alice/nb-curated", f"{hub.url}/alice/nb-forward"):
        assert url in out
    assert {("model", "alice/nb-backward"), ("dataset", "alice/nb-curated"), ("model", "alice/nb-forward")} <= repos

    rows = (out_dir / "curated" / "data.jsonl").read_text().splitlines()
    assert len(rows) == 10 and f"({len(rows)} pairs)" in out
    assert "8 seed + 10 curated" in out  # the forward model trained on the curated pairs
    assert (out_dir / "forward" / "adapter_model.safetensors").is_file()
    assert (out_dir / "backward" / "adapter_model.safetensors").is_file()
    assert TOKEN not in out


def test_notebook_auto_defaults_pick_config_and_out_dir(tmp_path: Path) -> None:
    """The committed parameters (CONFIG, OUT_DIR, SELFALIGN_SRC "auto") with INSTALL off: on this
    CPU machine the install cell picks the offline config and a local run directory, no Drive."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert re.search(r'^CONFIG = "auto"', params.source, re.M) and re.search(r'^OUT_DIR = "auto"', params.source, re.M)
    assert re.search(r'^SELFALIGN_SRC = "auto"', params.source, re.M)
    params.source = params.source.replace("INSTALL = True", "INSTALL = False")
    install = next(c for c in nb.cells if c.cell_type == "code" and "config_for_gpu" in c.source)
    nb.cells = [params, install]
    client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=300,
                                     resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()
    out = _text(install)
    assert "running on this machine; selfalign from ." in out
    assert "CONFIG = 'default'" in out and "OUT_DIR = 'runs/default'" in out
