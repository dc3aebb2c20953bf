"""A small Hugging Face Hub API server for tests: stdlib only, loopback only, files on disk.

No self-hostable Hub exists in the package registries, so this implements the part of the Hub
HTTP API that the integration tests reach through huggingface_hub 2.4: `whoami`, `create_repo`,
`upload_folder` (the `create_commit` path), `hf_hub_download`, `snapshot_download`,
`PeftModel.from_pretrained`, `from_pretrained(subfolder=...)` and `datasets.load_dataset` (routes
and response fields read from the installed huggingface_hub's `_commit_api.py`, `lfs.py`,
`hf_api.py` and `file_download.py`):

    GET  /api/whoami-v2
    POST /api/repos/create                      (409 when the repo exists)
    POST /api/validate-yaml
    GET  /api/{models,datasets}/<ns>/<name>[/revision/<rev>]     (siblings, sha, cardData)
    POST /api/{models,datasets}/<ns>/<name>/preupload/<rev>      (uploadMode lfs | regular)
    POST /[datasets/]<ns>/<name>.git/info/lfs/objects/batch      (git LFS batch API: upload actions)
    PUT  /lfs-upload/<sha256>                                    (the upload href; no token, like S3)
    POST /[datasets/]<ns>/<name>.git/info/lfs/objects/verify
    POST /api/{models,datasets}/<ns>/<name>/commit/<rev>         (NDJSON: file (base64) and lfsFile)
    GET  /api/{models,datasets}/<ns>/<name>/tree/<rev>[/<path>]
    GET|HEAD /<ns>/<name>/resolve/<rev>/<path>, /datasets/<ns>/<name>/resolve/<rev>/<path>
                                                (ETag, X-Linked-Etag for LFS, X-Repo-Commit, Range)

As the real Hub, preupload answers `lfs` for binary files (*.safetensors, *.bin, *.parquet, or a
NUL byte in the sample) and `regular` for the rest, so a push runs huggingface_hub's LFS upload
(batch call, PUT of the bytes, verify, then an `lfsFile` commit entry) besides inline commits.
Clients must set HF_HUB_DISABLE_XET=1 (`huggingface_hub.constants.HF_HUB_DISABLE_XET` in
process): with hf_xet installed, huggingface_hub would send LFS files to xet storage, which this
server does not have.

Errors carry the headers huggingface_hub maps to its exception types (`X-Error-Code:
RepoNotFound | RevisionNotFound | EntryNotFound`, `X-Error-Message`) and a JSON `{"error": ...}`
body. A request with an unknown bearer token gets 401. Request headers, and so tokens, are never
stored.

Tests can make requests fail on purpose with `FakeHub.fail(method, path_regex, status, times)`,
and see every request (method, path, status) in `FakeHub.requests`.

A user may export HF_HUB_OFFLINE=1 (to load models from the cache only); huggingface_hub would then
refuse every request, to this loopback server too. `allow_hub_requests(monkeypatch)` clears it for a
test: the environment variables (for subprocesses: the CLI, a notebook kernel) and the copies that
huggingface_hub and datasets read from them at import.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

if TYPE_CHECKING:
    import pytest

REPO_TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIX = {"model": "", "dataset": "datasets/"}
LFS_PATTERNS = ("*.bin", "*.safetensors", "*.parquet")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def allow_hub_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo a user's offline mode for the test: the variables are removed from the environment
    (subprocesses read them), and the module-level constants that huggingface_hub and datasets
    set from them at import are set to online (transformers 5 and peft keep no copy: they read
    huggingface_hub's constant, or the environment, when called). Deleting the variable alone is
    not enough in process: huggingface_hub reads it once, into `constants.HF_HUB_OFFLINE`."""
    # imported first (with the user's setting), so that the end of the test restores it
    import datasets.config
    from huggingface_hub import constants

    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setattr(datasets.config, name, False, raising=False)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what huggingface_hub compares for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _front_matter(text: str) -> dict[str, Any] | None:
    """YAML metadata of a card, or None; raises yaml.YAMLError on bad YAML."""
    m = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", text, re.DOTALL)
    if not m:
        return None
    data = yaml.safe_load(m.group(1))
    if data is not None and not isinstance(data, dict):
        raise yaml.YAMLError("the metadata block must be a mapping")
    return data


