"""Benchmark contamination: the run's data checked against the prompts of evaluation sets.

Every instruction of the seed, of the augmented pairs (and so of the curated set) and every
evaluation prompt of the forward model is compared with every prompt of the benchmark files
(`hygiene.benchmarks`: AlpacaEval and LIMA test by default, any file a user names, and the run's
own held-out set), three ways, each with its threshold in the config:

- exact: equal after normalisation (Unicode NFKC, case folding, punctuation to spaces, runs of
  whitespace to one space);
- ngram: the share of a benchmark prompt's distinct word n-grams that occur in the training text
  (the open-instruct / NeMo Curator way; a prompt shorter than n words is one n-gram: the whole
  prompt must occur; shorter than `min_words`: exact only);
- embedding: cosine similarity of pooled hidden states (`embed.py`), for paraphrases.

Each hit is a row of `<run>/hygiene/flags.jsonl` with the benchmark item it matches and how.
The evaluation prompts are also checked against the training instructions (prompts the forward
model was trained on are flagged). Near-duplicates and the diversity rule are in `dedup.py`.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfalign.io import DataError
from selfalign.log import say
from selfalign.records import RejectLog

if TYPE_CHECKING:
    import numpy as np

    from selfalign.config import Config

METHODS = ("exact", "ngram", "embedding")
_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """The text compared for exact matches: NFKC, case-folded, punctuation as spaces, one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def words(text: str) -> list[str]:
    return normalise(text).split()


@dataclass(frozen=True)
class Item:
    """A text to check (`set`: seed, augmented, curated, eval_prompts) or a benchmark prompt
    (`set`: the benchmark's name)."""

    set: str
    source_id: str
    text: str


@dataclass
class Flag:
    """One hit: `source_id` of `set` matches `match` (item `match_id` of `benchmark`) by `method`."""

    source_id: str
    set: str
    flag: str  # contaminated | benchmark_prompt | in_training | duplicate | near_duplicate
    method: str  # exact | ngram | embedding | minhash
    benchmark: str
    match: str
    score: float
    match_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- benchmark files ---------------------------------------------------------------------------
def _row_texts(row: dict[str, Any]) -> list[str]:
    """The prompt(s) of a benchmark row: instruction/prompt/question, the first turn of
    conversations/messages, or each of MT-Bench's `turns`."""
    for key in ("instruction", "prompt", "question", "input", "text"):
        if isinstance(row.get(key), str) and row[key].strip():
            return [row[key]]
    turns = row.get("turns") or row.get("conversations") or row.get("messages")
    if isinstance(turns, list):
        if row.get("turns") is not None:
            return [t for t in turns if isinstance(t, str) and t.strip()]
        first = turns[0] if turns else None
        if isinstance(first, dict):
            first = first.get("content", first.get("value"))
        return [first] if isinstance(first, str) and first.strip() else []
    return []


def read_benchmark(name: str, source: str, split: str) -> list[Item]:
    """The prompts of one benchmark file (or Hub dataset), ids from `id`/`question_id` or the line."""
    from selfalign.seed import load_rows

    out = []
    for _file, line, row in load_rows(source, split, RejectLog()):
        texts = _row_texts(row)
        base = str(row.get("id", row.get("question_id", f"line {line}")))
        for k, t in enumerate(texts):
            out.append(Item(name, base if len(texts) == 1 else f"{base}#turn{k + 1}", t.strip()))
    if not out:
        raise DataError(f"hygiene.benchmarks: {source}: no prompt found (fields instruction, prompt, "
                        "question, turns, conversations, messages or text)")
    return out


def benchmark_specs(cfg: Config) -> list[tuple[str, str, str]]:
    """(name, path or Hub id, split) of each benchmark of the config: `path`, or `hub/id@split`;
    the held-out set (evaluate.oasst1_val, with include_heldout) when its file exists."""
    from selfalign.sources import local_file

    specs = list(cfg.hygiene.benchmarks)
    heldout = cfg.evaluate.oasst1_val
    if cfg.hygiene.include_heldout and heldout and local_file(heldout, cfg) is not None:
        specs.append(heldout)
    out = []
    for s in specs:
        path, _, split = s.partition("@") if "@" in s and not Path(s).expanduser().exists() else (s, "", "")
        p = Path(path)
        name = path if _is_hub(path) else (f"{p.parent.name}/{p.stem}" if p.parent.name not in ("", ".") else p.stem)
        out.append((f"{name}:{split}" if split else name, path, split or "test"))
    return out


