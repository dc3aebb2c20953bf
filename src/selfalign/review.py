"""`selfalign review`: one self-contained `review.html` of a curation round, to read every rated
pair in a browser, sort and filter them, and label them keep/drop (exported as a labels file that
`selfalign curate --labels FILE` applies, see `labels.py`).

The page is the files of `review_page/` (HTML, CSS, JS) with the data inlined as JSON in a
`<script type="application/json">` block: no network, no server, no CDN. The page renders every
text with `textContent`, never as markup; `<`, `>` and `&` are escaped inside the JSON so no text
can close the block. See docs/review.md.
"""

from __future__ import annotations

import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

from selfalign.io import DataError, atomic_write_text, jsonl_rows

PAGE_DIR = "review_page"
# hygiene flags (issue 27's `hygiene/flags.jsonl`): one row per hit
FLAGS_FILE = ("hygiene", "flags.jsonl")
# zero-width and bidirectional-control characters: shown as they act, so flagged to be seen
HIDDEN = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def _num(x: Any) -> float | None:
    """A finite number or None (JSON has no NaN)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [row for _, row in jsonl_rows(path) if isinstance(row, dict)]


def _flags(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Hygiene flags by source id: {"flag", "detail"} each; {} when the file is absent."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in _jsonl(run_dir.joinpath(*FLAGS_FILE)):
        sid, flag = row.get("source_id"), row.get("flag")
        if not isinstance(sid, str) or not flag:
            continue
        detail = ", ".join(f"{k} {row[k]}" for k in ("set", "method", "benchmark", "score") if row.get(k) not in (None, ""))
        if row.get("match"):
            detail += f"; match: {str(row['match'])[:200]}"
        out.setdefault(sid, []).append({"flag": str(flag), "detail": detail})
    return out


def page_rows(rated: list[dict[str, Any]], augmented: list[dict[str, Any]], threshold: float,
              flags: dict[str, list[dict[str, Any]]] | None = None, labels: dict[str, str] | None = None
              ) -> list[dict[str, Any]]:
    """One compact row per rated pair (and per augmented pair that was not rated: its augmentation
    status says why). Keys: id, src, ins, resp, score, value, reason, parts, kept, flags, details."""
    flags, labels = flags or {}, labels or {}
    aug_by_id = {a.get("source_id"): a for a in augmented}
    rows = []
    seen = set()
    for r in rated:
        sid = str(r.get("source_id", ""))
        seen.add(sid)
        score = _num(r.get("score"))
        parts = r.get("parts") or {}
        a = aug_by_id.get(sid, {})
        fl = []
        if score is None:
            fl.append("unscored")
        if r.get("status", "ok") != "ok":
            fl.append("rating error")
        if r.get("parse_failures"):
            fl.append("parse failures")
        if r.get("forced_score"):
            fl.append("score forced")
        if r.get("response_cut") or a.get("response_cut"):
            fl.append("response cut")
        if HIDDEN.search(str(r.get("instruction", ""))) or HIDDEN.search(str(r.get("response", ""))):
            fl.append("hidden characters")
        details = [f"{x['flag']}: {x['detail']}" for x in flags.get(sid, [])]
        fl += [x["flag"] for x in flags.get(sid, [])]
        if r.get("error"):
            details.append(f"error: {r['error']}")
        rows.append({
            "id": sid, "src": str(r.get("source", "")), "ins": str(r.get("instruction", "")),
            "resp": str(r.get("response", "")), "score": score, "value": _num(parts.get("value")),
            "reason": str(r.get("reasoning", "")),
            "parts": {k: _num(v) for k, v in parts.items() if k != "value" and _num(v) is not None},
            "kept": score is not None and score >= threshold - 1e-9, "aug": str(a.get("status", "ok")),
            "flags": sorted(set(fl)), "details": details, "label": labels.get(sid, ""),
        })
    for a in augmented:  # not rated: augmentation gave no usable instruction
        sid = str(a.get("source_id", ""))
        if sid in seen or a.get("status", "ok") == "ok":
            continue
        st = str(a.get("status"))
        rows.append({"id": sid, "src": str(a.get("source", "")), "ins": str(a.get("instruction", "")),
                     "resp": str(a.get("response", "")), "score": None, "value": None, "reason": "",
                     "parts": {}, "kept": False, "aug": st, "flags": sorted({f"augment: {st}", *[x["flag"] for x in flags.get(sid, [])]}),
                     "details": [f"not rated: augmentation status {st}" + (f" ({a['error']})" if a.get("error") else "")],
                     "label": labels.get(sid, "")})
    return rows


def render_page(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The self-contained page: the template with its CSS, JS and the data inlined."""
    page = resources.files("selfalign").joinpath(PAGE_DIR)
    tpl = page.joinpath("review.html").read_text(encoding="utf-8")
    css = page.joinpath("review.css").read_text(encoding="utf-8")
    js = page.joinpath("review.js").read_text(encoding="utf-8")
    data = json.dumps({"meta": meta, "rows": rows}, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # no text can end the script block or open a comment in it: < > & as JSON escapes
    data = data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    head, tail = tpl.split("{{DATA}}")
    head = head.replace("{{TITLE}}", html.escape(meta.get("title", "selfalign review"))).replace("/*STYLE*/", css)
    tail = tail.replace("/*SCRIPT*/", js.replace("</script", "<\\/script"))
    return head + data + tail


def page_meta(run_dir: Path, manifest: dict[str, Any], iteration: int, n_rows: int, n_flag_rows: int) -> dict[str, Any]:
    cfg = manifest.get("config") or {}
    cur = cfg.get("curation") or {}
    models = cfg.get("models") or {}
    stage = (manifest.get("stages") or {}).get(f"curate-{iteration}") or {}
    return {
        "title": f"selfalign review: {run_dir.name}, curation round {iteration}",
        "run": str(run_dir.resolve()), "config": str((run_dir / "config.yaml").resolve()),
        "mode": cur.get("mode"), "threshold": cur.get("threshold", 4.0), "iteration": iteration,
        "rater": stage.get("rater") or models.get("rater"), "base": models.get("base"),
        "labels_file": cur.get("labels"), "n": n_rows, "hygiene_rows": n_flag_rows,
        # localStorage key: one run directory and round
        "key": f"{run_dir.resolve()}#curate_{iteration}",
    }


def write_review(run_dir: str | Path, iteration: int | None = None, out: str | Path | None = None) -> Path:
    """Write `review.html` (default: in the run directory) for curation round `iteration` (default:
    the last round that was rated) and return its path."""
    from selfalign.labels import load_labels

    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise DataError(f"{run_dir}: no selfalign run here (no manifest.json); run `selfalign curate` first")
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    if iteration is None:
        done = [i for i in (2, 1) if (run_dir / f"curate_{i}" / "rated.jsonl").is_file()]
        iteration = done[0] if done else 1
    rated_path = run_dir / f"curate_{iteration}" / "rated.jsonl"
    if not rated_path.is_file():
        raise DataError(f"{rated_path}: not found (run `selfalign curate` first)")
    cur = (manifest.get("config") or {}).get("curation") or {}
    labels: dict[str, str] = {}
    lab_file = cur.get("labels")
    if lab_file and Path(lab_file).expanduser().is_file():  # the labels this round was curated with
        labels = {k: v.decision for k, v in load_labels(lab_file).items()}
    flags = _flags(run_dir)
    rows = page_rows(_jsonl(rated_path), _jsonl(run_dir / "augment" / "augmented.jsonl"),
                     float(cur.get("threshold", 4.0)), flags, labels)
    meta = page_meta(run_dir, manifest, iteration, len(rows), sum(len(v) for v in flags.values()))
    path = Path(out) if out else run_dir / "review.html"
    atomic_write_text(path, render_page(meta, rows))
    return path