def _is_binary(path: str, sample: bytes) -> bool:
    """Stored with LFS, as the Hub decides at preupload: a path .gitattributes sends to LFS
    (*.safetensors, *.bin, *.parquet), or content with a NUL byte in its first 512 bytes."""
    return any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in LFS_PATTERNS) or b"\0" in sample


class HubHTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int


class FakeHub:
    """The server's state (repos, commits, blobs on disk) and its HTTP front end.

    `tokens` maps a bearer token to a user name; `orgs` maps a user to the orgs it can write to.
    """

    def __init__(self, root: Path, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.lfs = self.root / "lfs"
        self.meta = self.root / "repos"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.lfs.mkdir(parents=True, exist_ok=True)
        self.meta.mkdir(parents=True, exist_ok=True)
        self._tokens = dict(tokens)
        self.orgs = orgs or {}
        self.repos: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, int]] = []
        self._lfs_pending: dict[str, int] = {}  # sha256 -> size: announced by a batch call, not yet PUT
        self._failures: list[_Failure] = []
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test hooks

    def fail(self, method: str, path_regex: str, status: int = 500, times: int = 1) -> None:
        """The next `times` requests matching (method, path regex) get `status`."""
        with self.lock:
            self._failures.append(_Failure(method.upper(), re.compile(path_regex), status, times))

    def count(self, method: str, path_regex: str, status: int | None = None) -> int:
        rx = re.compile(path_regex)
        return sum(1 for m, p, s in self.requests
                   if m == method.upper() and rx.search(p) and (status is None or s == status))

    def file_bytes(self, repo_type: str, repo_id: str, path: str, revision: str = "main") -> bytes:
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            entry = repo["commits"][self._resolve_rev(repo, revision)]["tree"][path]
            return self.entry_path(entry).read_bytes()

    def is_lfs(self, repo_type: str, repo_id: str, path: str, revision: str = "main") -> bool:
        """Whether the file was committed as an LFS object (batch API + PUT), not inline."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            return bool(repo["commits"][self._resolve_rev(repo, revision)]["tree"][path].get("lfs"))

    def _take_failure(self, method: str, path: str) -> int | None:
        with self.lock:
            for f in self._failures:
                if f.remaining > 0 and f.method == method and f.pattern.search(path):
                    f.remaining -= 1
                    return f.status
        return None

    # ------------------------------------------------------------------ auth

    def user_for(self, authorization: str | None) -> str | None:
        """The user of a bearer token, None without one; an unknown token is a 401."""
        if not authorization:
            return None
        scheme, _, tok = authorization.partition(" ")
        user = self._tokens.get(tok.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return user

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (namespace == user or namespace in self.orgs.get(user, []))

    # ------------------------------------------------------------------ storage

    def _meta_path(self, repo_type: str, repo_id: str) -> Path:
        return self.meta / f"{repo_type}s" / f"{repo_id}.json"

    def _save(self, repo: dict[str, Any]) -> None:
        p = self._meta_path(repo["type"], repo["id"])
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(repo, indent=1))
        tmp.replace(p)

    def _lfs_path(self, sha256: str) -> Path:
        return self.lfs / sha256

    def entry_path(self, entry: dict[str, Any]) -> Path:
        """Where a tree entry's content is: LFS objects by sha256, git blobs by their oid."""
        return self._lfs_path(entry["lfs"]) if entry.get("lfs") else self.blobs / entry["oid"]

    def _lfs_entry(self, sha256: str, size: int) -> dict[str, Any]:
        """A tree entry for an uploaded LFS object: the oid is the git oid of its pointer file."""
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
        return {"oid": git_blob_sha1(pointer), "size": size, "lfs": sha256, "pointerSize": len(pointer)}

    def _put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        p = self.blobs / oid
        if not p.exists():
            tmp = p.with_name(p.name + f".{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(p)
        return oid

    def _commit(self, repo: dict[str, Any], tree: dict[str, dict[str, Any]], message: str) -> str:
        parent = repo["refs"].get("main")
        seed = json.dumps([parent, message, time.time_ns(), sorted(tree.items())], default=str)
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo["commits"][oid] = {"parent": parent, "message": message, "date": _now(), "tree": tree}
        repo["refs"]["main"] = oid
        repo["lastModified"] = _now()
        self._save(repo)
        return oid

    def _repo(self, repo_type: str, repo_id: str, user: str | None, write: bool = False) -> dict[str, Any]:
        repo = self.repos.get((repo_type, repo_id))
        ns = repo_id.split("/")[0]
        if repo is None or (repo["private"] and not self.can_write(user, ns)):
            if user is None and repo is not None:
                raise HubHTTPError(401, "Invalid username or password.", "RepoNotFound")
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        if write and not self.can_write(user, ns):
            if user is None:
                raise HubHTTPError(401, "You must be authenticated to write to this repository")
            raise HubHTTPError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _resolve_rev(self, repo: dict[str, Any], rev: str) -> str:
        if rev in repo["refs"]:
            return repo["refs"][rev]
        if rev in repo["commits"]:
            return rev
        raise HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # ------------------------------------------------------------------ views

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"

    def info(self, repo: dict[str, Any], oid: str, blobs: bool) -> dict[str, Any]:
        tree = repo["commits"][oid]["tree"]
        siblings = []
        for path in sorted(tree):
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s.update(size=tree[path]["size"], blobId=tree[path]["oid"])
                if tree[path].get("lfs"):
                    s["lfs"] = {"sha256": tree[path]["lfs"], "size": tree[path]["size"],
                                "pointerSize": tree[path]["pointerSize"]}
            siblings.append(s)
        card = None
        if "README.md" in tree:
            try:
                card = _front_matter(self.entry_path(tree["README.md"]).read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                card = None
        out: dict[str, Any] = {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"],
            "author": repo["id"].split("/")[0], "sha": oid, "lastModified": repo["lastModified"],
            "createdAt": repo["createdAt"], "private": repo["private"], "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": list((card or {}).get("tags") or []),
            "siblings": siblings, "usedStorage": sum(e["size"] for e in tree.values()),
        }
        if card is not None:
            out["cardData"] = card
            if repo["type"] == "model":
                out["library_name"] = card.get("library_name")
                out["pipeline_tag"] = card.get("pipeline_tag")
        return out

    @staticmethod
    def file_entry(path: str, e: dict[str, Any]) -> dict[str, Any]:
        """A file as the tree and paths-info routes list it (with `lfs` for an LFS object)."""
        out: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
        if e.get("lfs"):
            out["lfs"] = {"oid": e["lfs"], "size": e["size"], "pointerSize": e["pointerSize"]}
        return out

    @staticmethod
    def _entries(tree: dict[str, dict[str, Any]], base: str, recursive: bool) -> list[dict[str, Any]]:
        base = base.strip("/")
        prefix = base + "/" if base else ""
        files, dirs = [], set()
        for path, e in tree.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                files.append(FakeHub.file_entry(path, e))
        out = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
               for d in sorted(dirs)]
        return out + sorted(files, key=lambda f: f["path"])


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet; requests are recorded in FakeHub.requests (never their headers)

    # -- plumbing -----------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        # recorded before the reply is sent, so a client never sees a reply that isn't recorded yet
        self.fake.requests.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubHTTPError) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json({"error": err.message, **err.extra}, err.status, headers)

    def _dispatch(self) -> None:
        body = self._body()
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        segs = [unquote(s) for s in split.path.split("/")[1:]]
        try:
            status = self.fake._take_failure(self.command, split.path)
            if status is not None:
                raise HubHTTPError(status, f"injected failure ({status})")
            user = self.fake.user_for(self.headers.get("Authorization"))
            self._route(segs, query, body, user)
        except HubHTTPError as e:
            self._error(e)
        except Exception as e:  # a bug here should show up as a 500 with a message, not a hang
            self._error(HubHTTPError(500, f"fake hub internal error: {type(e).__name__}: {e}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- routes -------------------------------------------------------------------

    def _route(self, segs: list[str], query: dict[str, str], body: bytes, user: str | None) -> None:
        m = self.command
        fake = self.fake
        if segs[:1] == ["api"]:
            rest = segs[1:]
            if rest == ["whoami-v2"] and m == "GET":
                return self._whoami(user)
            if rest == ["repos", "create"] and m == "POST":
                return self._create(json.loads(body or b"{}"), user)
            if rest == ["validate-yaml"] and m == "POST":
                return self._validate_yaml(json.loads(body or b"{}"))
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, tail = REPO_TYPES[rest[0]], "/".join(rest[1:3]), rest[3:]
                with fake.lock:
                    if not tail and m == "GET":
                        return self._info(repo_type, repo_id, "main", query, user)
                    if len(tail) == 2 and tail[0] == "revision" and m == "GET":
                        return self._info(repo_type, repo_id, tail[1], query, user)
                    if len(tail) == 2 and tail[0] == "preupload" and m == "POST":
                        return self._preupload(repo_type, repo_id, tail[1], json.loads(body), user)
                    if len(tail) == 2 and tail[0] == "commit" and m == "POST":
                        return self._commit(repo_type, repo_id, tail[1], query, body, user)
                    if len(tail) >= 2 and tail[0] == "tree" and m == "GET":
                        return self._tree(repo_type, repo_id, tail[1], "/".join(tail[2:]), query, user)
            raise HubHTTPError(404, f"no such API route: {m} /{'/'.join(segs)}")
        if len(segs) == 2 and segs[0] == "lfs-upload" and m == "PUT":
            with fake.lock:
                return self._lfs_put(segs[1], body)
        repo_type = "model"
        if segs[:1] == ["datasets"]:
            repo_type, segs = "dataset", segs[1:]
        if (len(segs) == 6 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"]
                and segs[5] in ("batch", "verify") and m == "POST"):
            repo_id = f"{segs[0]}/{segs[1][: -len('.git')]}"
            with fake.lock:
                if segs[5] == "batch":
                    return self._lfs_batch(repo_type, repo_id, json.loads(body or b"{}"), user)
                return self._lfs_verify(repo_type, repo_id, json.loads(body or b"{}"), user)
        if len(segs) >= 5 and segs[2] == "resolve" and m in ("GET", "HEAD"):
            with fake.lock:
                return self._resolve(repo_type, "/".join(segs[:2]), segs[3], "/".join(segs[4:]), user)
        raise HubHTTPError(404, f"not found: {m} {self.path}")

    def _whoami(self, user: str | None) -> None:
        if user is None:
            raise HubHTTPError(401, "Invalid username or password.")
        self._json({
            "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
            "fullname": user, "email": None, "emailVerified": False, "canPay": False, "isPro": False,
            "avatarUrl": "", "periodEnd": None,
            "orgs": [{"type": "org", "name": o, "roleInOrg": "write"} for o in self.fake.orgs.get(user, [])],
            "auth": {"type": "access_token",
                     "accessToken": {"displayName": "test", "role": "write", "createdAt": _now()}},
        })

    def _create(self, payload: dict[str, Any], user: str | None) -> None:
        fake = self.fake
        if user is None:
            raise HubHTTPError(401, "You must be authenticated to create a repository")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubHTTPError(400, f"unsupported repo type: {repo_type}")
        name = payload.get("name") or ""
        ns = payload.get("organization") or user
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name) or "--" in name or ".." in name:
            raise HubHTTPError(400, f"invalid repository name: {name!r}")
        repo_id = f"{ns}/{name}"
        if not fake.can_write(user, ns):
            raise HubHTTPError(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{ns}"')
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = fake.repo_url(repo_type, repo_id)
        with fake.lock:
            if (repo_type, repo_id) in fake.repos:
                raise HubHTTPError(409, f"You already created this {repo_type} repo", extra={"url": url})
            repo = {"id": repo_id, "type": repo_type, "private": private, "createdAt": _now(),
                    "lastModified": _now(), "refs": {}, "commits": {}}
            fake.repos[(repo_type, repo_id)] = repo
            oid = fake._put_blob(GITATTRIBUTES.encode())
            fake._commit(repo, {".gitattributes": {"oid": oid, "size": len(GITATTRIBUTES)}}, "initial commit")
        self._json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        try:
            meta = _front_matter(payload.get("content", ""))
        except yaml.YAMLError as e:
            return self._json({"errors": [{"message": f"Invalid YAML in metadata: {e}"}]}, 400)
        warnings = [] if meta else [{"message": "empty or missing yaml metadata in repo card"}]
        self._json({"errors": [], "warnings": warnings})

    def _info(self, repo_type: str, repo_id: str, rev: str, query: dict[str, str], user: str | None) -> None:
        repo = self.fake._repo(repo_type, repo_id, user)
        oid = self.fake._resolve_rev(repo, rev)
        self._json(self.fake.info(repo, oid, blobs=query.get("blobs", "").lower() in ("1", "true")))

    def _preupload(self, repo_type: str, repo_id: str, rev: str, payload: dict[str, Any],
                   user: str | None) -> None:
        repo = self.fake._repo(repo_type, repo_id, user, write=True)
        head = self.fake._resolve_rev(repo, rev)
        tree = repo["commits"][head]["tree"]
        files = []
        for f in payload.get("files", []):
            lfs = _is_binary(f["path"], base64.b64decode(f.get("sample", "")))
            old = tree.get(f["path"])
            # the oid the client compares with its own: sha256 for LFS files, git blob sha1 otherwise
            oid = None if old is None else (old.get("lfs") or old["oid"]) if lfs else old["oid"]
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": oid})
        self._json({"files": files, "commitOid": head})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict[str, Any], user: str | None) -> None:
        """The git LFS batch API: an upload (PUT) and a verify action for each object not stored yet."""
        fake = self.fake
        fake._repo(repo_type, repo_id, user, write=True)
        if payload.get("operation") != "upload":
            raise HubHTTPError(400, "only the upload operation is supported by this test server")
        base = f"{fake.repo_url(repo_type, repo_id)}.git/info/lfs/objects"
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid"}})
            elif fake._lfs_path(oid).is_file():
                objects.append({"oid": oid, "size": size})  # stored already: no actions, no upload
            else:
                fake._lfs_pending[oid] = size
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{fake.url}/lfs-upload/{oid}", "header": {}},
                    "verify": {"href": f"{base}/verify", "header": {}}}})
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str, body: bytes) -> None:
        """The storage upload a batch action points to (presigned: no token, like S3)."""
        fake = self.fake
        size = fake._lfs_pending.get(oid)
        if size is None:
            raise HubHTTPError(403, "no pending upload for this object (call the batch API first)")
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise HubHTTPError(400, "uploaded content does not match the announced oid and size")
        tmp = fake._lfs_path(oid).with_name(f"{oid}.{threading.get_ident()}.tmp")
        tmp.write_bytes(body)
        tmp.replace(fake._lfs_path(oid))
        del fake._lfs_pending[oid]
        self._send(200, b"", content_type="text/plain")

    def _lfs_verify(self, repo_type: str, repo_id: str, payload: dict[str, Any], user: str | None) -> None:
        fake = self.fake
        fake._repo(repo_type, repo_id, user, write=True)
        path = fake._lfs_path(str(payload.get("oid")))
        if not path.is_file() or path.stat().st_size != payload.get("size"):
            raise HubHTTPError(404, f"LFS object {payload.get('oid')} not found")
        self._json({"message": "Verified"})

    def _commit(self, repo_type: str, repo_id: str, rev: str, query: dict[str, str], body: bytes,
                user: str | None) -> None:
        fake = self.fake
        repo = fake._repo(repo_type, repo_id, user, write=True)
        if query.get("create_pr"):
            raise HubHTTPError(400, "pull requests are not supported by this test server")
        if rev != "main":
            raise HubHTTPError(400, f"only the main branch can be committed to here (got {rev})")
        head = fake._resolve_rev(repo, rev)
        tree = dict(repo["commits"][head]["tree"])
        summary, n_ops = "", 0
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                summary = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and parent != head:
                    raise HubHTTPError(412, "A commit has happened since the parent commit")
                continue
            path = value.get("path", "")
            if key in ("file", "deletedFile", "lfsFile") and (
                    not path or path.startswith("/") or ".." in path.split("/")):
                raise HubHTTPError(400, f"invalid path: {path!r}")
            n_ops += 1
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubHTTPError(400, "only base64 file content is supported")
                data = base64.b64decode(value["content"])
                tree[path] = {"oid": fake._put_blob(data), "size": len(data)}
            elif key == "deletedFile":
                if path not in tree:
                    raise HubHTTPError(404, "A file with this name doesn't exist", "EntryNotFound")
                del tree[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for p in [p for p in tree if p.startswith(prefix)]:
                    del tree[p]
            elif key == "lfsFile":
                sha = value.get("oid", "")
                if value.get("algo") != "sha256" or not fake._lfs_path(sha).is_file():
                    raise HubHTTPError(400, f"LFS object {sha} of {path} was not uploaded")
                tree[path] = fake._lfs_entry(sha, fake._lfs_path(sha).stat().st_size)
            else:
                raise HubHTTPError(400, f"unsupported commit operation: {key}")
        if not summary:
            raise HubHTTPError(400, "a commit needs a summary")
        if n_ops == 0:
            raise HubHTTPError(400, "empty commit")
        oid = fake._commit(repo, tree, summary)
        self._json({"success": True, "commitOid": oid, "commitMessage": summary,
                    "commitUrl": f"{fake.repo_url(repo_type, repo_id)}/commit/{oid}",
                    "hookOutput": "", "pullRequestUrl": None})

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str, query: dict[str, str],
              user: str | None) -> None:
        repo = self.fake._repo(repo_type, repo_id, user)
        tree = repo["commits"][self.fake._resolve_rev(repo, rev)]["tree"]
        entries = FakeHub._entries(tree, path, query.get("recursive", "").lower() in ("1", "true"))
        if path.strip("/") and not entries:
            raise HubHTTPError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        self._json(entries)

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str, user: str | None) -> None:
        fake = self.fake
        repo = fake._repo(repo_type, repo_id, user)
        oid = fake._resolve_rev(repo, rev)
        entry = repo["commits"][oid]["tree"].get(path)
        if entry is None:
            raise HubHTTPError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": oid})
        data = fake.entry_path(entry).read_bytes()
        headers = {"ETag": f'"{entry["oid"]}"', "X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
        if entry.get("lfs"):  # as the Hub: an LFS file's etag is its sha256
            headers.update({"ETag": f'"{entry["lfs"]}"', "X-Linked-Etag": f'"{entry["lfs"]}"',
                            "X-Linked-Size": str(entry["size"])})
        status, size = 200, len(data)
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise HubHTTPError(416, f"bad range {rng}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(size - int(m.group(2)), 0), size - 1
            if start >= size or end < start:
                raise HubHTTPError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
            data = data[start:end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(status, data, headers, content_type="application/octet-stream")


