"""Fuzzing the boundaries (issue 16): the data loaders get arbitrary bytes and arbitrary JSON
values (deep nesting, lone surrogates, invisible text included), the config gets arbitrary
overrides. Each must end in a result or one of our error types (DataError, ConfigError), never
another exception, and every input row must be either accepted or rejected.

Fixed budget (derandomized, a set number of examples, no deadline): about 20 s on 2 cores.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfalign.config import Config, ConfigError, load_config
from selfalign.forward import load_prompts
from selfalign.io import DataError, write_jsonl
from selfalign.readers import is_blank
from selfalign.record_log import RecordLog
from selfalign.records import RejectLog
from selfalign.seed import load_seed
from selfalign.unlabelled import load_unlabelled

BUDGET = settings(max_examples=120, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text that is hard on readers and writers: lone surrogates, invisible characters, markers.
NASTY = ["\ud800", "\udfff", "\u200b", "\ufeff", "\u2060", "\u00ad", "\x00", "\r", "\n", " ",
         "### Human:", "### Assistant:", "é", "😀", '"', "\\"]
texts = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(NASTY), max_size=6).map("".join),
                  st.tuples(st.text(max_size=20), st.sampled_from(NASTY), st.text(max_size=20)).map("".join))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["text", "conversations", "messages", "instruction", "output", "response", "prompt", "role", "content", "id"]
rows = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
    st.fixed_dictionaries({"conversations": st.lists(texts, max_size=4)}),
    st.fixed_dictionaries({"text": texts}),
    st.fixed_dictionaries({"instruction": texts, "output": texts}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "x"]), "content": texts}), max_size=4)}),
)


def deep(value: Any, depth: int) -> str:
    """`value` inside `depth` nested lists, as JSON text (json.dumps would recurse too deep)."""
    return "[" * depth + json.dumps(value) + "]" * depth


def count_rows(raw: bytes, name: str) -> int | None:
    """Rows in a file by the documented rules, or None when the file as a whole must be refused."""
    if name.endswith(".gz"):
        raw, name = gzip.decompress(raw), name[:-3]
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if not name.endswith(".txt") and raw.lstrip().startswith(b"["):
        try:
            return len(json.loads(raw.decode("utf-8")))
        except (ValueError, RecursionError):
            return None
    return sum(1 for line in raw.split(b"\n") if line.strip())


LOADERS = {
    "seed": lambda path, rejects: load_seed(str(path), english_only=False, limit=None, rejects=rejects),
    "unlabelled": lambda path, rejects: load_unlabelled(str(path), rejects=rejects),
}


def check_load(path: Path, raw: bytes, loader: str) -> None:
    rejects = RejectLog()
    expected = count_rows(raw, path.name)
    try:
        kept = LOADERS[loader](path, rejects)
    except DataError as e:
        if expected is None or "looks like a JSON array" in str(e):
            return
        if "looks like Guanaco" in str(e):  # refused as a whole: its rows are still all counted
            assert rejects.counts()["guanaco_conversation"] >= 1 and len(rejects) <= expected
            return
        assert "no usable" in str(e), e
        assert len(rejects) == expected  # nothing accepted: every row is a counted reject
        return
    assert expected is not None, "a file that should be refused was read"
    assert len(kept) + len(rejects) == expected  # input rows = accepted + rejected
    texts = [p.instruction + p.response for p in kept] if loader == "seed" else [r.response for r in kept]
    for t in texts:
        t.encode("utf-8")  # valid UTF-8: no lone surrogate got through
        assert not is_blank(t)
    rejects.write(path.with_name("rejects.jsonl"))  # the writer takes whatever the reader rejected
    # one record a line, even for readers that split on every Unicode line break
    assert len(path.with_name("rejects.jsonl").read_text(encoding="utf-8").splitlines()) == len(rejects)


@BUDGET
@given(raw=st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"text"', b":", b",", b"\n", b"\xff", b"\xef\xbb\xbf", b'"\\ud800"', b" ", b"1",
     b'{"text": "### Human: hi there?### Assistant: hello you"}']), max_size=30).map(b"".join),
       name=st.sampled_from(["d.jsonl", "d.json", "d.txt", "d.jsonl.gz", "d.parquet", "d.json.zst"]),
       loader=st.sampled_from(sorted(LOADERS)))
def test_loaders_take_arbitrary_bytes(tmp_path_factory, raw: bytes, name: str, loader: str) -> None:
    path = tmp_path_factory.mktemp("bytes") / name
    path.write_bytes(raw)
    if name.endswith((".parquet", ".zst")):  # arbitrary bytes are never a valid file here
        try:
            LOADERS[loader](path, RejectLog())
        except DataError:
            return
        raise AssertionError("arbitrary bytes read as parquet/zstd")
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    check_load(path, path.read_bytes(), loader)


@BUDGET
@given(values=st.lists(st.tuples(rows, st.sampled_from([0, 0, 0, 5, 3000])), min_size=1, max_size=8),
       loader=st.sampled_from(sorted(LOADERS)), gz=st.booleans())
def test_loaders_take_arbitrary_json(tmp_path_factory, values: list, loader: str, gz: bool) -> None:
    raw = "".join(deep(v, d) + "\n" for v, d in values).encode("ascii")  # ensure_ascii: surrogates as \ud800
    path = tmp_path_factory.mktemp("json") / ("d.jsonl.gz" if gz else "d.jsonl")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    check_load(path, path.read_bytes(), loader)


@BUDGET
@given(values=st.lists(rows, min_size=1, max_size=6))
def test_prompts_and_writers_take_arbitrary_json(tmp_path_factory, values: list) -> None:
    d = tmp_path_factory.mktemp("prompts")
    path = d / "p.json"
    path.write_text(json.dumps(values))  # one JSON array
    try:
        prompts = load_prompts(str(path), None)
    except DataError:
        prompts = []
    assert all(not is_blank(p) for p in prompts)
    # every writer takes anything a reader produced, lone surrogates included
    as_rows = [v if isinstance(v, dict) else {"value": v} for v in values]
    write_jsonl(d / "w.jsonl", as_rows)
    log = RecordLog(d / "log.jsonl")
    try:
        for r in as_rows:
            log.append(r)
    finally:
        log.close()
    # one record a line, even for readers that split on every Unicode line break (U+2028, U+0085)
    assert RecordLog(d / "log.jsonl").records == [json.loads(x) for x in (d / "w.jsonl").read_text().splitlines()]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


KEYS = sorted(_flat(Config().to_dict())) + ["run", "data", "lora.rank", "x.y", ".", "run.seed.x", "data.seed "]
VALUES = ["", " ", "0", "-1", "1", "2", "5", "0.5", "1.5", "nan", ".nan", ".inf", "-.inf", "1e309", "1e-4", "true",
          "null", "~", "[]", "[a, b]", "{}", "{a: 1}", "[", "!!python/object:os.system", "2020-01-01", "4294967296",
          "sample:seed", "sample:nope", "\ud800", "'\u200b'", "x" * 300, "[" * 2000]
overrides = st.lists(
    st.one_of(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES) | st.text(max_size=12)).map("=".join),
              st.text(max_size=20)),
    min_size=1, max_size=4)


@BUDGET
@given(overrides=overrides)
def test_config_takes_arbitrary_overrides(overrides: list[str]) -> None:
    from selfalign.sources import resolve_sources

    try:
        cfg = load_config(None, overrides)
    except ConfigError as e:
        assert "\n" not in str(e).strip()  # one line
        return
    for key, value in _flat(cfg.to_dict()).items():  # what is accepted is in range
        if isinstance(value, float):
            assert math.isfinite(value), key
    assert cfg.lora.r >= 1 and 0 <= cfg.lora.dropout < 1 and 0 <= cfg.run.seed < 2**32
    assert cfg.data.seed_limit is None or cfg.data.seed_limit >= 1
    assert Config.model_validate(cfg.to_dict()).to_dict() == cfg.to_dict()  # the saved config.yaml loads back
    try:
        resolve_sources(cfg)
    except DataError as e:
        assert "\n" not in str(e)


# --- issue 25: the YAML subset, placeholders, redaction, record ids ----------------------------
YAML_BITS = ["run:", "\n", "  ", "seed: ", "out_dir: ", "010", "1:30", "0x1F", "0o7", "2020-01-01", "!!set", "!!binary",
             "!!python/tuple", "? ", "[a, b]", "{a: 1}", "&a ", "*a", "<<: ", "- ", "'x'", '"\\ud800"', ":", "~", ".nan",
             "yes", "1e309", "lora:", "r: ", "target_modules: ", "[q_proj]", "#", "\t", "%YAML 1.1\n---\n", "..."]


@BUDGET
@given(bits=st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=6), max_size=25))
def test_config_files_take_arbitrary_yaml(tmp_path_factory, bits: list[str]) -> None:
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text("".join(bits), encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert "\n" not in str(e).strip()
        return
    assert Config.model_validate(cfg.to_dict()).to_dict() == cfg.to_dict()


@BUDGET
@given(values=st.dictionaries(st.sampled_from(["instruction", "response", "response_a", "response_b"]),
                              st.lists(st.sampled_from(["{instruction}", "{response}", "{response_a}", "{response_b}",
                                                        "{", "}", "x", " "]), max_size=6).map("".join), min_size=1))
def test_placeholders_are_filled_once_from_the_template_only(values: dict[str, str]) -> None:
    from selfalign.prompts import fill

    template = "|".join("{" + k + "}" for k in sorted(values))
    assert fill(template, **values) == "|".join(values[k] for k in sorted(values))


SECRET_CHARS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~", min_size=8,
                       max_size=24)


@BUDGET
@given(secret=SECRET_CHARS, form=st.sampled_from([
    "https://user:{s}@host.example/x", "http://{s}@h:8080", "s3://bucket/k?X-Amz-Signature={s}&a=1",
    "https://h/p?api_key={s}", "https://h/p?a=1&access_token={s}#f", "Authorization: Bearer {s}",
    "X-Api-Key: {s}", "curl -H 'Authorization: token {s}' https://h"]), before=st.text(max_size=10))
def test_redaction_masks_a_secret_in_any_place(secret: str, form: str, before: str) -> None:
    from hypothesis import assume

    from selfalign.redact import redact, redact_obj

    assume(secret not in before)
    text = before + " " + form.format(s=secret)
    assert secret not in redact(text)
    shape = {"hub": {"endpoint": text, "token": secret}, "x": [text]}
    assume(secret not in json.dumps({"hub": {"endpoint": "", "token": ""}, "x": [""]}))  # not a key's own name
    assert secret not in json.dumps(redact_obj(shape))


@BUDGET
@given(tree=st.lists(st.tuples(st.lists(st.sampled_from(["a", "b", "data", "x y"]), max_size=3),
                               st.sampled_from(["train.jsonl", "t.jsonl", "train.json"]),
                               st.integers(1, 3)), min_size=1, max_size=6))
def test_record_ids_are_unique_in_any_folder_tree(tmp_path_factory, tree: list) -> None:
    root = tmp_path_factory.mktemp("tree")
    n = 0
    for parts, name, rows in tree:
        folder = root.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / name).exists():
            continue
        lines = [json.dumps({"text": f"Answer {n + i} from {folder.name}/{name}."}) for i in range(rows)]
        (folder / name).write_text("\n".join(lines) + "\n")
        n += rows
    got = load_unlabelled(str(root))
    assert len(got) == n and len({r.source_id for r in got}) == n
