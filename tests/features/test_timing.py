"""Fewer rows encoded, the rest filled in: the face stride (every k-th face of each run) and the audio hop
(patches on a grid, interpolated to frames), and that both enter the features' fingerprints."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from vafusion.data.affwild2 import Sample
from vafusion.data.extract import ExtractorStats, face_features
from vafusion.errors import VafusionError
from vafusion.features.extractors import FeaturesConfig, LogMelExtractor, configured_extractor
from vafusion.features.timing import anchor_rows, fill_between_anchors, resample_rows


def test_anchor_rows_cover_each_run_ends_included() -> None:
    present = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1], bool)
    assert anchor_rows(present, 1).tolist() == np.flatnonzero(present).tolist()
    assert anchor_rows(present, 2).tolist() == [0, 2, 4, 5, 8, 9, 11]
    assert anchor_rows(present, 5).tolist() == [0, 5, 8, 9, 11]
    assert anchor_rows(np.zeros(4, bool), 3).size == 0
    with pytest.raises(ValueError):
        anchor_rows(present, 0)


def test_fill_between_anchors_is_exact_on_linear_rows_and_stays_in_runs() -> None:
    t = np.arange(20, dtype=np.float32)
    feats = np.stack([t, 2 * t + 1], axis=1)
    present = np.ones(20, bool)
    present[[7, 8]] = False
    present[15:] = False
    present[18] = True  # a run of one row that is never encoded below
    encoded = np.zeros(20, bool)
    encoded[[0, 3, 6, 9, 12, 14]] = True
    out, valid = fill_between_anchors(np.where(encoded[:, None], feats, 0), encoded, present)
    inside = present.copy()
    inside[18] = False
    assert np.array_equal(valid, inside)
    assert np.allclose(out[inside], feats[inside])
    assert (out[~inside] == 0).all()


class _Brightness:
    """A face 'extractor' whose feature is the crop's brightness; counts the crops it encodes."""

    dim = 1

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, crops: np.ndarray) -> np.ndarray:
        self.encoded += len(crops)
        return crops.reshape(len(crops), -1).mean(1, keepdims=True).astype(np.float32)


def test_face_stride_encodes_fewer_crops_and_interpolates(tmp_path) -> None:
    n = 30
    for i in range(1, n + 1):
        if i not in (11, 12):  # a gap: two runs
            cv2.imwrite(str(tmp_path / f"{i:05d}.png"), np.full((112, 112, 3), 4 * i, np.uint8))
    (tmp_path / "00020.png").write_bytes(b"not an image")
    sample = Sample("s", "s", None, "Train_Set", None, tmp_path)
    full = _Brightness()
    f1, v1 = face_features(full, sample, n, 8, ExtractorStats())
    strided = _Brightness()
    stats = ExtractorStats()
    f3, v3 = face_features(strided, sample, n, 8, stats, stride=3)
    assert np.array_equal(v1, v3) and not v3[[10, 11, 19]].any()
    assert strided.encoded < full.encoded / 2
    assert np.allclose(f3[v3], f1[v1])  # brightness is linear in the frame number
    assert any("00020.png" in x for x in stats.notes["unreadable crops"])


def test_face_stride_enters_the_face_fingerprint_only() -> None:
    base = FeaturesConfig(visual="landmarks", face_stride=1)
    strided = dataclasses.replace(base, face_stride=2)
    assert (
        configured_extractor("landmarks", base).fingerprint
        != configured_extractor("landmarks", strided).fingerprint
    )
    assert (
        configured_extractor("logmel", base).fingerprint
        == configured_extractor("logmel", strided).fingerprint
    )
    with pytest.raises(VafusionError, match="face_stride"):
        configured_extractor("landmarks", dataclasses.replace(base, face_stride=0))


def _voice(seconds: float, sr: int) -> np.ndarray:
    """A tone whose pitch and loudness drift, so every 0.96 s patch differs from its neighbours."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * (1 + np.sin(2 * np.pi * 0.3 * t)) * np.sin(2 * np.pi * (300 + 80 * t) * t)).astype(
        np.float32
    )


def test_audio_hop_encodes_a_grid_and_interpolates_to_frames() -> None:
    sr, times = 16000, np.arange(0, 150) / 30.0
    wave = _voice(5.0, sr)
    per_frame, valid0 = LogMelExtractor(hop=0.0).at_times(wave, sr, times)
    hopped = LogMelExtractor(hop=0.48)
    grid = hopped.centres(times)
    assert np.allclose(np.diff(grid), 0.48) and grid[0] <= times[0] and grid[-1] >= times[-1]
    assert len(grid) < len(times) / 10
    feats, valid = hopped.at_times(wave, sr, times)
    assert np.array_equal(valid, valid0)
    on_grid = np.flatnonzero(np.isclose(times[:, None], grid[None, :], atol=1e-9).any(1))  # 0, 2.4, 4.8 s
    assert len(on_grid) >= 2
    assert np.allclose(feats[on_grid], per_frame[on_grid], atol=1e-5)
    grid_feats, _ = LogMelExtractor(hop=0.0).at_times(wave, sr, grid)
    assert np.allclose(feats, resample_rows(grid, grid_feats, times), atol=1e-5)
    assert not np.allclose(feats, per_frame, atol=1e-3)  # it did interpolate between grid points


def test_audio_hop_grid_lines_up_across_chunks() -> None:
    """A chunk starting at a whole second, given its start as ``origin``, reproduces the whole file's rows."""
    sr = 16000
    wave = _voice(8.0, sr)
    ext = LogMelExtractor(hop=0.48)
    times = np.arange(90, 150) / 30.0  # 3-5 s
    whole, _ = ext.at_times(wave, sr, times)
    start = 1.0
    chunk, _ = ext.at_times(wave[int(start * sr) : int(7.0 * sr)], sr, times - start, origin=start)
    assert np.allclose(chunk, whole, atol=1e-5)
    shifted, _ = ext.at_times(wave[int(start * sr) : int(7.0 * sr)], sr, times - start)
    assert not np.allclose(shifted, whole, atol=1e-3)  # without the origin the grid would move


def test_audio_hop_enters_the_audio_fingerprint_and_is_checked() -> None:
    base = FeaturesConfig(visual="landmarks")
    assert base.audio_hop == 0.48 and base.face_stride == 5  # the defaults the benchmarks picked
    other = dataclasses.replace(base, audio_hop=0.0)

    def prints(name: str) -> tuple[str, str]:
        return configured_extractor(name, base).fingerprint, configured_extractor(name, other).fingerprint

    assert len(set(prints("logmel"))) == 2 and len(set(prints("landmarks"))) == 1
    with pytest.raises(VafusionError, match="audio_hop"):
        configured_extractor("logmel", dataclasses.replace(base, audio_hop=-0.1))
