"""dlib's face models, from the ``face-recognition-models`` package (shipped on PyPI; nothing is downloaded).

The files are found on disk without importing the package (its ``__init__`` needs ``pkg_resources``) and
loaded once per process.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dlib

from vafusion.errors import WeightsError

SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"
FACE_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"
T = TypeVar("T")


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


def _load(kind: Callable[[str], T], filename: str, what: str) -> T:
    """``kind(path)`` for one model file of face-recognition-models; a file dlib cannot read is a
    ``WeightsError`` that names it."""
    path = model_path(filename)
    try:
        return kind(str(path))
    except RuntimeError as exc:
        raise WeightsError(
            path, f"dlib cannot read the {what} ({exc})", "reinstall face-recognition-models"
        ) from exc


@functools.lru_cache(maxsize=4)
def load_shape_predictor(filename: str = SHAPE_68) -> dlib.shape_predictor:
    """A dlib shape predictor from face-recognition-models (68-point by default)."""
    return _load(dlib.shape_predictor, filename, "shape predictor")


@functools.lru_cache(maxsize=1)
def hog_detector() -> dlib.fhog_object_detector:
    """dlib's HOG frontal face detector (its weights are built into dlib)."""
    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def cnn_detector() -> dlib.cnn_face_detection_model_v1:
    """dlib's MMOD CNN face detector."""
    return _load(dlib.cnn_face_detection_model_v1, CNN_DETECTOR, "CNN face detector")


@functools.lru_cache(maxsize=1)
def load_face_descriptor(filename: str = FACE_DESCRIPTOR) -> dlib.face_recognition_model_v1:
    """dlib's ResNet face recognition model (128-d face descriptors)."""
    return _load(dlib.face_recognition_model_v1, filename, "face recognition model")
