"""A person's keep/drop labels of rated pairs (the file `selfalign review` exports).

A labels file is JSONL, one labelled pair a line:

    {"source_id": "lima-17", "decision": "keep", "note": "", "instruction": "...", "response": "..."}

`decision` is `keep` or `drop`; `note`, `instruction` and `response` are optional (the page writes
them, so the file is also a human-judged set on its own). A later line for the same source id
replaces an earlier one.

Three uses:

- `apply_labels`: with `curation.labels` set (or `selfalign curate --labels FILE`), a person's
  decision overrules the rater: a pair labelled `keep` is kept whatever its score, one labelled
  `drop` is dropped. Each overruled record carries `human` in the curated data; the counts go to
  the manifest (report) and the dataset card.
- `rater_vs_labels`: precision and recall of the rater's "kept" (score >= t) against the labels at
  each threshold t, as in the paper's Table 7.
- `human_pairs`: the labels as the human-judged set of `selfalign evaluate` (keep = good, drop = bad).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfalign.io import DataError, jsonl_rows
from selfalign.records import AugmentedPair, RatedPair

DECISIONS = ("keep", "drop")
# the thresholds of the precision/recall table (the run's own threshold is added)
TABLE_THRESHOLDS = (2.0, 3.0, 3.5, 4.0, 4.5, 5.0)


@dataclass
class Label:
    source_id: str
    decision: str  # keep | drop
    note: str = ""
    instruction: str = ""
    response: str = ""


def is_labels_file(path: str | Path) -> bool:
    """True if the first non-empty line of `path` is a labels row (has `source_id` and `decision`)."""
    try:
        with Path(path).expanduser().open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    return isinstance(row, dict) and "decision" in row and "source_id" in row
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return False


def load_labels(path: str | Path) -> dict[str, Label]:
    """The labels of a labels file by source id; DataError (file:line, why) on a bad row."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: labels file not found (export one from review.html, see docs/review.md)")
    out: dict[str, Label] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (a labels file is JSONL)") from None
    for k, row in jsonl_rows(path, text):
        if not isinstance(row, dict) or not isinstance(row.get("source_id"), str) or not row["source_id"]:
            raise DataError(f"{path}:{k}: a labels row needs a source_id (string)")
        if row.get("decision") not in DECISIONS:
            raise DataError(f"{path}:{k}: decision must be one of {'/'.join(DECISIONS)}, not {row.get('decision')!r}")
        out[row["source_id"]] = Label(row["source_id"], row["decision"], str(row.get("note") or ""),
                                      str(row.get("instruction") or ""), str(row.get("response") or ""))
    return out


def write_labels(path: str | Path, labels: list[Label] | dict[str, Label]) -> Path:
    from dataclasses import asdict

    from selfalign.io import write_jsonl

    items = list(labels.values()) if isinstance(labels, dict) else labels
    write_jsonl(Path(path), [asdict(x) for x in items])
    return Path(path)


def _kept(r: RatedPair, threshold: float) -> bool:
    return r.score is not None and r.score >= threshold - 1e-9


def apply_labels(rated: list[RatedPair], kept: list[RatedPair], labels_path: str | Path | None,
                 threshold: float) -> tuple[list[RatedPair], dict[str, Any]]:
    """The kept pairs after a person's labels overrule the rater (in the order of `rated`), and the
    counts (empty when no labels file is given). Every labelled record gets `human` = its decision."""
    if not labels_path:
        return kept, {}
    labels = load_labels(labels_path)
    by_id = {r.source_id: r for r in rated}
    was = {id(r) for r in kept}
    for sid, lab in labels.items():
        if sid in by_id:
            by_id[sid].human = lab.decision
    out = [r for r in rated if (r.human == "keep") or (id(r) in was and r.human != "drop")]
    info = {
        "labels_file": str(labels_path),
        "labelled": sum(1 for s in labels if s in by_id),
        "labels_unknown": sum(1 for s in labels if s not in by_id),  # ids not in this round
        "human_kept": sum(1 for r in rated if r.human == "keep"),
        "human_dropped": sum(1 for r in rated if r.human == "drop"),
        "overruled_to_keep": sum(1 for r in rated if r.human == "keep" and id(r) not in was),
        "overruled_to_drop": sum(1 for r in rated if r.human == "drop" and id(r) in was),
        "kept_after_labels": len(out),
        "rater_vs_labels": rater_vs_labels(rated, labels, threshold),
    }
    from selfalign.log import say

    say(f"curate: labels {labels_path}: {info['labelled']} pairs labelled ({info['human_kept']} keep, "
        f"{info['human_dropped']} drop, {info['labels_unknown']} ids not in this round); "
        f"{info['overruled_to_keep']} kept and {info['overruled_to_drop']} dropped against the rater")
    print("\n".join(report_lines({"this round": info})[4:]), flush=True)  # the precision/recall table
    return out, info


