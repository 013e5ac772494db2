"""The prediction table: one row per frame (``--faces one``) or per person and frame (``--faces all``).

Columns: ``frame`` (1-based), ``time`` (s, from the stream's timestamps), ``valence``, ``arousal`` (the fold
models' mean, in [-1, 1]), ``face`` (1 where the person's face was found), with ``--faces all`` the
``person`` number, then the face box in pixels of the upright frame (``box_x``, ``box_y`` = left, top;
``box_w``, ``box_h``; empty where ``face`` is 0) and ``valence_sd``/``arousal_sd``, the standard deviation
of the fold models' predictions (0 with one model): how much the folds disagree on that frame.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from vafusion.inference.video import FaceRows, VideoFeatures

Faces = Literal["one", "all"]

FIRST = ["frame", "time", "valence", "arousal", "face"]
"""The columns every table starts with, unchanged since the first version."""
BOX = ["box_x", "box_y", "box_w", "box_h"]
SPREAD = ["valence_sd", "arousal_sd"]


def columns(faces: Faces) -> list[str]:
    """The table's columns for ``--faces one`` or ``--faces all``."""
    return FIRST + (["person"] if faces == "all" else []) + BOX + SPREAD


def _box_columns(face: np.ndarray, boxes: np.ndarray) -> dict[str, pd.Series]:
    """Whole-pixel ``x, y, w, h`` of each frame's box (dlib's inclusive right/bottom edges), empty without a
    face."""
    left, top, right, bottom = (boxes[:, k].astype(np.float64) for k in range(4))
    values = {"box_x": left, "box_y": top, "box_w": right - left + 1, "box_h": bottom - top + 1}
    return {
        k: pd.Series(np.where(face, np.round(np.nan_to_num(v)), np.nan)).astype("Int64")
        for k, v in values.items()
    }


def person_table(
    vf: VideoFeatures, rows: FaceRows | None, mean: np.ndarray, sd: np.ndarray, faces: Faces
) -> pd.DataFrame:
    """The rows of one person (``rows`` ``None``: nobody was found, so no face in any frame)."""
    n = vf.length
    face = rows.face if rows is not None else np.zeros(n, bool)
    boxes = rows.boxes if rows is not None else np.full((n, 4), np.nan, np.float32)
    data: dict[str, object] = {
        "frame": np.arange(1, n + 1, dtype=np.int64),
        "time": vf.times,
        "valence": mean[:, 0],
        "arousal": mean[:, 1],
        "face": face.astype(np.int8),
    }
    if faces == "all":
        data["person"] = np.full(n, rows.person if rows is not None else 0, np.int64)
    data.update(_box_columns(face, boxes))
    data.update(valence_sd=sd[:, 0], arousal_sd=sd[:, 1])
    return pd.DataFrame(data, columns=columns(faces))


def prediction_table(parts: list[pd.DataFrame], faces: Faces) -> pd.DataFrame:
    """The people's tables stacked, ordered by person and then frame."""
    if not parts:
        return pd.DataFrame(columns=columns(faces))
    return pd.concat(parts, ignore_index=True)
