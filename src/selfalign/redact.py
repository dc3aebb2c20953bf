"""Secrets never printed or written: one function, `redact`, used by every writer of the run's own
files (config.yaml, manifest.json, report.md, hub.json, model and dataset cards, error logs) and
every printer (the resolved config, progress lines, warnings, error lines).

What counts as a secret, wherever it appears (generic, so that a new engine's settings are covered):
- the credentials of a URL: `https://user:token@host` -> `https://***@host`;
- a URL query parameter that carries one: `?token=...`, `api_key=`, `key=`, `access_token=`, `sig=`, ...;
- an HTTP header: `Authorization: Bearer abc`, `Bearer abc`, `X-Api-Key: abc`;
- a config value (or a mapping value) whose key names a secret: `token`, `api_key`, `password`,
  `secret`, `authorization`, `*_token`, `*_api_key`, `headers.Authorization`, ...;
- the value of an environment variable whose name says secret (HF_TOKEN, OPENAI_API_KEY,
  *_TOKEN, *_API_KEY, *_SECRET, *_PASSWORD): its text wherever it shows up.
Data records (responses, instructions) are not touched: they are the user's data, not ours to edit.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s@?#'\"]+)@")
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:[a-z0-9_\-]*(?:token|key|secret|password|passwd|pwd|auth|signature|sig|credential)s?"
    r")=)([^&;#\s'\"]+)")
_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|x-auth-token|cookie)(\s*[:=]\s*['\"]?)"
    r"(?:(bearer|basic|token)\s+)?([^\s'\",}]+)")
_BEARER = re.compile(r"\b([Bb]earer)\s+([A-Za-z0-9._~+/=\-]{16,})")
# Well-known token shapes: Hugging Face and OpenAI-style keys.
_KNOWN = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_\-]{16,})\b")
_SECRET_KEY = re.compile(
    r"(?i)^(?:.*[_\-.])?(token|api_?key|apikey|(?:access|secret|private)_?key|secret|password|passwd|authorization"
    r"|credentials?|auth)$")
_SECRET_ENV = re.compile(r"(?i)(^|_)(token|api_?key|(?:access|secret|private)_?key|secret|password|passwd|credentials?)$")


def is_secret_key(key: str) -> bool:
    """True for a setting or header whose value is a secret (`api_key`, `hub.token`, `Authorization`)."""
    return bool(_SECRET_KEY.match(str(key).strip()))


def _looks_secret(value: str) -> bool:
    """A value worth masking wherever it shows up: long enough, and not a plain word (an env var
    `X_TOKEN=disabled` must not mask the word "disabled" in every line)."""
    v = value.strip()
    return len(v) >= 8 and (len(v) >= 20 or any(c.isdigit() for c in v) or not v.isalpha())


def _env_secrets() -> list[str]:
    return sorted({v.strip() for k, v in os.environ.items() if _SECRET_ENV.search(k) and _looks_secret(v)},
                  key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret it holds replaced by `***` (see the module's list)."""
    if not isinstance(text, str) or not text:
        return text
    for value in _env_secrets():
        text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, text)
    text = _HEADER.sub(lambda m: m.group(1) + m.group(2) + (m.group(3) + " " if m.group(3) else "") + MASK, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return _KNOWN.sub(MASK, text)


def redact_obj(value: Any, key: str = "") -> Any:
    """A copy of a JSON-like value (a config dict, the manifest) with every secret masked: the
    values of keys that name a secret, and secrets inside any string."""
    if isinstance(value, dict):
        return {k: redact_obj(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_obj(v, key) for v in value]
    if isinstance(value, str):
        return MASK if value and is_secret_key(key) else redact(value)
    if value is not None and not isinstance(value, bool | int | float) and is_secret_key(key):
        return MASK
    return value
