"""Lin's Concordance Correlation Coefficient, the ABAW VA metric.

CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), with population (1/N) moments,
computed over all valid frames of an evaluation set concatenated. P = mean(CCC_valence, CCC_arousal).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric


def ccc(pred: np.ndarray, target: np.ndarray) -> float:
    """CCC of two 1-D series in float64 (a ``(N, 1)`` column counts as one); 0.0 when it is undefined, 1.0
    for two equal constants. ``(N, 2)`` valence/arousal arrays are refused rather than flattened into one
    number: score each column."""
    x, y = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ccc: shapes differ {x.shape} vs {y.shape}")
    if x.ndim > 1 and sum(d > 1 for d in x.shape) > 1:
        raise ValueError(
            f"ccc: takes one series, got shape {x.shape}; score each column: ccc(pred[:, 0], target[:, 0])"
        )
    x, y = x.ravel(), y.ravel()
    if x.size == 0:
        return float("nan")
    mx, my = x.mean(), y.mean()
    vx, vy = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean()
    cov = ((x - mx) * (y - my)).mean()
    den = vx + vy + (mx - my) ** 2
    if den == 0:
        return 1.0
    return float(2 * cov / den)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - CCC`` averaged over the last dimension, over the frames where ``mask`` is true.

    Args:
        pred, target: (B, T, D); mask: (B, T) bool.
    """
    m = mask.unsqueeze(-1).to(pred.dtype)
    n = m.sum().clamp_min(1.0)
    mx = (pred * m).sum((0, 1)) / n
    my = (target * m).sum((0, 1)) / n
    dx, dy = (pred - mx) * m, (target - my) * m
    vx, vy = (dx**2).sum((0, 1)) / n, (dy**2).sum((0, 1)) / n
    cov = (dx * dy).sum((0, 1)) / n
    c = 2 * cov / (vx + vy + (mx - my) ** 2).clamp_min(1e-12)
    return 1.0 - c.mean()


class CCC(Metric):
    """Streaming CCC per output dimension over masked frames (float64 sums, exact for any batch order)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_outputs: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("sx", "sy", "sxx", "syy", "sxy"):
            self.add_state(name, torch.zeros(num_outputs, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add frames: ``pred``/``target`` (..., D), ``mask`` (...) bool."""
        d = pred.shape[-1]
        x = pred.detach().reshape(-1, d).double()
        y = target.detach().reshape(-1, d).double()
        if mask is not None:
            keep = mask.reshape(-1).bool()
            x, y = x[keep], y[keep]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += (x * x).sum(0)
        self.syy += (y * y).sum(0)
        self.sxy += (x * y).sum(0)
        self.n += x.shape[0]

    def compute(self) -> torch.Tensor:
        """CCC per dimension, shape (D,)."""
        n = self.n.clamp_min(1.0)
        mx, my = self.sx / n, self.sy / n
        vx = self.sxx / n - mx**2
        vy = self.syy / n - my**2
        cov = self.sxy / n - mx * my
        den = vx + vy + (mx - my) ** 2
        return torch.where(den > 0, 2 * cov / den.clamp_min(1e-300), torch.ones_like(den))
