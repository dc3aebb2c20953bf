"""`selfalign.hub.push_run` against a local fake Hub (tests/hub_server.py), then loading back.

The fake Hub speaks the HTTP API huggingface_hub 2.4 uses. Artifacts are read back by repo id:
`snapshot_download(endpoint=...)` for byte comparisons, and `PeftModel.from_pretrained(base,
repo_id)`, `AutoModelForCausalLM.from_pretrained(repo_id, subfolder="merged")` and
`datasets.load_dataset(repo_id)` with the default endpoint pointed at the fake Hub (the
`default_endpoint` fixture patches the module-level endpoint constants those libraries read,
since HF_ENDPOINT is only read at import).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import REPO  # noqa: E402
from hub_server import FakeHub, allow_hub_requests  # noqa: E402

from selfalign import hub as hubmod  # noqa: E402
from selfalign.config import HubConfig, load_config  # noqa: E402
from selfalign.hub import HubError, push_run  # noqa: E402
from selfalign.prompts import shipped  # noqa: E402

TOKEN = "hf_test_secret_token_4f1c9b7e2a"
OTHER_TOKEN = "hf_other_users_token_9d8c7b6a5e"
FAST = {"retries": 3, "retry_delay": 0.01}

WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(60)]
ROWS = [{"instruction": f"w{i} w{i + 1} w{i + 2}?", "response": f"w{i + 3} w{i + 4}", "score": 4.5 + (i % 2) * 0.5,
         "reasoning": "clear and helpful", "source": "lima", "source_id": f"lima-{i}", "ratings": [5.0]}
        for i in range(6)]
RATING_PROMPT = "Below is an instruction from an user and a candidate answer. Rate it 1-5: {instruction} {response}"


# ---------------------------------------------------------------------------------- fixtures


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def _save_adapter(base: Path, out: Path, seed: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base)
    # init_lora_weights=False: random B too, so the adapter really changes the outputs
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    _tokenizer().save_pretrained(out)
    (out / "train_log.jsonl").write_text(json.dumps({"loss": 3.2, "step": 1}) + "\n")
    (out / "training_info.json").write_text(json.dumps(
        {"n_examples": 6, "steps": 2, "first_loss": 3.2, "last_loss": 2.9, "seconds": 0.5}))


@pytest.fixture(scope="module")
def template_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base model folder, a finished run dir) built once; tests copy the run dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("hubrun")
    base = root / "base"
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# tiny base\n")

    run = root / "run"
    _save_adapter(base, run / "backward", seed=1)
    _save_adapter(base, run / "forward", seed=2)
    (run / "curated").mkdir(parents=True)
    (run / "curated" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (run / "curated" / "README.md").write_text(
        "---\nlicense: other\ntask_categories:\n- text-generation\nlanguage:\n- en\ntags:\n- selfalign\n---\n\n"
        f"# Curated instruction data (selfalign)\n\nLocal card.\n\n## Rating prompt\n\n```\n{RATING_PROMPT}\n```\n")
    cfg_run = load_config(None, [f"models.base={base}", "models.rater=m0", "data.seed=org/seed-data",
                                 "data.unlabelled=../shared/data/lima/train.jsonl", "curation.threshold=4.5"])
    (run / "config.yaml").write_text(cfg_run.to_yaml())
    (run / "manifest.json").write_text(json.dumps({"counts": {
        "seed_pairs": 8, "generated": 6,
        "curation_1": {"rated": 6, "kept": 6, "threshold": 4.5, "histogram": {"5": 3, "4": 3}},
        "forward_1_examples": 14}, "stages": {}}))
    (run / "curated_1.provenance.json").write_text(json.dumps({"rated": 6, "scored": 6, "kept": 6,
                                                              "threshold": 4.5, "rater": "m0"}))
    (run / "report.md").write_text("# selfalign run report\n\n## Counts\n\n| stage | count |\n")
    return base, run


@pytest.fixture
def run_dir(template_run: tuple[Path, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(template_run[1], dst)
    return dst


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    # the test Hub has no xet storage: binary files go through the LFS batch API and a PUT
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # for the CLI subprocesses
    with FakeHub(tmp_path / "hub-storage", {TOKEN: "alice", OTHER_TOKEN: "bob"}) as hub:
        yield hub


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE) does not apply to
    these tests: they talk to a loopback Hub, or test what a push says when nothing listens."""
    allow_hub_requests(monkeypatch)


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HF_TOKEN and no stored login leak into the tests."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hubmod, "get_token", lambda: None)


