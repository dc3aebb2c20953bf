"""PNG plots of a run for `report.html` (matplotlib, Agg canvas, no pyplot global state).

Each function writes one PNG and returns its path, or None when the run has no data for it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GOOD_COLOR, BAD_COLOR = "#2a9d8f", "#e76f51"


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line of an interrupted log
    return out


def funnel_stages(counts: dict[str, Any]) -> list[tuple[str, int]]:
    """(label, count) from the manifest counts, pool to kept, skipping counts the run lacks."""
    steps: list[tuple[str, Any]] = [
        ("unlabelled single-turn pool", counts.get("unlabelled_single_turn")),
        ("sampled", counts.get("sampled")),
        ("instruction generated", counts.get("generated")),
        ("generated ok (parsed)", counts.get("generated_ok")),
    ]
    for i in (1, 2):
        cur = counts.get(f"curation_{i}")
        if isinstance(cur, dict):
            steps += [(f"scored (iteration {i})", cur.get("scored")), (f"kept (iteration {i})", cur.get("kept"))]
    return [(k, int(v)) for k, v in steps if isinstance(v, int | float)]


def plot_funnel(counts: dict[str, Any], path: Path) -> Path | None:
    steps = funnel_stages(counts)
    if not steps:
        return None
    fig = _figure(7, 0.5 * len(steps) + 1.2)
    ax = fig.add_subplot()
    labels = [k for k, _ in steps][::-1]
    values = [v for _, v in steps][::-1]
    bars = ax.barh(labels, values, color="#457b9d")
    ax.bar_label(bars, labels=[str(v) for v in values], padding=3)
    ax.set_xlabel("pairs")
    ax.set_title("Data funnel: unlabelled responses to curated pairs")
    ax.set_xlim(0, max(values) * 1.15 + 1)
    return _save(fig, path)


def plot_score_histograms(run_dir: Path, path: Path, threshold: float | None = None) -> Path | None:
    """Curation scores of each iteration (`curate_N/rated.jsonl`); unscored pairs counted in the legend."""
    run_dir = Path(run_dir)
    iters = []
    for i in (1, 2):
        rows = _jsonl(run_dir / f"curate_{i}" / "rated.jsonl")
        if rows:
            iters.append((i, [r["score"] for r in rows if r.get("score") is not None], sum(r.get("score") is None for r in rows)))
    if not iters:
        return None
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    bins = [1 + 0.25 * k for k in range(17)]
    for i, scores, unscored in iters:
        ax.hist(scores, bins=bins, alpha=0.6, label=f"iteration {i} (n={len(scores)}, unscored {unscored})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("score")
    ax.set_ylabel("pairs")
    ax.set_title("Curation scores")
    ax.legend()
    return _save(fig, path)


def plot_loss_curves(run_dir: Path, path: Path) -> Path | None:
    """Training loss per step of the backward and forward adapters (`train_log.jsonl`)."""
    run_dir = Path(run_dir)
    names = ["backward", "m0", "forward_1", "forward_2"]
    if not (run_dir / "forward_1").is_dir():
        names.append("forward")
    curves = []
    for name in names:
        rows = [r for r in _jsonl(run_dir / name / "train_log.jsonl") if "loss" in r]
        if rows:
            curves.append((name, [r.get("step", k + 1) for k, r in enumerate(rows)], [r["loss"] for r in rows]))
    if not curves:
        return None
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for name, steps, losses in curves:
        ax.plot(steps, losses, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA training loss")
    ax.legend()
    return _save(fig, path)


def plot_eval_scores(rated_path: Path, path: Path, threshold: float | None = None) -> Path | None:
    """Rater scores of held-out good pairs vs planted bad ones, and the mean score per kind."""
    rows = _jsonl(rated_path)
    if not rows:
        return None
    kinds: dict[str, list[float]] = {}
    for r in rows:
        kinds.setdefault(r.get("source", "?"), []).append(r["score"] if r.get("score") is not None else 0.0)
    good = kinds.get("good", [])
    bad = [s for k, v in kinds.items() if k != "good" for s in v]
    fig = _figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    bins = [0.0, 0.5] + [1 + 0.25 * k for k in range(17)]
    ax1.hist([good, bad], bins=bins, color=[GOOD_COLOR, BAD_COLOR], label=["held-out good", "planted bad"])
    if threshold is not None:
        ax1.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold}")
    ax1.set_xlabel("score (unscored = 0)")
    ax1.set_ylabel("pairs")
    ax1.set_title("Rater scores: good vs planted bad")
    ax1.legend()
    names = list(kinds)
    means = [sum(v) / len(v) for v in kinds.values()]
    bars = ax2.bar(names, means, color=[GOOD_COLOR if k == "good" else BAD_COLOR for k in names])
    ax2.bar_label(bars, labels=[f"{m:.2f}" for m in means], padding=2)
    ax2.set_ylabel("mean score (unscored = 0)")
    ax2.set_title("Mean score by kind")
    ax2.set_ylim(0, 5.5)
    for label in ax2.get_xticklabels():
        label.set_rotation(25)
        label.set_horizontalalignment("right")
    return _save(fig, path)


def plot_pairwise(comparisons: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Win / tie / loss shares per comparison, with the 95% Wilson interval of the win rate."""
    comps = [c for c in comparisons if c.get("n")]
    if not comps:
        return None
    fig = _figure(7, 1.0 * len(comps) + 1.6)
    ax = fig.add_subplot()
    labels = [f"{c['x']} vs {c['y']} (n={c['n']})" for c in comps]
    left = [0.0] * len(comps)
    for key, color in (("win", GOOD_COLOR), ("tie", "#bbbbbb"), ("loss", BAD_COLOR)):
        share = [c[key] / c["n"] for c in comps]
        ax.barh(labels, share, left=left, color=color, label=key)
        left = [a + b for a, b in zip(left, share, strict=True)]
    for k, c in enumerate(comps):
        lo, hi = c["win_rate_ci95"]
        ax.errorbar([c["win_rate"]], [k], xerr=[[c["win_rate"] - lo], [hi - c["win_rate"]]], color="black", capsize=4)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of prompts (error bar: 95% Wilson interval of the win rate)")
    ax.set_title("Pairwise judgments (a win must hold in both orders)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_mode_aucs(columns: Sequence[str], rows: dict[str, Sequence[float | None]], path: Path) -> Path | None:
    """Grouped bars: ROC AUC of each curation mode (and the length baseline) per column (overall,
    each corruption kind, the human-judged set); a missing AUC is left out; chance = 0.5."""
    if not rows or not columns:
        return None
    fig = _figure(max(8.0, 1.3 * len(columns) + 3.5), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    for k, (mode, values) in enumerate(rows.items()):
        xs = [c + (k - (len(rows) - 1) / 2) * width for c in range(len(columns))]
        keep = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        ax.bar([x for x, _ in keep], [v for _, v in keep], width, label=mode,
               hatch="//" if mode == "length" else None, edgecolor="black" if mode == "length" else None)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(columns)), list(columns), rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ROC AUC (good vs bad)")
    ax.set_title("Curation modes: AUC per set and corruption kind")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not on them
    return _save(fig, path)


def plot_ablation(results: dict[str, Any], path: Path) -> Path | None:
    """Held-out NLL per token per ablation arm (95% interval), and the difference vs seed only."""
    arms = [a for a in results.get("arms", []) if a.get("nll_per_token") is not None]
    if not arms:
        return None
    fig = _figure(11, 0.5 * len(arms) + 1.8)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    labels = [a["label"] for a in arms][::-1]
    for ax, key, ci_key, title in ((ax1, "nll_per_token", "ci95", "held-out NLL per token (lower is better)"),
                                   (ax2, "delta", "delta_ci95", "difference vs seed only")):
        vals = [a[key] for a in arms][::-1]
        lo = [a[key] - a[ci_key][0] for a in arms][::-1]
        hi = [a[ci_key][1] - a[key] for a in arms][::-1]
        colors = [GOOD_COLOR if v <= 0 else BAD_COLOR for v in vals] if key == "delta" else "#457b9d"
        ax.barh(labels, vals, xerr=[lo, hi], color=colors, capsize=4)
        ax.set_title(title)
        ax.set_xlabel("mean over seeds; error bar: 95% bootstrap interval")
    base = results.get("base_nll_per_token")
    if base is not None:
        ax1.axvline(base, color="black", linestyle="--", label=f"base model {base:.3f}")
        ax1.legend(loc="lower right")
    low = min(a["ci95"][0] for a in arms)
    high = max([a["ci95"][1] for a in arms] + ([base] if base is not None else []))
    ax1.set_xlim(max(0.0, low - 0.1 * (high - low + 1e-6) - 0.05), high + 0.1 * (high - low + 1e-6) + 0.05)
    from matplotlib.ticker import MaxNLocator

    ax2.xaxis.set_major_locator(MaxNLocator(4))
    ax2.axvline(0, color="black", linewidth=0.8)
    ax2.tick_params(labelleft=False)
    return _save(fig, path)
