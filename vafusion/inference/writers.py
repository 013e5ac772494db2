"""What ``vafusion predict`` writes for a video: the CSV table, the PNG plot, optionally the overlay."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from vafusion.inference.overlay import write_overlay
from vafusion.inference.predictor import Prediction
from vafusion.io.atomic import atomic_path


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """The prediction table as CSV, atomically (times and values to 6 decimals)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index spans where ``mask`` is true."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def write_plot(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Valence and arousal over time, frames without a face shaded grey; PNG, written atomically."""
    t = table["time"].to_numpy()
    no_face = table["face"].to_numpy() == 0
    period = float(np.median(np.diff(t))) if len(t) > 1 else 1 / 30
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.8), sharex=True)
    for ax, col, colour in zip(axes, ("valence", "arousal"), ("tab:blue", "tab:red"), strict=True):
        for s, e in _runs(no_face):
            ax.axvspan(t[s] - period / 2, t[e - 1] + period / 2, color="0.85", lw=0)
        ax.plot(t, table[col].to_numpy(), color=colour, lw=1.2)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    axes[0].legend(handles=[Patch(color="0.85", label="no face found")], loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    share = 100.0 * (1 - no_face.mean()) if len(no_face) else 0.0
    fig.suptitle(f"{title}  ({len(t)} frames, face found in {share:.0f} %)".strip())
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_outputs(
    prediction: Prediction,
    out_dir: str | Path,
    overlay: bool = False,
    plot: bool = True,
    progress: bool = False,
) -> dict[str, Path]:
    """Write ``OUT/<stem>.csv``, ``OUT/<stem>.png`` and with ``overlay`` ``<stem>_overlay.mp4``."""
    video, out_dir = prediction.features.path, Path(out_dir)
    files = {"csv": out_dir / f"{video.stem}.csv"}
    write_csv(prediction.table, files["csv"])
    if plot:
        files["png"] = out_dir / f"{video.stem}.png"
        write_plot(prediction.table, files["png"], title=video.name)
    if overlay:
        files["overlay"] = write_overlay(
            video, prediction, out_dir / f"{video.stem}_overlay.mp4", progress=progress
        )
    return files
