"""FER+ (and plain image folders) for fine-tuning the face backbone: readers, vote labels, a torch Dataset.

Two layouts are accepted under one folder ``DIR``:

* the published files ``DIR/fer2013.csv`` (Kaggle FER2013: ``emotion,pixels,Usage``, 2304 grey values
  of a 48x48 face per row) and ``DIR/fer2013new.csv`` (Microsoft FERPlus votes: ``Usage,Image name,
  neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF``), one FER+ row per
  FER2013 row in the same order;
* an image folder ``DIR/{train,val[,test]}/<class>/*.png|jpg|jpeg|bmp``.

Labels follow microsoft/FERPlus ``src/ferplus.py``: a vote of 1 is an outlier and set to 0; ``majority``
keeps an image when one column holds more than half of the remaining votes (one-hot target); ``soft`` is
FERPlus's cross-entropy mode (the top columns until they hold 75 % of the votes, at most 3, and more than
half of all votes, normalised). An image whose winning column is ``unknown`` or ``NF`` (not a face) is
dropped, and a row with an empty ``Image name`` (removed from FER+) is skipped, as in FERPlus's
``generate_training_data.py``. Targets are distributions over the 8 emotions. Splits follow ``Usage``:
Training -> train, PublicTest -> val, PrivateTest -> test.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from vafusion.errors import VafusionError
from vafusion.models.iresnet import FACE_SIZE

EMOTIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
VOTE_COLUMNS: tuple[str, ...] = EMOTIONS + ("unknown", "NF")
FER_CSV = "fer2013.csv"
FERPLUS_CSV = "fer2013new.csv"
FER_COLUMNS = ("emotion", "pixels", "Usage")
FERPLUS_COLUMNS = ("Usage", "Image name") + VOTE_COLUMNS
USAGE_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
LABEL_MODES = ("majority", "soft")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FER_SIDE = 48

_FER_SOURCE = "the Kaggle FER2013 challenge file fer2013.csv (unmodified)"
_FERPLUS_SOURCE = "fer2013new.csv from https://github.com/microsoft/FERPlus (unmodified)"


@dataclass
class FaceSet:
    """One split: faces held in memory (``pixels``, FER) or on disk (``paths``), and their targets.

    ``targets`` is ``(N, C)`` float32, each row a distribution over ``classes``.
    """

    classes: tuple[str, ...]
    targets: np.ndarray
    names: list[str]
    pixels: np.ndarray | None = None
    paths: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def image(self, i: int) -> np.ndarray:
        """Face ``i`` as ``(H, W, 3)`` uint8 RGB (grey images have the value replicated)."""
        if self.pixels is not None:
            grey = self.pixels[i]
            return np.repeat(grey[:, :, None], 3, axis=2)
        path = self.paths[i]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise VafusionError(
                path, "image cannot be read (corrupt or not an image)", "remove or replace the file"
            )
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def counts(self) -> dict[str, int]:
        """Images per class (by the winning class of each target)."""
        won = (
            np.bincount(self.targets.argmax(1), minlength=len(self.classes))
            if len(self)
            else np.zeros(len(self.classes), np.int64)
        )
        return {c: int(n) for c, n in zip(self.classes, won)}


def ferplus_target(votes: np.ndarray | list[float], mode: str) -> np.ndarray | None:
    """FERPlus's label rule for one image's 10 vote counts -> 8-emotion distribution, or None (dropped).

    See the module docstring; ``mode`` is ``majority`` or ``soft``.
    """
    raw = np.asarray(votes, dtype=np.float64).copy()
    if raw.shape != (len(VOTE_COLUMNS),):
        raise ValueError(f"expected {len(VOTE_COLUMNS)} vote counts, got shape {raw.shape}")
    raw[raw < 1.0 + np.finfo(float).eps] = 0.0
    total = raw.sum()
    emotion = np.zeros_like(raw)
    if mode == "majority":
        if total > 0 and raw.max() > 0.5 * total:
            emotion[int(raw.argmax())] = raw.max()
    elif mode == "soft":
        part, count, ok = 0.0, 0, True
        while part < 0.75 * total and count < 3 and ok:
            top = raw.max()
            for i in range(len(raw)):
                if raw[i] != top:
                    continue
                emotion[i], raw[i] = top, 0.0
                part += top
                count += 1
                if i >= len(EMOTIONS):  # unknown / NF among the winners ends the search
                    ok = False
                    if emotion.sum() > top:
                        emotion[i] = 0.0
                        count -= 1
                    break
        if emotion.sum() <= 0.5 * total or count > 3:
            emotion[:] = 0.0
    else:
        raise ValueError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    if emotion.sum() <= 0 or int(emotion.argmax()) >= len(EMOTIONS):
        return None
    kept = emotion[: len(EMOTIONS)]
    return (kept / kept.sum()).astype(np.float32)


def _read_csv(path: Path, columns: tuple[str, ...], source: str) -> pd.DataFrame:
    if not path.is_file():
        raise VafusionError(path, "file not found", f"put {source} there")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0][:120]
        raise VafusionError(path, f"not a readable CSV ({first})", f"use {source}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise VafusionError(
            path,
            f"missing column(s) {', '.join(missing)} (header has {', '.join(df.columns)})",
            f"use {source}",
        )
    if df.empty:
        raise VafusionError(path, "has a header but no rows", f"use {source}")
    return df


def _parse_pixels(text: str, path: Path, line: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            raise VafusionError(
                path, f"line {line}: pixels hold a value that is not an integer", f"use {_FER_SOURCE}"
            ) from None
    if values.size != FER_SIDE * FER_SIDE:
        raise VafusionError(
            path,
            f"line {line}: {values.size} pixel values, expected {FER_SIDE * FER_SIDE} "
            f"(a {FER_SIDE}x{FER_SIDE} face)",
            f"use {_FER_SOURCE}",
        )
    if values.min() < 0 or values.max() > 255:
        raise VafusionError(path, f"line {line}: pixel values outside 0-255", f"use {_FER_SOURCE}")
    return values.astype(np.uint8).reshape(FER_SIDE, FER_SIDE)


def _votes(plus: pd.DataFrame, path: Path) -> np.ndarray:
    try:
        votes = plus[list(VOTE_COLUMNS)].apply(pd.to_numeric, errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError):
        bad = plus[list(VOTE_COLUMNS)].apply(pd.to_numeric, errors="coerce").isna().any(axis=1).to_numpy()
        raise VafusionError(
            path, f"line {int(np.argmax(bad)) + 2}: a vote count is not a number", f"use {_FERPLUS_SOURCE}"
        ) from None
    bad = ~np.isfinite(votes).all(axis=1) | (votes < 0).any(axis=1)
    if bad.any():
        raise VafusionError(
            path,
            f"line {int(np.argmax(bad)) + 2}: vote counts must be non-negative numbers",
            f"use {_FERPLUS_SOURCE}",
        )
    return votes


def read_fer(fer_csv: str | Path, ferplus_csv: str | Path, mode: str = "majority") -> dict[str, FaceSet]:
    """FER2013 images with FER+ labels, split by ``Usage`` into ``train``/``val``/``test`` FaceSets.

    Raises:
        VafusionError: a file is missing or breaks the published format (columns, pixel count, values,
            row counts or ``Usage`` that differ between the two files).
    """
    if mode not in LABEL_MODES:
        raise VafusionError(None, f"unknown label mode {mode!r}", f"choose one of {', '.join(LABEL_MODES)}")
    fer_path, plus_path = Path(fer_csv), Path(ferplus_csv)
    fer = _read_csv(fer_path, FER_COLUMNS, _FER_SOURCE)
    plus = _read_csv(plus_path, FERPLUS_COLUMNS, _FERPLUS_SOURCE)
    if len(fer) != len(plus):
        raise VafusionError(
            plus_path,
            f"has {len(plus)} rows but {fer_path.name} has {len(fer)}; FER+ rows "
            f"follow {fer_path.name} row by row",
            f"use the two published files unmodified ({FER_CSV} and {FERPLUS_CSV})",
        )
    for path, usage in ((fer_path, fer["Usage"]), (plus_path, plus["Usage"])):
        unknown = ~usage.isin(list(USAGE_SPLIT))
        if unknown.any():
            k = int(np.argmax(unknown.to_numpy()))
            raise VafusionError(
                path,
                f"line {k + 2}: Usage {usage.iloc[k]!r} is not one of {', '.join(USAGE_SPLIT)}",
                "use the published file unmodified",
            )
    differ = fer["Usage"].to_numpy() != plus["Usage"].to_numpy()
    if differ.any():
        k = int(np.argmax(differ))
        raise VafusionError(
            plus_path,
            f"line {k + 2}: Usage {plus['Usage'].iloc[k]} but {fer_path.name} line "
            f"{k + 2} says {fer['Usage'].iloc[k]}: the files are not in the same order",
            f"use the two published files unmodified ({FER_CSV} and {FERPLUS_CSV})",
        )
    votes = _votes(plus, plus_path)
    texts = fer["pixels"].to_numpy()
    images = np.stack([_parse_pixels(text, fer_path, k + 2) for k, text in enumerate(texts)])
    names = plus["Image name"].str.strip().to_numpy()
    usage = fer["Usage"].to_numpy()
    rows: dict[str, list[tuple[int, np.ndarray]]] = {s: [] for s in USAGE_SPLIT.values()}
    for k in range(len(fer)):
        if not names[k]:
            continue
        target = ferplus_target(votes[k], mode)
        if target is not None:
            rows[USAGE_SPLIT[usage[k]]].append((k, target))
    out = {}
    for split, items in rows.items():
        idx = np.asarray([k for k, _ in items], dtype=np.int64)
        targets = np.stack([t for _, t in items]) if items else np.zeros((0, len(EMOTIONS)), np.float32)
        out[split] = FaceSet(EMOTIONS, targets, [str(names[k]) for k in idx], pixels=images[idx])
    return out


def read_image_folder(root: str | Path) -> dict[str, FaceSet]:
    """``root/{train,val[,test]}/<class>/*.png|jpg|jpeg|bmp`` -> FaceSets with one-hot targets.

    Classes are the FER+ emotions (in FER+ order, 8-way) when every class folder is one of them, else the
    sorted names of ``train``'s class folders. Images are read when used.
    """
    root = Path(root)
    layout = f"put images in {root}/train/<class>/ and {root}/val/<class>/ (png/jpg)"
    found: dict[str, dict[str, list[Path]]] = {}
    for split in ("train", "val", "test"):
        d = root / split
        if not d.is_dir():
            continue
        found[split] = {
            c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for c in sorted(d.iterdir())
            if c.is_dir()
        }
    for split in ("train", "val"):
        if split not in found:
            raise VafusionError(root / split, "folder not found", layout)
        if not any(found[split].values()):
            raise VafusionError(root / split, "holds no images in class folders", layout)
    train_classes = {c for c, files in found["train"].items() if files}
    if len(train_classes) < 2:
        raise VafusionError(
            root / "train", f"has images of {len(train_classes)} class(es); need at least 2", layout
        )
    all_classes = set().union(*({c for c, f in per.items() if f} for per in found.values()))
    if all_classes <= set(EMOTIONS):
        classes = EMOTIONS
    else:
        classes = tuple(sorted(train_classes))
        extra = sorted(all_classes - train_classes)
        if extra:
            raise VafusionError(
                root,
                f"classes {', '.join(extra)} have images outside train/ but none in train/",
                "give every class training images, or remove those folders",
            )
    out = {}
    for split, per in found.items():
        paths, labels = [], []
        for c, files in per.items():
            paths += files
            labels += [classes.index(c)] * len(files)
        targets = np.eye(len(classes), dtype=np.float32)[np.asarray(labels, dtype=np.int64)]
        out[split] = FaceSet(
            classes,
            targets.reshape(len(labels), len(classes)),
            [str(p.relative_to(root)) for p in paths],
            paths=paths,
        )
    return out


def load_face_data(root: str | Path, mode: str = "majority") -> dict[str, FaceSet]:
    """FER2013 + FER+ CSVs in ``root``, or an image-folder layout; see the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise VafusionError(
            root,
            "data folder not found",
            f"pass --data with {FER_CSV} + {FERPLUS_CSV}, or train/ and val/ image folders",
        )
    fer, plus = root / FER_CSV, root / FERPLUS_CSV
    if fer.exists() or plus.exists():
        return read_fer(fer, plus, mode)
    if mode == "soft":
        raise VafusionError(
            root,
            "--labels soft needs FER+ vote counts, but an image folder gives one class per image",
            f"use --labels majority, or put {FER_CSV} and {FERPLUS_CSV} in the folder",
        )
    if not (root / "train").is_dir():
        raise VafusionError(
            root,
            f"neither {FER_CSV} + {FERPLUS_CSV} nor a train/ image folder found",
            "put the FER+ files there, or images in train/<class>/ and val/<class>/",
        )
    return read_image_folder(root)


def to_face(
    image: np.ndarray, crop: tuple[float, float, float] | None = None, flip: bool = False
) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(112, 112, 3)`` uint8: optional square crop ``(scale, x, y)`` (side as a
    fraction of the shorter side; x, y in [0, 1] place it), optional horizontal flip, then resize."""
    h, w = image.shape[:2]
    if crop is not None:
        scale, fx, fy = crop
        side = max(1, round(scale * min(h, w)))
        x0, y0 = round(fx * (w - side)), round(fy * (h - side))
        image = image[y0 : y0 + side, x0 : x0 + side]
    if flip:
        image = image[:, ::-1]
    if image.shape[:2] != (FACE_SIZE, FACE_SIZE):
        interp = cv2.INTER_AREA if min(image.shape[:2]) > FACE_SIZE else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(image), (FACE_SIZE, FACE_SIZE), interpolation=interp)
    return np.ascontiguousarray(image)


class FaceDataset(Dataset):
    """``(face (112, 112, 3) uint8 tensor, target (C,) float32)`` pairs (normalise: ``iresnet.preprocess``).

    With ``augment``: horizontal flip with probability 0.5 and a random square crop of ``min_crop``..1 of
    the side (light, as the faces are already aligned). Randomness comes from torch's generator, so a
    seeded run (and each DataLoader worker) is reproducible.
    """

    def __init__(self, faces: FaceSet, augment: bool = False, min_crop: float = 0.875) -> None:
        if not 0 < min_crop <= 1:
            raise ValueError(f"min_crop must be in (0, 1], got {min_crop}")
        self.faces, self.augment, self.min_crop = faces, augment, min_crop

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.faces.image(i)
        if self.augment:
            r = torch.rand(4).tolist()
            face = to_face(img, (self.min_crop + (1 - self.min_crop) * r[0], r[1], r[2]), flip=r[3] < 0.5)
        else:
            face = to_face(img)
        return torch.from_numpy(face), torch.from_numpy(self.faces.targets[i])
