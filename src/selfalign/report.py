"""What a person reads of a run: the printed deliverables and `report.md` (`report_eval.py`
renders the evaluation: its sections of `report.md`, and `report.html` with its plots).

One table helper (`table`, Markdown or HTML) and one section helper (`replace_section`) serve the
run report, the evaluation report and the Hub cards.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from selfalign.io import atomic_write_text
from selfalign.records import AugmentedPair, RatedPair

N_SHOW = 5


# ---------------------------------------------------------------------------------- helpers


def _short(text: Any, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]], fmt: Literal["md", "html"] = "md") -> str:
    """A Markdown (cells with "|" escaped, on one line) or HTML (cells escaped) table."""
    if fmt == "html":
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def replace_section(text: str, section: str, title: str | None = None) -> str:
    """`text` with its `title` section (up to the next "## " heading) replaced by `section`, or
    `section` appended when there is none. `title` defaults to the first line of `section`."""
    new = section.rstrip("\n").splitlines()
    title = (title if title is not None else new[0]).strip()
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == title), None)
    if start is None:
        body = "\n".join(lines).rstrip("\n")
        return (body + "\n\n" if body else "") + "\n".join(new) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    out = lines[:start] + new + ([""] + lines[end:] if end < len(lines) else [])
    return "\n".join(out).rstrip("\n") + "\n"


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else {}


# ---------------------------------------------------------------------------------- run: printed


def augmented_examples(pairs: list[AugmentedPair], n: int = N_SHOW) -> list[AugmentedPair]:
    ok = [p for p in pairs if p.status == "ok"]
    return (ok or pairs)[:n]


def high_low(rated: list[RatedPair], n: int = N_SHOW) -> tuple[list[RatedPair], list[RatedPair]]:
    scored = [r for r in rated if r.score is not None]
    by = sorted(scored, key=lambda r: (-r.score, r.source_id))
    high = by[:n]
    low = [r for r in sorted(scored, key=lambda r: (r.score, r.source_id)) if r not in high][:n]
    return high, low


def print_augmented(pairs: list[AugmentedPair]) -> None:
    print(f"\n=== {N_SHOW} augmented pairs (generated instruction <- response) ===")
    for i, p in enumerate(augmented_examples(pairs), 1):
        print(f"\n[{i}] ({p.source} {p.source_id}, {p.status})\n  instruction: {_short(p.instruction, 200)}\n"
              f"  response:    {_short(p.response)}")


def ranked_note(rated: list[RatedPair]) -> str:
    """What a ranked mode's score means, said once where its pairs are shown ("" for rated modes)."""
    valued = [r for r in rated if r.parts.get("value") is not None]
    if not valued:
        return ""
    return (f"(a ranked curation mode: score = 1 + 4 x the pair's rank among the {len(valued)} pairs rated "
            "together, lowest 1, highest 5, tied values share a rank; so threshold 4 keeps about the top "
            "quarter. `value` is what is ranked, higher is better)")


def _score_text(r: RatedPair, rated: list[RatedPair]) -> str:
    value = r.parts.get("value")
    if value is None:
        return f"score {r.score:.2f}"
    ties = sum(1 for x in rated if x.parts.get("value") == value) - 1
    return f"score {r.score:.2f} (value {value:.3f}{f', tied with {ties} other pairs' if ties else ''})"


def print_rated(rated: list[RatedPair], threshold: float) -> None:
    high, low = high_low(rated)
    note = ranked_note(rated)
    for title, rows in ((f"{N_SHOW} high-scored pairs", high), (f"{N_SHOW} low-scored pairs", low)):
        print(f"\n=== {title} (threshold {threshold}) ===")
        if note:
            print(note)
        for i, r in enumerate(rows, 1):
            print(f"\n[{i}] {_score_text(r, rated)}\n  instruction: {_short(r.instruction, 200)}\n"
                  f"  response:    {_short(r.response, 200)}\n  reasoning:   {_short(r.reasoning, 300)}")
    unscored = sum(r.score is None for r in rated)
    if unscored:
        print(f"\n({unscored} of {len(rated)} pairs got no parsable score and are not kept)")


def print_responses(rows: list[dict[str, Any]]) -> None:
    print(f"\n=== {len(rows)} responses of the forward model ===")
    for i, r in enumerate(rows, 1):
        print(f"\n[{i}] prompt:   {_short(r['prompt'], 200)}\n    response: {_short(r['response'], 600)}")


# ---------------------------------------------------------------------------------- run: report.md


def _md(text: str, n: int = 400) -> str:
    return _short(text, n).replace("|", "\\|")


def data_lines(sources: dict[str, dict[str, str]]) -> list[str]:
    """The report's "Data" section: what each data key was resolved to, shipped samples loudly."""
    if not sources:
        return []
    out = ["## Data", ""]
    if any(s.get("kind") == "sample" for s in sources.values()):
        out += ["**This run used the small OASST1 samples shipped with selfalign, not real data.**", ""]
    out += ["| key | given | read from | note |", "|---|---|---|---|"]
    for key, s in sources.items():
        kind = {"sample": "shipped sample: ", "hub": "Hub dataset: "}.get(s.get("kind", ""), "")
        out.append(f"| {key} | `{s.get('given')}` | {kind}`{s.get('resolved')}` | {_md(s.get('note', ''))} |")
    return out + [""]


def write_report(
    path: Path,
    run_dir: Path,
    manifest: dict[str, Any],
    augmented: list[AugmentedPair],
    rated: list[RatedPair],
    responses: list[dict[str, Any]],
) -> None:
    """`report.md` of a run: data sources, counts and stages from the manifest, then the three deliverables."""
    c = manifest.get("counts", {})
    lines = ["# selfalign run report", "", f"Run directory: `{run_dir}`", ""]
    lines += data_lines(manifest.get("data_sources", {}))
    lines += ["## Counts", "", table(["stage", "count"], [[k, v] for k, v in c.items() if not isinstance(v, dict)])]
    for k, v in c.items():
        if isinstance(v, dict):
            lines += ["", f"### {k}", "", "```", json.dumps(v, indent=1), "```"]
    stages = []
    for name, st in manifest.get("stages", {}).items():
        notes = ", ".join(f"{k}={v}" for k, v in st.items() if k in ("loss_probe_before", "loss_probe_after", "tokens_per_second", "rater"))
        stages.append([name, st.get("status"), st.get("seconds", ""), notes])
    lines += ["", "## Stages", "", table(["stage", "status", "seconds", "notes"], stages)]
    lines += ["", "## Augmented pairs (generated instruction, response)", ""]
    for p in augmented_examples(augmented):
        lines += [f"- **instruction:** {_md(p.instruction, 300)}", f"  **response:** {_md(p.response)}"]
    high, low = high_low(rated)
    note = ranked_note(rated)
    for title, rows in (("High-scored pairs", high), ("Low-scored pairs", low)):
        lines += ["", f"## {title}", ""] + ([note.strip("()").capitalize() + ".", ""] if note else [])
        for r in rows:
            lines += [f"- **{_score_text(r, rated)}** — **instruction:** {_md(r.instruction, 300)}",
                      f"  **response:** {_md(r.response, 300)}", f"  **reasoning:** {_md(r.reasoning, 300)}"]
    lines += ["", "## Responses of the forward model", ""]
    for r in responses:
        lines += [f"- **prompt:** {_md(r['prompt'], 300)}", f"  **response:** {_md(r['response'], 800)}"]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
