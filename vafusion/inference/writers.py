"""What ``vafusion predict`` writes for a video: the CSV table, the PNG plot, optionally the overlay."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from vafusion.errors import OutputError, VafusionError
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


def _shade_no_face(ax: plt.Axes, t: np.ndarray, no_face: np.ndarray) -> None:
    period = float(np.median(np.diff(t))) if len(t) > 1 else 1 / 30
    for s, e in _runs(no_face):
        ax.axvspan(t[s] - period / 2, t[e - 1] + period / 2, color="0.85", lw=0)


def _draw_series(ax: plt.Axes, rows: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """``columns`` of ``rows`` over time, each with its fold spread (+-1 SD) as a band."""
    t = rows["time"].to_numpy()
    _shade_no_face(ax, t, rows["face"].to_numpy() == 0)
    for col in columns:
        colour = "tab:blue" if col == "valence" else "tab:red"
        y = rows[col].to_numpy()
        if f"{col}_sd" in rows:
            sd = rows[f"{col}_sd"].to_numpy()
            ax.fill_between(t, y - sd, y + sd, color=colour, alpha=0.18, lw=0)
        ax.plot(t, y, color=colour, lw=1.2, label=col)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)


def _share(rows: pd.DataFrame) -> float:
    return 100.0 * float(rows["face"].mean()) if len(rows) else 0.0


def write_plot(table: pd.DataFrame, path: str | Path, title: str = "", caption: str = "") -> None:
    """Valence and arousal over time with the fold models' spread as a band and frames without a face shaded
    grey; one panel per person for a ``--faces all`` table. PNG, written atomically."""
    people = [rows for _, rows in table.groupby("person", sort=True)] if "person" in table else []
    if people:
        fig, axes = plt.subplots(
            len(people), 1, figsize=(10, 1.2 + 2.2 * len(people)), sharex=True, squeeze=False
        )
        for ax, rows in zip(axes[:, 0], people, strict=True):
            _draw_series(ax, rows, ("valence", "arousal"))
            ax.set_ylabel(f"person {int(rows['person'].iloc[0])}\n(face {_share(rows):.0f} %)")
        frames = len(people[0])
        what = f"{len(people)} people, {frames} frames"
    else:
        fig, axes = plt.subplots(2, 1, figsize=(10, 4.8), sharex=True, squeeze=False)
        for ax, col in zip(axes[:, 0], ("valence", "arousal"), strict=True):
            _draw_series(ax, table, (col,))
            ax.set_ylabel(col)
        what = f"{len(table)} frames, face found in {_share(table):.0f} %"
    legend = [
        Patch(color="0.85", label="no face found"),
        Patch(color="0.75", alpha=0.5, label="fold spread (1 SD)"),
    ]
    if people:
        legend = [*axes[0, 0].get_legend_handles_labels()[0], *legend]
    axes[0, 0].legend(handles=legend, loc="upper right", fontsize=8, ncol=len(legend))
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(f"{title}  ({what})".strip())
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", color="tab:red", fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if caption else 0, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def output_names(videos: list[Path]) -> dict[Path, str]:
    """Each video's output name under ``--out``: its stem; where several inputs share a stem, its path
    relative to their common folder without the suffix (``a/clip``, ``b/clip``); where that still leaves
    them one name (``a/clip.mp4``, ``a/clip.mkv``), with the suffix (``clip.mp4``, ``clip.mkv``). So no
    result replaces another. A video listed twice is an error."""
    seen: dict[Path, Path] = {}
    for v in videos:
        key = Path(os.path.abspath(v))
        if key in seen:
            raise VafusionError(v, "is listed twice", "list each video once")
        seen[key] = v
    names = {v: Path(v).stem for v in videos}
    for group in _shared(names):
        common = Path(os.path.commonpath([os.path.abspath(v) for v in group]))
        for v in group:
            names[v] = Path(os.path.abspath(v)).relative_to(common).with_suffix("").as_posix()
        for same in _shared({v: names[v] for v in group}):
            for v in same:
                names[v] = Path(os.path.abspath(v)).relative_to(common).as_posix()
    clashes = _shared(names)
    if clashes:
        first, second = clashes[0][:2]
        raise VafusionError(
            second,
            f"would write the same output files as {first} ({names[first]}.*)",
            "rename one of them or predict them into different --out folders",
        )
    return names


def _shared(names: dict[Path, str]) -> list[list[Path]]:
    """Groups of keys (in order) that map to the same name, for every name taken more than once."""
    by_name: dict[str, list[Path]] = {}
    for v, name in names.items():
        by_name.setdefault(name, []).append(v)
    return [group for group in by_name.values() if len(group) > 1]


def output_files(name: str, out_dir: str | Path, overlay: bool = False, plot: bool = True) -> dict[str, Path]:
    """The files ``vafusion predict`` writes for a video whose output name is ``name``."""
    out_dir = Path(out_dir)
    files = {"csv": out_dir / f"{name}.csv"}
    if plot:
        files["png"] = out_dir / f"{name}.png"
    if overlay:
        files["overlay"] = out_dir / f"{name}_overlay.mp4"
    return files


def refuse_inputs_as_outputs(plan: dict[Path, dict[str, Path]]) -> None:
    """An output file that is one of the inputs (``a.mp4`` and ``a_overlay.mp4`` with ``--out .``) would
    destroy that input, even with ``--overwrite``: refuse before any work."""
    inputs: dict[tuple[int, int], Path] = {}
    for video in plan:
        with contextlib.suppress(OSError):
            st = video.stat()
            inputs[(st.st_dev, st.st_ino)] = video
    for video, files in plan.items():
        for kind, path in files.items():
            try:
                st = path.stat()
            except OSError:
                continue
            hit = inputs.get((st.st_dev, st.st_ino))
            if hit is not None:
                whose = f"its own {kind} output" if hit == video else f"the {kind} output of {video}"
                raise OutputError(
                    hit,
                    f"is an input and would be replaced by {whose} ({path})",
                    "choose another --out (outputs are named after the inputs)",
                )


def write_outputs(
    prediction: Prediction,
    files: dict[str, Path],
    title: str = "",
    progress: bool = False,
    audio_stream: int = 0,
) -> None:
    """Write the ``csv``, ``png`` and ``overlay`` files of ``files`` (see :func:`output_files`); the overlay
    carries audio stream ``audio_stream``, the one the prediction heard (``Predictor.audio_stream``)."""
    write_csv(prediction.table, files["csv"])
    if "png" in files:
        write_plot(
            prediction.table,
            files["png"],
            title=title or prediction.features.path.name,
            caption=prediction.caption,
        )
    if "overlay" in files:
        write_overlay(
            prediction.features.path,
            prediction,
            files["overlay"],
            progress=progress,
            audio_stream=audio_stream,
        )
