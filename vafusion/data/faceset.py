"""A labelled face-finding set rendered from real clips: small, rolled, dark and paired faces, and
multi-person clips with known identities.

Ground truth comes from the clips themselves: each clip shows one large frontal face, which dlib's HOG
detector finds at full resolution in ~100 % of frames. The box kept per frame is not the HOG box itself
(it comes in pyramid steps of 20 %) but :meth:`FaceAligner.start_box`: the median HOG box placed by the
5-point eye centres, continuous in size and position and in the same (HOG) convention. "Face height" here
is that box's height, roughly brow to chin.

Each sample re-renders one ground-truth frame with a similarity transform (scale to a target face height,
roll about the face centre, placement in a canvas of another size), optionally darkened with sensor noise,
and maps the box with the same transform. The canvas around the clip is a smooth random texture. Everything
is deterministic given the seed. ``benchmarks/face_finding.py`` measures recall on it; the tests use small
versions.

Bias to keep in mind: ground truth and the detector share HOG, so frames HOG cannot find at full size are
not in the set, and the clips are near-frontal (|yaw| under ~25 deg): the set measures size, roll, canvas
and noise, not profile faces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vafusion.face.align import FaceAligner
from vafusion.face.detect import Box, FaceDetector, iou
from vafusion.io.video import iter_frames

HEIGHTS = (40, 48, 56, 64, 80, 100, 140)
"""Face heights (px, in the rendered frame) of the ``height`` variant."""
ROLLS = (-40, -30, -20, -10, 10, 20, 30, 40)
"""Roll angles (deg, counter-clockwise in the image) of the ``roll`` variant; 0 is in ``height``."""
CANVASES = ((640, 360), (1280, 720), (1920, 1080), (720, 1080))
"""Canvas sizes (width, height) the rendered frames are placed in, cycled over samples."""


@dataclass(frozen=True)
class ClipTruth:
    """Per-frame ground truth of one clip: face box (NaN row without a face), 68 landmarks, roll, yaw."""

    name: str
    boxes: np.ndarray  # (n, 4) float64, left/top/right/bottom, NaN where no face
    landmarks: np.ndarray  # (n, 68, 2) float64, NaN where no face
    size: tuple[int, int]  # (width, height) of the frames

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.boxes[:, 0])

    @property
    def roll(self) -> np.ndarray:
        """Roll of the face in the original frame (deg), from the line between the eye centres."""
        left, right = self.landmarks[:, 36:42].mean(axis=1), self.landmarks[:, 42:48].mean(axis=1)
        d = right - left
        return np.degrees(np.arctan2(d[:, 1], d[:, 0]))

    @property
    def yaw(self) -> np.ndarray:
        """A rough yaw (deg): asin of the nose tip's offset between the jaw ends, in the face's frame."""
        roll = np.radians(self.roll)
        c, s = np.cos(roll), np.sin(roll)

        def along(p: np.ndarray) -> np.ndarray:  # coordinate along the eye line
            return p[:, 0] * c + p[:, 1] * s

        a, b, nose = along(self.landmarks[:, 0]), along(self.landmarks[:, 16]), along(self.landmarks[:, 30])
        return np.degrees(np.arcsin(np.clip(2 * (nose - a) / (b - a) - 1, -1, 1)))

    def box(self, index: int) -> Box | None:
        row = self.boxes[index]
        return None if np.isnan(row[0]) else Box(*map(float, row))


@dataclass(frozen=True)
class Face:
    """One ground-truth face in a rendered sample."""

    box: Box
    clip: str
    frame: int
    roll: float  # the roll applied by the rendering (deg), not counting the face's own


@dataclass(frozen=True)
class Sample:
    """A rendered frame and its faces. ``variant`` names the family, ``params`` its settings."""

    key: str
    variant: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    faces: tuple[Face, ...]
    params: dict[str, float | int | str] = field(default_factory=dict)


def read_frames(video: Path, indices: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Decoded RGB frames of ``video`` (all, or only ``indices``), keyed by frame index."""
    wanted = None if indices is None else set(indices)
    out: dict[int, np.ndarray] = {}
    for frame in iter_frames(video):
        if wanted is None or frame.index in wanted:
            out[frame.index] = frame.image
        if wanted is not None and len(out) == len(wanted):
            break
    return out


