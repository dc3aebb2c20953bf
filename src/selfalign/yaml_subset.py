"""The YAML that selfalign reads (config files and `key=value` overrides): a safe subset, with
YAML 1.2 rules for numbers, where anything else is refused with one line that says why.

Accepted: mappings with plain (scalar) keys, each key once; lists; strings; numbers by YAML 1.2
(`10`, `-3`, `0.5`, `1e-4`, `.inf`, `.nan`, `0x1F`, `0o17`); booleans; null; anchors and aliases
(their expansion bounded); merge keys (`<<: *base`, the mapping's own keys win).
Read differently from PyYAML's YAML 1.1: `1:30` and `2020-01-01` are strings (not 90 and a date).
Refused: a number with a leading zero (`010`: octal in YAML 1.1, ten in 1.2, so say which with
`10` or `0o10`), explicit tags other than the plain types (`!!set`, `!!omap`, `!!binary`,
`!!python/...`), complex keys (`? [a, b]`), a key given twice, recursive aliases, and documents
whose aliases expand past MAX_EXPANDED_NODES nodes or MAX_EXPANDED_CHARS characters.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError

MAX_EXPANDED_NODES = 100_000  # a config has a few hundred
MAX_EXPANDED_CHARS = 2_000_000  # text of every scalar, each alias counted where it is used

_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge")}


class YAMLRefused(ValueError):
    """Something outside the subset (config_files turns it into a ConfigError)."""


def _refuse(msg: str, node: yaml.Node | None = None) -> None:
    where = f" (line {node.start_mark.line + 1})" if node is not None and node.start_mark else ""
    raise YAMLRefused(f"{msg}{where}")


class SubsetLoader(yaml.SafeLoader):
    """yaml.SafeLoader restricted to the subset above."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}

    # --- composing: aliases bounded, tags checked ---------------------------------------------
    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    # --- constructing ----------------------------------------------------------------------------
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            _refuse(f"the tag {tag} is not accepted (plain strings, numbers, booleans, null, lists and "
                    "mappings only)", node)
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int" and node.style is None \
                and _LEADING_ZERO.match(node.value):
            _refuse(f"the number {node.value} has a leading zero (octal in YAML 1.1, decimal in 1.2): write "
                    f"{int(node.value.replace('_', ''))} or 0o{node.value.lstrip('+-0') or '0'}, or quote it as a string", node)
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                _refuse("a complex key (a list or a mapping used as a key, `? ...`) is not accepted", key_node)
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                _refuse(f"key '{key}' is given twice", key_node)
            seen.add(key)
        try:
            return super().construct_mapping(node, deep=deep)  # merge keys first, the mapping's own keys win
        except ConstructorError as e:
            _refuse(f"{e.problem or e}", node)
            raise  # unreachable

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        text = text.lstrip("+-")
        if text.startswith("0x"):
            return sign * int(text[2:], 16)
        if text.startswith("0o"):
            return sign * int(text[2:], 8)
        return sign * int(text)


SubsetLoader.add_constructor("tag:yaml.org,2002:int", SubsetLoader.construct_yaml_int)
for _first, _tag, _regexp in (
    ("-+0123456789", "int", _LEADING_ZERO),  # before float: constructed only to be refused with its own line
    ("-+0123456789", "int", _INT),
    ("-+0123456789.", "float", _FLOAT),
    ("yYnNtTfFoO", "bool", re.compile(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")),
    ("~nN\0", "null", re.compile(r"^(?:~|null|Null|NULL|)$")),
    ("<", "merge", re.compile(r"^(?:<<)$")),
):
    SubsetLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", _regexp, list(_first))
SubsetLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a recursive alias, or a document whose aliases expand past the bounds (a small
    file that prints 100 MB). Sizes are memoized per node: linear in the file, not in its expansion."""
    sizes: dict[int, tuple[int, int]] = {}
    busy: set[int] = set()

    def size(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            _refuse("a recursive alias (an anchor used inside itself) is not accepted", node)
        busy.add(key)
        if isinstance(node, yaml.ScalarNode):
            got = (1, len(node.value))
        else:
            items = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            n, chars = 1, 0
            for child in items:
                cn, cc = size(child)
                n, chars = n + cn, chars + cc
            got = (n, chars)
        busy.discard(key)
        sizes[key] = got
        if got[0] > MAX_EXPANDED_NODES or got[1] > MAX_EXPANDED_CHARS:
            _refuse(f"the document's aliases expand to over {MAX_EXPANDED_NODES:,} values or "
                    f"{MAX_EXPANDED_CHARS:,} characters; write the values out (a config needs far less)", node)
        return got

    import sys

    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(max(limit, 20_000))
        size(root)
    finally:
        sys.setrecursionlimit(limit)


def load_yaml(text: str) -> Any:
    """`text` read as the YAML subset; YAMLRefused (one line) for what the subset refuses."""
    return yaml.load(text, Loader=SubsetLoader)  # noqa: S506 - a SafeLoader subclass
