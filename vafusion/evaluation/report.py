"""Results table, Markdown report in the paper's Table 2 format, and plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vafusion.io.atomic import atomic_path, write_text

PAPER_TABLE2 = {
    "Baseline": (0.24, 0.20),
    "0": (0.3672, 0.6633),
    "1": (0.4793, 0.6159),
    "2": (0.5968, 0.6682),
    "3": (0.5692, 0.6228),
    "4": (0.6045, 0.6528),
    "5": (0.4046, 0.6184),
}


def write_results(results: pd.DataFrame, path: Path) -> None:
    """``results.csv``: model,fold,valence,arousal,mean (4 decimals)."""
    with atomic_path(path) as tmp:
        results.round(4).to_csv(tmp, index=False)


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4f}"


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_folds(results: pd.DataFrame, path: Path) -> None:
    """Grouped bars: P per fold for every model."""
    per = results[results["fold"] != "mean"]
    models = list(dict.fromkeys(per["model"]))
    folds = sorted(per["fold"].unique(), key=int)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        vals = [per[(per["model"] == m) & (per["fold"] == f)]["mean"].mean() for f in folds]
        ax.bar(np.arange(len(folds)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(folds)) + width * (len(models) - 1) / 2, [f"Fold-{f}" for f in folds])
    ax.set_ylabel("P = mean CCC")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(ncol=len(models), fontsize=8)
    ax.set_title("CCC per validation fold")
    _save(fig, path)


def plot_traces(pred: pd.DataFrame, names: list[str], path: Path, title: str) -> None:
    """Valence and arousal over time, prediction vs label, for a few videos (invalid frames blank)."""
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 1.9 * len(names)), squeeze=False, sharey=True)
    for row, name in zip(axes, names):
        part = pred[pred["name"] == name]
        for ax, dim in zip(row, ("valence", "arousal")):
            lab = np.where(part["valid"], part[f"label_{dim}"], np.nan)
            ax.plot(part["frame"], lab, color="k", lw=1, label="label")
            ax.plot(
                part["frame"], part[dim], color="C1" if dim == "valence" else "C0", lw=1, label="prediction"
            )
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(f"{name} — {dim}", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_scatter(pred: pd.DataFrame, path: Path, title: str) -> None:
    """Prediction vs label density per dimension over all valid frames."""
    ok = pred["valid"].to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.3))
    for ax, dim in zip(axes, ("valence", "arousal")):
        ax.hexbin(
            pred[f"label_{dim}"][ok],
            pred[dim][ok],
            gridsize=40,
            extent=(-1, 1, -1, 1),
            cmap="viridis",
            mincnt=1,
            bins="log",
        )
        ax.plot([-1, 1], [-1, 1], "w--", lw=0.8)
        ax.set_xlabel(f"label {dim}")
        ax.set_ylabel(f"predicted {dim}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _table2(results: pd.DataFrame, main: str) -> list[str]:
    """The paper's Table 2 layout for model ``main``: CCC per fold beside the paper's numbers."""
    base = PAPER_TABLE2["Baseline"]
    lines = [
        f"## Table 2 format — model `{main}`",
        "",
        "CCC over all valid frames of each fold; P = (CCC_valence + CCC_arousal) / 2. "
        "The paper's numbers are on the real Aff-Wild2 with pretrained front ends and are shown for shape "
        "only.",
        "",
        "| Validation Set | Valence | Arousal | P | paper Valence | paper Arousal |",
        "|---|---|---|---|---|---|",
        f"| Baseline | — | — | — | {base[0]:.2f} | {base[1]:.2f} |",
    ]
    for _, r in results[results["model"] == main].iterrows():
        f = str(r["fold"])
        pv, pa = PAPER_TABLE2.get(f, (np.nan, np.nan))
        label = f"Fold-{f}" if f != "mean" else "**mean**"
        lines.append(
            f"| {label} | {_fmt(r['valence'])} | {_fmt(r['arousal'])} | {_fmt(r['mean'])} | "
            f"{_fmt(pv)} | {_fmt(pa)} |"
        )
    return lines


def _all_models(results: pd.DataFrame, models: list[str]) -> list[str]:
    """P per fold of every model, with the mean valence, arousal and P."""
    lines = ["", "## All models (P per fold)", ""]
    folds = [f for f in dict.fromkeys(results["fold"]) if f != "mean"]
    lines.append("| model | " + " | ".join(f"Fold-{f}" for f in folds) + " | mean V | mean A | mean P |")
    lines.append("|---" * (len(folds) + 4) + "|")
    for m in models:
        part = results[results["model"] == m].set_index("fold")
        cells = [_fmt(part.loc[f, "mean"]) if f in part.index else "—" for f in folds]
        mr = part.loc["mean"]
        lines.append(
            f"| {m} | " + " | ".join(cells) + f" | {_fmt(mr['valence'])} | {_fmt(mr['arousal'])} | "
            f"**{_fmt(mr['mean'])}** |"
        )
    return lines


def _per_video(run: Path, main: str) -> list[str]:
    """Per-video CCC of ``main`` with trace and scatter plots (nothing if it has no saved predictions)."""
    pred_files = sorted((run / "predictions" / main).glob("fold*.parquet"))
    if not pred_files:
        return []
    pred = pd.concat([pd.read_parquet(p) for p in pred_files], ignore_index=True)
    per_video = []
    for mfile in sorted((run / "metrics" / main).glob("fold*.json")):
        m = json.loads(mfile.read_text())
        per_video += [dict(v, fold=m["fold"]) for v in m.get("per_video", [])]
    pv = pd.DataFrame(per_video)
    if not len(pv):
        return []
    pv = pv.sort_values("mean", ascending=False)
    picks = [pv.iloc[0]["name"], pv.iloc[len(pv) // 2]["name"], pv.iloc[-1]["name"]]
    plot_traces(
        pred,
        list(dict.fromkeys(picks)),
        run / "traces.png",
        f"{main}: best, median and worst video by P (label black)",
    )
    plot_scatter(pred, run / "scatter.png", f"{main}: prediction vs label, all folds")
    lines = [
        f"## Per-video CCC — `{main}`",
        "",
        "![VA over time](traces.png)",
        "",
        "![prediction vs label](scatter.png)",
        "",
        "| video | fold | frames | Valence | Arousal | P |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in pv.iterrows():
        lines.append(
            f"| {r['name']} | {r['fold']} | {r['frames']} | {_fmt(r['valence'])} | "
            f"{_fmt(r['arousal'])} | {_fmt(r['mean'])} |"
        )
    return lines


def write_report(
    run: Path,
    results: pd.DataFrame,
    notes: list[str],
    streams: dict[str, str],
    extra: list[str] | None = None,
) -> Path:
    """Write ``report.md`` and its plots into ``run``; return the report's path."""
    models = list(dict.fromkeys(results["model"]))
    main = "fusion" if "fusion" in models else models[0]
    lines = [f"# vafusion cross-validation report — `{run}`", ""]
    lines += ["Streams: " + ", ".join(f"{r} ← `{e}`" for r, e in streams.items()), ""]
    if notes:
        lines += ["Front ends without published weights (offline stand-ins used):", ""]
        lines += [f"- {n}" for n in notes] + [""]
    lines += _table2(results, main) + _all_models(results, models)
    plot_folds(results, run / "folds.png")
    lines += ["", "![P per fold](folds.png)", ""]
    lines += _per_video(run, main)
    if extra:
        lines += [""] + extra
    path = run / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
