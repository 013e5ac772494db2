"""Fold models into one prediction: their mean and spread per frame, smoothed along time and clipped."""

from __future__ import annotations

import math

import numpy as np


def smooth_series(values: np.ndarray, times: np.ndarray, sigma_s: float) -> np.ndarray:
    """Gaussian smoothing along time with standard deviation ``sigma_s`` seconds (0: unchanged copy).

    Weights come from the real frame times, so variable-frame-rate video is smoothed in seconds, not
    frames; near the ends the kernel is renormalised over the frames that exist.
    """
    values = np.asarray(values, np.float64)
    out = values.copy()
    n = len(values)
    if sigma_s <= 0 or n < 2:
        return out.astype(np.float32)
    times = np.asarray(times, np.float64)
    steps = np.diff(times)
    steps = steps[steps > 0]
    period = float(np.median(steps)) if steps.size else 1.0 / 30
    k = min(math.ceil(3.0 * sigma_s / period), n - 1)
    acc = np.zeros_like(values)
    wsum = np.zeros(n)
    extra = (slice(None),) + (None,) * (values.ndim - 1)
    for d in range(-k, k + 1):
        lo, hi = max(0, -d), min(n, n - d)
        with np.errstate(over="ignore"):  # a far neighbour of a tiny sigma weighs exp(-inf) = 0
            w = np.exp(-0.5 * ((times[lo + d : hi + d] - times[lo:hi]) / sigma_s) ** 2)
        acc[lo:hi] += w[extra] * values[lo + d : hi + d]
        wsum[lo:hi] += w
    return (acc / wsum[extra]).astype(np.float32)


def ensemble(
    folds: list[np.ndarray], times: np.ndarray, sigma_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the fold models' ``(T, 2)`` predictions and their standard deviation per frame (0 with
    one model), each smoothed with :func:`smooth_series` (``sigma_s`` > 0) and clipped to [-1, 1]; the
    spread is that of the smoothed, clipped fold predictions."""
    acc = np.zeros(folds[0].shape, np.float64)
    for p in folds:
        acc += p
    mean = (acc / len(folds)).astype(np.float32)
    if sigma_s > 0:
        mean = smooth_series(mean, times, sigma_s)
    each = [np.clip(smooth_series(p, times, sigma_s) if sigma_s > 0 else p, -1.0, 1.0) for p in folds]
    return np.clip(mean, -1.0, 1.0), np.std(np.stack(each), axis=0).astype(np.float32)