def ground_truth(
    video: Path, step: int = 1, detect_size: int | None = None, stop: int | None = None
) -> ClipTruth:
    """Face box and 68 landmarks of every ``step``-th frame of ``video`` before frame ``stop`` (the others
    NaN), by HOG on frames shrunk to ``detect_size`` (``None``: full resolution; the large faces of
    recorded clips allow 640); the largest face of a frame is kept, as ``FaceAligner.start_box`` of its
    HOG box. Cached per process."""
    path = Path(video)
    stat = path.stat()
    return _ground_truth(path, stat.st_mtime_ns, stat.st_size, step, detect_size, stop)


@functools.lru_cache(maxsize=16)
def _ground_truth(
    video: Path, mtime: int, size_bytes: int, step: int, detect_size: int | None, stop: int | None
) -> ClipTruth:
    detector = FaceDetector(detect_size=detect_size, min_face=None)
    aligner = FaceAligner()
    boxes, marks, size = [], [], (0, 0)
    for frame in iter_frames(video):
        size = (frame.image.shape[1], frame.image.shape[0])
        if stop is not None and frame.index >= stop:
            break
        wanted = frame.index % step == 0 and (stop is None or frame.index < stop)
        found = detector.detect(frame.image) if wanted else []
        if not found:
            boxes.append([np.nan] * 4)
            marks.append(np.full((68, 2), np.nan))
            continue
        box = aligner.start_box(frame.image, found[0])
        boxes.append(list(box))
        marks.append(aligner.landmarks(frame.image, box))
    return ClipTruth(video.stem, np.array(boxes, dtype=np.float64), np.stack(marks), size)


def similarity(scale: float, roll: float, src: tuple[float, float], dst: tuple[float, float]) -> np.ndarray:
    """2x3 matrix scaling by ``scale`` and rotating by ``roll`` deg (counter-clockwise on screen) about
    ``src``, then moving ``src`` to ``dst``."""
    a = math.radians(roll)
    # image y points down, so a counter-clockwise turn on screen is a negative angle in x/y maths
    c, s = scale * math.cos(a), scale * math.sin(a)
    rot = np.array([[c, s], [-s, c]])
    shift = np.asarray(dst, dtype=np.float64) - rot @ np.asarray(src, dtype=np.float64)
    return np.hstack([rot, shift[:, None]])


def map_box(box: Box, matrix: np.ndarray) -> Box:
    """``box`` moved by ``matrix``: its centre mapped, its size scaled (not the rotated box's hull)."""
    scale = float(np.hypot(*matrix[:, 0]))
    cx, cy = matrix[:, :2] @ np.array(box.center) + matrix[:, 2]
    hw, hh = box.width * scale / 2, box.height * scale / 2
    return Box(cx - hw, cy - hh, cx + hw, cy + hh)


def background(size: tuple[int, int], rng: np.random.Generator, mean: np.ndarray | None = None) -> np.ndarray:
    """A smooth, mostly grey random texture of ``size`` (width, height) around ``mean`` colour, with grain."""
    w, h = size
    coarse = (rng.normal(0.0, 40.0, (6, 10, 1)) + rng.normal(0.0, 10.0, (6, 10, 3))).astype(np.float32)
    mid = (rng.normal(0.0, 15.0, (24, 40, 1)) + rng.normal(0.0, 4.0, (24, 40, 3))).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += cv2.resize(mid, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0.0, 1.5, (h, w, 1)).astype(np.float32)
    img += (np.full(3, 110.0) if mean is None else mean).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def darken(image: np.ndarray, rng: np.random.Generator, gain: float = 0.12, noise: float = 5.0) -> np.ndarray:
    """Low light: intensities scaled by ``gain`` in linear light (gamma 2.2), then Gaussian sensor noise
    of ``noise`` grey levels (per pixel, mostly luminance, some colour)."""
    lin = (image.astype(np.float32) / 255.0) ** 2.2 * gain
    out = 255.0 * lin ** (1 / 2.2)
    h, w = image.shape[:2]
    out += rng.normal(0.0, noise, (h, w, 1)).astype(np.float32)
    out += rng.normal(0.0, noise / 2, (h, w, 3)).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Placement:
    """How one clip frame goes into a canvas: target face height, roll, and the canvas region (x0, y0, x1,
    y1) where its face centre is drawn uniformly (the face stays whole inside it)."""

    frame: np.ndarray
    box: Box
    clip: str
    index: int
    face_height: float | None  # None: keep the original size
    roll: float = 0.0


