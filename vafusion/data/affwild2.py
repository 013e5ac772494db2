"""The Aff-Wild2 layout as distributed, for the VA Estimation Challenge.

::

    ROOT/videos/{batch1,batch2,new_vids}/<video>.{mp4,avi}      (or any folder below ROOT)
    ROOT/cropped_aligned*/<name>/00001.jpg ...                 (112x112, 1-based, 5 digits)
    ROOT/annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<name>.txt

An annotation ``<name>`` is a video stem, or ``<video>_left`` / ``<video>_right`` when two people
share one video. Annotation line i (after the ``valence,arousal`` header) belongs to video frame i;
``-5`` marks an invalid frame, which is skipped by the loss and the metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vafusion.errors import AnnotationError, VafusionError
from vafusion.io.video import VIDEO_EXTENSIONS

SPLITS = ("Train_Set", "Validation_Set")
INVALID = -5.0
ANNOTATION_DIRS = (
    "annotations/VA_Estimation_Challenge",
    "annotations/VA_Set",
    "VA_Estimation_Challenge",
    "VA_Set",
)
_SIDE = re.compile(r"^(?P<video>.+)_(?P<side>left|right)$")


@dataclass(frozen=True)
class Sample:
    """One annotated person-track: an annotation file, its video and its face crops."""

    name: str
    video_id: str
    video: Path | None
    split: str
    annotation: Path | None
    crops: Path | None

    @property
    def side(self) -> str | None:
        """``left``/``right`` for two-person videos, else ``None``."""
        m = _SIDE.match(self.name)
        return m.group("side") if m and self.video_id != self.name else None


@dataclass
class Corpus:
    """Everything found under a dataset root, and what was wrong with it."""

    root: Path
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        """Samples of one split (``Train_Set``, ``Validation_Set``, ``Test``)."""
        return [s for s in self.samples if s.split == name]

    def by_name(self) -> dict[str, Sample]:
        """Samples keyed by annotation name."""
        return {s.name: s for s in self.samples}


def video_id_of(name: str, videos: dict[str, Path]) -> str:
    """The video stem an annotation name refers to (``x_left`` -> ``x``, unless ``x_left`` is a video)."""
    if name in videos:
        return name
    m = _SIDE.match(name)
    if m and m.group("video") in videos:
        return m.group("video")
    return m.group("video") if m else name


def find_videos(root: Path) -> dict[str, Path]:
    """Map video stem -> path for every video file under ``root/videos`` (or ``root`` itself)."""
    base = root / "videos" if (root / "videos").is_dir() else root
    found: dict[str, Path] = {}
    for p in sorted(base.rglob("*")):
        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() and not p.name.startswith("."):
            if any(part.startswith("cropped_aligned") for part in p.relative_to(base).parts):
                continue
            found.setdefault(p.stem, p)
    return found


def find_crop_dirs(root: Path) -> dict[str, Path]:
    """Map name -> crop folder across every ``cropped_aligned*`` folder under ``root``."""
    found: dict[str, Path] = {}
    for top in sorted(root.glob("cropped_aligned*")):
        if top.is_dir():
            for d in sorted(top.iterdir()):
                if d.is_dir():
                    found.setdefault(d.name, d)
    return found


def find_annotation_root(root: Path) -> Path | None:
    """The folder holding ``Train_Set``/``Validation_Set``."""
    for rel in ANNOTATION_DIRS:
        cand = root / rel
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    return None


def scan(root: str | Path, names: list[str] | None = None) -> Corpus:
    """Index a dataset root. Annotated samples get their split; ``names`` adds unannotated (test) ones.

    Problems that do not stop other videos (a missing video, missing crops) are collected, not raised.
    """
    root = Path(root)
    if not root.is_dir():
        raise VafusionError(
            root,
            "dataset folder not found",
            "pass --data pointing at the Aff-Wild2 root (with videos/, cropped_aligned/, annotations/)",
        )
    videos = find_videos(root)
    crops = find_crop_dirs(root)
    ann_root = find_annotation_root(root)
    samples: list[Sample] = []
    problems: list[str] = []
    if ann_root is not None:
        for split in SPLITS:
            for txt in sorted((ann_root / split).glob("*.txt")):
                vid = video_id_of(txt.stem, videos)
                video = videos.get(vid)
                if video is None:
                    problems.append(f"{txt}: no video named {vid}.* under {root}/videos")
                if txt.stem not in crops:
                    problems.append(f"{txt}: no crop folder cropped_aligned/{txt.stem}")
                samples.append(Sample(txt.stem, vid, video, split, txt, crops.get(txt.stem)))
    for name in names or []:
        vid = video_id_of(name, videos)
        samples.append(Sample(name, vid, videos.get(vid), "Test", None, crops.get(name)))
    if not samples:
        raise VafusionError(
            root,
            "no VA annotations found",
            "expected annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/*.txt",
        )
    return Corpus(root=root, samples=samples, problems=problems)


def read_annotation(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one VA file into ``labels (T, 2) float32`` and ``valid (T,) bool``.

    A row is invalid when either value is -5; invalid rows keep 0 in ``labels``.
    Raises ``AnnotationError`` naming the line for a missing header, a wrong column count,
    a non-numeric value or a value outside [-1, 1] other than -5.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"cannot be read ({exc})", "check the file") from None
    if not lines or lines[0].strip().replace(" ", "").lower() != "valence,arousal":
        raise AnnotationError(
            path,
            "first line is not the header 'valence,arousal'",
            "add the header line; Aff-Wild2 VA files start with it",
        )
    rows = list(lines[1:])
    while rows and not rows[-1].strip():
        rows.pop()
    if not rows:
        raise AnnotationError(path, "no annotation rows after the header", "check the file is complete")
    labels = np.zeros((len(rows), 2), np.float32)
    valid = np.ones(len(rows), bool)
    for i, line in enumerate(rows):
        parts = line.split(",")
        if len(parts) != 2:
            raise AnnotationError(
                path,
                f"line {i + 2} has {len(parts)} columns, expected 2 (valence,arousal)",
                "fix or remove that line",
            )
        try:
            v, a = float(parts[0]), float(parts[1])
        except ValueError:
            raise AnnotationError(
                path,
                f"line {i + 2} is not numeric: {line.strip()!r}",
                "fix that line (use -5,-5 for an invalid frame)",
            ) from None
        if v == INVALID or a == INVALID:
            valid[i] = False
            continue
        if not (-1.0 <= v <= 1.0 and -1.0 <= a <= 1.0) or not (np.isfinite(v) and np.isfinite(a)):
            raise AnnotationError(
                path,
                f"line {i + 2} is outside [-1, 1]: {line.strip()!r}",
                "VA values must lie in [-1, 1]; -5 marks an invalid frame",
            )
        labels[i] = (v, a)
    return labels, valid


_CROP_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def crop_index(folder: Path | None) -> dict[int, Path]:
    """Map 1-based frame number -> crop image in ``folder`` (empty when the folder is missing)."""
    if folder is None or not folder.is_dir():
        return {}
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = _CROP_RE.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out
