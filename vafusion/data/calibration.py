"""Calibration crops for the int8 face path, taken from the dataset itself (``features.face_calibration``).

int8 IResNet sets its activation ranges on a few hundred real aligned faces
(:mod:`vafusion.features.face_int8`). With the default ``auto``, ``vafusion extract`` takes them from the
dataset's ``cropped_aligned`` crops: at most ``CALIBRATION_CROPS``, spread as evenly as the folders allow
over the crop folders (one per annotated person-track) and, within each, over its frames, so that no one
person, scene or moment sets the ranges. The choice depends only on the sorted folder and file names, so
every run and every ``--shard`` of a dataset draws the same set. The set is kept in
``FEATS/face_calibration.npz`` and later runs on that store reuse it (a video added later then leaves the
int8 model, and so every int8 face file, as it was); a folder given in ``features.face_calibration``
replaces it, ``none`` removes it. ``vafusion cv`` copies it into the run, where ``vafusion predict`` finds it.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vafusion.data.affwild2 import Corpus, crop_index
from vafusion.errors import VafusionError
from vafusion.face.align import read_crop
from vafusion.features.extractors import FeaturesConfig
from vafusion.features.face_encoder import calibration_id
from vafusion.features.face_int8 import (
    CALIBRATION_CROPS,
    CALIBRATION_FILE,
    MIN_CALIBRATION_CROPS,
    OFF,
    calibration_mode,
    calibration_source,
    load_calibration,
    save_calibration,
)
from vafusion.io.atomic import atomic_path

FLOAT_PRECISIONS = ("fp32", "bf16")


@dataclass
class CalibrationSample:
    """Crops drawn from a dataset: ``crops (N, 112, 112, 3) uint8 RGB``, their files (relative to the
    dataset root), the files that could not be read, and how many crop folders there were."""

    crops: np.ndarray
    files: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    folders: int = 0


def spread(counts: list[int], limit: int) -> list[int]:
    """How many crops to take from folders holding ``counts``: ``min(limit, sum(counts))`` in all, as equal
    as the counts allow (a small folder gives all it has, the others share the rest)."""
    take, left = [0] * len(counts), min(limit, sum(counts))
    order = sorted(range(len(counts)), key=lambda i: (counts[i], i))
    for k, i in enumerate(order):
        take[i] = min(counts[i], left // (len(order) - k))
        left -= take[i]
    for i in range(len(counts)):  # what integer shares left over, one each to the first with room
        if left and take[i] < counts[i]:
            take[i], left = take[i] + 1, left - 1
    return take


def centred(n: int, k: int) -> list[int]:
    """``min(n, k)`` of ``range(n)`` evenly spread, each the middle of its share (one of many: the middle)."""
    k = min(n, k)
    return [(2 * j + 1) * n // (2 * k) for j in range(k)]


def sample_crops(corpus: Corpus, limit: int = CALIBRATION_CROPS) -> CalibrationSample:
    """Up to ``limit`` crops of ``corpus``, spread over its crop folders (at most ``limit`` folders, evenly
    spaced by name) and over each folder's frames; unreadable crops are skipped and listed."""
    folders = sorted({s.crops for s in corpus.samples if s.crops is not None}, key=lambda p: (p.name, p))
    folders = [folders[i] for i in centred(len(folders), limit)]
    frames = [sorted(crop_index(f).items()) for f in folders]
    crops, files, unreadable = [], [], []
    for listing, k in zip(frames, spread([len(x) for x in frames], limit)):
        for j in centred(len(listing), k):
            path = listing[j][1]
            name = path.relative_to(corpus.root).as_posix() if path.is_relative_to(corpus.root) else str(path)
            image = read_crop(path)
            (unreadable if image is None else files).append(name)
            if image is not None:
                crops.append(image)
    stacked = np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)
    return CalibrationSample(stacked, files, unreadable, len(folders))


def _stored_crops(path: Path) -> np.ndarray | None:
    """The crops of a stored set, ``None`` when there is none or it is unreadable or too small."""
    if not path.is_file():
        return None
    try:
        return load_calibration(path)
    except VafusionError:
        return None


