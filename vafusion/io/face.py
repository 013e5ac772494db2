"""Face detection, 5-point alignment and single-subject tracking for raw video.

Pipeline per frame (frames are ``(H, W, 3)`` uint8 RGB arrays):

1. Every ``detect_every`` frames dlib's frontal face detector (HOG, or the MMOD CNN
   ``mmod_human_face_detector.dat``) runs on a copy of the frame shrunk so that its longer side is at
   most ``detect_size`` pixels (never enlarged); boxes are mapped back to full-frame coordinates.
2. Between detections, ``dlib.correlation_tracker`` follows the subject. Its peak-to-side-lobe ratio
   (PSR) is the confidence: below ``min_psr`` the track is lost and the detector runs on that same
   frame, so a lost face costs one detection, not ``detect_every`` frames without a face.
3. On every frame with a box, dlib's 5-point model gives the eye centres (mean of each eye's two
   corners); they fix a face-sized start box (``CROP_FACE_BOX`` mapped back to the frame) for the
   68-point model, whose points give the five ArcFace template points (eye centres = mean of the six
   points of each eye, nose tip = point 30, mouth corners = 48 and 54). The 68-point model started
   straight from the detector box follows the box's size: HOG boxes come in pyramid steps of 20 %,
   and a box one step too large gave a face fitted 1.4x too large; with the start box the crop moves
   under 1.5 px for boxes 0.7-1.2x the detector's (beyond ~1.3x it fails). The 5-point model alone is not
   enough: it has no mouth points and its nose point is the nose base, not the tip of the template.
4. A least-squares similarity transform (Umeyama) maps those points onto ``ARCFACE_TEMPLATE``;
   ``cv2.warpAffine`` produces the 112x112 RGB crop.

The model files come from the ``face-recognition-models`` package and are found on disk without
importing it (its ``__init__`` needs ``pkg_resources``).
"""
from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import dlib
import numpy as np

from vafusion.errors import WeightsError

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

Subject = Literal["largest", "first"] | int


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


class FaceFrame(NamedTuple):
    """Result for one frame: the aligned crop and the subject's box, both ``None`` without a face (the crop
    is also ``None`` when the caller asked ``FaceTrack.step`` not to align)."""

    crop: np.ndarray | None
    box: Box | None