@pytest.fixture
def default_endpoint(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the libraries' default endpoint at the fake Hub, for loading by bare repo id."""
    import datasets.config
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    url = fake_hub.url
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", url)  # the module-level HfApi
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", url)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    return url


def _tree_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            h.update(str(f).encode() + f.read_bytes())
    return h.hexdigest()


def _files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def _hub(fake_hub: FakeHub, **kw) -> HubConfig:
    return HubConfig(endpoint=fake_hub.url, name="demo", **kw)


# ---------------------------------------------------------------------------------- tests


def test_push_and_load_back(run_dir: Path, fake_hub: FakeHub, default_endpoint: str, tmp_path: Path,
                            template_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import DatasetCard, ModelCard, snapshot_download

    base_dir = template_run[0]
    local = [run_dir / "backward", run_dir / "curated", run_dir / "forward", run_dir / "config.yaml",
             run_dir / "manifest.json"]
    before = _tree_digest(*local)

    urls = push_run(run_dir, _hub(fake_hub, merge=True), token=TOKEN, **FAST)

    u = fake_hub.url
    assert urls == {"backward": f"{u}/alice/demo-backward", "curated": f"{u}/datasets/alice/demo-curated",
                    "forward": f"{u}/alice/demo-forward"}
    out = capsys.readouterr()
    for url in urls.values():
        assert url in out.out
    assert _tree_digest(*local) == before, "the run's artifacts must not change"
    assert json.loads((run_dir / "hub.json").read_text())["curated"] == urls["curated"]
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# selfalign run report") and "## Hub repositories" in report
    assert all(url in report for url in urls.values())

    # --- bytes, by repo id
    cache = tmp_path / "hf-cache"
    got = {kind: Path(snapshot_download(f"alice/demo-{kind}", repo_type="dataset" if kind == "curated" else None,
                                        endpoint=u, token=TOKEN, cache_dir=cache))
           for kind in ("backward", "curated", "forward")}
    for kind in ("backward", "forward"):
        assert (got[kind] / "adapter_model.safetensors").read_bytes() == \
            (run_dir / kind / "adapter_model.safetensors").read_bytes()
        assert (got[kind] / "tokenizer.json").is_file() and (got[kind] / "adapter_config.json").is_file()
    assert (got["curated"] / "data.jsonl").read_bytes() == (run_dir / "curated" / "data.jsonl").read_bytes()
    assert (got["forward"] / "merged" / "model.safetensors").is_file()
    # binary files took huggingface_hub's LFS path (batch API, PUT, verify), text files went inline
    for kind in ("backward", "forward"):
        assert fake_hub.is_lfs("model", f"alice/demo-{kind}", "adapter_model.safetensors")
        assert not fake_hub.is_lfs("model", f"alice/demo-{kind}", "adapter_config.json")
    assert fake_hub.is_lfs("model", "alice/demo-forward", "merged/model.safetensors")
    assert not fake_hub.is_lfs("dataset", "alice/demo-curated", "data.jsonl")
    assert fake_hub.count("POST", r"\.git/info/lfs/objects/batch$", 200) == 2
    assert fake_hub.count("PUT", r"^/lfs-upload/", 200) == 3 == fake_hub.count("POST", r"/objects/verify$", 200)

    # --- cards: metadata and links
    bcard = ModelCard.load(got["backward"] / "README.md")
    fcard = ModelCard.load(got["forward"] / "README.md")
    dcard = DatasetCard.load(got["curated"] / "README.md")
    assert bcard.data.library_name == "peft" and fcard.data.library_name == "peft"
    assert bcard.data.license == "mit"  # carried from the base model's card
    assert "alice/demo-curated" in fcard.data.datasets and "org/seed-data" in bcard.data.datasets
    assert "alice/demo-curated" in bcard.text and "alice/demo-forward" in bcard.text
    assert "alice/demo-backward" in dcard.text and "alice/demo-forward" in dcard.text
    assert "4.5" in fcard.text and "org/seed-data" in fcard.text and "lima/train.jsonl" in fcard.text
    assert "lora_alpha" not in fcard.text and "seed_pairs" in fcard.text
    # the rating prompt comes from the templates, not from curate's local card (never read back)
    assert shipped().rating_prompt.strip() in dcard.text and shipped().rating_prompt.strip() in fcard.text
    assert RATING_PROMPT not in dcard.text and "Local card." not in dcard.text and dcard.data.license == "other"
    assert dcard.data.configs[0]["data_files"][0]["path"] == "data.jsonl"
    assert str(base_dir) not in bcard.text + fcard.text + dcard.text  # no local paths on public cards

    # --- load with peft and datasets by repo id (the default endpoint is the fake Hub)
    import datasets
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    ids = torch.tensor([[1, 5, 9, 12, 20]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), run_dir / "forward")(ids).logits
        remote = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), "alice/demo-forward",
                                           cache_dir=str(tmp_path / "peft-cache"), token=TOKEN)
        assert torch.equal(remote(ids).logits, want)
        plain = LlamaForCausalLM.from_pretrained(base_dir)(ids).logits
        assert not torch.allclose(plain, want), "the adapter must change the outputs"
        # adapter_kwargs: else transformers finds the root adapter_config.json and loads the base
        merged = AutoModelForCausalLM.from_pretrained("alice/demo-forward", subfolder="merged",
                                                      adapter_kwargs={"subfolder": "merged"},
                                                      cache_dir=str(tmp_path / "tf-cache"), token=TOKEN)
        assert torch.allclose(merged(ids).logits, want, atol=1e-5)
    ds = datasets.load_dataset("alice/demo-curated", split="train", cache_dir=str(tmp_path / "ds-cache"),
                               token=TOKEN)
    assert ds.num_rows == len(ROWS) and ds[0]["instruction"] == ROWS[0]["instruction"]
    assert ds[3]["source_id"] == ROWS[3]["source_id"]

    # --- the token is nowhere
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    assert _files_containing(run_dir, TOKEN) == []
    assert _files_containing(fake_hub.root, TOKEN) == []


