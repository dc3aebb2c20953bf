"""The evaluation's rendering: the "## Evaluation" and ablation sections of `report.md`, and
`report.html` with its plots. The table and section helpers are `report.py`'s (one of each)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfalign.io import atomic_write_text
from selfalign.report import _f, _read_manifest, _short, replace_section, table

# ---------------------------------------------------------------------------------- evaluation

Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows)


def mode_columns(curation: dict[str, Any]) -> tuple[list[str], dict[str, list[float | None]]]:
    """The AUC columns of the curation-modes table (overall, each kind, human) and each mode's row."""
    kinds = list(curation.get("kinds", []))
    rows = {m: [r.get("auc"), *(r.get("auc_by_kind", {}).get(k) for k in kinds), r.get("human_auc")]
            for m, r in curation.get("modes", {}).items()}
    return ["overall", *kinds, "human"], rows


def mode_intervals_table(curation: dict[str, Any]) -> Table:
    """The modes' AUCs with 95% intervals, and each mode against the length baseline on the human
    set: the AUC difference (prompts resampled) and the share of prompts whose best-ranked reply
    the mode scores above the last-ranked one."""
    rows = []
    for m, r in curation.get("modes", {}).items():
        hp = r.get("human_paired") or {}
        delta = (f"{hp['auc_delta']:+.3f} {_ci(hp.get('auc_delta_ci95'))}" if hp.get("auc_delta") is not None
                 else "–")
        win = f"{_f(hp.get('win_rate'))} {_ci(hp.get('win_rate_ci95'))}" if hp.get("win_rate") is not None else "–"
        rows.append([m, f"{_f(r.get('auc'))} {_ci(r.get('auc_ci95'))}",
                     f"{_f(r.get('human_auc'))} {_ci(r.get('human_auc_ci95'))}", delta, win])
    return ("Curation modes with 95% intervals (bootstrap; the sets are small), and against the length baseline "
            "on the human set", ["mode", "AUC overall", "AUC human", "human AUC minus length's",
                                 "best reply scored above the last (share of prompts)"], rows)


def _pr(at: dict[str, Any] | None) -> str:
    return f"{_f(at['precision'])} / {_f(at['recall'])}" if at else "–"


