"""The overlay's audio: the stream the prediction used (``--audio-stream``), moved with the frames so that it
keeps its offset from the video (a track that starts after the first frame, or before it), copied or
re-encoded. The sources are written here with PyAV; the predictions are built from their frame times."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from tests.helpers import write_timed_frames
from vafusion.cli import main
from vafusion.inference.overlay import write_overlay
from vafusion.inference.predictor import Prediction
from vafusion.inference.video import VideoFeatures
from vafusion.io.audio import encode_audio
from vafusion.io.video import iter_frames, probe, video_streams

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class Track:
    """An audio stream to write: ``tone`` Hz from ``start + silent`` s (silence from ``start`` before)."""

    tone: float
    rate: int = 16000
    channels: int = 1
    start: float = 0.0
    silent: float = 0.0
    codec: str = "aac"


def write_source(path: Path, tracks: list[Track], video_start: float = 0.0, seconds: float = 2.0) -> Path:
    """25 fps frames from ``video_start`` s for ``seconds`` s beside ``tracks`` (``seconds + 1`` s each)."""
    with av.open(str(path), "w") as out:
        streams = [
            out.add_stream(t.codec, rate=t.rate, layout="stereo" if t.channels == 2 else "mono")
            for t in tracks
        ]
        write_timed_frames(out, int(25 * seconds), video_start)
        for track, stream in zip(tracks, streams, strict=True):
            t = np.arange(int((seconds + 1) * track.rate)) / track.rate
            wave = np.where(t >= track.silent, 0.3 * np.sin(2 * np.pi * track.tone * t), 0.0)
            planes = np.repeat(wave[None].astype(np.float32), track.channels, axis=0)
            for p in encode_audio(stream, planes, track.rate, start=round(track.start * track.rate)):
                out.mux(p)
    return path


def prediction_of(path: Path) -> Prediction:
    """A constant prediction with ``path``'s frame times, as the overlay needs it (no model run)."""
    times = np.array([f.time for f in iter_frames(path)])
    vf = VideoFeatures(path, probe(path, count_frames=True), times, [])
    table = pd.DataFrame(
        {"frame": np.arange(1, len(times) + 1), "time": times, "valence": 0.2, "arousal": -0.2, "face": 0}
    )
    return Prediction(table, vf, [0], [])


def video_start(container: av.container.InputContainer) -> float:
    """Where the frames count from: the decoded video stream's start time (s)."""
    video = video_streams(container)[0]
    return float(video.start_time * video.time_base)


def audio_of(path: Path) -> tuple[av.audio.stream.AudioStream, float, float, float]:
    """The file's one audio stream, its first packet's time, the first time its level passes half the
    tone's (its onset) and its dominant frequency (Hz), the times in s from the first video frame."""
    with av.open(str(path)) as c:
        (stream,) = c.streams.audio
        t0 = video_start(c)
        first = next(float(p.pts * p.time_base) for p in c.demux(stream) if p.pts is not None) - t0
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        onset, pieces = None, []
        for frame in c.decode(stream):
            wave = frame.to_ndarray().reshape(len(frame.layout.channels), -1)[0]
            loud = np.flatnonzero(np.abs(wave) > 0.15)
            if onset is None and loud.size:
                onset = float(frame.time) + loud[0] / frame.sample_rate - t0
            pieces.append(wave)
        wave = np.concatenate(pieces)
        peak = np.argmax(np.abs(np.fft.rfft(wave)))
        return stream, first, float(onset), peak * stream.rate / wave.size


def source_offsets(path: Path, track: Track) -> tuple[float, float]:
    """Where the audio ``track`` of ``path`` starts and where it turns loud, in s from the first frame."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        first = next(float(p.pts * p.time_base) for p in c.demux(stream) if p.pts is not None)
        return first - video_start(c), track.start + track.silent - video_start(c)


@pytest.mark.parametrize(("codec", "suffix"), [("aac", "mp4"), ("pcm_s16le", "mkv")])
@pytest.mark.parametrize("chosen", [0, 1])
def test_overlay_carries_the_audio_stream_the_prediction_used(tmp_path, codec, suffix, chosen) -> None:
    tracks = [Track(220.0, 16000, 1, codec=codec), Track(660.0, 24000, 2, codec=codec)]
    src = write_source(tmp_path / f"two.{suffix}", tracks)
    dst = write_overlay(src, prediction_of(src), tmp_path / "two_overlay.mp4", audio_stream=chosen)
    stream, _, _, tone = audio_of(dst)
    want = tracks[chosen]
    assert stream.channels == want.channels and abs(tone - want.tone) < 5
    assert stream.rate == (want.rate if codec == "aac" else 48000)  # copied, or re-encoded to 48 kHz AAC


def test_overlay_without_the_chosen_stream_has_no_audio(tmp_path) -> None:
    src = write_source(tmp_path / "one.mp4", [Track(220.0)])
    dst = write_overlay(src, prediction_of(src), tmp_path / "one_overlay.mp4", audio_stream=3)
    info = probe(dst, count_frames=True)
    assert not info.has_audio and info.n_frames == 50


@pytest.mark.parametrize(("codec", "suffix"), [("aac", "mp4"), ("pcm_s16le", "mkv")])
@pytest.mark.parametrize(
    ("video_at", "audio_at", "silent"),
    [(0.0, 0.0, 0.5), (0.0, 1.0, 0.3), (1.5, 0.0, 2.0), (1.0, 1.0, 0.4), (0.0, 1.9, 0.0), (0.5, 2.4, 0.0)],
)
def test_overlay_audio_keeps_its_offset_from_the_frames(
    tmp_path, codec, suffix, video_at, audio_at, silent
) -> None:
    track = Track(440.0, start=audio_at, silent=silent, codec=codec)
    src = write_source(tmp_path / f"offset.{suffix}", [track], video_start=video_at)
    dst = write_overlay(src, prediction_of(src), tmp_path / "offset_overlay.mp4")
    _, first, onset, _ = audio_of(dst)
    src_first, src_onset = source_offsets(src, track)
    frame_s = 1024 / track.rate  # one audio frame of the source
    assert abs(onset - src_onset) < frame_s  # the tone plays with the same frame as in the source
    with av.open(str(dst)) as c:
        assert abs(video_start(c)) < 1e-9  # the frames count from 0
    assert abs(first - max(0.0, src_first)) < 2 * frame_s  # audio from before the first frame is dropped


def test_predict_overlay_follows_audio_stream(tiny, tmp_path) -> None:
    tracks = [Track(220.0, 16000, 1), Track(660.0, 24000, 2, start=0.5)]
    src = write_source(tmp_path / "clip.mp4", tracks, seconds=1.0)
    args = ["predict", str(src), "--model", str(tiny / "run"), "--out", str(tmp_path / "o"), "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([*args, "--overlay", "--no-plot", "--audio-stream", "1"]) == 0
    stream, first, _, tone = audio_of(tmp_path / "o" / "clip_overlay.mp4")
    assert (stream.rate, stream.channels) == (24000, 2) and abs(tone - 660.0) < 5
    assert abs(first - 0.5) < 2 * 1024 / 24000
