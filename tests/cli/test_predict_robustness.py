"""`vafusion predict` on awkward inputs and output names: unseekable or frameless files, an unexpected error
in one video, --verbose, inputs that share a stem, outputs that would replace an input, values the
parser must refuse, and non-finite audio samples. Every file is written here with PyAV."""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from tests.helpers import write_timed_frames, write_video
from vafusion.cli import main
from vafusion.errors import MediaError
from vafusion.features.audio_stream import stream_audio_features
from vafusion.features.extractors import EGeMAPSExtractor, LogMelExtractor
from vafusion.inference.ensemble import smooth_series
from vafusion.inference.predictor import Predictor
from vafusion.io.audio import encode_audio
from vafusion.io.video import iter_frames, probe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def _predict(tiny: Path, *args: str) -> tuple[int, str, str]:
    return _run(["predict", *args, "--model", str(tiny / "run"), "--quiet", "--no-plot"])


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("vafusion: error: ")]


def write_raw_h264(path: Path, n: int = 10) -> Path:
    """An H.264 elementary stream (no container): FFmpeg reads it but cannot seek in it."""
    with av.open(str(path), "w", format="h264") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            img = np.full((48, 64, 3), 20 * i, np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def write_frameless_video(path: Path) -> Path:
    """A Matroska file whose video stream holds no frame, beside one second of audio."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("aac", rate=16000)
        aus.layout = "mono"
        wave = (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32)
        for p in encode_audio(aus, wave, 16000):
            out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def write_offset_clip(path: Path, video_start: float, audio_start: float, silent_s: float = 0.0) -> Path:
    """50 frames at 25 fps whose first frame is at ``video_start`` s and 3 s of AAC audio from
    ``audio_start`` s: silent for its first ``silent_s`` s, a tone after."""
    rate = 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * np.arange(3 * rate) / rate)).astype(np.float32)
    wave[: int(silent_s * rate)] = 0.0
    with av.open(str(path), "w") as out:
        aus = out.add_stream("aac", rate=rate, layout="mono")
        write_timed_frames(out, 50, video_start)
        for p in encode_audio(aus, wave, rate, start=round(audio_start * rate)):
            out.mux(p)
    return path


def write_float_pcm_video(path: Path, wave: np.ndarray, n_frames: int = 50, rate: int = 16000) -> Path:
    """A 25 fps Matroska clip with ``wave`` stored as 32-bit float PCM, which can hold NaN and Inf."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("pcm_f32le", rate=rate, layout="mono")
        for i in range(n_frames):
            img = np.full((48, 64, 3), (7 * i) % 256, np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        for s in range(0, wave.size, 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, s : s + 1024].astype(np.float32), "flt", "mono")
            frame.sample_rate, frame.pts = rate, s
            for p in aus.encode(frame):
                out.mux(p)
        for p in aus.encode(None):
            out.mux(p)
    return path


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("awkward")
    rate = 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * np.arange(2 * rate) / rate)).astype(np.float32)
    wave[rate // 2 : rate // 2 + 100] = np.nan  # 0.5 s
    wave[rate + rate // 2] = np.inf  # 1.5 s
    return {
        "good": write_video(d / "good.mp4", 12, fps=25),
        "raw": write_raw_h264(d / "raw.h264"),
        "frameless": write_frameless_video(d / "frameless.mkv"),
        "nan_audio": write_float_pcm_video(d / "nan_audio.mkv", wave),
    }


# -- files FFmpeg cannot rewind, a video stream without frames -------------------------------------------


def test_unseekable_stream_is_counted_and_frameless_stream_is_a_media_error(awkward) -> None:
    info = probe(awkward["raw"], count_frames=True)
    assert info.n_frames == 10 == len(list(iter_frames(awkward["raw"])))
    with pytest.raises(MediaError, match="video stream holds no frames; check"):
        probe(awkward["frameless"], count_frames=True)


def test_predict_names_a_frameless_file_and_finishes_the_batch(tiny, awkward, tmp_path) -> None:
    out = tmp_path / "o"
    videos = [str(awkward[k]) for k in ("frameless", "raw", "good")]
    rc, stdout, err = _predict(tiny, *videos, "--out", str(out))
    assert rc == 2 and "Traceback" not in stdout + err
    assert _errors(err) == [
        f"vafusion: error: {awkward['frameless']}: video stream holds no frames; "
        "check that the file is a complete video"
    ]
    assert len(pd.read_csv(out / "raw.csv")) == 10 and len(pd.read_csv(out / "good.csv")) == 12


# -- an unexpected error in one video, and --verbose ------------------------------------------------


def _fail_on(monkeypatch, bad: Path) -> None:
    real = Predictor.predict_file

    def predict_file(self, path, *args, **kwargs):
        if Path(path) == bad:
            raise ZeroDivisionError("float division by zero")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_file", predict_file)


def test_an_unexpected_error_costs_one_video_with_one_line(tiny, awkward, tmp_path, monkeypatch) -> None:
    bad = tmp_path / "bad.mp4"
    shutil.copy(awkward["good"], bad)
    _fail_on(monkeypatch, bad)
    out = tmp_path / "o"
    rc, stdout, err = _predict(tiny, str(bad), str(awkward["good"]), "--out", str(out))
    assert rc == 2 and "Traceback" not in stdout + err
    assert _errors(err) == [
        f"vafusion: error: {bad}: failed with ZeroDivisionError (float division by zero); "
        "rerun with --verbose for details, and report it if the file plays elsewhere"
    ]
    assert len(pd.read_csv(out / "good.csv")) == 12 and not (out / "bad.csv").exists()


@pytest.mark.parametrize("case", ["media_error", "unexpected"])
def test_verbose_adds_tracebacks_and_the_batch_goes_on(tiny, awkward, tmp_path, monkeypatch, case) -> None:
    bad = tmp_path / "bad.mp4"
    if case == "media_error":
        bad.write_bytes(b"")
    else:
        shutil.copy(awkward["good"], bad)
        _fail_on(monkeypatch, bad)
    out = tmp_path / "o"
    rc, _, err = _predict(tiny, str(bad), str(awkward["good"]), "--out", str(out), "--verbose")
    assert rc == 2 and err.count("Traceback (most recent call last)") == 1
    assert len(_errors(err)) == 1 and str(bad) in _errors(err)[0]
    assert len(pd.read_csv(out / "good.csv")) == 12


# -- output names ------------------------------------------------------------------------------------


def test_inputs_with_one_stem_in_one_folder_keep_their_extensions(tiny, tmp_path) -> None:
    write_video(tmp_path / "a" / "clip.mp4", 12, fps=25)
    write_video(tmp_path / "a" / "clip.mkv", 15, fps=25)
    out = tmp_path / "o"
    rc, stdout, err = _predict(
        tiny, str(tmp_path / "a/clip.mp4"), str(tmp_path / "a/clip.mkv"), "--out", str(out)
    )
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["clip.mkv.csv", "clip.mp4.csv"]
    assert len(pd.read_csv(out / "clip.mp4.csv")) == 12 and len(pd.read_csv(out / "clip.mkv.csv")) == 15
    assert "a/clip.mp4 -> clip.mp4" in stdout and "a/clip.mkv -> clip.mkv" in stdout


def test_an_output_that_is_an_input_is_refused_before_any_work(tiny, awkward, tmp_path) -> None:
    a, a_overlay, own = tmp_path / "a.mp4", tmp_path / "a_overlay.mp4", tmp_path / "v.png"
    for p in (a, a_overlay, own):
        shutil.copy(awkward["good"], p)
    before = a_overlay.read_bytes()
    for overwrite in ([], ["--overwrite"]):
        rc, stdout, err = _run(
            [
                "predict",
                str(a),
                str(a_overlay),
                "--overlay",
                "--out",
                str(tmp_path),
                "--model",
                str(tiny / "run"),
                "--quiet",
                "--no-plot",
                *overwrite,
            ]
        )
        assert rc == 2 and not stdout and "exists (from an earlier run)" not in err
        assert _errors(err) == [
            f"vafusion: error: {a_overlay}: is an input and would be replaced by the overlay output of {a} "
            f"({a_overlay}); choose another --out (outputs are named after the inputs)"
        ]
        assert a_overlay.read_bytes() == before and not (tmp_path / "a.csv").exists()
    rc, _, err = _run(["predict", str(own), "--out", str(tmp_path), "--model", str(tiny / "run"), "--quiet"])
    assert rc == 2 and f"{own}: is an input and would be replaced by its own png output" in err


# -- values the parser refuses, and a tiny smoothing width -----------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_smooth_must_be_finite(awkward, tmp_path, capsys, value) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(awkward["good"]), "--model", str(tmp_path), "--smooth", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("vafusion predict: error: argument --smooth:")


def test_a_tiny_smoothing_width_leaves_the_series_as_it_is_without_warnings() -> None:
    values = np.linspace(-1, 1, 10, dtype=np.float32)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = smooth_series(values, np.arange(10) / 25, 1e-300)
    assert np.array_equal(got, values)


# -- NaN and Inf samples in float PCM audio --------------------------------------------------------------


def test_nonfinite_audio_samples_make_their_rows_missing(awkward) -> None:
    times = np.arange(50) / 25
    got = stream_audio_features(awkward["nan_audio"], [EGeMAPSExtractor(), LogMelExtractor()], times)
    near = (np.abs(times - 0.5) <= 0.51) | (np.abs(times - 1.5) <= 0.5)  # front ends look 0.5 s around
    for valid, feats in zip(got.valid, got.feats, strict=True):
        assert not valid[near].any() and valid[~near & (times > 0.1)].all()
        assert np.isfinite(feats).all()
    assert got.nonfinite == [int(near.sum())] * 2


def test_predict_warns_about_nonfinite_audio_and_predicts(tiny, awkward, tmp_path) -> None:
    rc, _, err = _predict(tiny, str(awkward["nan_audio"]), "--out", str(tmp_path))
    assert rc == 0 and "Traceback" not in err, err
    assert f"vafusion: warning: {awkward['nan_audio']}: the audio of " in err and "NaN or infinite" in err
    table = pd.read_csv(tmp_path / "nan_audio.csv")
    assert len(table) == 50 and table[["valence", "arousal"]].notna().all().all()


# -- audio and video that start at different times -------------------------------------------------------


def _loudness(path: Path, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    got = stream_audio_features(path, [EGeMAPSExtractor()], times)
    return got.feats[0][:, 0], got.valid[0], got.lead  # eGeMAPS' first descriptor is loudness


def test_audio_rows_follow_the_streams_timestamps(tmp_path) -> None:
    times = np.arange(50) / 25
    # the video starts 1 s into the audio, where the tone begins: every frame hears the tone
    loud, valid, lead = _loudness(
        write_offset_clip(tmp_path / "video_late.mp4", 1.0, 0.0, silent_s=1.0), times
    )
    assert lead == pytest.approx(-1.0, abs=0.07) and valid.all()
    assert (loud[2:-2] > 0.5 * np.median(loud)).all()
    # the audio starts 1 s after the video: the frames before have no audio
    loud, valid, lead = _loudness(write_offset_clip(tmp_path / "audio_late.mp4", 0.0, 1.0), times)
    assert lead == pytest.approx(1.0, abs=0.07)
    assert not valid[times < lead].any() and valid[times > lead + 0.05].all()


def test_a_late_audio_track_is_said(tiny, tmp_path) -> None:
    clip = write_offset_clip(tmp_path / "audio_late.mp4", 0.0, 1.0)
    rc, _, err = _predict(tiny, str(clip), "--out", str(tmp_path / "o"))
    assert rc == 0 and f"vafusion: warning: {clip}: audio starts 0." in err
    assert "s after the video; earlier frames are predicted from " in err


# -- several video streams -------------------------------------------------------------------------------


def test_several_video_streams_are_named_and_the_first_is_used(tiny, tmp_path) -> None:
    path = tmp_path / "two_video.mkv"
    with av.open(str(path), "w") as out:
        streams = [out.add_stream("libx264", rate=25) for _ in range(2)]
        for vs, (w, h) in zip(streams, [(64, 64), (96, 64)], strict=True):
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for vs, n in zip(streams, [5, 12], strict=True):
            for i in range(n):
                img = np.full((vs.height, vs.width, 3), 9 * i, np.uint8)
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
            for p in vs.encode():
                out.mux(p)
    rc, _, err = _predict(tiny, str(path), "--out", str(tmp_path / "o"))
    assert rc == 0, err
    assert (
        f"vafusion: warning: {path}: 2 video streams (0: h264, 64x64; 1: h264, 96x64); using stream 0; for "
        "another, copy it out first: ffmpeg -i IN -map 0:v:N -map 0:a? -c copy OUT.mkv"
    ) in err
    assert len(pd.read_csv(tmp_path / "o" / "two_video.csv")) == 5


def test_the_library_says_predict_takes_one_path(predictor) -> None:
    with pytest.raises(TypeError, match="predict takes one video path, got a list; one call per file"):
        predictor.predict(["a.mp4", "b.mp4"])