def eval_tables(results: dict[str, Any]) -> list[Table]:
    """The evaluation tables, as data (rendered to Markdown and HTML)."""
    tables: list[Table] = []
    c = results.get("curation")
    if c:
        at = c["at_threshold"]
        tables.append(("Curation quality: rater on held-out good vs planted bad pairs", ["metric", "value"], [
            ["rater", str(c.get("rater", ""))],
            ["curation mode (the run's)", str(c.get("mode", ""))],
            ["held-out good / planted bad", f"{c['n_good']} / {c['n_bad']}"],
            ["ROC AUC (ties 1/2, unscored = 0)", _f(c["roc_auc"])],
            [f"precision at threshold {c['threshold']}", _f(at["precision"])],
            [f"recall at threshold {c['threshold']}", _f(at["recall"])],
            ["unscored pairs", f"{c['unscored']} ({_f(c['unscored_rate'])})"],
            ["parse-failure rate", _f(c["parse_failure_rate"])],
        ]))
        if c.get("modes"):
            cols, aucs = mode_columns(c)
            h = c.get("human", {})
            skipped = "; ".join(f"{k}: {v}" for k, v in c.get("planted", {}).get("skipped_kinds", {}).items())
            title = (f"Curation modes: ROC AUC good vs bad (overall = all planted kinds; human = best- vs last-ranked "
                     f"OASST1 replies, {h.get('n_prompts', 0)} prompts; length = response-length baseline)"
                     + (f"; skipped: {skipped}" if skipped else ""))
            tables.append((title, ["mode", *(f"AUC {k}" for k in cols), f"P / R at {c['threshold']}",
                                   "outputs without a score line", "pairs unscored", "pairs given a forced score"],
                           [[m, *(_f(v) for v in aucs[m]), _pr(c["modes"][m].get("at_threshold")),
                             _f(c["modes"][m].get("parse_failure_rate")), _f(c["modes"][m].get("unscored_pairs_rate")),
                             str(c["modes"][m].get("forced_score", "–"))] for m in aucs]))
            tables.append(mode_intervals_table(c))
        tables.append(("Precision / recall of kept pairs by threshold", ["threshold", "kept", "precision", "recall"],
                       [[_f(r["threshold"], 1), str(r["kept"]), _f(r["precision"]), _f(r["recall"])] for r in c["by_threshold"]]))
        tables.append(("Mean score by kind", ["kind", "n", "mean score", "unscored", "kept"],
                       [[k, str(v["n"]), _f(v["mean_score"]), str(v["unscored"]), str(v["kept"])] for k, v in c["by_kind"].items()]))
    b = results.get("backward")
    if b:
        tables.append(("Backward model: NLL per token of the true instruction (held-out, lower is better)",
                       ["model", "NLL/token", "perplexity", "pairs", "tokens"],
                       [["base", _f(b["base"]["nll_per_token"]), _f(b["base"]["perplexity"]), str(b["n_pairs"]), str(b["n_tokens"])],
                        ["backward", _f(b["backward"]["nll_per_token"]), _f(b["backward"]["perplexity"]), str(b["n_pairs"]), str(b["n_tokens"])]]))
        tables.append(("Backward model: generated instructions (greedy)", ["true instruction", "backward model", "base model", "response"],
                       [[_short(e["true_instruction"], 160), _short(e["backward_instruction"], 160), _short(e["base_instruction"], 160),
                         _short(e["response"], 200)] for e in b["examples"]]))
    r = results.get("recovery")
    if r and r.get("nll"):
        nll, rouge, share = r["nll"], r["rouge_l_f1"], r["status_share"]
        statuses = [s for s in share["backward"] if share["backward"][s] or share["base"][s]] or ["ok"]
        tables.append((f"Instruction recovery: true prompts of {r['n']} augmented pairs (NLL lower, ROUGE-L higher is better)",
                       ["model", "NLL/token of true prompt", "ROUGE-L F1 generated vs true", *[f"share {s}" for s in statuses]],
                       [[m, _f(nll[m]["nll_per_token"]), _f(rouge[m]), *[_f(share[m][s]) for s in statuses]]
                        for m in ("base", "backward")]))
        tables.append(("Instruction recovery: true vs generated prompts (base: sampled now; backward: the run's)",
                       ["true prompt", "base model", "backward model"],
                       [[_short(e["true_prompt"], 160), f"{_short(e['base_instruction'], 160)} ({e['base_status']})",
                         f"{_short(e['backward_instruction'], 160)} ({e['backward_status']})"] for e in r["examples"]]))
    f = results.get("forward")
    if f:
        tables.append((f"Forward model: pairwise judgments on {f['prompts']['n']} held-out prompts ({f['rule']})",
                       ["comparison", "n", "win", "tie", "loss", "win rate [95% Wilson]", "loss rate [95% Wilson]",
                        "unparsable verdicts", "judge says A"],
                       [[f"{x['x']} vs {x['y']}", str(x["n"]), str(x["win"]), str(x["tie"]), str(x["loss"]),
                         f"{_f(x['win_rate'])} [{_f(x['win_rate_ci95'][0])}, {_f(x['win_rate_ci95'][1])}]",
                         f"{_f(x['loss_rate'])} [{_f(x['loss_rate_ci95'][0])}, {_f(x['loss_rate_ci95'][1])}]",
                         f"{x['unparsable_verdicts']} of {x['verdicts']}", _f(x["a_rate"])] for x in f["comparisons"]]))
        tables.append(("Response lengths (characters)", ["model", "n", "mean", "median", "empty"],
                       [[k, str(v["n"]), _f(v["mean_chars"], 1), _f(v["median_chars"], 1), str(v["empty"])]
                        for k, v in f["lengths"].items()]))
    return tables


