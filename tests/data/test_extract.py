"""Face rows of ``vafusion extract``: row i comes from crop i, frames without a readable crop are invalid."""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vafusion.data.affwild2 import Sample
from vafusion.data.extract import ExtractorStats, face_features


class _Brightness:
    """A face 'extractor' whose feature is the crop's brightness, so each row names the crop it came from."""

    dim = 1

    def encode(self, crops: np.ndarray) -> np.ndarray:
        return crops.reshape(len(crops), -1).mean(1, keepdims=True).astype(np.float32)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 40), st.integers(0, 2**31 - 1), st.integers(1, 7))
def test_face_row_i_comes_from_crop_i(tmp_path_factory, n, seed, batch):
    folder = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(seed)
    present = [i for i in range(1, n + 3) if rng.random() < 0.7]  # gaps, and crops past the last row
    for i in present:
        cv2.imwrite(str(folder / f"{i:05d}.png"), np.full((112, 112, 3), 5 * i, np.uint8))
    sample = Sample("s", "s", None, "Train_Set", None, folder)
    feats, valid = face_features(_Brightness(), sample, n, batch, ExtractorStats())
    want = np.array([i in present for i in range(1, n + 1)])
    assert np.array_equal(valid, want)
    assert np.array_equal(feats[want, 0], 5.0 * np.arange(1, n + 1)[want])
    assert (feats[~want] == 0).all()


def test_with_a_face_stride_each_crop_is_read_once(tmp_path, monkeypatch):
    import vafusion.data.extract as extract

    for i in range(1, 31):
        cv2.imwrite(str(tmp_path / f"{i:05d}.png"), np.full((112, 112, 3), 5 * i, np.uint8))
    (tmp_path / "00012.png").write_bytes(b"")  # unreadable: ends a run
    reads: list[str] = []
    real = extract.read_crop
    monkeypatch.setattr(extract, "read_crop", lambda p: reads.append(p.name) or real(p))
    sample = Sample("s", "s", None, "Train_Set", None, tmp_path)
    feats, valid = face_features(_Brightness(), sample, 30, 4, ExtractorStats(), stride=5)
    assert sorted(reads) == [f"{i:05d}.png" for i in range(1, 31)]
    assert np.array_equal(valid, np.arange(1, 31) != 12)
    # anchors 1, 6, 11 | 13, 18, 23, 28, 30 are exact; rows between them are interpolated linearly
    assert np.allclose(feats[valid, 0], 5.0 * np.arange(1, 31)[valid])
