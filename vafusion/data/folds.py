"""Six validation folds as in the paper's Table 2.

Fold 0 is the official Validation_Set. Folds 1-5 split the Train_Set video-level into five parts, so
both people of a two-person video (``x_left``/``x_right``) always fall in the same fold. The split
depends only on the video ids and the seed, never on file order or run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from vafusion.data.affwild2 import Sample
from vafusion.errors import VafusionError
from vafusion.io.atomic import atomic_path

N_TRAIN_FOLDS = 5


def _key(video_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()


def assign_folds(samples: list[Sample], seed: int = 0, n_train_folds: int = N_TRAIN_FOLDS) -> pd.DataFrame:
    """Return a table ``name,video,split,fold`` with one row per annotated sample.

    Train_Set videos are ordered by a seeded hash of their id and dealt round-robin into folds
    1..n, which keeps the folds balanced in video count (adding videos can move others: keep a
    ``folds.csv`` and pass it back with ``--folds`` to freeze a split).
    """
    rows = []
    train_videos = sorted(
        {s.video_id for s in samples if s.split == "Train_Set"}, key=lambda v: _key(v, seed)
    )
    if 0 < len(train_videos) < n_train_folds:
        raise VafusionError(
            None,
            f"only {len(train_videos)} Train_Set videos for {n_train_folds} folds",
            "add videos or lower cv.n_train_folds",
        )
    fold_of = {v: 1 + i % n_train_folds for i, v in enumerate(train_videos)}
    for s in samples:
        if s.split == "Validation_Set":
            fold = 0
        elif s.split == "Train_Set":
            fold = fold_of[s.video_id]
        else:
            continue
        rows.append({"name": s.name, "video": s.video_id, "split": s.split, "fold": fold})
    return pd.DataFrame(rows, columns=["name", "video", "split", "fold"]).sort_values(
        ["fold", "name"], ignore_index=True
    )


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    """Write the fold table to CSV atomically."""
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, index=False)


def read_folds(path: str | Path, samples: list[Sample], n_train_folds: int = N_TRAIN_FOLDS) -> pd.DataFrame:
    """Read a fold table written by ``write_folds`` and check it against the corpus.

    Every annotated sample must have exactly one fold, a number 0..``n_train_folds``, and a video's
    samples must share it.
    """
    path = Path(path)
    try:
        folds = pd.read_csv(path, dtype={"name": str, "video": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise VafusionError(
            path, f"cannot read fold file ({exc})", "pass a folds.csv written by `vafusion cv`"
        ) from None
    missing_cols = {"name", "fold"} - set(folds.columns)
    if missing_cols:
        raise VafusionError(path, f"missing columns {sorted(missing_cols)}", "expected name,video,split,fold")
    known = {s.name: s for s in samples if s.split in ("Train_Set", "Validation_Set")}
    absent = sorted(set(known) - set(folds["name"]))
    if absent:
        raise VafusionError(
            path,
            f"{len(absent)} annotated samples have no fold (e.g. {absent[0]})",
            "regenerate the fold file or add those names",
        )
    folds = folds[folds["name"].isin(known)].copy()
    numbers = pd.to_numeric(folds["fold"], errors="coerce")
    bad = folds[~numbers.isin(range(n_train_folds + 1))]
    if len(bad):
        raise VafusionError(
            path,
            f"sample {bad['name'].iloc[0]} has fold {bad['fold'].iloc[0]}",
            f"folds are 0 (Validation_Set) to {n_train_folds} (cv.n_train_folds); fix the fold column",
        )
    folds["fold"] = numbers.astype(int)
    folds["video"] = [known[n].video_id for n in folds["name"]]
    folds["split"] = [known[n].split for n in folds["name"]]
    per_video = folds.groupby("video")["fold"].nunique()
    if (per_video > 1).any():
        bad = per_video[per_video > 1].index[0]
        raise VafusionError(
            path, f"video {bad} is split across folds", "put all samples of one video in one fold"
        )
    return folds[["name", "video", "split", "fold"]].sort_values(["fold", "name"], ignore_index=True)
