"""Finding faces: dlib's HOG frontal face detector (or its MMOD CNN) at the scales that reach small faces.

dlib's HOG detector (an 80x80 window over a 5/6 image pyramid) finds a face when its box (dlib's
convention, roughly brow to chin) is about 64 px tall in the image it sees: 100 % at 64 px, 97 % at 60,
80 % at 56 on the four test clips. Its five filters (front, two yawed, two rolled) cover faces rolled by
up to +-30 deg once the face is large enough. So :class:`FaceDetector` runs

1. a **coarse** pass on the frame shrunk so that its longer side is at most ``detect_size`` (640 px:
   about 20 ms on 720p), which finds every face over ~100 px in a 720p frame;
2. a **fine** pass at the scale that brings a ``min_face`` (48 px) face up to 64 px, when the coarse
   pass found no face scoring ``weak_score`` or more (``fine="fallback"``) or always (``"always"``, to
   return every face of a frame with people of different sizes). Before enlarging, a noisy frame (sensor
   noise over 2 grey levels, Immerkaer's estimate) is blurred slightly: upsampling keeps the noise at full
   strength, and HOG's gradients on a small dark face drown in it.

:meth:`FaceDetector.detect_region` looks only around a known face, scaled so the face is 84-101 px (the
scale and the crop's corner snapped to the HOG grid, so the box found does not follow the box searched
around): a few ms whatever the frame or face size, and turned by +-30 deg when the upright crop has no
face. Trackers use it to re-detect their faces cheaply (``vafusion.face.track``). Measured recall by face
size and the cost per frame: docs/predict.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import cv2
import dlib
import numpy as np

from vafusion.weights.dlib import cnn_detector, hog_detector

HOG_FACE = 64.0
"""Face height (px, HOG box convention) at which dlib's HOG detector finds ~100 % of frontal faces."""
PYRAMID_STEP = 6 / 5
"""Scale step of dlib's HOG image pyramid (``pyramid_down<6>``)."""
HOG_CELL = 8
"""Side of a HOG cell (px) in dlib's frontal face detector."""


class Box(NamedTuple):
    """A face box in full-frame pixel coordinates (dlib's rectangle convention)."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0)

    def shifted(self, dx: float, dy: float) -> Box:
        """The box moved by ``(dx, dy)``."""
        return Box(self.left + dx, self.top + dy, self.right + dx, self.bottom + dy)


def check_frame(frame: np.ndarray) -> np.ndarray:
    """``frame`` as a contiguous ``(H, W, 3)`` uint8 array; anything else is a ``ValueError``."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        got = (frame.shape, frame.dtype) if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {got}")
    return np.ascontiguousarray(frame)


def to_rect(box: Box) -> dlib.rectangle:
    """A box as dlib's integer rectangle."""
    return dlib.rectangle(*(int(round(v)) for v in box))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    inter = Box(max(a.left, b.left), max(a.top, b.top), min(a.right, b.right), min(a.bottom, b.bottom)).area
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def noise_sigma(image: np.ndarray, max_side: int = 640) -> float:
    """Sensor-noise standard deviation in grey levels (Immerkaer 1996): the mean absolute response to a
    mask that cancels image structure up to second order. Large images are subsampled by a stride (no
    filtering, so the noise keeps its strength), which keeps this near 1 ms."""
    step = max(1, math.ceil(max(image.shape[:2]) / max_side))
    gray = cv2.cvtColor(np.ascontiguousarray(image[::step, ::step]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    if min(gray.shape) < 3:
        return 0.0
    response = cv2.filter2D(gray, -1, _LAPLACE)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(response).mean() / 6)


def _resized(image: np.ndarray, scale: float, blur: float = 0.0) -> np.ndarray:
    """``image`` resized by ``scale``; when enlarging, blurred by ``blur`` (sigma, px) first."""
    if abs(scale - 1.0) < 1e-6:
        return np.ascontiguousarray(image)
    if blur > 0 and scale > 1.0:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=interp)


