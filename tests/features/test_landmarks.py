"""The landmarks extractor on aligned crops of a real photograph."""

from __future__ import annotations

import cv2
import matplotlib.cbook
import numpy as np
import pytest

from vafusion.face.align import ARCFACE_TEMPLATE, FaceAligner
from vafusion.face.detect import FaceDetector
from vafusion.features.landmarks import LandmarkExtractor


@pytest.fixture(scope="module")
def aligned() -> tuple[np.ndarray, np.ndarray]:
    """Aligned crops of Grace Hopper at three sizes and two rotations, with their reference landmarks.

    The reference is the 68 landmarks found in the full-resolution frame, mapped into the crop.
    """
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    photo = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    aligner = FaceAligner()
    crops, refs = [], []
    for scale, angle in [(1.0, 0), (0.7, 0), (0.5, 0), (1.0, 12), (1.0, -12)]:
        h, w = photo.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        frame = cv2.warpAffine(photo, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
        box = FaceDetector().detect(frame)[0]
        crop, to_crop = aligner.align(frame, box)
        crops.append(crop)
        refs.append(aligner.landmarks(frame, box) @ to_crop[:, :2].T + to_crop[:, 2])
    return np.stack(crops), np.stack(refs)


def test_shape_dtype_and_attributes(aligned: tuple[np.ndarray, np.ndarray]) -> None:
    extractor = LandmarkExtractor()
    crops, _ = aligned
    out = extractor(crops)
    assert out.shape == (len(crops), 136) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert extractor.name == "landmarks" and extractor.dim == 136
    assert extractor.params["start_box"] == [14, 26, 99, 115]
    empty = extractor(np.zeros((0, 112, 112, 3), np.uint8))
    assert empty.shape == (0, 136) and empty.dtype == np.float32


def test_landmarks_match_the_full_frame_landmarks(aligned: tuple[np.ndarray, np.ndarray]) -> None:
    crops, refs = aligned
    points = LandmarkExtractor()(crops).reshape(-1, 68, 2) * 112
    error = np.linalg.norm(points - refs, axis=2).mean(axis=1)
    assert error.max() < 2.5, error


def test_layout_is_x_then_y_normalised_to_the_crop(aligned: tuple[np.ndarray, np.ndarray]) -> None:
    points = LandmarkExtractor()(aligned[0]).reshape(-1, 68, 2)
    eyes = np.stack([points[:, 36:42].mean(axis=1), points[:, 42:48].mean(axis=1)], axis=1)
    np.testing.assert_allclose(eyes, np.broadcast_to(ARCFACE_TEMPLATE[:2] / 112, eyes.shape), atol=0.035)
    assert (points[:, 8, 1] > points[:, 30, 1]).all()  # chin below nose tip: y grows downwards
    assert (points[:, 0, 0] < points[:, 16, 0]).all()  # jaw runs from image left to image right


def test_mirrored_crop_gives_mirrored_shape(aligned: tuple[np.ndarray, np.ndarray]) -> None:
    extractor = LandmarkExtractor()
    crop = aligned[0][:1]
    points = extractor(crop).reshape(68, 2)
    flipped = extractor(np.ascontiguousarray(crop[:, :, ::-1])).reshape(68, 2)
    jaw_left, jaw_right = points[:8], flipped[16:8:-1]
    np.testing.assert_allclose(jaw_right[:, 0], (111 / 112) - jaw_left[:, 0], atol=0.05)


def test_bad_input_is_rejected() -> None:
    extractor = LandmarkExtractor()
    with pytest.raises(ValueError, match="112"):
        extractor(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError):
        extractor(np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(ValueError):
        extractor(np.zeros((1, 112, 112, 3), np.float32))
