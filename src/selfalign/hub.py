"""Publish a finished run to the Hugging Face Hub (or a self-hosted Hub).

`push_run` uploads three repositories:

- `<ns>/<name>-backward` (model): the backward LoRA adapter, its tokenizer and a model card;
- `<ns>/<name>-curated` (dataset): `data.jsonl` and a dataset card;
- `<ns>/<name>-forward` (model): the forward LoRA adapter, its tokenizer and a model card, and
  with `hub.merge` also the merged model (base + adapter) in `merged/`.

The cards (`cards.py`) are written into a temporary staging folder: the run's artifacts are never modified,
except that the URLs are appended to `report.md` (under "## Hub repositories") and written to
`hub.json`. The token is taken from the argument, else `HF_TOKEN`, else huggingface_hub's stored
login; it is never printed, logged or written anywhere. Failures are a `HubError` with a one-line
message; transient ones (HTTP 5xx/429, connection errors) are retried with exponential backoff.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

from selfalign.cards import KINDS, Repos, RunInfo, dataset_card, model_card
from selfalign.config import HubConfig
from selfalign.io import atomic_write_text
from selfalign.log import say, warn
from selfalign.redact import redact
from selfalign.report import replace_section

T = TypeVar("T")

RETRY_ATTEMPTS = 4  # tries per Hub call (1 + 3 retries) on transient errors
RETRY_DELAY = 1.0  # seconds before the first retry; doubled each time

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class HubError(RuntimeError):
    """A push that cannot be done; the message is one line and names what to fix."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            errs.append(__import__(mod).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


TRANSPORT_ERRORS = _transport_errors()


# ---------------------------------------------------------------------------------- token


def resolve_token(token: str | None = None) -> tuple[str | None, str]:
    """(token, where it came from): the argument, else HF_TOKEN, else the stored login."""
    if token:
        return token, "argument"
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env, "HF_TOKEN"
    stored = get_token()
    if stored:
        return stored, "stored login"
    return None, "none"


def _clean(text: str, token: str | None) -> str:
    """One line, and never the token."""
    text = " ".join(str(text).split())
    if token:
        text = text.replace(token, "***")
    return redact(text)


# ---------------------------------------------------------------------------------- retries


def _server_message(e: HfHubHTTPError) -> str:
    msg = getattr(e, "server_message", None)
    if msg:
        return msg.splitlines()[0]
    lines = [x for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def _http_error(what: str, e: HfHubHTTPError, endpoint: str) -> HubError:
    status = e.response.status_code if getattr(e, "response", None) is not None else None
    server = _server_message(e)
    if status == 401:
        return HubError(f"{what}: authentication failed (HTTP 401) at {endpoint}: the token was rejected "
                        f"({server}); pass a valid write token, set HF_TOKEN or run `hf auth login`")
    if status == 403:
        return HubError(f"{what}: permission denied (HTTP 403) at {endpoint}: the token cannot write "
                        f"there ({server}); use a write token or another hub.namespace")
    if isinstance(e, RepositoryNotFoundError) or status == 404:
        return HubError(f"{what}: not found (HTTP {status}) at {endpoint} ({server})")
    return HubError(f"{what}: HTTP {status} from {endpoint} ({server})")


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if getattr(e, "response", None) is not None else None
        return status is not None and (status >= 500 or status in (408, 429))
    return isinstance(e, TRANSPORT_ERRORS) and not isinstance(e, OfflineModeIsEnabled)


def with_retries(what: str, fn: Callable[[], T], *, endpoint: str, token: str | None,
                 attempts: int = RETRY_ATTEMPTS, delay: float = RETRY_DELAY) -> T:
    """fn(), retried with exponential backoff on transient errors; failures become HubError."""
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except OfflineModeIsEnabled:
            raise HubError(f"{what}: HF_HUB_OFFLINE is set; unset it to push") from None
        except HfHubHTTPError as e:
            if not _is_transient(e) or attempt == attempts:
                err = _http_error(what, e, endpoint)
                raise HubError(_clean(str(err), token)) from None
            reason = f"HTTP {e.response.status_code}"
        except TRANSPORT_ERRORS as e:
            if attempt == attempts:
                raise HubError(_clean(f"{what}: cannot reach the Hub at {endpoint} after {attempts} "
                                      f"attempts ({type(e).__name__}: {e})", token)) from None
            reason = type(e).__name__
        except ValueError as e:  # e.g. card metadata rejected by validate-yaml
            raise HubError(_clean(f"{what}: {e}", token)) from None
        wait = delay * 2 ** (attempt - 1)
        warn(f"{what}: transient error ({reason}); retry {attempt}/{attempts - 1} in {wait:g}s")
        time.sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------- plan


@dataclass
class RepoPlan:
    kind: str
    repo_id: str
    repo_type: str
    url: str
    files: dict[str, Path | str]  # path in repo -> local file, or generated text
    merge_from: Path | None = None  # forward adapter to merge into merged/ at push time

    def sizes(self) -> list[tuple[str, int]]:
        return [(p, src.stat().st_size if isinstance(src, Path) else len(src.encode()))
                for p, src in sorted(self.files.items())]


def check_artifacts(run_dir: Path) -> None:
    """HubError naming the first missing artifact of a finished run."""
    if not run_dir.is_dir():
        raise HubError(f"run directory not found: {run_dir}")
    for kind in ("backward", "curated", "forward"):
        d = run_dir / kind
        if not d.is_dir():
            raise HubError(f"missing run artifact: {d} (is the run finished?)")
    for kind in ("backward", "forward"):
        d = run_dir / kind
        if not (d / "adapter_config.json").is_file():
            raise HubError(f"missing run artifact: {d / 'adapter_config.json'}")
        if not any((d / w).is_file() for w in ADAPTER_WEIGHTS):
            raise HubError(f"missing run artifact: {d / ADAPTER_WEIGHTS[0]}")
    if not (run_dir / "curated" / "data.jsonl").is_file():
        raise HubError(f"missing run artifact: {run_dir / 'curated' / 'data.jsonl'}")


def _adapter_files(folder: Path) -> dict[str, Path | str]:
    """Top-level files of an adapter folder (adapter, tokenizer, logs), without its README."""
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "README.md" and not p.name.startswith(".")
            and not p.name.endswith(".tmp")}


