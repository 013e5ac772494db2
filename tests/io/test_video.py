from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.helpers import write_video
from vafusion.errors import MediaError
from vafusion.io.video import VideoInfo, frame_times, iter_frames, probe, read_audio, row_times


def test_frames_come_in_order_with_container_times(tmp_path):
    p = write_video(tmp_path / "a.mp4", 20, fps=25)
    info = probe(p, count_frames=True)
    assert info.n_frames == 20 and info.fps == pytest.approx(25.0) and info.has_audio
    frames = list(iter_frames(p))
    assert [f.index for f in frames] == list(range(20))
    assert np.allclose([f.time for f in frames], frame_times(20, 25.0), atol=1e-6)
    # frame i shows brightness 7*i: decoded frames are in presentation order
    means = [f.image.mean() for f in frames]
    assert np.allclose(means, [7 * i for i in range(20)], atol=3)


def test_frame_times_convention():
    t = frame_times(4, 30.0)
    assert t.tolist() == pytest.approx([0, 1 / 30, 2 / 30, 3 / 30])


def test_read_audio_mono_resampled_and_none_without_track(tmp_path):
    p = write_video(tmp_path / "a.mp4", 30, fps=30, sample_rate=44100)
    wave, sr = read_audio(p, 16000)
    assert sr == 16000 and wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) / sr - 1.0) < 0.1
    native = read_audio(p, None)
    assert native[1] == 44100
    q = write_video(tmp_path / "b.mp4", 10, audio=False)
    assert read_audio(q) is None
    assert not probe(q).has_audio


@pytest.mark.parametrize("content", [b"", b"this is not a video at all" * 10, bytes(range(256)) * 40])
def test_garbage_files_raise_media_error_naming_the_file(tmp_path, content):
    p = tmp_path / "broken.mp4"
    p.write_bytes(content)
    with pytest.raises(MediaError) as err:
        probe(p)
    assert "broken.mp4" in str(err.value)


def test_real_videos_decode_with_rotation_applied(shared_videos):
    info = probe(shared_videos / "s29.mp4")
    assert (info.width, info.height) == (720, 1364)
    first = next(iter_frames(shared_videos / "s29.mp4"))
    assert first.image.shape == (1364, 720, 3)


def test_read_ahead_keeps_order_and_raises_where_the_source_did() -> None:
    import threading

    from vafusion.io.video import read_ahead

    def source():
        yield from range(20)
        raise MediaError(Path("clip.mp4"), "decoding stopped at frame 20 (test)", "re-encode it")

    got = []
    with pytest.raises(MediaError, match="frame 20"):
        for x in read_ahead(source(), depth=3):
            got.append(x)
    assert got == list(range(20))

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    reader = read_ahead(endless(), depth=2)
    assert [next(reader) for _ in range(5)] == [0, 1, 2, 3, 4]
    reader.close()  # the consumer stops early: the producer thread ends and closes its source
    assert closed.wait(2.0)
    assert not any(t.name == "vafusion-read-ahead" for t in threading.enumerate())


# property tests (hypothesis)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 5000), st.floats(1, 120))
def test_frame_times_put_line_i_at_i_minus_1_over_fps(n, fps):
    t = frame_times(n, fps)
    assert t.shape == (n,) and t.dtype == np.float64
    assert np.array_equal(t, np.arange(n) / fps)
    assert (np.diff(t) > 0).all() and (n == 0 or t[0] == 0.0)


def _info(n: int, fps: float, times: np.ndarray | None) -> VideoInfo:
    return VideoInfo(
        path=Path("v.mp4"),
        fps=fps,
        n_frames=n,
        width=64,
        height=48,
        duration=n / fps,
        rotation=0,
        has_audio=True,
        audio_rate=16000,
        audio_channels=1,
        times=times,
    )


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 300), st.floats(5, 60), st.integers(-40, 40), st.integers(0, 2**31 - 1))
def test_row_times_follow_real_timestamps_only_for_variable_frame_rate(n, fps, extra_rows, seed):
    rows = max(1, n + extra_rows)
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-0.4, 0.4, n) / fps  # constant rate with timestamp rounding: nominal times
    jitter[0] = 0.0
    cfr = frame_times(n, fps) + jitter
    assert np.array_equal(row_times(_info(n, fps, np.sort(cfr)), rows), frame_times(rows, fps))
    assert np.array_equal(row_times(_info(n, fps, None), rows), frame_times(rows, fps))
    gaps = rng.choice([0.5, 1.0, 2.5], n - 1) / fps  # variable rate: each row at its frame's own time
    vfr = np.concatenate([[0.0], np.cumsum(gaps)])
    assume(np.abs(vfr - frame_times(n, fps)).max() > 0.5 / fps)
    t = row_times(_info(n, fps, vfr), rows)
    k = min(n, rows)
    assert t.shape == (rows,) and np.array_equal(t[:k], vfr[:k]) and (np.diff(t) > 0).all()
    if rows > n:  # past the last frame: on at the average rate
        assert t[n:] == pytest.approx(vfr[-1] + np.arange(1, rows - n + 1) / fps)


def test_times_of_recordings_joined_byte_wise_keep_increasing(tmp_path):
    """`cat a.ts b.ts`: the second recording's clock starts again at 0; its frames continue after the first
    one's instead of running back (which also made the frame rate look halved)."""
    a = write_video(tmp_path / "a.ts", 20, fps=25, audio=False)
    b = write_video(tmp_path / "b.ts", 15, fps=25, audio=False)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    times = np.array([f.time for f in iter_frames(joined)])
    assert len(times) == 35
    assert np.all(np.diff(times) > 0)
    assert np.allclose(times, np.arange(35) / 25, atol=1e-3)
    assert np.allclose([f.time for f in iter_frames(a)], np.arange(20) / 25, atol=1e-6)  # one clock: as read