def _rel(path: Path, run_dir: Path | None) -> str:
    path = Path(path)
    if run_dir is not None and path.is_relative_to(run_dir):
        return path.relative_to(run_dir).as_posix()
    return path.name


def eval_markdown(results: dict[str, Any], plots: dict[str, Path] | None = None, run_dir: Path | None = None) -> str:
    """The "## Evaluation" section of report.md (plot links relative to `run_dir`)."""
    h = results.get("heldout", {})
    lines = ["## Evaluation", "",
             f"`selfalign evaluate` on {results.get('created', '')}: {h.get('n')} held-out pairs from "
             f"`{h.get('path')}` ({h.get('excluded_as_trained')} skipped as used in training). "
             "Details: `eval/evaluation.json`; full report with plots: `report.html`.", ""]
    for title, header, rows in eval_tables(results):
        lines += [f"### {title}", "", table(header, rows), ""]
    if plots:
        lines += ["### Plots", ""] + [f"![{k}]({_rel(p, run_dir)})" for k, p in plots.items()] + [""]
    return "\n".join(lines)


def _ci(pair: Sequence[float] | None) -> str:
    return f"[{_f(pair[0], 4)}, {_f(pair[1], 4)}]" if pair else "–"


def ablation_markdown(results: dict[str, Any], plot: str | None = None) -> str:
    """`ablate/report.md`: one row per arm, mean over seeds, intervals, difference vs seed only."""
    h = results["heldout"]
    judged = any("judge_vs_seed" in a for a in results["arms"])
    header = ["arm", "train examples (seed + augmented)", "steps", "mean NLL/token", "95% interval",
              "delta vs seed only", "95% interval of delta"] + (["judge win rate vs seed only [95% Wilson]"] if judged else [])
    rows = []
    for a in results["arms"]:
        n_aug = "/".join(str(n) for n in a["n_augmented"]) or "–"
        row = [a["label"], f"{a['n_seed']} + {n_aug}", "/".join(str(s) for s in a["steps"]) or "–",
               _f(a.get("nll_per_token"), 4), _ci(a.get("ci95")), _f(a.get("delta"), 4), _ci(a.get("delta_ci95"))]
        if judged:
            j = a.get("judge_vs_seed")
            row.append(f"{_f(j['win_rate'])} {_ci(j['win_rate_ci95'])} (n={j['n']})" if j else "–")
        rows.append(row)
    lines = ["## Ablation", "",
             f"Forward models trained from `{results['base']}` with the run's forward settings, "
             f"{results['steps']} optimizer steps each ({results['steps_from']}), training seeds "
             f"{', '.join(str(s) for s in results['seeds'])}. Measure: {results['measure']}, on {h['n_measured']} "
             f"held-out pairs from `{h['path']}` ({h['excluded_as_trained']} left out as trained on). "
             f"Interval: {results['interval']}. The base model without an adapter: "
             f"{_f(results['base_nll_per_token'], 4)} NLL/token.", "", table(header, rows), ""]
    if not judged:
        lines += [f"Judge win rate not measured (`--judge`: {results['judge_note']}).", ""]
    if plot:
        lines += [f"![ablation]({plot})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
code{background:#f3f3f3;padding:1px 4px}"""


def render_html(run_dir: Path, results: dict[str, Any] | None, plots: dict[str, Path]) -> str:
    """A self-contained HTML report (plots embedded as data URIs)."""
    run_dir = Path(run_dir)
    manifest = _read_manifest(run_dir)
    cfg = manifest.get("config", {})
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>selfalign run report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>selfalign run report</h1>",
             f"<p>Run directory: <code>{html.escape(str(run_dir))}</code></p>"]
    if cfg:
        m, cur = cfg.get("models", {}), cfg.get("curation", {})
        parts.append(table(["setting", "value"], [
            ["base model", str(m.get("base"))], ["rater", str(m.get("rater"))],
            ["curation", f"mode {cur.get('mode')}, threshold {cur.get('threshold')}, iterations {cur.get('iterations')}"],
            ["seed data", str(cfg.get("data", {}).get("seed"))], ["unlabelled data", str(cfg.get("data", {}).get("unlabelled"))],
        ], "html"))
    counts = manifest.get("counts", {})
    if counts:
        parts.append("<h2>Counts</h2>")
        parts.append(table(["count", "value"], [[k, str(v)] for k, v in counts.items() if not isinstance(v, dict)], "html"))
    stages = manifest.get("stages", {})
    if stages:
        parts.append("<h2>Stages</h2>")
        parts.append(table(["stage", "status", "seconds", "loss before training", "loss after training",
                            "tokens/s"],  # on the same training examples (`train.probe_loss`)
                           [[k, str(s.get("status")), _f(s.get("seconds"), 1), _f(s.get("loss_probe_before")),
                             _f(s.get("loss_probe_after")), _f(s.get("tokens_per_second"), 1)]
                            for k, s in stages.items()], "html"))
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, p in plots.items():
            data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
            parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    if results:
        h = results.get("heldout", {})
        parts.append("<h2>Evaluation</h2>")
        parts.append(f"<p>{html.escape(str(results.get('created', '')))}: {h.get('n')} held-out pairs from "
                     f"<code>{html.escape(str(h.get('path')))}</code> ({h.get('excluded_as_trained')} skipped as used "
                     "in training).</p>")
        for title, header, rows in eval_tables(results):
            parts.append(f"<h3>{html.escape(title)}</h3>" + table(header, rows, "html"))
        for comp in results.get("forward", {}).get("comparisons", []):
            if comp.get("examples"):
                parts.append(f"<h3>Examples: {html.escape(comp['x'])} (x) vs {html.escape(comp['y'])} (y)</h3>")
                parts.append(table(["prompt", "x", "y", "verdict x as A", "verdict x as B", "outcome"],
                                   [[_short(e["instruction"], 200), _short(e["x"], 400), _short(e["y"], 400),
                                     str(e["verdict_x_as_a"]), str(e["verdict_x_as_b"]), e["outcome"]]
                                    for e in comp["examples"]], "html"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_eval_report(run_dir: Path, results: dict[str, Any] | None) -> dict[str, Path]:
    """Write PNG plots and `report.html` in `run_dir`, and the "## Evaluation" section of `report.md`.

    Returns the written files by name (plots, plus "report.html" and "report.md").
    """
    from selfalign import plots as pl

    run_dir = Path(run_dir)
    manifest = _read_manifest(run_dir)
    threshold = manifest.get("config", {}).get("curation", {}).get("threshold")
    made: dict[str, Path | None] = {
        "funnel": pl.plot_funnel(manifest.get("counts", {}), run_dir / "funnel.png"),
        "scores": pl.plot_score_histograms(run_dir, run_dir / "scores.png", threshold),
        "loss": pl.plot_loss_curves(run_dir, run_dir / "loss.png"),
    }
    if results:
        cur = results.get("curation", {})
        if cur.get("records"):
            made["eval_scores"] = pl.plot_eval_scores(Path(cur["records"]), run_dir / "eval_scores.png",
                                                      cur.get("threshold", threshold))
        if cur.get("modes"):
            made["curation_modes"] = pl.plot_mode_aucs(*mode_columns(cur), run_dir / "eval" / "curation_modes.png")
        made["pairwise"] = pl.plot_pairwise(results.get("forward", {}).get("comparisons", []), run_dir / "pairwise.png")
    plots = {k: p for k, p in made.items() if p is not None}
    atomic_write_text(run_dir / "report.html", render_html(run_dir, results, plots))
    files = dict(plots)
    files["report.html"] = run_dir / "report.html"
    if results:
        md = run_dir / "report.md"
        old = md.read_text(encoding="utf-8") if md.is_file() else "# selfalign run report\n"
        atomic_write_text(md, replace_section(old, eval_markdown(results, plots, run_dir)))
        files["report.md"] = md
    return files
