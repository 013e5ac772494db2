"""Audio features streamed in chunks (``stream_audio_features``, used by ``extract`` and ``predict``) against
the whole-file features, and the streaming reader's edge cases."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from vafusion.data.affwild2 import Sample
from vafusion.data.extract import ExtractorStats, audio_features
from vafusion.errors import MediaError
from vafusion.features.audio_stream import stream_audio_features
from vafusion.features.extractors import EGeMAPSExtractor, LogMelExtractor
from vafusion.io.audio import encode_audio, iter_audio_chunks
from vafusion.io.video import read_audio

SECONDS = 11.5  # three 3 s chunks and a partial fourth
CHUNK_S, MARGIN_S = 3, 2


def speech(seconds: float, rate: int) -> np.ndarray:
    """The synthetic corpus's speech-like voice (mono float32) with slowly moving valence and arousal."""
    from vafusion.data.synth import synth_voice

    t = np.arange(int(round(seconds * 30))) / 30
    return synth_voice(0.5 * np.sin(0.4 * t), np.sin(0.7 * t), 30, rate, np.random.default_rng(0))


def clip(path: Path, rate: int = 16000, seconds: float = SECONDS, garbage_after: float | None = None) -> Path:
    """Three 64x48 frames and an AAC track of ``seconds`` of :func:`speech`; ``garbage_after`` replaces the
    audio packets from that time on with random bytes. With ``seconds=0`` an MP4 has no audio track, a
    Matroska file (``.mkv``) an empty one."""
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("aac", rate=rate, layout="mono")
        for _ in range(3):
            for p in vs.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        wave = speech(seconds, rate)
        for p in list(encode_audio(aus, wave, rate)):
            if garbage_after is not None and p.pts is not None and p.pts >= garbage_after * rate:
                bad = av.Packet(rng.bytes(p.size))
                bad.stream, bad.pts, bad.dts, bad.time_base = aus, p.pts, p.dts, p.time_base
                p = bad
            out.mux(p)
    return path


@pytest.mark.parametrize("rate, hop", [(44100, 0.0), (16000, 0.0), (44100, 0.48)])
def test_logmel_in_chunks_equals_the_whole_file(tmp_path, rate, hop):
    """Chunks of 3 s with 2 s margins give the whole-file rows: the margin covers half a 0.96 s patch (and
    the next 0.48 s grid point with a hop) and the resampling filter, and whole-second borders keep the
    16 kHz phase and 10 ms grid. Measured: equal to the last bit at 44.1, 48 and 16 kHz, per frame and
    with the 0.48 s hop; 1e-5 allows for a different float summation order."""
    path = clip(tmp_path / "a.mp4", rate)
    wave, sr = read_audio(path, sample_rate=None)
    total = len(wave) / sr
    times = np.r_[np.arange(int(12.2 * 30)) / 30, total]  # runs past the track's end; one frame exactly at it
    times.sort()
    ext = LogMelExtractor(hop=hop)
    ref, ref_valid = ext.at_times(wave, sr, times)
    got = stream_audio_features(path, [ext], times, CHUNK_S, MARGIN_S)
    assert got.seconds == pytest.approx(total, abs=1e-9)
    assert np.array_equal(got.valid[0], ref_valid) and got.valid[0][times == total].all()
    after = times > total
    assert not got.valid[0][after].any() and after.any()
    assert not got.feats[0][after].any()  # past the track's end: zero rows, nothing encoded
    assert np.abs(got.feats[0][~after] - ref[~after]).max() < 1e-5
    chunks = list(iter_audio_chunks(path, CHUNK_S, MARGIN_S))
    assert (
        len(chunks) == 4
        and chunks[-1].total == total
        and max(c.wave.size for c in chunks) <= (CHUNK_S + 2 * MARGIN_S) * sr
    )


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_egemaps_in_chunks_equals_the_whole_file(tmp_path, rate):
    """eGeMAPS in 3 s chunks against the whole file, 30 fps. openSMILE's descriptors feel a cut for under
    1 s (start) and 0.5 s (end), inside the 2 s margin, and the audio reaches openSMILE at 16 kHz through
    vafusion's shift-invariant resampler, so every rate gives the whole-file rows. (With openSMILE's own
    resampler, 44.1 and 48 kHz differed: formant columns in 7-8 % of the rows by up to 1.2 standard
    deviations.)

    The last chunk here holds a single frame (t = 9 s): its averaging window still comes from the frame
    spacing (the neighbouring frame is passed as context), not from the 40 ms single-frame default.
    """
    path = clip(tmp_path / "a.mp4", rate)
    wave, sr = read_audio(path, sample_rate=None)
    times = np.arange(9 * 30 + 1) / 30
    ext = EGeMAPSExtractor()
    ref, ref_valid = ext.at_times(wave, sr, times)
    got = stream_audio_features(path, [ext], times, CHUNK_S, MARGIN_S)
    assert np.array_equal(got.valid[0], ref_valid) and ref_valid.all()
    assert np.abs(got.feats[0] - ref).max() < 1e-5