def plan_run(run_dir: Path, info: RunInfo, repos: Repos, merge: bool) -> list[RepoPlan]:
    plans = []
    for kind in KINDS:
        if kind == "curated":
            card = dataset_card(info.provenance, info.n_rows, info.config, info.counts, repos)
            files: dict[str, Path | str] = {"data.jsonl": run_dir / "curated" / "data.jsonl", "README.md": card}
        else:
            files = _adapter_files(run_dir / kind)
            files["README.md"] = model_card(info, repos, kind, merged=merge and kind == "forward")
        plans.append(RepoPlan(kind, repos.ids[kind], repos.repo_type(kind), repos.url(kind), files,
                              merge_from=run_dir / kind if merge and kind == "forward" else None))
    return plans


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_plan(plans: list[RepoPlan], private: bool, token_source: str) -> None:
    say(f"dry run: nothing is uploaded (token: {token_source}; "
          f"{'private' if private else 'public'} repositories)")
    for plan in plans:
        sizes = plan.sizes()
        total = sum(s for _, s in sizes)
        print(f"\n{plan.repo_id} ({plan.repo_type}) -> {plan.url}")
        for path, size in sizes:
            print(f"  {path:<40} {_human(size):>10}")
        if plan.merge_from is not None:
            print(f"  {'merged/':<40} {'(built at push time: base + adapter merged)':>10}")
        print(f"  {len(sizes)} files, {_human(total)}")


def materialize(plan: RepoPlan, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path, src in plan.files.items():
        dst = folder / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, dst)
        else:
            dst.write_text(src, encoding="utf-8")
    return folder


def merge_adapter(adapter_dir: Path, out_dir: Path, trust_remote_code: bool = False) -> Path:
    """Base model (from adapter_config.json) + LoRA adapter, merged and saved to out_dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not base:
        raise HubError(f"{adapter_dir / 'adapter_config.json'} names no base_model_name_or_path: "
                       "cannot build the merged model (set hub.merge=false)")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        tok = AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise HubError(f"cannot build the merged model from base {base}: "
                       f"{' '.join(str(e).split())[:300]}") from None
    merged.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------- records


def record_urls(run_dir: Path, repos: Repos, urls: dict[str, str], private: bool,
                commits: dict[str, str]) -> None:
    """hub.json (never the token) and a "## Hub repositories" section in report.md."""
    record = {**urls, "repos": {k: {"id": repos.ids[k], "type": repos.repo_type(k), "url": urls[k],
                                    "commit": commits.get(k)} for k in KINDS},
              "endpoint": repos.endpoint, "private": private,
              "pushed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(run_dir / "hub.json", json.dumps(record, indent=2) + "\n")
    report = run_dir / "report.md"
    if report.is_file():
        section = ["## Hub repositories", "",
                   f"- backward model: {urls['backward']}",
                   f"- curated dataset: {urls['curated']}",
                   f"- forward model: {urls['forward']}"]
        # a re-push replaces the section instead of appending a second one
        atomic_write_text(report, replace_section(report.read_text(encoding="utf-8"), "\n".join(section)))


# ---------------------------------------------------------------------------------- push


def check_repo_ids(repos: Repos, namespace: str) -> None:
    """A HubError (one line) for a repository id the Hub would refuse, before anything is sent
    (or printed as if valid by a dry run)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for repo_id in repos.ids.values():
        try:
            validate_repo_id(namespace + "/" + repo_id.split("/", 1)[1])
        except HFValidationError as e:
            raise HubError(f"invalid Hub repository id {repo_id!r} (hub.namespace / hub.name): {e}") from None


