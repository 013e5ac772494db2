"""Aligning a detected face to the ArcFace 112x112 template, the input of every face front end.

On a frame with a face box, dlib's 5-point model gives the eye centres (mean of each eye's two corners);
they fix a face-sized start box (``CROP_FACE_BOX`` mapped back to the frame) for the 68-point model, whose
points give the five ArcFace template points (eye centres = mean of the six points of each eye, nose tip =
point 30, mouth corners = 48 and 54). The 68-point model started straight from the detector box follows
the box's size: HOG boxes come in pyramid steps of 20 %, and a box one step too large gave a face fitted
1.4x too large; with the start box the crop moves under 1.5 px for boxes 0.7-1.2x the detector's (beyond
~1.3x it fails). The 5-point model alone is not enough: it has no mouth points and its nose point is the
nose base, not the tip of the template. A least-squares similarity transform (Umeyama) maps those points
onto ``ARCFACE_TEMPLATE``; ``cv2.warpAffine`` produces the 112x112 RGB crop.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import dlib
import numpy as np

from vafusion.face.detect import Box, check_frame, to_rect
from vafusion.weights.dlib import SHAPE_5, SHAPE_68, load_shape_predictor

CROP_SIZE = 112

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye (image left, the subject's right eye)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)
"""The standard ArcFace 5-point template for 112x112 crops, in pixels (x, y)."""

CROP_FACE_BOX = (14, 26, 99, 115)
"""(left, top, right, bottom) of the face in an aligned 112x112 crop, in dlib's HOG-detector convention.

The median HOG detector box mapped into the aligned crop, over the four test videos and the Grace Hopper
photo (spread ~5 px). The 68-point predictor, trained on HOG boxes, is started from this box (mapped
back to the frame, or directly in a crop), which frees it from the detector's box-size quantisation.
"""


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama (1991), without reflection. Returns the ``(2, 3)`` matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    var_s = (s_c**2).sum() / len(src)
    scale = float(np.trace(np.diag(sig) @ sign) / var_s) if var_s > 0 else 1.0
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """The ArcFace template points from 68 dlib landmarks: eye centres, nose tip, mouth corners."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    return np.stack([pts[36:42].mean(axis=0), pts[42:48].mean(axis=0), pts[30], pts[48], pts[54]])


def shape_to_array(shape: dlib.full_object_detection) -> np.ndarray:
    """dlib landmarks as a ``(n, 2)`` float64 array of (x, y)."""
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


class FaceAligner:
    """Align a face given its box to the ArcFace 112x112 template (``seconds``: time spent, for timings)."""

    def __init__(self) -> None:
        self._predictor5 = load_shape_predictor(SHAPE_5)
        self._predictor = load_shape_predictor(SHAPE_68)
        self.seconds = 0.0

    def start_box(self, frame: np.ndarray, box: Box) -> Box:
        """The 68-point model's start box: ``CROP_FACE_BOX`` placed by the 5-point eye centres in ``box``."""
        corners = shape_to_array(self._predictor5(check_frame(frame), to_rect(box)))
        eyes = np.stack([corners[2:4].mean(axis=0), corners[0:2].mean(axis=0)])  # image-left eye first
        matrix = similarity_transform(eyes, ARCFACE_TEMPLATE[:2])
        scale = float(np.hypot(*matrix[:, 0]))
        left, top, right, bottom = CROP_FACE_BOX
        crop_centre = np.array([(left + right) / 2, (top + bottom) / 2])
        centre = np.linalg.solve(matrix[:, :2], crop_centre - matrix[:, 2])
        half = np.array([right - left, bottom - top]) / (2 * scale)
        return Box(*(centre - half), *(centre + half))

    def landmarks(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """68 dlib landmarks ``(68, 2)`` (x, y) of the face in ``box``."""
        frame = check_frame(frame)
        return shape_to_array(self._predictor(frame, to_rect(self.start_box(frame, box))))

    def align(self, frame: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Aligned 112x112x3 uint8 RGB crop of the face in ``box`` and its 2x3 frame-to-crop matrix."""
        t0 = time.perf_counter()
        frame = check_frame(frame)
        matrix = similarity_transform(five_points(self.landmarks(frame, box)), ARCFACE_TEMPLATE)
        crop = cv2.warpAffine(
            frame,
            matrix,
            (CROP_SIZE, CROP_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        self.seconds += time.perf_counter() - t0
        return crop, matrix


def read_crop(path: Path) -> np.ndarray | None:
    """The crop as (112, 112, 3) RGB, or ``None`` when it is empty, corrupt or cut short.

    A JPEG that lost its end-of-image marker is refused: OpenCV would decode its first part and fill the
    rest with grey, giving a face feature from half a face.
    """
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if raw[:2] == b"\xff\xd8" and b"\xff\xd9" not in raw[-64:]:
        return None
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None:
        return None
    if img.shape[:2] != (CROP_SIZE, CROP_SIZE):
        img = cv2.resize(img, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