def rater_vs_labels(rated: list[RatedPair], labels: dict[str, Label], threshold: float) -> list[dict[str, Any]]:
    """Precision (of the pairs the rater keeps at t, the share the person kept) and recall (of the
    pairs the person kept, the share the rater keeps at t) over the labelled pairs, per threshold."""
    pairs = [(r.score, labels[r.source_id].decision == "keep") for r in rated if r.source_id in labels]
    rows = []
    for t in sorted({*TABLE_THRESHOLDS, float(threshold)}):
        tp = sum(1 for s, y in pairs if y and s is not None and s >= t - 1e-9)
        fp = sum(1 for s, y in pairs if not y and s is not None and s >= t - 1e-9)
        pos = sum(1 for _, y in pairs if y)
        rows.append({"threshold": t, "rater_kept": tp + fp, "human_kept": pos, "labelled": len(pairs),
                     "precision": round(tp / (tp + fp), 4) if tp + fp else None,
                     "recall": round(tp / pos, 4) if pos else None})
    return rows


def report_lines(counts: dict[str, Any]) -> list[str]:
    """The report's section "The rater against your labels", one table per curation round that used labels."""
    out: list[str] = []
    for name, stats in counts.items():
        if not (isinstance(stats, dict) and "rater_vs_labels" in stats):
            continue
        if not out:
            out = ["", "## The rater against your labels", "",
                   "Precision: of the labelled pairs the rater keeps at the threshold, the share you kept; "
                   "recall: of the pairs you kept, the share the rater keeps (as the paper's Table 7). "
                   "Your decisions overrule the rater in the curated data."]
        out += ["", f"### {name}: {stats['labelled']} labelled pairs ({stats['human_kept']} keep, "
                    f"{stats['human_dropped']} drop) from `{stats['labels_file']}`; "
                    f"{stats['overruled_to_keep']} kept and {stats['overruled_to_drop']} dropped against the "
                    f"rater; {stats['kept_after_labels']} kept in all", "",
                "| threshold | rater keeps | you kept | precision | recall |", "|---|---|---|---|---|"]
        for r in stats["rater_vs_labels"]:
            out.append(f"| {r['threshold']:g} | {r['rater_kept']} | {r['human_kept']} | {_f(r['precision'])} | "
                       f"{_f(r['recall'])} |")
    return out


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def human_pairs(path: str | Path, rated: list[RatedPair] | Path | None = None
                ) -> tuple[list[AugmentedPair], dict[str, Any]]:
    """A labels file as `evaluate`'s human-judged set: keep = good (`human_good`), drop = bad
    (`human_bad`). Texts come from the file, else from `rated` (the run's rated pairs, or its
    `curate_1/rated.jsonl`) by source id."""
    from selfalign.evaluate.human import HUMAN_BAD, HUMAN_GOOD

    labels = load_labels(path)
    if isinstance(rated, Path):
        rows = rated.read_text(encoding="utf-8").splitlines() if rated.is_file() else []
        rated = [RatedPair(**json.loads(x)) for x in rows if x.strip()]
    by_id = {r.source_id: r for r in rated or []}
    out, missing = [], 0
    for lab in labels.values():
        ins, resp = lab.instruction, lab.response
        if (not ins or not resp) and lab.source_id in by_id:
            ins, resp = by_id[lab.source_id].instruction, by_id[lab.source_id].response
        if not ins or not resp:
            missing += 1
            continue
        src = HUMAN_GOOD if lab.decision == "keep" else HUMAN_BAD
        out.append(AugmentedPair(ins, resp, f"labels-{lab.source_id}-{'good' if src == HUMAN_GOOD else 'bad'}",
                                 src, "", "ok"))
    info = {"path": str(path), "kind": "labels file (selfalign review)", "n_pairs": len(out),
            "n_good": sum(p.source == HUMAN_GOOD for p in out), "n_prompts": len(out), "without_text": missing,
            "rule": "a person's keep (good) / drop (bad) labels of curated pairs"}
    return out, info
