"""Sequences and training windows.

A ``Sequence`` is one annotated person-track with every stream the model uses, frame-aligned by the
feature store. Training cuts sequences into windows (300 frames, hop 200 by default); evaluation and
inference run overlapping windows over whole sequences and average them
(:func:`vafusion.models.windows.sliding_predict`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vafusion.data.affwild2 import Sample, read_annotation
from vafusion.errors import VafusionError
from vafusion.features.store import FeatureFile, feature_path, read_features
from vafusion.models.normaliser import Normaliser
from vafusion.models.windows import window_starts


@dataclass
class Sequence:
    """Per-role features (T, D) and validity (T,), with labels (T, 2) and their validity (T,)."""

    name: str
    video_id: str
    feats: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    labels: np.ndarray
    label_valid: np.ndarray
    fingerprints: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict] = field(default_factory=dict)
    fps: float | None = None
    sources: dict[str, str] = field(default_factory=dict)
    """What the sequence was read from: ``labels`` -> digest of the annotation file, role -> the feature
    file's size and modification time (see :func:`load_sequence`)."""

    @property
    def length(self) -> int:
        """Frames (= annotation lines)."""
        return len(self.labels)

    def normalised(self, norm: Normaliser) -> Sequence:
        """A copy with standardised features (invalid frames 0); labels and masks are shared."""
        return Sequence(
            self.name,
            self.video_id,
            norm.apply(self.feats, self.valid),
            self.valid,
            self.labels,
            self.label_valid,
        )

    def subset(self, roles: list[str]) -> Sequence:
        """A view holding only the streams ``roles``."""
        return Sequence(
            self.name,
            self.video_id,
            {r: self.feats[r] for r in roles},
            {r: self.valid[r] for r in roles},
            self.labels,
            self.label_valid,
            {r: self.fingerprints[r] for r in roles if r in self.fingerprints},
            {r: self.params[r] for r in roles if r in self.params},
            self.fps,
        )


def _fit_length(a: np.ndarray, n: int, fill: float | bool) -> np.ndarray:
    if len(a) == n:
        return a
    if len(a) > n:
        return a[:n]
    pad = np.full((n - len(a),) + a.shape[1:], fill, dtype=a.dtype)
    return np.concatenate([a, pad])


def load_sequence(
    sample: Sample, feats_root: str | Path, streams: dict[str, str], roles: list[str], mmap: bool = False
) -> Sequence:
    """Read the labels and the features of ``roles`` (role -> extractor via ``streams``).

    ``mmap``: the features are read-only views of the files (:func:`~vafusion.features.store.read_features`),
    read from disk only where they are used. Annotation rows past the video's last frame (as ``extract``
    recorded it) have no input in any stream and are marked invalid, so they are neither trained on nor
    scored.
    """
    labels, label_valid, sources = None, None, {}
    if sample.annotation is not None:
        labels, label_valid = read_annotation(sample.annotation)
        sources["labels"] = hashlib.sha256(Path(sample.annotation).read_bytes()).hexdigest()[:16]
    feats, valid, prints, params = {}, {}, {}, {}
    fps, video_frames = None, None
    for role in roles:
        path = feature_path(feats_root, streams[role], sample.name)
        ff = read_features(path, mmap=mmap)
        _check_meta(path, ff, role, streams[role])
        st = path.stat()
        sources[role] = f"{st.st_size}:{st.st_mtime_ns}"
        prints[role] = str(ff.meta.get("fingerprint", ""))
        params[role] = dict(ff.meta.get("params") or {})
        if isinstance(ff.meta.get("fps"), (int, float)) and ff.meta["fps"] > 0:
            fps = float(ff.meta["fps"])
        if isinstance(ff.meta.get("video_frames"), int):
            video_frames = ff.meta["video_frames"]
        if labels is None:
            labels = np.zeros((len(ff.features), 2), np.float32)
            label_valid = np.zeros(len(ff.features), bool)
        n = len(labels)
        feats[role] = _fit_length(ff.features, n, 0.0)
        valid[role] = _fit_length(ff.valid, n, False)
    if video_frames is not None and video_frames < len(labels):
        label_valid = label_valid.copy()
        label_valid[video_frames:] = False
    return Sequence(
        sample.name, sample.video_id, feats, valid, labels, label_valid, prints, params, fps, sources
    )


