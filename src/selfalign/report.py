"""The deliverables printed by a run, and `report.md` with the counts of every stage."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from selfalign.io import atomic_write_text
from selfalign.records import AugmentedPair, RatedPair

if TYPE_CHECKING:
    from selfalign.pipeline import Run

N_SHOW = 5


def _short(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


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


def print_rated(rated: list[RatedPair], threshold: float) -> None:
    high, low = high_low(rated)
    for title, rows in ((f"{N_SHOW} high-scored pairs", high), (f"{N_SHOW} low-scored pairs", low)):
        print(f"\n=== {title} (threshold {threshold}) ===")
        for i, r in enumerate(rows, 1):
            print(f"\n[{i}] score {r.score:.2f}\n  instruction: {_short(r.instruction, 200)}\n"
                  f"  response:    {_short(r.response, 200)}\n  reasoning:   {_short(r.reasoning, 300)}")
    unscored = sum(r.score is None for r in rated)
    if unscored:
        print(f"\n({unscored} of {len(rated)} pairs got no parsable score and are not kept)")


def print_responses(rows: list[dict[str, Any]]) -> None:
    print(f"\n=== {len(rows)} responses of the forward model ===")
    for i, r in enumerate(rows, 1):
        print(f"\n[{i}] prompt:   {_short(r['prompt'], 200)}\n    response: {_short(r['response'], 600)}")


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


def write_report(run: Run) -> None:
    from selfalign.pipeline import deliverables

    d = deliverables(run)
    m = run.manifest.data
    c = m.get("counts", {})
    lines = ["# selfalign run report", "", f"Run directory: `{run.dir}`", ""]
    lines += data_lines(m.get("data_sources", {}))
    lines += ["## Counts", "", "| stage | count |", "|---|---|"]
    for k, v in c.items():
        if not isinstance(v, dict):
            lines.append(f"| {k} | {v} |")
    for k, v in c.items():
        if isinstance(v, dict):
            lines += ["", f"### {k}", "", "```", json.dumps(v, indent=1), "```"]
    lines += ["", "## Stages", "", "| stage | status | seconds | notes |", "|---|---|---|---|"]
    for name, st in m.get("stages", {}).items():
        notes = ", ".join(f"{k}={v}" for k, v in st.items() if k in ("loss_first", "loss_last", "tokens_per_second", "rater"))
        lines.append(f"| {name} | {st.get('status')} | {st.get('seconds', '')} | {notes} |")
    lines += ["", "## Augmented pairs (generated instruction, response)", ""]
    for p in augmented_examples(d["augmented"]):
        lines += [f"- **instruction:** {_md(p.instruction, 300)}", f"  **response:** {_md(p.response)}"]
    high, low = high_low(d["rated"])
    for title, rows in (("High-scored pairs", high), ("Low-scored pairs", low)):
        lines += ["", f"## {title}", ""]
        for r in rows:
            lines += [f"- **score {r.score:.2f}** — **instruction:** {_md(r.instruction, 300)}",
                      f"  **response:** {_md(r.response, 300)}", f"  **reasoning:** {_md(r.reasoning, 300)}"]
    lines += ["", "## Responses of the forward model", ""]
    for r in d["responses"]:
        lines += [f"- **prompt:** {_md(r['prompt'], 300)}", f"  **response:** {_md(r['response'], 800)}"]
    atomic_write_text(run.path("report.md"), "\n".join(lines) + "\n")
