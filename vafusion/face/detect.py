"""Face detection: dlib's HOG frontal face detector (or its MMOD CNN) on a shrunken copy of the frame.

The detector runs on a copy of the frame shrunk so that its longer side is at most ``detect_size``
pixels (never enlarged); boxes are mapped back to full-frame coordinates.
"""

from __future__ import annotations

import time
from typing import Literal, NamedTuple

import cv2
import dlib
import numpy as np

from vafusion.weights.dlib import cnn_detector, hog_detector


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


class FaceDetector:
    """All faces in a frame, in full-frame coordinates.

    Args:
        detector: ``"hog"`` (dlib frontal face detector, fast) or ``"cnn"`` (dlib MMOD CNN, more robust
            to pose, about 100x slower on CPU: ~2 s at 640 px). Its boxes are tighter than HOG's; the
            alignment does not depend on that (the 5-point model places the start box).
        detect_size: the detector sees the frame shrunk so its longer side is at most this many pixels
            (``None``: full size). 640 keeps a 720p frame at ~20 ms with HOG.
        upsample: dlib's upsampling count for the detector; raise it to find faces under ~80 px (at the
            detection size).

    ``seconds`` adds up the time spent detecting (for the timing split of ``vafusion predict``).
    """

    def __init__(
        self, detector: Literal["hog", "cnn"] = "hog", detect_size: int | None = 640, upsample: int = 0
    ) -> None:
        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        self.name = detector
        self.detect_size = detect_size
        self.upsample = upsample
        self._detector = hog_detector() if detector == "hog" else cnn_detector()
        self.seconds = 0.0

    def detect(self, frame: np.ndarray) -> list[Box]:
        """All faces in ``frame`` (``(H, W, 3)`` uint8 RGB), in the detector's order."""
        t0 = time.perf_counter()
        frame = check_frame(frame)
        scale = 1.0
        image = frame
        if self.detect_size is not None and max(frame.shape[:2]) > self.detect_size:
            scale = self.detect_size / max(frame.shape[:2])
            image = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = self._detector(image, self.upsample)
        rects = [d.rect for d in found] if self.name == "cnn" else list(found)
        boxes = [
            Box(r.left() / scale, r.top() / scale, (r.right() + 1) / scale - 1, (r.bottom() + 1) / scale - 1)
            for r in rects
        ]
        self.seconds += time.perf_counter() - t0
        return boxes