def local_path(value: str, cfg: Config) -> Path | None:
    """The existing local file or folder a benchmark path names (as for data paths), or None."""
    from selfalign.sources import _candidates, _exists

    return next((c.resolve() for c in _candidates(value, cfg.config_dir) if _exists(c)), None)


@functools.lru_cache(maxsize=16)
def _hub_benchmark(name: str, hub_id: str, split: str) -> list[Item] | str:
    """A Hub benchmark, or why it could not be read: tried once per process (offline, a failed
    read takes ~50 s)."""
    try:
        return read_benchmark(name, hub_id, split)
    except DataError as e:
        return str(e)


def _is_hub(value: str) -> bool:
    from selfalign.sources import is_hub_id

    return is_hub_id(value)


def load_benchmarks(cfg: Config, quiet: bool = False) -> tuple[list[Item], dict[str, str], list[str]]:
    """Every benchmark prompt of the config, where each benchmark was read from (name -> file
    or Hub id), and one line per benchmark not checked and why.

    A local file is looked up as data paths are (working directory, then the config's folder).
    A file under an absent `data.samples_if_absent` folder, or a Hub dataset that cannot be read
    (offline, gated), is not checked and said so; a local file that does not exist is an error."""
    from selfalign.sources import _candidates, _exists, _under

    items: list[Item] = []
    files: dict[str, str] = {}
    notes: list[str] = []
    root = cfg.data.samples_if_absent
    for name, path, split in benchmark_specs(cfg):
        found = local_path(path, cfg)
        if found is None:
            if root and _under(path, root) and not any(_exists(c) for c in _candidates(root, cfg.config_dir)):
                notes.append(f"{name}: not checked ({root} is absent)")
                continue
            if not _is_hub(path):
                raise DataError(f"hygiene.benchmarks: {path}: file not found")
            got = _hub_benchmark(name, path, split)
            if isinstance(got, str):
                notes.append(f"{name}: not checked (could not be read: {got[:200]})")
                continue
            files[name] = path
        else:
            got = read_benchmark(name, str(found), split)
            files[name] = str(found)
        items += got
    for n in notes if not quiet else ():
        say(f"hygiene: benchmark {n}")
    return items, files, notes


# --- exact and n-gram matching -----------------------------------------------------------------
class NgramIndex:
    """Exact and n-gram lookup of many test texts (benchmark prompts) at once.

    `matches(text)` gives, for one training text, each test item whose normalised text equals it
    and each whose share of distinct n-grams found in it is >= `threshold`."""

    def __init__(self, tests: Sequence[Item], n: int, min_words: int, threshold: float) -> None:
        self.tests, self.n, self.threshold = list(tests), n, threshold
        self.exact: dict[str, list[int]] = defaultdict(list)
        self.grams: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.total: list[int] = []
        for i, it in enumerate(self.tests):
            w = words(it.text)
            self.exact[" ".join(w)].append(i)
            if len(w) < min_words:
                self.total.append(0)
                continue
            size = min(n, len(w))
            grams = {" ".join(w[j:j + size]) for j in range(len(w) - size + 1)}
            for g in grams:
                self.grams[size][g].append(i)
            self.total.append(len(grams))

    def matches(self, text: str) -> list[tuple[int, str, float]]:
        """(test index, method, score) of each match, exact first; at most one per test item."""
        w = words(text)
        out = [(i, "exact", 1.0) for i in self.exact.get(" ".join(w), ())]
        seen = {i for i, _, _ in out}
        counts: Counter[int] = Counter()
        for size, table in self.grams.items():
            if size > len(w):
                continue
            for g in {" ".join(w[j:j + size]) for j in range(len(w) - size + 1)}:
                for i in table.get(g, ()):
                    counts[i] += 1
        for i, c in counts.items():
            score = c / self.total[i]
            if i not in seen and score >= self.threshold - 1e-9:
                out.append((i, "ngram", round(score, 4)))
        return out


