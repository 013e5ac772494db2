"""Windowed inference over whole sequences, shared by evaluation and ``Predictor``."""
from __future__ import annotations

import numpy as np
import torch

from vafusion.models.fusion import FusionNet
from vafusion.train.data import Sequence, window_starts


@torch.inference_mode()
def sliding_predict(net: FusionNet, seq: Sequence, window: int, hop: int, batch: int = 16) -> np.ndarray:
    """Predict (T, 2) for a normalised sequence: overlapping windows, averaged with a triangular weight.

    The triangular weight trusts each window most at its centre, where the TCNs and the attention see
    context on both sides; ``hop < window`` is required so every frame is covered by a window centre.
    """
    if hop > window:
        raise ValueError(f"eval hop ({hop}) must not exceed the window ({window})")
    net.eval()
    n = seq.length
    starts = window_starts(n, window, hop)
    w = min(window, n)
    ramp = np.minimum(np.arange(1, w + 1), np.arange(w, 0, -1)).astype(np.float64)
    acc = np.zeros((n, 2), np.float64)
    wsum = np.zeros(n, np.float64)
    for k in range(0, len(starts), batch):
        chunk = starts[k:k + batch]
        feats = {r: torch.from_numpy(np.stack([x[s:s + w] for s in chunk])) for r, x in seq.feats.items()}
        valid = {r: torch.from_numpy(np.stack([v[s:s + w] for s in chunk])) for r, v in seq.valid.items()}
        out = net(feats, valid).double().numpy()
        for j, s in enumerate(chunk):
            acc[s:s + w] += out[j] * ramp[:, None]
            wsum[s:s + w] += ramp
    return (acc / wsum[:, None]).astype(np.float32)