@dataclass
class CalibrationPlan:
    """What the IResNet extractor calibrates int8 on, and what to keep in the feature store.

    ``cfg`` has ``face_calibration`` set to the stored set's path (or ``none``); ``crops`` go to the
    extractor directly; :meth:`keep` writes (or removes) ``FEATS/face_calibration.npz`` once the extractor
    was built, so a wrong weights file or setting leaves the store as it was.
    """

    cfg: FeaturesConfig
    crops: np.ndarray | None = None
    note: str | None = None
    stored: Path | None = None
    source: str = ""
    write: bool = False

    def keep(self) -> None:
        """Make ``FEATS/face_calibration.npz`` hold this plan's crops (none: no file)."""
        if self.stored is None:
            return
        if self.crops is None:
            self.stored.unlink(missing_ok=True)
        elif self.write:
            save_calibration(self.stored, self.crops, self.source)
            self.write = False


def _from_dataset(cfg: FeaturesConfig, corpus: Corpus, stored: Path) -> CalibrationPlan:
    """A plan that calibrates on a sample of ``corpus`` (none, when too few of its crops are readable)."""
    got = sample_crops(corpus)
    bad = f"; unreadable, skipped: {len(got.unreadable)}, e.g. {got.unreadable[0]}" if got.unreadable else ""
    if len(got.crops) < MIN_CALIBRATION_CROPS:
        return CalibrationPlan(
            dataclasses.replace(cfg, face_calibration=OFF),
            note=f"face calibration: only {len(got.crops)} readable crops in the cropped_aligned folders of "
            f"{corpus.root} (at least {MIN_CALIBRATION_CROPS} needed){bad}; int8 is not tried, faces run "
            "on the float path (set features.face_calibration to a folder of aligned crops to calibrate)",
            stored=stored,
        )
    source = f"{len(got.crops)} crops from {got.folders} crop folders of {corpus.root} (auto)"
    return CalibrationPlan(
        dataclasses.replace(cfg, face_calibration=str(stored)),
        got.crops,
        f"face calibration: {source}, kept in {stored}{bad}",
        stored,
        source,
        write=True,
    )


def plan_calibration(
    cfg: FeaturesConfig, corpus: Corpus, feats: str | Path, extractors: Iterable[str]
) -> CalibrationPlan:
    """The crops the IResNet extractor of ``vafusion extract`` calibrates int8 on, and a line saying where
    they came from: ``features.face_calibration`` auto (the store's kept set, else a sample of the
    dataset), a folder or ``.npz`` (replaces the kept set), or ``none``.

    Nothing is planned when no IResNet runs, nor sampled when its precision is forced to a float one.
    """
    if "iresnet" not in extractors:
        return CalibrationPlan(cfg)
    stored = Path(feats) / CALIBRATION_FILE
    mode = calibration_mode(cfg.face_calibration)
    off = dataclasses.replace(cfg, face_calibration=OFF)
    if mode == OFF:
        removed = f"; removes the earlier set {stored}" if stored.is_file() else ""
        note = f"face calibration: off (features.face_calibration={OFF}), int8 is not tried{removed}"
        return CalibrationPlan(off, note=note, stored=stored)
    if cfg.face_precision in FLOAT_PRECISIONS:
        return CalibrationPlan(off)
    kept = _stored_crops(stored)
    if mode == "path":
        crops = load_calibration(cfg.face_calibration)
        source = f"{len(crops)} crops of {cfg.face_calibration}"
        fresh = kept is None or calibration_id(kept) != calibration_id(crops)
        resolved = dataclasses.replace(cfg, face_calibration=str(stored))
        return CalibrationPlan(
            resolved, crops, f"face calibration: {source}, kept in {stored}", stored, source, fresh
        )
    if kept is not None:
        note = (
            f"face calibration: {calibration_source(stored)}, kept in {stored} "
            "(reused; delete it to sample the dataset again)"
        )
        return CalibrationPlan(dataclasses.replace(cfg, face_calibration=str(stored)), kept, note, stored)
    return _from_dataset(cfg, corpus, stored)


def keep_calibration(feats: str | Path, run: str | Path) -> Path | None:
    """Copy the features' calibration set into the run (``RUN/face_calibration.npz``), where
    ``vafusion predict`` looks for it; without one, remove an earlier run's copy. Returns the copy."""
    source, copy = Path(feats) / CALIBRATION_FILE, Path(run) / CALIBRATION_FILE
    if not source.is_file():
        copy.unlink(missing_ok=True)
        return None
    with atomic_path(copy) as tmp:
        shutil.copyfile(source, tmp)
    return copy