def check(items: Sequence[Item], tests: Sequence[Item], cfg: Config, flag: str,
          vectors: dict[str, np.ndarray] | None = None, skip: Iterable[str] = (),
          progress: bool = True) -> list[Flag]:
    """Flags of `items` that match `tests` (exact, n-gram; by embedding when `vectors` maps
    each text to its unit vector). An item matching several tests gets the best one per method.
    Tests of the sets in `skip` (a benchmark that is the items' own file) are not compared."""
    from tqdm import tqdm

    h = cfg.hygiene
    skip = set(skip)
    tests = [t for t in tests if t.set not in skip]
    index = NgramIndex(tests, h.ngram, h.min_words, h.ngram_threshold)
    out: list[Flag] = []
    for it in tqdm(items, desc=f"hygiene: {flag}", unit="text", disable=not progress or len(items) < 2000,
                   mininterval=2.0):
        best: dict[str, tuple[int, float]] = {}
        for i, method, score in index.matches(it.text):
            if method not in best or score > best[method][1]:
                best[method] = (i, score)
        for method, (i, score) in best.items():
            t = tests[i]
            out.append(Flag(it.source_id, it.set, flag, method, t.set, t.text, score, t.source_id))
    if vectors is not None and h.embedding_threshold is not None:
        out += _embedding_flags(items, tests, vectors, h.embedding_threshold, flag)
    return out


def _embedding_flags(items: Sequence[Item], tests: Sequence[Item], vectors: dict[str, np.ndarray],
                     threshold: float, flag: str) -> list[Flag]:
    import numpy as np

    if not items or not tests:
        return []
    t_mat = np.stack([vectors[t.text] for t in tests])
    out = []
    for start in range(0, len(items), 1024):
        chunk = items[start:start + 1024]
        sims = np.stack([vectors[it.text] for it in chunk]) @ t_mat.T
        for k, it in enumerate(chunk):
            row = sims[k]
            j = int(np.argmax(row))
            if row[j] >= threshold - 1e-6:
                t = tests[int(j)]
                out.append(Flag(it.source_id, it.set, flag, "embedding", t.set, t.text,
                                round(float(row[j]), 4), t.source_id))
    return out


# --- per-source summary -----------------------------------------------------------------------
def summarise(checked: dict[str, int], flags: Sequence[Flag], expected: dict[str, list[str]],
              n_examples: int = 3) -> dict[str, Any]:
    """A table per source and flag (those `expected` and those found): items checked, items hit
    by each method (an item hit by two methods counts under both, once in `items_hit`), examples."""
    out: dict[str, Any] = {}
    for set_name, n in checked.items():
        for flag in sorted({*expected.get(set_name, ()), *(f.flag for f in flags if f.set == set_name)}):
            rows = [f for f in flags if f.set == set_name and f.flag == flag]
            by = {m: len({f.source_id for f in rows if f.method == m}) for m in (*METHODS, "minhash")}
            out[f"{set_name}/{flag}"] = {
                "set": set_name, "flag": flag, "checked": n, "items_hit": len({f.source_id for f in rows}),
                "by_method": {m: v for m, v in by.items() if v or m in METHODS},
                "benchmarks": dict(Counter(f.benchmark for f in rows)),
                "examples": [f.to_dict() for f in _first_per_item(rows)[:n_examples]],
            }
    return out


def _first_per_item(rows: Sequence[Flag]) -> list[Flag]:
    seen: set[str] = set()
    out = []
    for f in sorted(rows, key=lambda f: (METHODS.index(f.method) if f.method in METHODS else 9, -f.score)):
        if f.source_id not in seen:
            seen.add(f.source_id)
            out.append(f)
    return out


def flagged_ids(flags: Iterable[Flag | dict[str, Any]], set_name: str, methods: Iterable[str] = METHODS,
                flag: str = "contaminated") -> set[str]:
    """Ids of `set_name` with a `flag` by one of `methods`."""
    rows = (f if isinstance(f, dict) else f.to_dict() for f in flags)
    methods = set(methods)
    return {r["source_id"] for r in rows if r["set"] == set_name and r["flag"] == flag and r["method"] in methods}
