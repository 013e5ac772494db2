"""VGGish log-mel front end: numerics against an independent float64 computation, resampling against
resampy reference values, and frame-centred examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vafusion.features import logmel as vg
from vafusion.features import resample as rs
from vafusion.features.logmel import HOP_LENGTH, SAMPLE_RATE, WINDOW_LENGTH, example_start_frames
from vafusion.models.vggish import EXAMPLE_FRAMES

SR = 16000


# ----------------------------------------------------------------------------------------------------
# Independent float64 reference, written from the published recipe (not from the module's code):
# explicit frame loop, sin^2 form of the periodic Hann window, a direct DFT matrix instead of an FFT, and
# a per-bin/per-band triangle evaluation on the HTK mel scale.
# ----------------------------------------------------------------------------------------------------
def _htk_mel(hz: float) -> float:
    return 1127.0 * np.log(1.0 + hz / 700.0)


def _ref_filterbank() -> np.ndarray:
    n_bins = 257
    lo, hi = _htk_mel(125.0), _htk_mel(7500.0)
    edges = [lo + (hi - lo) * j / 65 for j in range(66)]
    w = np.zeros((n_bins, 64))
    for k in range(1, n_bins):  # DC gets nothing
        m = _htk_mel(k * 8000.0 / 256)
        for b in range(64):
            left, centre, right = edges[b], edges[b + 1], edges[b + 2]
            if left < m <= centre:
                w[k, b] = (m - left) / (centre - left)
            elif centre < m < right:
                w[k, b] = (right - m) / (right - centre)
    return w


def _ref_log_mel(x: np.ndarray) -> np.ndarray:
    n = np.arange(400)
    window = np.sin(np.pi * n / 400) ** 2  # = 0.5 - 0.5 cos(2 pi n / 400), periodic
    k = np.arange(257)
    dft = np.exp(-2j * np.pi * np.outer(n, k) / 512)  # 400 samples zero-padded to 512
    fb = _ref_filterbank()
    rows = []
    start = 0
    while start + 400 <= len(x):
        spectrum = np.abs((x[start : start + 400] * window) @ dft)
        rows.append(np.log(spectrum @ fb + 0.01))
        start += 160
    return np.array(rows).reshape(-1, 64)


def _band_centres_hz() -> np.ndarray:
    lo, hi = _htk_mel(125.0), _htk_mel(7500.0)
    centres_mel = lo + (hi - lo) * np.arange(1, 65) / 65
    return 700.0 * (np.exp(centres_mel / 1127.0) - 1.0)


def test_filterbank_matches_formula() -> None:
    fb = vg.mel_filterbank()
    assert fb.shape == (257, 64)
    np.testing.assert_allclose(fb, _ref_filterbank(), rtol=0, atol=1e-12)
    assert np.all(fb[0] == 0.0)
    # every band is a proper triangle peaking just below 1 near its centre
    assert np.all(fb.max(axis=0) > 0.5) and np.all(fb.max(axis=0) <= 1.0)


def test_log_mel_matches_reference_on_16k_noise() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.8, 0.8, size=int(2.5 * SR))
    ours = vg.log_mel_spectrogram(x, SR)
    ref = _ref_log_mel(x)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (1 + (len(x) - 400) // 160, 64)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    ex = vg.vggish_examples(x, SR)
    assert ex.shape == (2, 96, 64) and ex.dtype == np.float32
    np.testing.assert_allclose(ex.reshape(-1, 64), ref[: 2 * 96], rtol=0, atol=1e-4)


def test_int16_scaled_speechlike_signal_matches_reference() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(SR) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(SR)
    x = np.round(x * 32767) / 32768.0
    np.testing.assert_allclose(vg.log_mel_spectrogram(x, SR), _ref_log_mel(x), rtol=0, atol=1e-4)


def test_int16_pcm_is_scaled_like_the_reference() -> None:
    pcm = (np.random.default_rng(8).uniform(-0.5, 0.5, SR) * 32767).astype(np.int16)
    np.testing.assert_array_equal(vg.vggish_examples(pcm, SR), vg.vggish_examples(pcm / 32768.0, SR))


def test_silence_is_log_offset() -> None:
    ex = vg.vggish_examples(np.zeros(2 * SR), SR)
    assert ex.shape == (2, 96, 64)
    assert np.all(ex == np.float32(np.log(0.01)))


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 6000.0])
def test_pure_tone_peaks_in_its_band(freq: float) -> None:
    t = np.arange(SR) / SR
    log_mel = vg.log_mel_spectrogram(0.5 * np.sin(2 * np.pi * freq * t), SR)
    peak_band = np.bincount(log_mel.argmax(axis=1)).argmax()
    nearest = int(np.argmin(np.abs(_band_centres_hz() - freq)))
    assert abs(int(peak_band) - nearest) <= 1


@pytest.mark.parametrize(
    ("n_samples", "n_examples"),
    [(100, 0), (15599, 0), (15600, 1), (30959, 1), (30960, 2), (SR * 3, 3)],
)
def test_example_count_at_boundaries(n_samples: int, n_examples: int) -> None:
    ex = vg.vggish_examples(np.full(n_samples, 0.1), SR)
    assert ex.shape == (n_examples, 96, 64)


def test_stereo_is_averaged() -> None:
    rng = np.random.default_rng(3)
    stereo = rng.uniform(-0.5, 0.5, size=(SR, 2))
    np.testing.assert_array_equal(vg.vggish_examples(stereo, SR), vg.vggish_examples(stereo.mean(axis=1), SR))
    with pytest.raises(ValueError):
        vg.vggish_examples(np.zeros((2, 3, 4)), SR)


# ----------------------------------------------------------------------------------------------------
# Resampling. Reference values: resampy 0.4.3 ``resample(x, sr, 16000)`` (kaiser_best table from
# resampy/data/kaiser_best.npz) on the test signal below, computed once and written here.
# ----------------------------------------------------------------------------------------------------
def _test_signal(sr: int, n: int) -> np.ndarray:
    t = np.arange(n) / sr
    return (
        0.5 * np.sin(2 * np.pi * 440 * t)
        + 0.25 * np.sin(2 * np.pi * 3150.5 * t + 0.3)
        + 0.1 * np.cos(2 * np.pi * 6100 * t)
    )


RESAMPY_REFERENCE = {
    44100: {
        0: 0.1564409833199512,
        1: 0.27351600585111135,
        7: 0.5274132543508638,
        100: -0.6786457678246332,
        399: -0.1759024386249199,
        799: 0.013904869465284757,
    },
    48000: {
        0: 0.15473293929738008,
        1: 0.2736840909873059,
        7: 0.5273872024153421,
        100: -0.6787294123495249,
        399: -0.17591008722338453,
        799: 0.013898804868455003,
    },
    8000: {
        0: 0.200937839921932,
        1: 0.3286886164116177,
        7: 0.6436611259481739,
        100: -0.6786224200818969,
        399: -0.32276009078033513,
        799: 0.1419199497873482,
    },
}


@pytest.mark.parametrize("sr", sorted(RESAMPY_REFERENCE))
def test_resample_matches_resampy_values(sr: int) -> None:
    y = rs.resample(_test_signal(sr, sr // 20), sr, SR)
    assert y.shape == (800,)
    for i, value in RESAMPY_REFERENCE[sr].items():
        assert y[i] == pytest.approx(value, abs=1e-9), i


def test_resample_is_band_limited_and_accurate() -> None:
    sr = 44100
    x = _test_signal(sr, sr)
    y = rs.resample(x, sr, SR)
    assert y.shape == (SR,)
    interior = slice(200, SR - 200)
    # the in-band components come through (passband ripple well under 1e-3); 6.1 kHz is in band too
    np.testing.assert_allclose(y[interior], _test_signal(SR, SR)[interior], atol=2e-3)
    # a 10 kHz tone is above the new Nyquist and must be removed, not aliased to 6 kHz
    alias = rs.resample(np.sin(2 * np.pi * 10000 * np.arange(sr) / sr), sr, SR)
    assert np.max(np.abs(alias[interior])) < 1e-3
    assert rs.resample(x, SR, SR) is not x and np.array_equal(rs.resample(x, SR, SR), x)


def test_polyphase_and_per_sample_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _test_signal(44100, 4410) + np.random.default_rng(6).normal(0, 0.1, 4410)
    fast = rs.resample(x, 44100, SR)
    monkeypatch.setattr(rs, "_MAX_PHASES", 0)
    slow = rs.resample(x, 44100, SR)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-10)
    assert rs.resample(x, 16001, SR).shape == (int(4410 * 16000 / 16001),)


def test_examples_from_44k_match_resampled_16k() -> None:
    x = _test_signal(44100, 44100)
    np.testing.assert_allclose(
        vg.vggish_examples(x, 44100), vg.vggish_examples(rs.resample(x, 44100, SR), SR), atol=1e-6
    )


# ----------------------------------------------------------------------------------------------------
# Frame-centred examples
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [1.0, 1.2345, 2.5017])
def test_impulse_lands_in_the_middle_of_its_example(t: float) -> None:
    x = np.zeros(4 * SR)
    x[int(round(t * SR))] = 1.0
    ex, valid = vg.vggish_frame_examples(x, SR, np.array([t]))
    assert ex.shape == (1, 96, 64) and valid.tolist() == [True]
    energy = (ex[0] - np.log(0.01)).sum(axis=1)
    rows = np.nonzero(energy > 1e-3)[0]
    assert 1 <= len(rows) <= 3
    centre_row = float((rows * energy[rows]).sum() / energy[rows].sum())
    assert abs(centre_row - 47.5) <= 1.5  # the example's centre lies between rows 47 and 48


def test_centred_example_equals_fixed_grid_example() -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(-0.5, 0.5, size=3 * SR)
    grid = vg.vggish_examples(x, SR)
    times = np.array([(96 * k + 48.75) / 100 for k in range(grid.shape[0])])  # start frame 96 k exactly
    assert np.array_equal(vg.example_start_frames(times), 96 * np.arange(grid.shape[0]))
    ex, valid = vg.vggish_frame_examples(x, SR, times)
    assert valid.all()
    np.testing.assert_allclose(ex, grid, atol=1e-5)


def test_outside_audio_is_silence_and_invalid() -> None:
    x = np.full(2 * SR, 0.2)
    times = np.array([-3.0, 0.0, 0.48, 0.4875, 1.5075, 1.5125, 2.0, 9.0])
    ex, valid = vg.vggish_frame_examples(x, SR, times)
    assert ex.shape == (8, 96, 64)
    # 2 s hold 198 frames; the first fully-inside example starts at frame 0 (centre 0.4875 s), the last at
    # frame 102 (centre 1.5075 s); 1.5125 s would need frames 103..198
    assert valid.tolist() == [False, False, False, True, True, False, False, False]
    silence = np.float32(np.log(0.01))
    assert np.all(ex[0] == silence) and np.all(ex[-1] == silence)
    # t = 0: the first half is silence, the second half carries the (DC) signal
    assert np.all(ex[1, :40] == silence) and np.all(ex[1, 60:, 0] > silence)
    assert not np.any(np.isnan(ex))


def test_centred_examples_reuse_one_spectrogram() -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.5, 0.5, size=(3 * 44100, 2))
    times = np.arange(0, 3, 1 / 30)
    whole, valid = vg.vggish_frame_examples(x, 44100, times)
    centred = vg.CentredExamples(x, 44100)
    parts = [centred(times[i : i + 7]) for i in range(0, len(times), 7)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), valid)
    assert centred.n_samples == 3 * SR


def test_frame_examples_validate_times() -> None:
    with pytest.raises(ValueError):
        vg.vggish_frame_examples(np.zeros(SR), SR, np.array([[0.5]]))
    with pytest.raises(ValueError):
        vg.vggish_frame_examples(np.zeros(SR), SR, np.array([np.nan]))


# property tests (hypothesis)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(0, 7200)))
def test_centred_example_is_centred_within_half_a_hop(times):
    starts = example_start_frames(times)
    span = (EXAMPLE_FRAMES - 1) * HOP_LENGTH + WINDOW_LENGTH
    centre = (starts * HOP_LENGTH + span / 2) / SAMPLE_RATE
    assert np.abs(centre - times).max() <= HOP_LENGTH / 2 / SAMPLE_RATE + 1e-9  # 5 ms
    order = np.argsort(times, kind="stable")
    assert (np.diff(starts[order]) >= 0).all()  # later frame, later (or same) example
