"""The hygiene stages of a run, and what they change downstream.

- `hygiene-seed` (after `seed`): the seed instructions and every evaluation prompt against the
  benchmarks; the evaluation prompts against the seed; duplicates within the seed. Writes the
  seed pairs that training uses (`hygiene/seed_train.jsonl`: without the contaminated ones,
  unless `hygiene.keep_contaminated`).
- `hygiene-augmented` (after `augment`): the generated instructions against the benchmarks; the
  evaluation prompts against them; duplicates within the augmented pairs and with the seed.
- `curate_filter` (at each selection, cheap): contaminated pairs out of the curated set, then the
  budget `curation.max_kept` with the diversity rule (`dedup.select_diverse`).

Files in `<run>/hygiene/`: `<part>.jsonl` (flags), `<part>.json` (tables), `flags.jsonl` (all
flags, one row per hit: source_id, set, flag, method, benchmark, match, score, match_id),
`curated_<i>.json` (what the selection dropped or skipped), `embeddings.npz` (vector cache).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfalign.config import Config
from selfalign.dedup import duplicate_counts, exact_duplicates, near_duplicates
from selfalign.hygiene import Flag, Item, check, flagged_ids, load_benchmarks, summarise
from selfalign.io import atomic_write_text, write_jsonl
from selfalign.log import say
from selfalign.records import SeedPair

PARTS = ("seed", "augmented")


def data_files(sources: dict[str, Any]) -> dict[str, str]:
    """The run's data files checked, by set name (a benchmark that is one of them is not compared with it)."""
    return {"seed": sources["data.seed"].resolved, "eval_prompts": sources["data.eval_prompts"].resolved}


def given(cfg: Config, files: dict[str, str]) -> dict[str, Any]:
    """What a hygiene stage's key hashes besides its declared reads: the benchmark files and the
    evaluation prompts."""
    from selfalign.sources import file_fingerprint

    ev = files["eval_prompts"]
    return {"benchmarks": benchmark_fingerprints(cfg), "source": [ev, file_fingerprint(ev)]}


