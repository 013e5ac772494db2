"""Face detection, ArcFace alignment and tracking on a real photograph and real videos."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import matplotlib.cbook
import numpy as np
import pytest

from tests.helpers import SHARED_VIDEOS
from vafusion.errors import WeightsError
from vafusion.face.align import ARCFACE_TEMPLATE, FaceAligner, five_points, similarity_transform
from vafusion.face.detect import Box, FaceDetector
from vafusion.face.track import FaceTrack
from vafusion.weights.dlib import model_path

VIDEOS = SHARED_VIDEOS
H, W = 480, 640


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """Grace Hopper, the real photograph matplotlib ships (600x512 RGB)."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def place(photo: np.ndarray, scale: float, x: int, y: int, canvas: np.ndarray | None = None) -> np.ndarray:
    """The photo resized by ``scale`` with its top-left corner at (x, y) on a grey 640x480 canvas."""
    frame = np.full((H, W, 3), 90, np.uint8) if canvas is None else canvas.copy()
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = min(small.shape[0], H - y), min(small.shape[1], W - x)
    frame[y : y + h, x : x + w] = small[:h, :w]
    return frame


def eye_error(aligner: FaceAligner, frame: np.ndarray, box: Box) -> float:
    """Largest distance (crop pixels) between the aligned eye centres and the template's."""
    _, matrix = aligner.align(frame, box)
    eyes = five_points(aligner.landmarks(frame, box))[:2]
    mapped = eyes @ matrix[:, :2].T + matrix[:, 2]
    return float(np.linalg.norm(mapped - ARCFACE_TEMPLATE[:2], axis=1).max())


def shift_between(a: np.ndarray, b: np.ndarray) -> float:
    """Translation (pixels) between two crops, by phase correlation."""
    ga, gb = (cv2.cvtColor(c, cv2.COLOR_RGB2GRAY).astype(np.float32) for c in (a, b))
    (dx, dy), _ = cv2.phaseCorrelate(ga, gb)
    return float(np.hypot(dx, dy))


