"""Fixed-length windows over whole sequences: where training cuts them and how inference recombines them.

The network sees windows of ``window`` frames (300 by default). Training cuts sequences at these starts;
evaluation and ``vafusion predict`` run overlapping windows over a whole sequence and average them with a
triangular weight, so every frame is predicted mostly by windows that see context on both of its sides.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Window starts covering ``[0, length)``; the last window is aligned to the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@torch.inference_mode()
def sliding_predict(
    net: Callable[..., torch.Tensor],
    feats: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    window: int,
    hop: int,
    batch: int = 16,
) -> np.ndarray:
    """``(T, 2)`` predictions for normalised per-role features ``(T, D)`` and masks ``(T,)``.

    Overlapping windows are averaged with a triangular weight, which trusts each window most at its centre,
    where the TCNs and the attention see context on both sides; ``hop <= window`` is required so that
    every frame is covered. ``net`` is a ``FusionNet`` or anything called the same way (an ONNX runner).
    """
    if hop > window:
        raise ValueError(f"eval hop ({hop}) must not exceed the window ({window})")
    if hasattr(net, "eval"):
        net.eval()
    n = len(next(iter(valid.values())))
    starts = window_starts(n, window, hop)
    w = min(window, n)
    ramp = np.minimum(np.arange(1, w + 1), np.arange(w, 0, -1)).astype(np.float64)
    acc = np.zeros((n, 2), np.float64)
    wsum = np.zeros(n, np.float64)
    for k in range(0, len(starts), batch):
        chunk = starts[k : k + batch]
        x = {r: torch.from_numpy(np.stack([f[s : s + w] for s in chunk])) for r, f in feats.items()}
        m = {r: torch.from_numpy(np.stack([v[s : s + w] for s in chunk])) for r, v in valid.items()}
        out = net(x, m).double().numpy()
        for j, s in enumerate(chunk):
            acc[s : s + w] += out[j] * ramp[:, None]
            wsum[s : s + w] += ramp
    return (acc / wsum[:, None]).astype(np.float32)
