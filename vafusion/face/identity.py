"""Who a face is: dlib's 128-d face descriptor, and a cheap signature that notices when it changes.

The descriptor (dlib's ResNet face recognition model, from ``face-recognition-models``) puts two faces of
one person within ~0.5 of each other and faces of different people further apart (dlib's rule of thumb:
0.6). It costs about 75 ms per face on one CPU core, so trackers compute it only when they must: for a face
nobody is tracking, after two tracked faces came close, when a face's cheap signature changed abruptly, and
every couple of seconds to keep each person's template fresh.

The signature is the face box's content at 24x24 grey, normalised: two frames of one tracked face
correlate above ~0.7, and a different face swapped into the box falls well below.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from vafusion.face.detect import Box, to_rect
from vafusion.weights.dlib import FACE_DESCRIPTOR, SHAPE_5, load_face_descriptor, load_shape_predictor

SAME_PERSON = 0.5
"""Largest descriptor distance still taken for the same person within one video."""


class FaceDescriber:
    """128-d face descriptors of faces given by their boxes (``seconds``: time spent, for timings)."""

    def __init__(self) -> None:
        self._shape = load_shape_predictor(SHAPE_5)
        self._net = load_face_descriptor(FACE_DESCRIPTOR)
        self.seconds = 0.0
        self.count = 0

    def __call__(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """Unit-length ``(128,)`` float32 descriptor of the face in ``box``."""
        t0 = time.perf_counter()
        shape = self._shape(frame, to_rect(box))
        vec = np.asarray(self._net.compute_face_descriptor(frame, shape), np.float32)
        self.seconds += time.perf_counter() - t0
        self.count += 1
        return vec / max(float(np.linalg.norm(vec)), 1e-9)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two unit descriptors (0: identical, 2: opposite)."""
    return float(np.linalg.norm(a - b))


def signature(frame: np.ndarray, box: Box) -> np.ndarray | None:
    """The face box's content as a normalised ``(576,)`` grey vector (``None`` for an empty box)."""
    h, w = frame.shape[:2]
    x0, y0 = max(0, int(box.left)), max(0, int(box.top))
    x1, y1 = min(w, int(box.right) + 1), min(h, int(box.bottom) + 1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    patch = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    vec = cv2.resize(patch, (24, 24), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    vec -= vec.mean()
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 1e-6 else None


def similar(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Correlation of two signatures (1: the same picture); 1 when either is missing (nothing to compare)."""
    return 1.0 if a is None or b is None else float(a @ b)
