"""Audio shorter than the video: every frame still gets a row, rows past the audio are padded and flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_annotation, write_video
from vafusion.cli import main
from vafusion.config import FeaturesConfig
from vafusion.features.extractors import LogMelExtractor, VGGishExtractor, build_extractor, centre_in_audio
from vafusion.features.logmel import SILENCE_LOG_MEL
from vafusion.features.store import read_features
from vafusion.io.video import read_audio

SR = 16000
FPS = 25


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_centre_rule_flags_frames_past_the_end() -> None:
    times = np.arange(0, 3, 1 / FPS)
    valid = centre_in_audio(tone(2.0), SR, times)
    np.testing.assert_array_equal(valid, times <= 2.0)


def test_logmel_rows_past_the_audio_are_silence_padding() -> None:
    times = np.arange(0, 3, 1 / FPS)
    feats, valid = LogMelExtractor().at_times(tone(2.0), SR, times)
    assert feats.shape == (len(times), 128) and np.isfinite(feats).all()
    np.testing.assert_array_equal(valid, times <= 2.0)
    # a window wholly past the end (centre > 2 s + 0.49 s) is the log-mel of digital silence
    beyond = times > 2.0 + 0.49
    assert beyond.any()
    np.testing.assert_allclose(feats[beyond, :64], SILENCE_LOG_MEL, atol=1e-5)
    np.testing.assert_allclose(feats[beyond, 64:], 0.0, atol=1e-5)
    assert (feats[valid, :64].max(axis=1) > SILENCE_LOG_MEL + 1).all()  # inside, the tone is heard
    # VGGish encodes the very same centred, padded examples (shared code path)
    assert VGGishExtractor.at_times is LogMelExtractor.at_times


def test_egemaps_rows_past_the_audio_are_zero_and_invalid() -> None:
    times = np.arange(0, 3, 1 / FPS)
    feats, valid = build_extractor("egemaps", FeaturesConfig()).at_times(tone(2.0), SR, times)
    assert feats.shape == (len(times), 25)
    np.testing.assert_array_equal(valid, times <= 2.0)
    assert (feats[~valid] == 0).all() and (np.abs(feats[valid]).sum(axis=1) > 0).all()


def test_extract_pads_flags_and_reports_a_short_track(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, feats = tmp_path / "data", tmp_path / "feats"
    write_video(data / "videos" / "batch1" / "short.mp4", n_frames=60, fps=30, audio_seconds=1.0)
    write_annotation(
        data / "annotations" / "VA_Estimation_Challenge" / "Train_Set" / "short.txt", [(0.1, 0.2)] * 60
    )
    assert (
        main(
            [
                "extract",
                "--data",
                str(data),
                "--features",
                str(feats),
                "--extractors",
                "logmel,egemaps",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "audio shorter than video" in printed and "short" in printed
    wave, sr = read_audio(data / "videos" / "batch1" / "short.mp4", sample_rate=None)
    duration = len(wave) / sr
    assert 0.9 < duration < 1.2  # AAC may add a few ms of padding
    summary = json.loads((feats / "extract_summary.json").read_text())
    for name in ("logmel", "egemaps"):
        ff = read_features(feats / name / "short.npz")
        assert ff.features.shape[0] == 60 and np.isfinite(ff.features).all()
        np.testing.assert_array_equal(ff.valid, ff.times <= duration)
        assert 25 <= ff.valid.sum() <= 36 and not ff.valid[-20:].any()
        assert summary["extractors"][name]["notes"]["audio shorter than video"] == ["short"]
