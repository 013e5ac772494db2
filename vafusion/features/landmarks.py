"""The ``landmarks`` extractor: 68 dlib facial landmarks per aligned face crop, as a 136-d vector.

Input crops come from ``vafusion.face.align`` (ArcFace-aligned 112x112 RGB), so eyes, nose and mouth sit
near fixed positions and no face detection is needed: the 68-point shape predictor is started from
``CROP_FACE_BOX``, the box where dlib's HOG face detector puts the face in an aligned crop (measured as
the median detector box mapped into the crop over the four test videos and the Grace Hopper photo:
left 14, top 26, right 99, bottom 115, spread ~5 px); ``vafusion.face.align`` starts the predictor from
the same box when aligning. The predictor was trained on HOG-detector boxes, so starting it from that
box, rather than the whole crop, keeps it in its training regime (on test-video crops: 1.0 px mean
error against the full-frame landmarks, 2.6 px from the whole-crop box); running a detector on
112-pixel crops would be slow and miss many faces.

Feature layout: ``[x0, y0, x1, y1, ..., x67, y67]``, point coordinates in crop pixels divided by the
crop size (112), so the crop spans 0..1 (points on the chin can slightly exceed 1). Because the crop
is aligned, these are pose-normalised shape features: eyes at about (0.34, 0.46) and (0.66, 0.46).
"""

from __future__ import annotations

from typing import Any

import dlib
import numpy as np

from vafusion.face.align import CROP_FACE_BOX, CROP_SIZE
from vafusion.weights.dlib import SHAPE_68, load_shape_predictor


class LandmarkExtractor:
    """68-point landmarks of aligned face crops, ``(N, 112, 112, 3)`` uint8 RGB -> ``(N, 136)`` float32."""

    name = "landmarks"
    dim = 136

    def __init__(self) -> None:
        self._predictor = load_shape_predictor(SHAPE_68)
        self._rect = dlib.rectangle(*CROP_FACE_BOX)

    @property
    def params(self) -> dict[str, Any]:
        """Settings that change the output (stored next to cached features)."""
        return {
            "model": SHAPE_68,
            "crop_size": CROP_SIZE,
            "start_box": list(CROP_FACE_BOX),
            "normalisation": "pixel / crop_size",
        }

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """Landmark features for a batch of aligned crops (row i belongs to crop i)."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
            raise ValueError(
                f"expected crops of shape (N, {CROP_SIZE}, {CROP_SIZE}, 3) uint8, "
                f"got {crops.shape} {crops.dtype}"
            )
        out = np.empty((len(crops), self.dim), dtype=np.float32)
        for i, crop in enumerate(crops):
            shape = self._predictor(np.ascontiguousarray(crop), self._rect)
            out[i] = [v for p in shape.parts() for v in (p.x, p.y)]
        out /= CROP_SIZE
        return out
