"""Per-stream feature standardisation, fitted on the training frames and stored in every checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
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
    def fit(cls, seqs: Sequence[Streams]) -> Normaliser:
        """Fit on the valid frames of ``seqs`` (float64; a stream without valid frames gets 0 and 1e-6)."""
        mean, std = {}, {}
        for role in seqs[0].feats:
            rows = [s.feats[role][s.valid[role]] for s in seqs]
            dim = seqs[0].feats[role].shape[1]
            x = np.concatenate([r for r in rows if len(r)] or [np.zeros((1, dim), np.float32)])
            x = x.astype(np.float64)
            mean[role] = x.mean(0).astype(np.float32)
            std[role] = np.maximum(x.std(0), 1e-6).astype(np.float32)
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
