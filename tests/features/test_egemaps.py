"""eGeMAPS low-level descriptors aligned to video frame times."""

from __future__ import annotations

import numpy as np
import pytest

from vafusion.features import egemaps
from vafusion.features.egemaps import EgemapsExtractor, egemaps_at

SR = 16000
FPS = 25.0
Tone = tuple[np.ndarray, np.ndarray, np.ndarray]


def stepped_tone(sr: int = SR, seconds: float = 4.0, step_at: float = 2.0) -> np.ndarray:
    """A 220 Hz tone whose amplitude steps from 0.02 to 0.3 at ``step_at`` seconds."""
    t = np.arange(int(sr * seconds)) / sr
    return (np.sin(2 * np.pi * 220 * t) * np.where(t < step_at, 0.02, 0.3)).astype(np.float32)


@pytest.fixture(scope="module")
def tone_features() -> Tone:
    times = np.arange(125) / FPS  # 5 s of video over 4 s of audio
    feats, valid = egemaps_at(stepped_tone(), SR, times)
    return times, feats, valid


def test_shape_dtype_and_attributes(tone_features: Tone) -> None:
    times, feats, valid = tone_features
    assert feats.shape == (len(times), 25) and feats.dtype == np.float32
    assert valid.shape == (len(times),) and valid.dtype == bool
    assert np.isfinite(feats).all()
    extractor = EgemapsExtractor()
    assert extractor.name == egemaps.NAME == "egemaps" and extractor.dim == egemaps.DIM == 25
    assert extractor.columns[0] == "Loudness_sma3" and len(extractor.columns) == 25
    assert extractor.params == egemaps.PARAMS
    assert EgemapsExtractor(window=0.1).params["window"] == 0.1


def test_loudness_steps_up_at_the_right_frame(tone_features: Tone) -> None:
    _, feats, _ = tone_features
    loudness = feats[:, 0]
    quiet, loud = loudness[2:48], loudness[52:98]
    assert loud.min() > 3 * quiet.max()
    threshold = (quiet.mean() + loud.mean()) / 2
    assert int(np.argmax(loudness > threshold)) in (50, 51)  # the step is at 2.0 s = frame 50


def test_frames_outside_the_audio_are_invalid(tone_features: Tone) -> None:
    times, feats, valid = tone_features
    np.testing.assert_array_equal(valid, times <= 4.0)
    assert (feats[~valid] == 0).all()
    assert (np.abs(feats[valid]).sum(axis=1) > 0).all()
    feats, valid = egemaps_at(stepped_tone(), SR, np.array([-0.5, -0.04, 0.0, 1.0]))
    np.testing.assert_array_equal(valid, [False, False, True, True])


def test_window_average_matches_the_raw_rows() -> None:
    wave = stepped_tone()
    extractor = EgemapsExtractor(window=0.2)
    rows, centres = extractor.lld(wave, SR)
    assert np.all(np.diff(centres) > 0) and abs(np.median(np.diff(centres)) - 0.01) < 1e-6
    feats, _ = extractor(wave, SR, np.array([1.0, 3.0]))
    for t, row in zip([1.0, 3.0], feats):
        edge = egemaps.EDGE_TOLERANCE_S  # centres on the window's edges: the lower one is in, the upper out
        inside = (centres >= t - 0.1 - edge) & (centres < t + 0.1 - edge)
        assert inside.sum() == 20
        np.testing.assert_allclose(row, rows[inside].mean(axis=0), rtol=1e-4, atol=1e-4)


def test_narrow_window_interpolates_between_rows() -> None:
    wave = stepped_tone()
    extractor = EgemapsExtractor(window=0.002)
    rows, centres = extractor.lld(wave, SR)
    t = (centres[100] + centres[101]) / 2 + 0.002  # no row centre within +-1 ms
    feats, valid = extractor(wave, SR, np.array([t]))
    assert valid[0]
    expected = [np.interp(t, centres, rows[:, j]) for j in range(25)]
    np.testing.assert_allclose(feats[0], expected, rtol=1e-4, atol=1e-4)


def test_input_rate_does_not_change_the_features() -> None:
    times = np.arange(0.2, 3.8, 0.2)
    at_16k, _ = egemaps_at(stepped_tone(16000), 16000, times)
    at_44k, _ = egemaps_at(stepped_tone(44100), 44100, times)
    np.testing.assert_allclose(at_44k[:, 0], at_16k[:, 0], rtol=0.05, atol=0.01)


def test_empty_or_very_short_audio_is_all_invalid() -> None:
    times = np.arange(10) / FPS
    for wave in (np.zeros(0, np.float32), stepped_tone()[:400]):
        feats, valid = egemaps_at(wave, SR, times)
        assert not valid.any() and feats.shape == (10, 25) and (feats == 0).all()
    feats, valid = egemaps_at(stepped_tone(), SR, np.zeros(0))
    assert feats.shape == (0, 25) and valid.shape == (0,)


def test_bad_input_is_rejected() -> None:
    times = np.arange(10) / FPS
    with pytest.raises(ValueError, match="mono"):
        egemaps_at(np.zeros((2, SR), np.float32), SR, times)
    with pytest.raises(ValueError, match="NaN"):
        egemaps_at(np.full(SR, np.nan, np.float32), SR, times)
    with pytest.raises(ValueError, match="sample_rate"):
        egemaps_at(np.zeros(SR, np.float32), 0, times)
    with pytest.raises(ValueError, match="times"):
        egemaps_at(np.zeros(SR, np.float32), SR, np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="window"):
        EgemapsExtractor(window=0.0)