def models_dir() -> Path:
    """Folder holding the dlib ``.dat`` files of the ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "models"
        if folder.is_dir():
            return folder
    raise WeightsError(
        None,
        "the face-recognition-models package (dlib face models) is not installed",
        "pip install face-recognition-models",
    )


def model_path(filename: str) -> Path:
    """Path of one dlib model file, e.g. ``shape_predictor_68_face_landmarks.dat``."""
    path = models_dir() / filename
    if not path.is_file() or path.stat().st_size == 0:
        raise WeightsError(path, "dlib model file is missing or empty", "reinstall face-recognition-models")
    return path


@functools.lru_cache(maxsize=4)
def load_shape_predictor(filename: str = "shape_predictor_68_face_landmarks.dat") -> dlib.shape_predictor:
    """Load (once per process) a dlib shape predictor from face-recognition-models."""
    path = model_path(filename)
    try:
        return dlib.shape_predictor(str(path))
    except RuntimeError as exc:
        raise WeightsError(path, f"dlib cannot read the shape predictor ({exc})",
                           "reinstall face-recognition-models") from exc


@functools.lru_cache(maxsize=1)
def _hog_detector() -> dlib.fhog_object_detector:
    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _cnn_detector() -> dlib.cnn_face_detection_model_v1:
    path = model_path("mmod_human_face_detector.dat")
    try:
        return dlib.cnn_face_detection_model_v1(str(path))
    except RuntimeError as exc:
        raise WeightsError(path, f"dlib cannot read the CNN face detector ({exc})",
                           "reinstall face-recognition-models") from exc


def _check_frame(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        got = (frame.shape, frame.dtype) if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {got}")
    return np.ascontiguousarray(frame)


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


def _to_rect(box: Box) -> dlib.rectangle:
    return dlib.rectangle(*(int(round(v)) for v in box))


def _iou(a: Box, b: Box) -> float:
    inter = Box(max(a.left, b.left), max(a.top, b.top), min(a.right, b.right), min(a.bottom, b.bottom)).area
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


class FaceAligner:
    """Detect faces and align one to the ArcFace 112x112 template.

    Args:
        detector: ``"hog"`` (dlib frontal face detector, fast) or ``"cnn"`` (dlib MMOD CNN, more robust
            to pose, about 100x slower on CPU: ~2 s at 640 px). Its boxes are tighter than HOG's; the
            alignment does not depend on that (the 5-point model places the start box).
        detect_size: the detector sees the frame shrunk so its longer side is at most this many pixels
            (``None``: full size). 640 keeps a 720p frame at ~20 ms with HOG.
        upsample: dlib's upsampling count for the detector; raise it to find faces under ~80 px (at the
            detection size).
    """

    def __init__(self, detector: Literal["hog", "cnn"] = "hog", detect_size: int | None = 640,
                 upsample: int = 0) -> None:
        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        self.detector_name = detector
        self.detect_size = detect_size
        self.upsample = upsample
        self._detector = _hog_detector() if detector == "hog" else _cnn_detector()
        self._predictor5 = load_shape_predictor("shape_predictor_5_face_landmarks.dat")
        self._predictor = load_shape_predictor("shape_predictor_68_face_landmarks.dat")

    def detect(self, frame: np.ndarray) -> list[Box]:
        """All faces in ``frame``, in full-frame coordinates, in the detector's order."""
        frame = _check_frame(frame)
        scale = 1.0
        image = frame
        if self.detect_size is not None and max(frame.shape[:2]) > self.detect_size:
            scale = self.detect_size / max(frame.shape[:2])
            image = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = self._detector(image, self.upsample)
        rects = [d.rect for d in found] if self.detector_name == "cnn" else list(found)
        return [Box(r.left() / scale, r.top() / scale, (r.right() + 1) / scale - 1,
                    (r.bottom() + 1) / scale - 1) for r in rects]

    def start_box(self, frame: np.ndarray, box: Box) -> Box:
        """The 68-point model's start box: ``CROP_FACE_BOX`` placed by the 5-point eye centres in ``box``."""
        corners = shape_to_array(self._predictor5(_check_frame(frame), _to_rect(box)))
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
        frame = _check_frame(frame)
        return shape_to_array(self._predictor(frame, _to_rect(self.start_box(frame, box))))

    def align(self, frame: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Aligned 112x112x3 uint8 RGB crop of the face in ``box`` and its 2x3 frame-to-crop matrix."""
        frame = _check_frame(frame)
        matrix = similarity_transform(five_points(self.landmarks(frame, box)), ARCFACE_TEMPLATE)
        crop = cv2.warpAffine(frame, matrix, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return crop, matrix


class FaceTrack:
    """Follow one subject through a video: detect every ``detect_every`` frames, track in between.

    While there is no track (start, lost face), the detector runs on every frame, so a face is picked
    up on the frame it appears.

    Args:
        aligner: the detector/aligner to use (a default HOG ``FaceAligner`` if ``None``).
        detect_every: run the detector on every k-th frame (1: every frame, no tracking).
        subject: which face to follow when several are found. ``"largest"``: the largest face at each
            (re)acquisition; ``"first"``: the first face found, re-acquired after a loss as the face
            nearest its last position; an int ``i``: the i-th face from the left at the first frame with
            more than ``i`` faces, re-acquired like ``"first"``. At a detection while tracking, the face
            overlapping the track most (IoU >= 0.3) continues it in every mode.
        min_psr: tracker confidence (peak-to-side-lobe ratio) under which the track counts as lost; a
            good track runs at 15-30, a blank or changed scene gives under 7.
        max_missed: how many scheduled detections in a row may find no face while the tracker still
            reports a confident track, before the track is dropped (limits drift onto background).
    """

    def __init__(self, aligner: FaceAligner | None = None, detect_every: int = 5,
                 subject: Subject = "largest", min_psr: float = 7.0, max_missed: int = 2) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if not (subject in ("largest", "first") or (isinstance(subject, int) and subject >= 0)):
            raise ValueError(f"subject must be 'largest', 'first' or an index >= 0, got {subject!r}")
        self.aligner = aligner if aligner is not None else FaceAligner()
        self.detect_every = detect_every
        self.subject = subject
        self.min_psr = min_psr
        self.max_missed = max_missed
        self.reset()

    def reset(self) -> None:
        """Forget the subject and the track (call between videos)."""
        self._tracker: dlib.correlation_tracker | None = None
        self._box: Box | None = None
        self._last_seen: Box | None = None
        self._missed = 0
        self._index = 0

    def _pick(self, boxes: list[Box]) -> Box | None:
        """The subject among ``boxes`` (see the class docstring), or ``None``."""
        if not boxes:
            return None
        if self._box is not None:
            best = max(boxes, key=lambda b: _iou(b, self._box))
            if _iou(best, self._box) >= 0.3:
                return best
        if self.subject == "largest" or self._last_seen is None and self.subject == "first":
            return max(boxes, key=lambda b: b.area)
        if self._last_seen is None:
            ordered = sorted(boxes, key=lambda b: b.center[0])
            return ordered[self.subject] if len(ordered) > self.subject else None
        cx, cy = self._last_seen.center
        return min(boxes, key=lambda b: (b.center[0] - cx) ** 2 + (b.center[1] - cy) ** 2)

    def _start(self, frame: np.ndarray, box: Box) -> None:
        if self.detect_every > 1:
            self._tracker = dlib.correlation_tracker()
            self._tracker.start_track(frame, _to_rect(box))
        self._box = box
        self._last_seen = box
        self._missed = 0

    def _detect(self, frame: np.ndarray, tracked: Box | None) -> Box | None:
        box = self._pick(self.aligner.detect(frame))
        if box is not None:
            self._start(frame, box)
            return box
        if tracked is not None and self._missed < self.max_missed:
            self._missed += 1
            self._box = self._last_seen = tracked
            return tracked
        self._tracker = self._box = None
        return None

    def step(self, frame: np.ndarray, align: bool = True) -> FaceFrame:
        """Process the next frame of the video.

        With ``align=False`` the subject is still detected or tracked but not aligned: a face gives
        ``FaceFrame(None, box)`` and the caller aligns only the frames it needs (``aligner.align``).
        """
        frame = _check_frame(frame)
        scheduled = self._index % self.detect_every == 0
        self._index += 1
        tracked: Box | None = None
        if self._tracker is not None:
            psr = self._tracker.update(frame)
            if np.isfinite(psr) and psr >= self.min_psr:
                p = self._tracker.get_position()
                tracked = Box(p.left(), p.top(), p.right(), p.bottom())
        if scheduled or tracked is None:
            box = self._detect(frame, tracked)
        else:
            box = self._box = self._last_seen = tracked
        if box is None:
            return FaceFrame(None, None)
        if not align:
            return FaceFrame(None, box)
        crop, _ = self.aligner.align(frame, box)
        return FaceFrame(crop, box)

    def process(self, frames: Iterable[np.ndarray]) -> Iterator[FaceFrame]:
        """Yield ``(crop, box)`` per frame of one video; both are ``None`` where no face is found."""
        self.reset()
        for frame in frames:
            yield self.step(frame)