def render(
    items: Sequence[Placement], canvas: tuple[int, int] | None, rng: np.random.Generator, dark: bool = False
) -> tuple[np.ndarray, tuple[Face, ...]]:
    """Draw ``items`` side by side (each in its own vertical strip of the canvas) and map their boxes.

    ``canvas`` (width, height); ``None`` keeps the first item's frame size (a single item then stays in
    place: only roll and darkening apply).
    """
    first = items[0].frame
    size = (first.shape[1], first.shape[0]) if canvas is None else canvas
    w, h = size
    out = background(size, rng, first.reshape(-1, 3).mean(axis=0))
    faces = []
    strip = w / len(items)
    for k, item in enumerate(items):
        scale = 1.0 if item.face_height is None else item.face_height / item.box.height
        fh, fw = item.box.height * scale, item.box.width * scale
        reach = 0.5 * math.hypot(fw, fh) + 2  # half-diagonal: the whole rotated box stays inside
        x0, x1 = k * strip, (k + 1) * strip
        if canvas is None and len(items) == 1:
            dst = item.box.center
        else:
            lo_x, hi_x = x0 + reach, x1 - reach
            lo_y, hi_y = reach, h - reach
            if lo_x > hi_x or lo_y > hi_y:
                raise ValueError(f"a {fh:.0f}px face does not fit a {strip:.0f}x{h} strip")
            dst = (rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y))
        matrix = similarity(scale, item.roll, item.box.center, dst)
        warped = cv2.warpAffine(
            item.frame,
            matrix,
            size,
            flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        mask = cv2.warpAffine(
            np.full(item.frame.shape[:2], 255, np.uint8),
            matrix,
            size,
            flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        mask[:, : int(x0)] = 0
        mask[:, int(math.ceil(x1)) :] = 0
        out[mask > 0] = warped[mask > 0]
        faces.append(Face(map_box(item.box, matrix), item.clip, item.index, item.roll))
    if dark:
        out = darken(out, rng)
    return out, tuple(faces)


@dataclass(frozen=True)
class SetSpec:
    """What :func:`face_set` renders. ``per_clip``: ground-truth frames used per clip and variant cell;
    ``truth_step``: ground truth is made for every such frame of a clip (HOG at full size is slow)."""

    heights: tuple[int, ...] = HEIGHTS
    rolls: tuple[int, ...] = ROLLS
    canvases: tuple[tuple[int, int], ...] = CANVASES
    per_clip: int = 20
    roll_heights: tuple[int, ...] = (48, 64, 100)
    dark_heights: tuple[int, ...] = (48, 64, 100, 140, -1)  # -1: the recorded frame, native size
    pair_heights: tuple[tuple[int, int], ...] = ((48, 100), (56, 140), (64, 80), (100, 48))
    variants: tuple[str, ...] = ("native", "height", "roll", "dark", "pair")
    truth_step: int = 3
    seed: int = 0


def match_score(found: Box, truth: Box) -> float:
    """How well a found box matches a true face (0: not at all): their IoU when it is at least 0.4, else
    0.01 when the found box's centre lies inside the true box and its height is 0.5-2x the true height
    (detectors differ in where they put the box edges), else 0."""
    overlap = iou(found, truth)
    if overlap >= 0.4:
        return overlap
    cx, cy = found.center
    inside = truth.left <= cx <= truth.right and truth.top <= cy <= truth.bottom
    return 0.01 if inside and 0.5 <= found.height / max(truth.height, 1e-6) <= 2.0 else 0.0


def match_faces(found: Sequence[Box], truth: Sequence[Box]) -> tuple[list[bool], int]:
    """Which true faces were found (one-to-one, best matches first), and how many found boxes match none."""
    pairs = sorted(
        ((match_score(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True
    )
    used, hit = set(), [False] * len(truth)
    for score, i, j in pairs:
        if score > 0 and i not in used and not hit[j]:
            used.add(i)
            hit[j] = True
    return hit, len(found) - len(used)


def pick_frames(truth: ClipTruth, count: int, offset: int = 0) -> list[int]:
    """``count`` evenly spaced frames with a face; ``offset`` shifts the grid so variants differ."""
    good = np.flatnonzero(truth.valid)
    if len(good) == 0 or count <= 0:
        return []
    step = len(good) / count
    return [int(good[int((i * step + offset * step / 7) % len(good))]) for i in range(count)]


Planned = tuple[str, dict, list[tuple[str, int]]]
"""(variant, its parameters, [(clip, frame)]) of one sample to render."""


def _plan_clip(spec: SetSpec, ci: int, t: ClipTruth) -> list[Planned]:
    """The one-face samples of clip number ``ci``: native, height, roll and dark variants."""
    plan: list[Planned] = []
    sizes = spec.canvases
    if "native" in spec.variants:
        plan += [
            ("native", {"height": -1, "canvas": "native", "roll": 0}, [(t.name, f)])
            for f in pick_frames(t, spec.per_clip, 0)
        ]
    for hi, height in enumerate(spec.heights if "height" in spec.variants else ()):
        for k, f in enumerate(pick_frames(t, spec.per_clip, hi + 1)):
            cw, ch = sizes[(k + hi + ci) % len(sizes)]
            plan.append(("height", {"height": height, "canvas": f"{cw}x{ch}", "roll": 0}, [(t.name, f)]))
    for ri, roll in enumerate(spec.rolls if "roll" in spec.variants else ()):
        for k, f in enumerate(pick_frames(t, spec.per_clip // 2, ri + 3)):
            height = spec.roll_heights[(k + ri) % len(spec.roll_heights)]
            cw, ch = sizes[(k + ri + ci) % len(sizes)]
            plan.append(("roll", {"height": height, "canvas": f"{cw}x{ch}", "roll": roll}, [(t.name, f)]))
    for k, f in enumerate(pick_frames(t, spec.per_clip, 5) if "dark" in spec.variants else ()):
        height = spec.dark_heights[k % len(spec.dark_heights)]
        cw, ch = sizes[(k + ci) % len(sizes)]
        canvas = "native" if height == -1 else f"{cw}x{ch}"
        plan.append(("dark", {"height": height, "canvas": canvas, "roll": 0}, [(t.name, f)]))
    return plan


def _plan_pairs(spec: SetSpec, truths: dict[str, ClipTruth]) -> list[Planned]:
    """Two different clips side by side at two face heights (the first with the last clip, ...)."""
    clips = list(truths)
    if "pair" not in spec.variants or len(clips) < 2:
        return []
    plan: list[Planned] = []
    for pi in range(len(clips) // 2):
        a, b = clips[pi], clips[-1 - pi]
        fa, fb = pick_frames(truths[a], spec.per_clip, 6), pick_frames(truths[b], spec.per_clip, 6)
        for k in range(min(len(fa), len(fb))):
            ha, hb = spec.pair_heights[(k + pi) % len(spec.pair_heights)]
            canvas = "1280x720" if k % 2 == 0 else "1920x1080"
            plan.append(
                (
                    "pair",
                    {"height": f"{ha}+{hb}", "canvas": canvas, "roll": 0, "heights": (ha, hb)},
                    [(a, fa[k]), (b, fb[k])],
                )
            )
    return plan


def face_set(videos: Sequence[Path], spec: SetSpec = SetSpec()) -> Iterator[Sample]:
    """Render the labelled samples of ``spec`` from ``videos``, one at a time (deterministic per seed).

    Variants: ``native`` (the frame as recorded: large faces), ``height`` (each of ``spec.heights`` on
    canvases cycled), ``roll`` (each of ``spec.rolls``), ``dark`` (darkened with sensor noise, heights
    ``dark_heights``), ``pair`` (two clips side by side at two heights, on 1280x720 and 1920x1080).
    """
    paths = {Path(v).stem: Path(v) for v in videos}
    truths = {c: ground_truth(p, spec.truth_step) for c, p in paths.items()}
    rng = np.random.default_rng(spec.seed)
    plan = [p for ci, t in enumerate(truths.values()) for p in _plan_clip(spec, ci, t)] + _plan_pairs(
        spec, truths
    )
    needed: dict[str, set[int]] = {}
    for _, _, refs in plan:
        for clip, f in refs:
            needed.setdefault(clip, set()).add(f)
    frames = {clip: read_frames(paths[clip], sorted(idx)) for clip, idx in needed.items()}
    for n, (variant, params, refs) in enumerate(plan):
        heights = params.pop("heights", None) or (params["height"],)
        items = [
            Placement(
                frames[c][f], truths[c].box(f), c, f, None if hgt == -1 else float(hgt), float(params["roll"])
            )
            for (c, f), hgt in zip(refs, heights, strict=True)
        ]
        canvas = (
            None if params["canvas"] == "native" else tuple(int(v) for v in str(params["canvas"]).split("x"))
        )
        image, faces = render(items, canvas, rng, dark=variant == "dark")
        key = f"{variant}-{n:04d}-" + "+".join(f"{c}:{f}" for c, f in refs)
        yield Sample(key, variant, image, faces, params)