def test_repush_updates_in_place(run_dir: Path, fake_hub: FakeHub) -> None:
    push_run(run_dir, _hub(fake_hub), token=TOKEN, **FAST)
    n_commits = fake_hub.count("POST", r"/commit/")
    (run_dir / "curated" / "data.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    push_run(run_dir, _hub(fake_hub), token=TOKEN, **FAST)
    assert fake_hub.count("POST", r"/repos/create", 409) == 3  # exist_ok
    # only the dataset changed: unchanged files are skipped, so the two model repos get no commit
    assert fake_hub.count("POST", r"/commit/") == n_commits + 1
    assert fake_hub.file_bytes("dataset", "alice/demo-curated", "data.jsonl") == json.dumps(ROWS[0]).encode() + b"\n"
    assert (run_dir / "report.md").read_text().count("## Hub repositories") == 1


def test_wrong_token_is_a_clear_401(run_dir: Path, fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    bad = "hf_wrong_token_123456789"
    with pytest.raises(HubError) as ei:
        push_run(run_dir, _hub(fake_hub), token=bad, **FAST)
    msg = str(ei.value)
    assert "401" in msg and "authentication" in msg and "\n" not in msg
    assert bad not in msg
    out = capsys.readouterr()
    assert bad not in out.out + out.err
    assert not (run_dir / "hub.json").exists()
    assert fake_hub.count("GET", r"/whoami-v2", 401) == 1  # not retried


def test_wrong_token_with_namespace_fails_on_create(run_dir: Path, fake_hub: FakeHub) -> None:
    with pytest.raises(HubError, match=r"authentication failed \(HTTP 401\)"):
        push_run(run_dir, _hub(fake_hub, namespace="alice"), token="hf_nope", **FAST)


def test_token_from_env_and_forbidden_namespace(run_dir: Path, fake_hub: FakeHub,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", OTHER_TOKEN)  # bob may not write to alice's namespace
    with pytest.raises(HubError, match="403") as ei:
        push_run(run_dir, _hub(fake_hub, namespace="alice"), **FAST)
    assert OTHER_TOKEN not in str(ei.value)


def test_missing_token(run_dir: Path, fake_hub: FakeHub) -> None:
    with pytest.raises(HubError, match="no Hugging Face token.*HF_TOKEN"):
        push_run(run_dir, _hub(fake_hub), **FAST)
    assert fake_hub.requests == []


def test_dry_run_contacts_nothing(run_dir: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("dry run opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    before = _tree_digest(run_dir)
    urls = push_run(run_dir, _hub(fake_hub, namespace="alice", merge=True), token=TOKEN, dry_run=True)
    assert urls["forward"] == f"{fake_hub.url}/alice/demo-forward"
    out = capsys.readouterr().out
    for line in ("alice/demo-backward (model)", "alice/demo-curated (dataset)", "alice/demo-forward (model)"):
        assert line in out
    assert "adapter_model.safetensors" in out and "data.jsonl" in out and "README.md" in out and "merged/" in out
    size = (run_dir / "curated" / "data.jsonl").stat().st_size
    assert f"{size} B" in out or f"{size / 1024:.1f} KB" in out
    assert TOKEN not in out
    assert fake_hub.requests == []
    assert _tree_digest(run_dir) == before


def test_missing_curated_is_named(run_dir: Path, fake_hub: FakeHub) -> None:
    shutil.rmtree(run_dir / "curated")
    with pytest.raises(HubError, match=r"curated"):
        push_run(run_dir, _hub(fake_hub), token=TOKEN, **FAST)
    assert fake_hub.requests == []


def test_missing_adapter_weights_are_named(run_dir: Path, fake_hub: FakeHub) -> None:
    (run_dir / "forward" / "adapter_model.safetensors").unlink()
    with pytest.raises(HubError, match=r"forward/adapter_model\.safetensors"):
        push_run(run_dir, _hub(fake_hub), token=TOKEN, dry_run=True)


def test_transient_500_on_first_commit_is_retried(run_dir: Path, fake_hub: FakeHub) -> None:
    fake_hub.fail("POST", r"/api/models/alice/demo-backward/commit/", 500, times=1)
    fake_hub.fail("POST", r"/api/repos/create", 503, times=1)  # huggingface_hub does not retry this one
    urls = push_run(run_dir, _hub(fake_hub), token=TOKEN, **FAST)
    assert fake_hub.count("POST", r"/commit/", 500) == 1
    assert fake_hub.count("POST", r"/api/models/alice/demo-backward/commit/", 200) == 1
    assert fake_hub.count("POST", r"/api/repos/create", 503) == 1
    assert fake_hub.file_bytes("model", "alice/demo-backward", "adapter_model.safetensors") == \
        (run_dir / "backward" / "adapter_model.safetensors").read_bytes()
    assert set(urls) == {"backward", "curated", "forward"}


def test_persistent_5xx_gives_up_with_one_line(run_dir: Path, fake_hub: FakeHub) -> None:
    fake_hub.fail("POST", r"/api/repos/create", 502, times=10)
    with pytest.raises(HubError, match="HTTP 502") as ei:
        push_run(run_dir, _hub(fake_hub, namespace="alice"), token=TOKEN, **FAST)
    assert "\n" not in str(ei.value)
    assert fake_hub.count("POST", r"/api/repos/create", 502) == FAST["retries"]


def test_unreachable_hub(run_dir: Path) -> None:
    with socket.socket() as s:  # a free port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HubError, match="cannot reach the Hub") as ei:
        push_run(run_dir, HubConfig(endpoint=f"http://127.0.0.1:{port}", name="demo"), token=TOKEN, **FAST)
    assert TOKEN not in str(ei.value)


def test_private_repos(run_dir: Path, fake_hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    push_run(run_dir, _hub(fake_hub, private=True), token=TOKEN, **FAST)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/demo-forward", "adapter_config.json", endpoint=fake_hub.url, token=False,
                        cache_dir=tmp_path / "c1")
    path = hf_hub_download("alice/demo-forward", "adapter_config.json", endpoint=fake_hub.url, token=TOKEN,
                           cache_dir=tmp_path / "c2")
    assert Path(path).read_bytes() == (run_dir / "forward" / "adapter_config.json").read_bytes()
    assert json.loads((run_dir / "hub.json").read_text())["private"] is True


def test_base_model_info() -> None:
    from selfalign.cards import base_model_info

    assert base_model_info("smollm2", "/cache/smollm2-135m-instruct") == \
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert base_model_info("meta-llama/Llama-2-7b-hf", None) == ("meta-llama/Llama-2-7b-hf", "llama2")
    assert base_model_info("/no/such/folder", "/no/such/folder") == (None, None)


@pytest.mark.slow  # over ~10 s
def test_run_with_hub_push_publishes_a_real_pipeline_run(smoke_cfg, fake_hub: FakeHub, default_endpoint: str,
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str], tiny_model: Path) -> None:
    """`hub.push: true` publishes the artifacts of an actual (tiny) pipeline run at its end; then
    `selfalign push` re-publishes them with the token from HF_TOKEN and from the stored login. The
    tokens are in no file of the run, no uploaded file and no output."""
    import datasets
    from huggingface_hub import snapshot_download
    from peft import PeftConfig

    from selfalign.pipeline import run_pipeline

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cfg = smoke_cfg.model_copy(deep=True)
    cfg.hub.push, cfg.hub.endpoint, cfg.hub.name = True, fake_hub.url, "smoke"
    run = run_pipeline(cfg)
    out = capfd.readouterr()
    assert TOKEN not in out.out + out.err
    pushed = json.loads((run.dir / "hub.json").read_text())
    assert "alice/smoke-forward" in json.dumps(pushed)
    got = Path(snapshot_download("alice/smoke-forward", endpoint=fake_hub.url, token=TOKEN, cache_dir=tmp_path / "dl"))
    assert (got / "adapter_model.safetensors").read_bytes() == (run.dir / "forward" / "adapter_model.safetensors").read_bytes()
    assert PeftConfig.from_pretrained(str(got)).r == cfg.lora.r
    ds = datasets.load_dataset("alice/smoke-curated", split="train")
    assert ds.num_rows == len((run.dir / "curated" / "data.jsonl").read_text().splitlines())
    assert "## Hub repositories" in (run.dir / "report.md").read_text()
    assert not _files_containing(run.dir, TOKEN)

    # the CLI, in a process of its own: the token from HF_TOKEN, then from the stored login
    login = tmp_path / "hf-home"
    login.mkdir()
    (login / "token").write_text(OTHER_TOKEN)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    push = ["push", "--config", "smoke", f"run.out_dir={run.dir}", f"models.base={tiny_model}",
            f"hub.endpoint={fake_hub.url}", "hub.name=smoke"]
    for extra_env, token, user in (({"HF_TOKEN": TOKEN}, TOKEN, "alice"), ({"HF_HOME": str(login)}, OTHER_TOKEN, "bob")):
        r = subprocess.run([sys.executable, "-m", "selfalign.cli", *push], cwd=REPO, env={**env, **extra_env},
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"{user}/smoke-forward" in r.stdout and token not in r.stdout + r.stderr
    # a token given as a config key is refused, without echoing it
    r = subprocess.run([sys.executable, "-m", "selfalign.cli", *push, f"hub.token={TOKEN}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown key 'hub.token'" in r.stderr and TOKEN not in r.stdout + r.stderr
    for token in (TOKEN, OTHER_TOKEN):
        assert _files_containing(run.dir, token) == []
        assert _files_containing(fake_hub.root, token) == []


@pytest.mark.slow  # > 10 s (the fast tier; CI runs it)
def test_passes_with_offline_mode_exported() -> None:
    """A user who exports HF_HUB_OFFLINE=1 (to load models from the cache only) runs these tests
    too: the `online` fixture clears it in process (huggingface_hub read it at import, into
    `constants.HF_HUB_OFFLINE`) and for subprocesses. Two of the tests, in a pytest of their own
    started with the variables set: one that talks to the fake Hub, one that reaches nothing."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "test_wrong_token_is_a_clear_401 or test_unreachable_hub"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