def _check_meta(path: Path, ff: FeatureFile, role: str, extractor: str) -> None:
    """A feature file made by the extractor the stream reads, with the width it says."""
    made_by = ff.meta.get("extractor", extractor)
    if made_by != extractor:
        raise VafusionError(
            path,
            f"holds {made_by} features, but the {role} stream reads {extractor} features",
            "delete it and rerun `vafusion extract`",
        )
    if int(ff.meta.get("dim", ff.features.shape[1])) != ff.features.shape[1]:
        raise VafusionError(
            path,
            f"holds {ff.features.shape[1]}-d rows but says {ff.meta['dim']}-d",
            "delete it and rerun `vafusion extract`",
        )


class WindowDataset(Dataset):
    """Fixed-length windows of normalised sequences, padded with invalid frames.

    In training, ``branch_dropout`` hides a whole stream of a window (as if the video had no audio or no
    face) and ``frame_dropout`` hides random face frames, so the model learns to cope with both.
    With ``norm`` the sequences are raw (e.g. memory-mapped) and each window is normalised when it is
    cut, to the values a window of the normalised sequence holds (no normalised copy of the data).
    """

    def __init__(
        self,
        seqs: list[Sequence],
        window: int,
        hop: int,
        train: bool = False,
        branch_dropout: float = 0.0,
        frame_dropout: float = 0.0,
        seed: int = 0,
        norm: Normaliser | None = None,
    ) -> None:
        self.seqs, self.window, self.train, self.norm = seqs, window, train, norm
        self.index = [(i, s) for i, seq in enumerate(seqs) for s in window_starts(seq.length, window, hop)]
        self.branch_dropout, self.frame_dropout = branch_dropout, frame_dropout
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Window ``key``; an ``(epoch, k)`` key (:class:`EpochSampler`) draws that epoch's augmentation."""
        epoch, k = key if isinstance(key, tuple) else (self.epoch, key)
        i, start = self.index[k]
        seq, w = self.seqs[i], self.window
        end = min(start + w, seq.length)
        n = end - start

        def cut(a: np.ndarray, fill) -> np.ndarray:
            out = np.full((w,) + a.shape[1:], fill, dtype=a.dtype)
            out[:n] = a[start:end]
            return out

        feats = {r: cut(x, 0.0) for r, x in seq.feats.items()}
        valid = {r: cut(v, False) for r, v in seq.valid.items()}
        if self.norm is not None:  # before the augmentation below, which hides frames but keeps their values
            feats = self.norm.apply(feats, valid)
        if self.train and (self.branch_dropout > 0 or self.frame_dropout > 0):
            rng = np.random.default_rng((self.seed, epoch, k))
            roles = list(valid)
            if len(roles) > 1 and rng.random() < self.branch_dropout:
                valid[roles[rng.integers(len(roles))]][:] = False
            if self.frame_dropout > 0:
                valid[roles[0]] &= rng.random(w) >= self.frame_dropout
        return {
            "feats": {r: torch.from_numpy(x) for r, x in feats.items()},
            "valid": {r: torch.from_numpy(v) for r, v in valid.items()},
            "labels": torch.from_numpy(cut(seq.labels, 0.0)),
            "label_valid": torch.from_numpy(cut(seq.label_valid, False)),
        }


def epoch_seed(seed: int, epoch: int, step: int = 0) -> int:
    """A well-mixed 63-bit seed for (run seed, epoch, step)."""
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler):
    """Training order: a permutation seeded by (seed, epoch), yielding ``(epoch, index)`` keys.

    Epoch k then sees the same order and, through the key, the same augmentation whether the run started
    at epoch 0 or was resumed at k. Lightning draws the first batch of a resumed run before it calls
    ``set_epoch``, so the epoch is read from ``epoch_of`` (the trainer's restored counter) when iteration
    starts; without it, the last ``set_epoch`` value is used.
    """

    def __init__(
        self, n: int, seed: int, epoch_of: Callable[[], int] | None = None, shuffle: bool = True
    ) -> None:
        self.n, self.seed, self.epoch_of, self.shuffle = n, seed, epoch_of, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(self.epoch_of()) if self.epoch_of is not None else self.epoch
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        for k in order:
            yield epoch, k