def counts(res: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records of a hygiene stage: items hit per set and flag, embedding time."""
    return {"hits": {k: v["items_hit"] for k, v in res["tables"].items()}, "embedding_seconds": res["embedding_seconds"]}


def benchmark_fingerprints(cfg: Config) -> list[list[str]]:
    """(name, fingerprint) of each benchmark source, for the stage key (Hub ids by themselves)."""
    from selfalign.hygiene import benchmark_specs, local_path
    from selfalign.manifest import fingerprint

    out = []
    for name, path, _split in benchmark_specs(cfg):
        found = local_path(path, cfg)
        out.append([name, fingerprint(found) if found else path])
    return out


def _embedder(cfg: Config, run_dir: Path) -> Any:
    if cfg.hygiene.embeddings == "none":
        return None
    from selfalign.embed import Embedder
    from selfalign.manifest import stage_key

    h = cfg.hygiene  # the cache is per model, layer and length: another setting starts a new one
    tag = stage_key(cfg.models.base if h.embeddings == "base" else h.embeddings, h.embedding_layer,
                    h.embedding_max_tokens, cfg.models.dtype)[:8]
    return Embedder(cfg, Path(cfg.models.cache_dir).expanduser() / "embeddings" / f"{tag}.npz")


def _eval_items(cfg: Config, eval_src: str) -> list[Item]:
    from selfalign.forward import load_prompts, prompt_items

    return [Item("eval_prompts", p.source_id, p.prompt) for p in prompt_items(load_prompts(eval_src, None, cfg.data.eval_split))]


def _in_training(train: list[Item], evals: list[Item], cfg: Config, vectors: Any) -> list[Flag]:
    """Evaluation prompts found in training texts: n-grams of the prompt counted in the text."""
    got = check(train, evals, cfg, "in_training", vectors, progress=False)
    return [Flag(f.match_id, "eval_prompts", "in_training", f.method, f.set, _text(train, f), f.score, f.source_id)
            for f in got]


def _text(items: list[Item], f: Flag) -> str:
    return next(it.text for it in items if it.source_id == f.source_id and it.set == f.set)


def run_part(part: str, cfg: Config, run_dir: Path, seed: list[SeedPair], augmented: list[Any],
             files: dict[str, str]) -> dict[str, Any]:
    """One hygiene stage (`part`: seed | augmented); `files`: the run's data files by set name
    (a benchmark that is one of them is not compared with that set). Returns the part's tables."""
    t0 = time.perf_counter()
    bench, bench_files, notes = load_benchmarks(cfg)
    seed_items = [Item("seed", p.source_id, p.instruction) for p in seed]
    aug_items = [Item("augmented", p.source_id, p.instruction) for p in augmented if p.status == "ok"]
    evals = _eval_items(cfg, files["eval_prompts"])
    same = {s: {b for b, f in bench_files.items() if f == files.get(s)} for s in ("seed", "eval_prompts")}
    for s, names in same.items():
        for b in sorted(names):
            say(f"hygiene: benchmark {b} is the run's {s} file: not compared with it")
    checked_items = seed_items if part == "seed" else aug_items
    emb = _embedder(cfg, run_dir)
    vectors, t_emb = None, 0.0
    if emb is not None and (bench or evals):
        texts = [it.text for it in (*checked_items, *evals)]
        vectors = emb.vectors([*texts, *(t.text for t in bench)], ref=[t.text for t in bench] or texts)
        t_emb = emb.seconds
        emb.close()
    flags = check(checked_items, bench, cfg, "contaminated", vectors, skip=same.get(part, ()))
    if part == "seed":
        flags += check(evals, bench, cfg, "benchmark_prompt", vectors, skip=same["eval_prompts"])
        flags += exact_duplicates(seed_items) + near_duplicates(seed_items, cfg.hygiene.minhash_threshold,
                                                                 cfg.hygiene.minhash_perm)
    else:
        both = [*seed_items, *aug_items]
        flags += [f for f in exact_duplicates(both) + near_duplicates(both, cfg.hygiene.minhash_threshold,
                                                                        cfg.hygiene.minhash_perm)
                  if f.set == "augmented"]
    flags += _in_training(checked_items, evals, cfg, vectors)
    checked = {part: len(checked_items), "eval_prompts": len(evals)}
    expected = {part: ["contaminated"], "eval_prompts": ["benchmark_prompt", "in_training"] if part == "seed" else ["in_training"]}
    tables = summarise(checked, [f for f in flags if f.flag not in ("duplicate", "near_duplicate")], expected)
    n_resp = min(cfg.forward.n_responses, len(evals))
    first = {it.source_id for it in evals[:n_resp]}
    resp_hits = sorted({f.source_id for f in flags if f.set == "eval_prompts" and f.source_id in first})
    out = {"part": part, "checked": checked, "benchmarks": sorted({t.set for t in bench}),
           "benchmark_items": len(bench), "not_checked": notes, "tables": tables,
           "duplicates": duplicate_counts([f for f in flags if f.flag.endswith("duplicate")], {part: len(checked_items)}),
           "duplicate_examples": [f.to_dict() for f in flags if f.flag.endswith("duplicate")][:3],
           "responses_prompts": n_resp, "responses_prompts_flagged": resp_hits,
           "embeddings": cfg.hygiene.embeddings if vectors is not None else "none",
           "seconds": round(time.perf_counter() - t0, 2), "embedding_seconds": round(t_emb, 2)}
    d = run_dir / "hygiene"
    write_jsonl(d / f"{part}.jsonl", [f.to_dict() for f in flags])
    if part == "seed":
        dropped = set() if cfg.hygiene.keep_contaminated else flagged_ids(flags, "seed", cfg.hygiene.drop_methods)
        write_jsonl(d / "seed_train.jsonl", [asdict(p) for p in seed if p.source_id not in dropped])
        out["seed_dropped"] = sorted(dropped)
        out["drop_methods"], out["keep_contaminated"] = list(cfg.hygiene.drop_methods), cfg.hygiene.keep_contaminated
        out["seed_contaminated"] = sorted(flagged_ids(flags, "seed"))
    atomic_write_text(d / f"{part}.json", json.dumps(out, indent=1))
    merge_flags(run_dir)
    say(f"hygiene ({part}): {line(out)}")
    return out


def line(out: dict[str, Any]) -> str:
    """One line of a part's result: hits per set and flag."""
    parts = [f"{t['items_hit']} of {t['checked']} {t['set']} {t['flag'].replace('_', ' ')}"
             for t in out["tables"].values()]
    if "seed_dropped" in out:
        parts.append(f"{len(out['seed_dropped'])} contaminated seed pairs kept out of training")
    return "; ".join(parts) + f" ({out['seconds']}s, embeddings {out['embedding_seconds']}s)"


def clean(cfg: Config, run_dir: Path, augmented: list[Any]) -> list[Any]:
    """The augmented pairs without those a method of `hygiene.drop_methods` matched to a benchmark
    (all of them with `keep_contaminated`): what the ablation's arms sample from."""
    path = run_dir / "hygiene" / "augmented.jsonl"
    if cfg.hygiene.keep_contaminated or not path.is_file():
        return augmented
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
    bad = flagged_ids(rows, "augmented", cfg.hygiene.drop_methods)
    return [p for p in augmented if p.source_id not in bad]


def train_seed(run_dir: Path, _done: Any = None) -> list[SeedPair]:
    """The seed pairs that training uses (written by the hygiene-seed stage, whose result `_done` is)."""
    path = run_dir / "hygiene" / "seed_train.jsonl"
    return [SeedPair(**json.loads(x)) for x in path.read_text(encoding="utf-8").splitlines() if x]


def merge_flags(run_dir: Path, curated: Path | None = None) -> None:
    """`hygiene/flags.jsonl`: the flags of both parts and of the last curated set."""
    d = run_dir / "hygiene"
    rows: list[str] = []
    for name in (*(f"{p}.jsonl" for p in PARTS), *(sorted(x.name for x in d.glob("curated_*.jsonl")))):
        if (d / name).is_file():
            rows += [x for x in (d / name).read_text(encoding="utf-8").splitlines() if x]
    atomic_write_text(d / "flags.jsonl", "".join(r + "\n" for r in rows))


def curate_filter(cfg: Config, run_dir: Path, kept: list[Any], iteration: int) -> tuple[list[Any], dict[str, Any]]:
    """The curated set after hygiene: without the pairs that match a benchmark (unless
    `hygiene.keep_contaminated`), then at most `curation.max_kept` by score and diversity."""
    from selfalign.dedup import budget_of, closeness, select_diverse

    d = run_dir / "hygiene"
    path = d / "augmented.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x] if path.is_file() else []
    bad = flagged_ids(rows, "augmented", cfg.hygiene.drop_methods)
    hits = [Flag(**{**r, "set": "curated"}) for r in rows if r["set"] == "augmented" and r["flag"] == "contaminated"
            and r["source_id"] in {p.source_id for p in kept}]
    write_jsonl(d / f"curated_{iteration}.jsonl", [f.to_dict() for f in hits])
    info: dict[str, Any] = {"over_threshold": len(kept), "contaminated": len({f.source_id for f in hits}),
                            "contaminated_kept": cfg.hygiene.keep_contaminated,
                            "dropped": 0 if cfg.hygiene.keep_contaminated else len(bad & {p.source_id for p in kept})}
    if not cfg.hygiene.keep_contaminated:
        kept = [p for p in kept if p.source_id not in bad]
    budget = budget_of(cfg.curation.max_kept, len(kept))
    info.update(budget=budget, diversity_skipped=0)
    if budget is not None:
        emb = _embedder(cfg, run_dir)
        texts = [p.instruction for p in kept]
        ref = [t.text for t in load_benchmarks(cfg, quiet=True)[0]]  # standardised as in the check
        vectors = emb.vectors(texts, ref=ref, progress=False) if emb is not None and texts else None
        if emb is not None:
            emb.close()  # its model goes before the next stage's memory check
        similar = closeness(cfg, texts, vectors)
        threshold = cfg.hygiene.diversity_threshold if vectors is not None else cfg.hygiene.minhash_threshold
        chosen, skipped = select_diverse(kept, budget, cfg.run.seed, similar, threshold)
        by_score = select_diverse(kept, budget, cfg.run.seed, similar, float("inf"))[0]  # the budget without the rule
        ids = {p.source_id for p in chosen}
        info.update(diversity_skipped=len(skipped), similarity="cosine" if vectors is not None else "minhash",
                    diversity_threshold=threshold,
                    changed_by_rule=sum(p.source_id not in ids for p in by_score),
                    skipped_examples=[{"source_id": p.source_id, "instruction": p.instruction[:200],
                                       "score": p.score, "similarity": s} for p, s in skipped[:5]])
        kept = chosen
    info["kept"] = len(kept)
    say(f"hygiene (curated {iteration}): {card_text(info).rsplit(';', 1)[0]}; {len(kept)} kept")
    atomic_write_text(d / f"curated_{iteration}.json", json.dumps(info, indent=1))
    merge_flags(run_dir)
    return kept, info


# --- the run's report ----------------------------------------------------------------------------
def _cut(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[:n] + "…"


def report_lines(run_dir: Path) -> list[str]:
    """The report's "Data hygiene" section: a table per source (items checked, hits by method),
    examples, duplicates, and what the curated selection dropped or skipped."""
    from selfalign.report import table

    d = Path(run_dir) / "hygiene"
    parts = [json.loads((d / f"{p}.json").read_text(encoding="utf-8")) for p in PARTS if (d / f"{p}.json").is_file()]
    if not parts:
        return []
    out = ["## Data hygiene", "", f"Benchmarks: {', '.join(parts[0]['benchmarks']) or 'none'} "
           f"({parts[0]['benchmark_items']} prompts); embeddings: {parts[0]['embeddings']}. "
           "Every hit: `hygiene/flags.jsonl`.", ""]
    out += [f"- not checked: {n}" for n in parts[0]["not_checked"]]
    rows, examples = [], []
    for part in parts:
        for t in part["tables"].values():
            by = t["by_method"]
            flag = t["flag"].replace("_", " ") + (f" ({part['part']})" if t["flag"] == "in_training" else "")
            rows.append([t["set"], flag, t["checked"], t["items_hit"],
                         *(by.get(m, 0) for m in ("exact", "ngram", "embedding"))])
            examples += [f"- {t['set']} `{e['source_id']}` ({e['method']}, {e['score']}): "
                         f"{_cut(e['match'])} — {e['benchmark']} `{e['match_id']}`" for e in t["examples"][:2]]
    out += [table(["source", "flag", "checked", "items hit", "exact", "ngram", "embedding"], rows), ""]
    seed = parts[0]
    if "seed_contaminated" in seed:
        kept = len(seed["seed_contaminated"]) - len(seed["seed_dropped"])
        out.append(f"Seed pairs matching a benchmark: {len(seed['seed_contaminated'])}; kept out of training: "
                   f"{len(seed['seed_dropped'])} (methods dropped: {', '.join(seed.get('drop_methods', []))}; "
                   f"{kept} kept{': hygiene.keep_contaminated' if seed.get('keep_contaminated') else ''}).")
    ev = seed["tables"].get("eval_prompts/benchmark_prompt")
    if ev:
        exact = ev["by_method"].get("exact", 0)
        out.append(f"Evaluation prompts: {exact} of the {ev['checked']} are benchmark prompts (exact match after "
                   f"normalisation); {ev['items_hit'] - exact} more match one by n-gram or embedding only.")
    n_resp, hits = seed.get("responses_prompts", 0), seed.get("responses_prompts_flagged", [])
    out += [f"Of the {n_resp} evaluation prompts the forward model answers in this report, {len(hits)} are "
            f"flagged (a benchmark prompt or in training){': ' + ', '.join(hits) if hits else ''}.", ""]
    out += ["Examples:", "", *examples, ""]
    dup = [[s, *(v.get(k, 0) for k in ("checked",))] + [", ".join(f"{k} {n}" for k, n in v.items() if k != "checked") or "none"]
           for part in parts for s, v in part["duplicates"].items()]
    out += ["Duplicates (exact after normalisation; near: MinHash):", "", table(["set", "checked", "found"], dup), ""]
    out += [f"- {e['set']} `{e['source_id']}` {e['flag'].replace('_', ' ')} ({e['score']}) of {e['benchmark']} "
            f"`{e['match_id']}`: {_cut(e['match'])}" for part in parts for e in part.get("duplicate_examples", [])]
    for f in sorted(d.glob("curated_*.json")):
        c = json.loads(f.read_text(encoding="utf-8"))
        line = (f"Curated set ({f.stem}): {c['over_threshold']} over the threshold; {c['contaminated']} match a "
                f"benchmark; {c['dropped']} dropped" + (" (**kept: hygiene.keep_contaminated**)" if c["contaminated_kept"] else ""))
        if c.get("budget") is not None:
            line += (f"; budget {c['budget']}: {c['diversity_skipped']} skipped as too close to a kept pair "
                     f"({c['similarity']} >= {c['diversity_threshold']}), {c['changed_by_rule']} of the top "
                     f"{c['budget']} by score replaced by the rule")
        out += [line + f"; {c['kept']} kept.", ""]
        out += [f"- skipped `{e['source_id']}` (score {e['score']}, similarity {e['similarity']}): {_cut(e['instruction'])}"
                for e in c.get("skipped_examples", [])]
    return out


def add_to_report(path: Path, run_dir: Path) -> None:
    """`report.md` with its "Data hygiene" section (written, or replaced when there is one)."""
    from selfalign.report import replace_section

    lines = report_lines(run_dir)
    if lines:
        atomic_write_text(path, replace_section(path.read_text(encoding="utf-8"), "\n".join(lines)))


def card_text(info: dict[str, Any]) -> str:
    """The dataset card's line on hygiene (from `curate_filter`'s info)."""
    what = "kept (hygiene.keep_contaminated)" if info["contaminated_kept"] else f"{info['dropped']} dropped"
    text = f"{info['contaminated']} pairs matching a benchmark prompt, {what}"
    if info.get("budget") is not None:
        text += f"; budget {info['budget']}, {info['diversity_skipped']} skipped as near another kept pair"
    return text + "; see hygiene/flags.jsonl of the run"
