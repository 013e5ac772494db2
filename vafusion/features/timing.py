"""Mapping feature rows onto frame times: encode fewer rows, fill in the rest.

:func:`anchor_rows` / :func:`fill_between_anchors` encode every k-th face of each run of frames with a face
and interpolate the rest (``features.face_stride``); :func:`resample_rows` maps features computed at coarse
times onto frame times (``features.audio_hop``). ``vafusion extract`` and ``vafusion predict`` both use
these, so training rows and prediction rows are made the same way.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class StrideAnchors(Generic[T]):
    """Which rows to encode when only every ``stride``-th face is, decided online as rows arrive.

    Per run of consecutive present rows: its first row, every ``stride``-th after it, and its last row (so
    no row is ever extrapolated). :meth:`push` returns the rows that are known to need encoding at that
    point: the current one, or the previous run's held last row when a run ends. ``vafusion predict``
    feeds video frames as they are decoded; :func:`anchor_rows` feeds a whole mask.
    """

    def __init__(self, stride: int) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self._run = 0
        self._held: T | None = None

    def push(self, item: T, present: bool) -> list[T]:
        """Feed the next row (``present``: it has a face); return the rows to encode now, in order."""
        if not present:
            return self.finish()
        out: list[T] = []
        if self._run % self.stride == 0:
            out.append(item)
            self._held = None
        else:
            self._held = item
        self._run += 1
        return out

    def finish(self) -> list[T]:
        """End the current run: its last row if it was not encoded yet."""
        out = [] if self._held is None else [self._held]
        self._held, self._run = None, 0
        return out


def anchor_rows(present: np.ndarray, stride: int) -> np.ndarray:
    """Rows to encode when only every ``stride``-th face is (:class:`StrideAnchors` over a whole mask).

    Args:
        present: ``(T,)`` bool, rows that have a face.
        stride: k >= 1; 1 returns every present row.

    Returns:
        Sorted row indices ``(A,)`` int64.
    """
    select: StrideAnchors[int] = StrideAnchors(stride)
    rows: list[int] = []
    for i, p in enumerate(np.asarray(present, bool).tolist()):
        rows += select.push(i, p)
    rows += select.finish()
    return np.asarray(rows, np.int64)


def fill_between_anchors(
    feats: np.ndarray, encoded: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate rows of ``feats`` that are ``present`` but not ``encoded``, within each run.

    Args:
        feats: ``(T, D)`` with the encoded rows filled.
        encoded: ``(T,)`` bool, rows that hold encoder output.
        present: ``(T,)`` bool, rows that should end up with features (encoded is a subset).

    Returns:
        ``(T, D)`` features and ``(T,)`` validity: a present row is valid when its run has an encoded row.
    """
    out = np.array(feats, dtype=np.float32, copy=True)
    present = np.asarray(present, bool)
    encoded = np.asarray(encoded, bool) & present
    valid = encoded.copy()
    rows = np.flatnonzero(present)
    if len(rows) == 0:
        return out, valid
    breaks = np.flatnonzero(np.diff(rows) > 1) + 1
    for run in np.split(rows, breaks):
        have = run[encoded[run]]
        if len(have) == 0:
            continue
        todo = run[~encoded[run]]
        if len(todo):
            out[todo] = resample_rows(have.astype(np.float64), out[have], todo.astype(np.float64))
            valid[todo] = True
    return out, valid


def resample_rows(src_times: np.ndarray, feats: np.ndarray, dst_times: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``(S, D)`` rows known at ``src_times`` (increasing) onto ``dst_times``;
    times outside the known range take the nearest end row."""
    src = np.asarray(src_times, np.float64)
    dst = np.asarray(dst_times, np.float64)
    feats = np.asarray(feats)
    if len(src) == 1:
        return np.repeat(feats.astype(np.float32), len(dst), axis=0)
    idx = np.clip(np.searchsorted(src, dst, side="right") - 1, 0, len(src) - 2)
    w = np.clip((dst - src[idx]) / (src[idx + 1] - src[idx]), 0.0, 1.0)[:, None]
    return ((1.0 - w) * feats[idx] + w * feats[idx + 1]).astype(np.float32)