def _turn(image: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned by ``angle`` degrees on a canvas that holds all of it, and the matrix back."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = math.ceil(w * c + h * s), math.ceil(w * s + h * c)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    turned = cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return turned, cv2.invertAffineTransform(m)


def strong_first(found: list[tuple[Box, float]], weak: float) -> list[tuple[Box, float]]:
    """The detections scoring at least ``weak``, or all of them when none does: a weak detection is kept
    only in a frame (or region) where nothing better was found. HOG's false positives on textured
    backgrounds score 0.05-0.4, faces of 48 px and more mostly over 0.5 (median 1.3)."""
    strong = [f for f in found if f[1] >= weak]
    return strong or found


def suppress(found: Sequence[tuple[Box, float]], threshold: float = 0.3) -> list[Box]:
    """Non-maximum suppression over the detections of several passes: best score first; a box whose IoU
    with a kept one is over ``threshold``, or whose centre lies inside a kept one, is dropped."""
    kept: list[Box] = []
    for box, _ in sorted(found, key=lambda x: -x[1]):
        cx, cy = box.center
        if all(
            iou(box, k) <= threshold and not (k.left <= cx <= k.right and k.top <= cy <= k.bottom)
            for k in kept
        ):
            kept.append(box)
    return kept


class FaceDetector:
    """Every frontal or near-frontal face of a frame, in full-frame coordinates, largest first.

    Args:
        detector: ``"hog"`` (dlib's frontal face detector, fast) or ``"cnn"`` (dlib's MMOD CNN, more
            robust to pose, about 100x slower on CPU).
        detect_size: the coarse pass sees the frame shrunk so its longer side is at most this many pixels
            (``None``: full size).
        min_face: the smallest face height (px, in the original frame) to find; the fine pass is scaled
            for it. ``None`` turns the fine pass off (the coarse pass alone, as before version 0.2).
        fine: ``"fallback"`` runs the fine pass only when the coarse pass found no face; ``"always"``
            runs it instead of the coarse pass (it finds the large faces too), so that small faces beside
            a large one are returned as well.

    ``seconds`` adds up the time spent detecting (for the timing split of ``vafusion predict``);
    ``searches`` and ``region_searches`` count the calls of :meth:`detect` and :meth:`detect_region`.
    """

    region_face = 92.0
    """Face height (px) a re-detection crop is scaled to, before the scale is snapped to the pyramid grid
    (``region_scale``): 84-101 px, 64 px with room for the face to shrink by 20 %."""
    region_context = 2.5
    """Side of the re-detection crop, in face sizes."""
    region_rotations = (-30.0, 30.0)
    weak_score = 0.3
    """HOG score under which a detection is dropped when the same pass found a better one."""
    max_fine_scale = 2.0
    blur_sigma = 0.7
    noise_threshold = 2.0

    def __init__(
        self,
        detector: Literal["hog", "cnn"] = "hog",
        detect_size: int | None = 640,
        min_face: float | None = 48.0,
        fine: Literal["fallback", "always"] = "fallback",
    ) -> None:
        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if fine not in ("fallback", "always"):
            raise ValueError(f"fine must be 'fallback' or 'always', got {fine!r}")
        self.name = detector
        self.detect_size = detect_size
        self.min_face = min_face
        self.fine = fine
        self._run: Callable[[np.ndarray], list[tuple[dlib.rectangle, float]]] = (
            self._hog if detector == "hog" else self._cnn
        )
        self.seconds = 0.0
        self.searches = self.region_searches = 0

    @staticmethod
    def _hog(image: np.ndarray) -> list[tuple[dlib.rectangle, float]]:
        rects, scores, _ = hog_detector().run(image, 0, 0.0)
        return list(zip(rects, scores, strict=True))

    @staticmethod
    def _cnn(image: np.ndarray) -> list[tuple[dlib.rectangle, float]]:
        return [(d.rect, float(d.confidence)) for d in cnn_detector()(image, 0)]

    def _boxes(
        self, image: np.ndarray, scale: float, blur: float = 0.0, offset: tuple[float, float] = (0.0, 0.0)
    ) -> list[tuple[Box, float]]:
        """Detections on ``image`` resized by ``scale``: (box in ``image`` coords + ``offset``, score)."""
        ox, oy = offset
        return [
            (
                Box(
                    r.left() / scale + ox,
                    r.top() / scale + oy,
                    (r.right() + 1) / scale - 1 + ox,
                    (r.bottom() + 1) / scale - 1 + oy,
                ),
                s,
            )
            for r, s in self._run(_resized(image, scale, blur))
        ]

    def _turned(
        self, image: np.ndarray, angle: float, scale: float, blur: float, offset: tuple[float, float]
    ) -> list[tuple[Box, float]]:
        """Detections on ``image`` turned by ``angle`` deg; boxes come back upright where the face is."""
        turned, back = _turn(_resized(image, scale, blur), angle)
        out = []
        for box, score in self._boxes(turned, 1.0):
            cx, cy = (back[:, :2] @ np.array(box.center) + back[:, 2]) / scale
            hw, hh = box.width / 2 / scale, box.height / 2 / scale
            if 0 <= cx < image.shape[1] and 0 <= cy < image.shape[0]:
                out.append((Box(cx - hw, cy - hh, cx + hw, cy + hh).shifted(*offset), score))
        return out

    def _blur_for(self, image: np.ndarray) -> float:
        return self.blur_sigma if noise_sigma(image) > self.noise_threshold else 0.0

    def coarse_scale(self, frame: np.ndarray) -> float:
        """Scale of the coarse pass (at most 1)."""
        longest = max(frame.shape[:2])
        return 1.0 if self.detect_size is None or longest <= self.detect_size else self.detect_size / longest

    def fine_scale(self, frame: np.ndarray) -> float | None:
        """Scale of the fine pass, or ``None`` where the coarse pass already reaches ``min_face``."""
        if self.min_face is None:
            return None
        scale = min(HOG_FACE / self.min_face, self.max_fine_scale)
        return None if scale <= self.coarse_scale(frame) * 1.05 else scale

    def detect(self, frame: np.ndarray, fine: bool = True, every_face: bool | None = None) -> list[Box]:
        """All faces in ``frame`` (``(H, W, 3)`` uint8 RGB), largest first.

        ``fine=False`` skips the fine pass (a tracker's cheap every-frame search); ``every_face`` overrides
        ``fine="always"`` for this call.
        """
        t0 = time.perf_counter()
        frame = check_frame(frame)
        fine_scale = self.fine_scale(frame) if fine else None
        always = self.fine == "always" if every_face is None else every_face
        found: list[tuple[Box, float]] = []
        if fine_scale is None or not always:
            found = self._boxes(frame, self.coarse_scale(frame))
        if fine_scale is not None and (always or all(score < self.weak_score for _, score in found)):
            found = self._boxes(frame, fine_scale, self._blur_for(frame))
        boxes = sorted(suppress(strong_first(found, self.weak_score)), key=lambda b: -b.area)
        self.seconds += time.perf_counter() - t0
        self.searches += 1
        return boxes

    def region_scale(self, box: Box) -> float:
        """The scale a re-detection around ``box`` runs at: the one that makes ``box`` ``region_face`` px,
        rounded to a power of 6/5, dlib's pyramid step.

        HOG boxes come in the pyramid's steps, so a re-detection's box depends on the scale it ran at, and a
        scale taken straight from the reference box (a tracker's box, the previous frame's detection) made
        boxes on the same frame differ by 5.7 % of the face width between ``detect_every`` 1 and 5 (mean
        over the corners, demo videos); on the grid, nearby reference boxes give the same scale and the same
        pyramid, and the box no longer depends on where the search started (1.7 %, docs/predict.md).
        """
        ideal = self.region_face / max(box.height, 1.0)
        return PYRAMID_STEP ** round(math.log(ideal) / math.log(PYRAMID_STEP))

    def detect_region(self, frame: np.ndarray, box: Box, context: float | None = None) -> list[Box]:
        """Faces in a square crop ``context`` times ``box`` around its centre, at :meth:`region_scale`;
        the crop is turned by +-30 deg if nothing is found upright. The crop's corner is snapped to the HOG
        cell grid (8 px at that scale) so that the cells do not move with the reference box either."""
        t0 = time.perf_counter()
        frame = check_frame(frame)
        h, w = frame.shape[:2]
        scale = self.region_scale(box)
        side = (self.region_context if context is None else context) * max(box.width, box.height)
        cx, cy = box.center
        cell = HOG_CELL / scale
        x0 = max(0, round(math.floor((cx - side / 2) / cell) * cell))
        y0 = max(0, round(math.floor((cy - side / 2) / cell) * cell))
        x1, y1 = min(w, math.ceil(cx + side / 2)), min(h, math.ceil(cy + side / 2))
        found: list[tuple[Box, float]] = []
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            crop = frame[y0:y1, x0:x1]
            blur = self._blur_for(crop) if scale > 1.0 else 0.0
            found = self._boxes(crop, scale, blur, (x0, y0))
            for angle in self.region_rotations if not found else ():
                found += self._turned(crop, angle, scale, blur, (x0, y0))
        boxes = sorted(suppress(strong_first(found, self.weak_score)), key=lambda b: -b.area)
        self.seconds += time.perf_counter() - t0
        self.region_searches += 1
        return boxes