def push_run(run_dir: Path, hub: HubConfig, token: str | None = None, dry_run: bool = False,
             api: HfApi | None = None, *, retries: int | None = None,
             retry_delay: float | None = None) -> dict[str, str]:
    """Publish the backward adapter, the curated dataset and the forward adapter of a finished
    run; returns {"backward": url, "curated": url, "forward": url} and prints the URLs.

    `dry_run` prints what would be uploaded (repo ids, types, files and sizes) and contacts
    nothing. `retries`/`retry_delay` override RETRY_ATTEMPTS/RETRY_DELAY (tries per call and the
    first backoff in seconds).
    """
    run_dir = Path(run_dir)
    check_artifacts(run_dir)
    info = RunInfo.load(run_dir)
    real_endpoint = (hub.endpoint or (api.endpoint if api is not None else None) or constants.ENDPOINT).rstrip("/")
    endpoint = redact(real_endpoint)  # what is printed and written: credentials in the URL masked
    tok, source = resolve_token(token)
    attempts = RETRY_ATTEMPTS if retries is None else retries
    delay = RETRY_DELAY if retry_delay is None else retry_delay

    def call(what: str, fn: Callable[[], T]) -> T:
        return with_retries(what, fn, endpoint=endpoint, token=tok, attempts=attempts, delay=delay)

    if dry_run:
        namespace = hub.namespace or "<your-username>"
        repos = Repos.make(namespace, hub.name, endpoint)
        check_repo_ids(repos, namespace if hub.namespace else "user")
        plans = plan_run(run_dir, info, repos, hub.merge)
        print_plan(plans, hub.private, f"found ({source})" if tok else "none found")
        return {p.kind: p.url for p in plans}

    if tok is None:
        raise HubError("no Hugging Face token: pass one, set HF_TOKEN, or run `hf auth login` "
                       "(a token with write access)")
    api = api if api is not None else HfApi(endpoint=real_endpoint, token=tok)
    if hub.namespace:
        namespace = hub.namespace
    else:
        me = call("checking the token (whoami)", lambda: api.whoami(token=tok))
        namespace = me.get("name") if isinstance(me, dict) else None
        if not namespace:
            raise HubError(f"the Hub at {endpoint} did not say whose token this is: set hub.namespace")
    repos = Repos.make(namespace, hub.name, endpoint)
    check_repo_ids(repos, namespace)
    plans = plan_run(run_dir, info, repos, hub.merge)
    trust = bool((info.config.get("models") or {}).get("trust_remote_code", False))
    commits: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="selfalign-hub-") as staging:
        for plan in plans:
            folder = materialize(plan, Path(staging) / plan.kind)
            if plan.merge_from is not None:
                say(f"merging the forward adapter into its base model for {plan.repo_id}/merged")
                merge_adapter(plan.merge_from, folder / "merged", trust_remote_code=trust)
            call(f"creating {plan.repo_type} repo {plan.repo_id}",
                 lambda p=plan: api.create_repo(p.repo_id, repo_type=p.repo_type, private=hub.private,
                                                exist_ok=True, token=tok))
            n = sum(1 for f in folder.rglob("*") if f.is_file())
            say(f"uploading {n} files to {plan.repo_id} ({plan.repo_type})")
            info_commit = call(
                f"uploading to {plan.repo_id}",
                lambda p=plan, f=folder: api.upload_folder(
                    repo_id=p.repo_id, folder_path=f, repo_type=p.repo_type, token=tok,
                    commit_message=f"selfalign: {p.kind} of run {run_dir.name}"),
            )
            commits[plan.kind] = getattr(info_commit, "oid", None) or ""
    urls = {p.kind: p.url for p in plans}
    record_urls(run_dir, repos, urls, hub.private, commits)
    print("Hub repositories:")
    for kind in KINDS:
        print(f"  {kind:<9} {urls[kind]}")
    return urls
