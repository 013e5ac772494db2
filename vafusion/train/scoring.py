"""Scoring a trained model on a fold: CCC over all frames, per video, and the results table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vafusion.data.sequence import Sequence
from vafusion.metrics import ccc
from vafusion.models.windows import sliding_predict


def evaluate(net, norm, seqs: list[Sequence], window: int, hop: int) -> tuple[dict, pd.DataFrame]:
    """CCC over all valid frames of ``seqs`` concatenated, per-video CCC, and the per-frame table."""
    frames, per_video = [], []
    for s in seqs:
        normed = s.normalised(norm)
        pred = sliding_predict(net, normed.feats, normed.valid, window, hop)
        frames.append(
            pd.DataFrame(
                {
                    "name": s.name,
                    "frame": np.arange(1, s.length + 1),
                    "valence": pred[:, 0],
                    "arousal": pred[:, 1],
                    "label_valence": s.labels[:, 0],
                    "label_arousal": s.labels[:, 1],
                    "valid": s.label_valid,
                }
            )
        )
        m = s.label_valid
        if m.sum() > 1:
            v, a = ccc(pred[m, 0], s.labels[m, 0]), ccc(pred[m, 1], s.labels[m, 1])
            per_video.append(
                {"name": s.name, "frames": int(m.sum()), "valence": v, "arousal": a, "mean": (v + a) / 2}
            )
    table = pd.concat(frames, ignore_index=True)
    ok = table["valid"].to_numpy()
    v = ccc(table["valence"].to_numpy()[ok], table["label_valence"].to_numpy()[ok])
    a = ccc(table["arousal"].to_numpy()[ok], table["label_arousal"].to_numpy()[ok])
    return {
        "valence": v,
        "arousal": a,
        "mean": (v + a) / 2,
        "frames": int(ok.sum()),
        "per_video": per_video,
    }, table


def results_table(rows: list[dict], models: list[str]) -> pd.DataFrame:
    """``model,fold,valence,arousal,mean`` with folds 0-5 and a ``mean`` row per model."""
    df = pd.DataFrame(rows, columns=["model", "fold", "valence", "arousal", "mean"])
    out = []
    for m in models:
        part = df[df["model"] == m]
        out.append(part)
        out.append(
            pd.DataFrame(
                [
                    {
                        "model": m,
                        "fold": "mean",
                        "valence": part["valence"].mean(),
                        "arousal": part["arousal"].mean(),
                        "mean": part["mean"].mean(),
                    }
                ]
            )
        )
    return pd.concat(out, ignore_index=True)
