"""Per-stream feature standardisation, fitted on the training frames and stored in every checkpoint."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Streams(Protocol):
    """Anything with per-role features ``(T, D)`` and validity ``(T,)`` (e.g. ``vafusion.data.Sequence``)."""

    feats: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]


@dataclass
class Normaliser:
    """Per-role mean and standard deviation over the valid frames of the training sequences.

    Invalid frames (no face, no audio) become 0 after normalisation; the network replaces them with its
    learned stand-in anyway.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, seqs: Sequence[Streams], chunk: int = 1 << 16) -> Normaliser:
        """Fit on the valid frames of ``seqs`` in float64 (a stream without valid frames gets 0 and 1e-6).

        The rows are read at most ``chunk`` at a time (the features may be memory-mapped: Aff-Wild2's visual
        stream alone is 8 GB in float64), yet the result is that of one float64 mean and standard deviation
        over all valid rows concatenated, bit for bit: numpy sums the columns of an ``(N, D)`` array row
        after row, and the running total enters each chunk's sum as its first row.
        """
        mean, std = {}, {}
        for role in seqs[0].feats:
            n, total = 0, None
            for block in _valid_rows(seqs, role, chunk):
                n += len(block)
                total = _running_sum(total, block)
            dim = seqs[0].feats[role].shape[1]
            if n == 0:
                mean[role], std[role] = np.zeros(dim, np.float32), np.full(dim, 1e-6, np.float32)
                continue
            mu, squares = total / n, None
            for block in _valid_rows(seqs, role, chunk):
                block -= mu
                block *= block
                squares = _running_sum(squares, block)
            mean[role] = mu.astype(np.float32)
            std[role] = np.maximum(np.sqrt(squares / n), 1e-6).astype(np.float32)
        return cls(mean, std)

    @classmethod
    def identity(cls, dims: dict[str, int]) -> Normaliser:
        """Mean 0, standard deviation 1: for an untrained model (``vafusion_tiny``)."""
        return cls(
            {r: np.zeros(d, np.float32) for r, d in dims.items()},
            {r: np.ones(d, np.float32) for r, d in dims.items()},
        )

    def apply(self, feats: dict[str, np.ndarray], valid: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Normalised ``(T, D)`` float32 features per role; invalid frames are 0."""
        return {
            r: np.where(valid[r][:, None], (x - self.mean[r]) / self.std[r], 0.0).astype(np.float32)
            for r, x in feats.items()
        }

    def state(self) -> dict:
        """Tensors for a checkpoint."""
        return {
            r: {"mean": torch.from_numpy(self.mean[r]), "std": torch.from_numpy(self.std[r])}
            for r in self.mean
        }

    @classmethod
    def from_state(cls, state: dict) -> Normaliser:
        """Rebuild from :meth:`state`."""
        return cls(
            {r: np.asarray(v["mean"], np.float32) for r, v in state.items()},
            {r: np.asarray(v["std"], np.float32) for r, v in state.items()},
        )


def _valid_rows(seqs: Sequence[Streams], role: str, chunk: int) -> Iterator[np.ndarray]:
    """The valid rows of ``role`` over ``seqs`` in order, as float64 blocks of at most ``chunk`` rows."""
    for s in seqs:
        x, v = s.feats[role], s.valid[role]
        for i in range(0, len(x), chunk):
            rows = np.asarray(x[i : i + chunk])[np.asarray(v[i : i + chunk])]
            if len(rows):
                yield rows.astype(np.float64)


def _running_sum(total: np.ndarray | None, block: np.ndarray) -> np.ndarray:
    """Column sums of ``block`` continued from ``total`` in the same order as one sum over all rows."""
    return block.sum(0) if total is None else np.concatenate([total[None], block]).sum(0)