def test_several_extractors_share_one_pass_and_time_it(tmp_path):
    path = clip(tmp_path / "a.mp4", 16000, seconds=4.0)
    times = np.arange(120) / 30
    logmel, eg = LogMelExtractor(), EGeMAPSExtractor()
    both = stream_audio_features(path, [logmel, eg], times, CHUNK_S, MARGIN_S)
    alone = stream_audio_features(path, [eg], times, CHUNK_S, MARGIN_S)
    assert [f.shape for f in both.feats] == [(120, 128), (120, 25)]
    assert np.array_equal(both.feats[1], alone.feats[0]) and both.valid[1].all()
    assert both.decode_s > 0 and both.encode_s > 0 and both.nonfinite == [0, 0]


def test_no_track_empty_track_broken_track_and_undecodable_track(tmp_path):
    times = np.arange(60) / 30
    ext = LogMelExtractor()
    none = stream_audio_features(clip(tmp_path / "none.mp4", seconds=0.0), [ext], times)
    assert none.seconds is None and not none.valid[0].any() and not none.feats[0].any()
    empty = stream_audio_features(clip(tmp_path / "empty.mkv", seconds=0.0), [ext], times)
    assert empty.seconds == 0.0 and not empty.valid[0].any() and not empty.feats[0].any()
    # a stream that breaks mid-way ends at the last decodable sample, as read_audio does
    broken = clip(tmp_path / "broken.mp4", 16000, seconds=6.0, garbage_after=3.0)
    wave, sr = read_audio(broken, sample_rate=None)
    assert 2.5 < len(wave) / sr < 3.5
    got = stream_audio_features(broken, [ext], np.arange(180) / 30, CHUNK_S, 1)
    assert got.seconds == pytest.approx(len(wave) / sr)
    # nothing decodable: the one-line error read_audio gives, from extract too
    bad = clip(tmp_path / "bad.mp4", 16000, seconds=2.0, garbage_after=0.0)
    with pytest.raises(MediaError) as whole:
        read_audio(bad, sample_rate=None)
    with pytest.raises(MediaError) as streamed:
        stream_audio_features(bad, [ext], times)
    assert str(streamed.value) == str(whole.value)
    assert "audio stream cannot be decoded" in str(whole.value) and "\n" not in str(whole.value)
    sample = Sample("bad", "bad", bad, "train", None, None)
    with pytest.raises(MediaError, match="audio stream cannot be decoded"):
        audio_features(ext, sample, times, ExtractorStats())


def test_extract_notes_no_audio_and_short_audio(tmp_path):
    ext = LogMelExtractor()
    times = np.arange(90) / 30
    stats = ExtractorStats()
    for name in ("none.mp4", "empty.mkv"):
        sample = Sample(name, name, clip(tmp_path / name, seconds=0.0), "train", None, None)
        feats, valid = audio_features(ext, sample, times, stats)
        assert feats.shape == (90, 128) and not valid.any()
    short = Sample("short", "short", clip(tmp_path / "s.mp4", seconds=2.0), "train", None, None)
    feats, valid = audio_features(ext, short, times, stats)
    assert valid[times <= 2.0].all() and not valid[times > 2.1].any()
    assert stats.notes["no audio track"] == ["none.mp4", "empty.mkv"] and stats.notes[
        "audio shorter than video"
    ] == ["short"]
    assert stats.media_seconds == pytest.approx(2.0, abs=0.05)