def test_similarity_transform_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.3, 0.45, np.array([12.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_photo_is_aligned_to_the_arcface_template(
    photo: np.ndarray, aligner: FaceAligner, detector: FaceDetector
) -> None:
    boxes = detector.detect(photo)
    assert len(boxes) == 1
    crop, matrix = aligner.align(photo, boxes[0])
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    mapped = five_points(aligner.landmarks(photo, boxes[0])) @ matrix[:, :2].T + matrix[:, 2]
    assert np.linalg.norm(mapped[:2] - ARCFACE_TEMPLATE[:2], axis=1).max() < 4.0
    assert np.linalg.norm(mapped - ARCFACE_TEMPLATE, axis=1).max() < 5.0
    assert eye_error(aligner, photo, boxes[0]) < 4.0


@pytest.mark.parametrize("scale", [0.8, 0.9, 1.1, 1.2])
def test_alignment_does_not_follow_the_box_size(
    photo: np.ndarray, aligner: FaceAligner, scale: float, detector: FaceDetector
) -> None:
    """Detector boxes come in 20 % size steps; the aligned face must not change with them."""
    box = detector.detect(photo)[0]
    (cx, cy), half = box.center, box.width * scale / 2
    other = Box(cx - half, cy - half, cx + half, cy + half)
    assert eye_error(aligner, photo, other) < 4.0
    assert shift_between(aligner.align(photo, other)[0], aligner.align(photo, box)[0]) < 2.0
    landmarks = aligner.landmarks(photo, other)
    assert np.abs(landmarks - aligner.landmarks(photo, box)).mean() < 3.0


def test_track_finds_moving_face_and_reports_blank_frames(
    photo: np.ndarray, aligner: FaceAligner, monkeypatch: pytest.MonkeyPatch, detector: FaceDetector
) -> None:
    blank = np.zeros((H, W, 3), np.uint8)
    moving = [(0.55, 40 + 12 * i, 60 + 4 * i) for i in range(6)]
    growing = [(0.55 + 0.04 * i, 300, 80) for i in range(4)]
    poses = moving + growing
    frames = [place(photo, *p) for p in moving] + [blank, blank] + [place(photo, *p) for p in growing]
    expect_face = [True] * 6 + [False] * 2 + [True] * 4

    calls = []
    detect = detector.detect
    monkeypatch.setattr(detector, "detect", lambda frame, **kw: calls.append(1) or detect(frame, **kw))
    results = list(FaceTrack(detector, aligner, detect_every=3).process(frames))
    monkeypatch.undo()

    assert [r.crop is not None for r in results] == expect_face
    assert all(r.box is None for r in results if r.crop is None)
    assert len(calls) < len(frames), "the tracker should carry the face between detections"
    photo_box = detector.detect(photo)[0]
    ref_crop, _ = aligner.align(photo, photo_box)
    with_face = [(f, r) for f, r in zip(frames, results) if r.crop is not None]
    for (frame, result), (scale, x, y) in zip(with_face, poses):
        expected_centre = np.array(photo_box.center) * scale + (x, y)
        assert np.linalg.norm(np.array(result.box.center) - expected_centre) < 45 * scale
        assert result.crop.shape == (112, 112, 3) and result.crop.dtype == np.uint8
        assert shift_between(result.crop, ref_crop) < 2.5
        assert eye_error(aligner, frame, result.box) < 4.0


def test_subject_choice_after_reacquisition(
    photo: np.ndarray, aligner: FaceAligner, detector: FaceDetector
) -> None:
    small_left = place(photo, 0.45, 10, 150)
    both = place(photo, 0.7, 260, 40, canvas=small_left)
    blank = np.zeros_like(both)
    frames = [small_left, both, blank, both]

    def xs(subject):
        res = list(FaceTrack(detector, aligner, detect_every=2, subject=subject).process(frames))
        return [None if r.box is None else r.box.center[0] < W / 3 for r in res]  # True: the left face

    assert xs("first") == [True, True, None, True]
    assert xs("largest") == [True, True, None, False]
    assert xs(1) == [None, False, None, False]


def test_bad_input_is_rejected(aligner: FaceAligner, detector: FaceDetector) -> None:
    with pytest.raises(ValueError):
        FaceTrack(detector, aligner, detect_every=0)
    with pytest.raises(ValueError):
        FaceTrack(detector, aligner, subject="middle")
    with pytest.raises(ValueError):
        next(FaceTrack(detector, aligner).process([np.zeros((10, 10), np.uint8)]))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(WeightsError, match="missing"):
        model_path("no_such_model.dat")


def test_cnn_detector_finds_the_photo_face(photo: np.ndarray, aligner: FaceAligner) -> None:
    cnn = FaceDetector("cnn", detect_size=200)
    boxes = cnn.detect(photo)
    assert len(boxes) == 1
    hog = FaceDetector().detect(photo)[0]
    assert np.linalg.norm(np.subtract(boxes[0].center, hog.center)) < 40
    assert eye_error(aligner, photo, boxes[0]) < 4.0


def _decode(path: Path, n: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == n:
                break
    return frames


@pytest.mark.parametrize("name", ["d11.mp4", "d12.mp4", "s29.mp4", "s32.mp4"])
def test_real_video_face_found_on_most_frames(
    name: str, aligner: FaceAligner, detector: FaceDetector
) -> None:
    path = VIDEOS / name
    if not path.is_file():
        pytest.skip(f"test video {path} absent (CI has it at ../shared/testdata/videos/ from the repo root)")
    frames = _decode(path, 40)
    results = list(FaceTrack(detector, aligner, detect_every=5).process(frames))
    found = [r for r in results if r.crop is not None]
    assert len(found) >= 0.9 * len(frames)
    h, w = frames[0].shape[:2]
    for r in found:
        assert r.crop.shape == (112, 112, 3)
        assert -0.25 * w < r.box.left < r.box.right < 1.25 * w
        assert -0.25 * h < r.box.top < r.box.bottom < 1.25 * h
    assert np.mean([eye_error(aligner, f, r.box) for f, r in zip(frames, results) if r.box is not None]) < 5.0
