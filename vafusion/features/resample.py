"""Band-limited resampling equal to resampy's ``kaiser_best`` (the VGGish reference's resampler), and mono.

Every audio front end resamples to 16 kHz through :func:`resample`, so a chunk of a track and the whole
track give the same samples (the filter is shift-invariant, unlike FFmpeg's), which keeps chunked
extraction exact.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# resampy 0.4.x ``kaiser_best``: a Kaiser-windowed sinc with 50 zero crossings, 2**13 table entries per
# crossing. The constants reproduce the table shipped in resampy/data/kaiser_best.npz to 2e-15.
_KAISER_BEST_ZEROS = 50
_KAISER_BEST_PRECISION = 2**13
_KAISER_BEST_BETA = 12.984585247040464
_KAISER_BEST_ROLLOFF = 0.9173473712608761

_RESAMPLE_CHUNK = 8192
_MAX_PHASES = 4096  # polyphase resampling up to this many distinct output phases


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """Float64 mono signal: a 1-D input as is, a 2-D ``(samples, channels)`` input averaged over channels.

    Integer PCM is scaled to [-1, 1) first (int16 / 32768, as the reference's WAV reader does).
    """
    x = np.asarray(waveform)
    if np.issubdtype(x.dtype, np.integer):
        x = x / float(2 ** (8 * x.dtype.itemsize - 1))
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float64)
    elif x.ndim != 1:
        raise ValueError(f"waveform must be (samples,) or (samples, channels), got shape {x.shape}")
    return x.astype(np.float64, copy=False)


@lru_cache(maxsize=1)
def _kaiser_best_half_window() -> np.ndarray:
    """Right half of the interpolation filter, ``(zeros * precision + 1,)`` float64."""
    n = _KAISER_BEST_ZEROS * _KAISER_BEST_PRECISION
    positions = np.linspace(0.0, _KAISER_BEST_ZEROS, n + 1)
    sinc = _KAISER_BEST_ROLLOFF * np.sinc(_KAISER_BEST_ROLLOFF * positions)
    taper = np.kaiser(2 * n + 1, _KAISER_BEST_BETA)[n:]
    table = taper * sinc
    table.setflags(write=False)
    return table


class _Interpolator:
    """The resampy ``kaiser_best`` interpolation weights for one rate pair.

    Output sample ``j`` at input time ``t = j * orig_sr / new_sr`` (``n = int(t)``) is
    ``sum_i w_left[i] x[n - i] + sum_k w_right[k] x[n + 1 + k]``, the weights read from the windowed-sinc
    table with linear interpolation between entries; when downsampling the filter is stretched (cut-off at
    the new Nyquist) and scaled by ``new_sr / orig_sr``.
    """

    def __init__(self, orig_sr: int, new_sr: int) -> None:
        self.ratio = float(new_sr) / orig_sr
        table = _kaiser_best_half_window()
        if self.ratio < 1:
            table = self.ratio * table
        delta = np.diff(table, append=table[-1])
        n_table = table.shape[0]
        self.scale = min(1.0, self.ratio)
        self.step = int(self.scale * _KAISER_BEST_PRECISION)
        # The reference uses only taps whose table index is at most n_table - step; zeroing the entries
        # above (and padding) lets every output use the same number of taps.
        self.taps = n_table // self.step + 1
        padded_len = (self.taps + 1) * self.step + _KAISER_BEST_PRECISION + 1
        usable = n_table - self.step + 1
        self.table = np.zeros(padded_len)
        self.delta = np.zeros(padded_len)
        self.table[:usable] = table[:usable]
        self.delta[:usable] = delta[:usable]
        self.tap_idx = np.arange(self.taps) * self.step

    def weights(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input times ``(B,)`` -> ``n (B,)`` int64 and weights ``(B, 2 taps)`` applying to samples
        ``x[n - taps + 1 .. n + taps]``."""
        n = t.astype(np.int64)
        frac = self.scale * (t - n)
        halves = []
        for pos in (frac * _KAISER_BEST_PRECISION, (self.scale - frac) * _KAISER_BEST_PRECISION):
            off = pos.astype(np.int64)
            idx = off[:, None] + self.tap_idx[None, :]
            halves.append(self.table[idx] + (pos - off)[:, None] * self.delta[idx])
        return n, np.concatenate([halves[0][:, ::-1], halves[1]], axis=1)


def resample(waveform: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal, numerically equal to ``resampy.resample(x, orig_sr, new_sr)``
    (default ``kaiser_best`` filter, resampy 0.4.x) to about 1e-12.

    The output has ``int(len(x) * new_sr / orig_sr)`` samples; sample ``j`` sits at input time
    ``j * orig_sr / new_sr``. For integer rates whose reduced ratio has at most 4096 output phases (every
    common audio rate to 16 kHz) the weights are computed once per phase (polyphase); otherwise per sample.

    Args:
        waveform: ``(samples,)`` signal.
        orig_sr: its sample rate in Hz.
        new_sr: the wanted sample rate in Hz.

    Returns:
        ``(int(samples * new_sr / orig_sr),)`` float64.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal, got shape {x.shape}")
    if orig_sr == new_sr:
        return x.copy()
    n_out = int(x.shape[0] * float(new_sr) / float(orig_sr))
    if n_out < 1:
        return np.zeros(0, dtype=np.float64)
    interp = _Interpolator(orig_sr, new_sr)
    taps = interp.taps
    # windows[n + 1] is x[n - taps + 1 .. n + taps] (zeros outside the signal)
    windows = np.lib.stride_tricks.sliding_window_view(
        np.concatenate([np.zeros(taps), x, np.zeros(taps)]), 2 * taps
    )
    out = np.empty(n_out, dtype=np.float64)
    increment = 1.0 / interp.ratio
    rational = float(orig_sr).is_integer() and float(new_sr).is_integer()
    g = math.gcd(int(orig_sr), int(new_sr)) if rational else 1
    phases, hop_in = int(new_sr) // g, int(orig_sr) // g
    if rational and phases <= _MAX_PHASES:
        # Output j = q * phases + r sits at input time q * hop_in + t_r: same weights for every q.
        n_r, w_r = interp.weights(np.arange(min(phases, n_out)) * increment)
        for r in range(n_r.shape[0]):
            rows = windows[n_r[r] + 1 :: hop_in][: len(range(r, n_out, phases))]
            out[r::phases] = np.einsum("qk,k->q", rows, w_r[r])
        return out
    t_all = np.arange(n_out) * increment
    for start in range(0, n_out, _RESAMPLE_CHUNK):
        n, w = interp.weights(t_all[start : start + _RESAMPLE_CHUNK])
        out[start : start + n.shape[0]] = np.einsum("bk,bk->b", w, windows[n + 1])
    return out
