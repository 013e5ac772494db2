"""Results are never lost or silently replaced, and bad destinations and values are refused up front.

One test per case of issue 14 part 2: the command, what the user sees (one line, exit 2, no traceback) and
that nothing was done or left half-written.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from tests.helpers import SHARED_VIDEOS, fast_cv, write_linear_feature_corpus, write_video
from vafusion.cli import main
from vafusion.data.affwild2 import scan
from vafusion.data.folds import assign_folds, write_folds
from vafusion.errors import OutputError, VafusionError
from vafusion.inference import submit as submit_module
from vafusion.inference.overlay import Shown, draw_overlay
from vafusion.inference.predictor import Predictor
from vafusion.inference.writers import write_plot
from vafusion.io import atomic
from vafusion.io.audio import encode_audio


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def _errors(err: str) -> list[str]:
    """The error lines (warnings about the model are printed before the work and are not errors)."""
    return [line for line in err.strip().splitlines() if not line.startswith("vafusion: warning:")]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """a/clip.mp4 and b/clip.mp4: two short videos with one name."""
    root = tmp_path_factory.mktemp("clips")
    write_video(root / "a" / "clip.mp4", 12, fps=25)
    write_video(root / "b" / "clip.mp4", 15, fps=25, tone=220.0)
    return root


def _predict(tiny: Path, *args: str) -> tuple[int, str, str]:
    return _run(["predict", *args, "--model", str(tiny / "run"), "--quiet", "--no-plot"])


# -- 1. two inputs with one name, and results of earlier runs ------------------------------------------------


def test_inputs_with_one_name_get_one_output_each(tiny, clips, tmp_path) -> None:
    out = tmp_path / "preds"
    rc, stdout, err = _predict(tiny, str(clips / "a/clip.mp4"), str(clips / "b/clip.mp4"), "--out", str(out))
    assert rc == 0, err
    a, b = pd.read_csv(out / "a" / "clip.csv"), pd.read_csv(out / "b" / "clip.csv")
    assert (len(a), len(b)) == (12, 15) and not (out / "clip.csv").exists()
    assert "a/clip.mp4 -> a/clip" in stdout and "b/clip.mp4 -> b/clip" in stdout


def test_a_video_listed_twice_is_refused(tiny, clips, tmp_path) -> None:
    video = str(clips / "a/clip.mp4")
    rc, _, err = _predict(tiny, video, video, "--out", str(tmp_path / "o"))
    assert rc == 2 and _errors(err) == [f"vafusion: error: {video}: is listed twice; list each video once"]


def test_an_earlier_result_is_replaced_only_with_overwrite(tiny, clips, tmp_path) -> None:
    out = tmp_path / "o"
    video = str(clips / "a/clip.mp4")
    assert _predict(tiny, video, "--out", str(out))[0] == 0
    before = (out / "clip.csv").read_bytes()
    (out / "clip.csv").write_text("my edited results\n")
    rc, stdout, err = _predict(tiny, video, "--out", str(out))
    assert rc == 2 and "exists (from an earlier run)" in err and "--overwrite" in err and not stdout
    assert (out / "clip.csv").read_text() == "my edited results\n"
    assert _predict(tiny, video, "--out", str(out), "--overwrite")[0] == 0
    assert (out / "clip.csv").read_bytes() == before


# -- 2, 3, 5. destinations that are not folders, read-only or folders where a file is wanted -----------------


def test_out_that_is_a_file_is_refused_before_any_work(tiny, clips, tmp_path) -> None:
    f = tmp_path / "f"
    f.write_text("x\n")
    rc, stdout, err = _predict(tiny, str(clips / "a/clip.mp4"), "--out", str(f))
    assert rc == 2 and not stdout
    assert _errors(err) == [
        f"vafusion: error: {f}: exists and is not a folder; pass a folder to --out (or remove that file)"
    ]
    assert f.read_text() == "x\n"


def _read_only(monkeypatch, folder: Path) -> None:
    """Make writes into ``folder`` fail as on a read-only file system (root ignores chmod, so simulate)."""
    real = atomic.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)


def test_read_only_destinations_are_one_line_before_any_work(tiny, clips, tmp_path, monkeypatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    rc, stdout, err = _predict(tiny, str(clips / "a/clip.mp4"), "--out", str(ro / "preds"))
    assert rc == 2 and not stdout
    assert _errors(err) == [
        f"vafusion: error: {ro / 'preds'}: read-only file system ({atomic.mount_point(ro)}); "
        "pass a folder you can write to as --out"
    ]
    rc, _, err = _run(["extract", "--data", str(tiny / "data"), "--features", str(ro / "feats"), "--quiet"])
    assert rc == 2 and "read-only file system" in err and str(ro / "feats") in err and "--features" in err
    assert not list(ro.rglob("*.npz"))


def test_submit_out_that_is_a_folder_is_refused(tiny, tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "list.txt").write_text("some_video\n")
    rc, stdout, err = _run(
        [
            "submit",
            "--data",
            str(tiny / "data"),
            "--videos",
            str(tmp_path / "list.txt"),
            "--out",
            str(tmp_path / "d"),
            "--model",
            str(tiny / "run"),
            "--quiet",
        ]
    )
    assert rc == 2 and not stdout
    assert _errors(err) == [
        f"vafusion: error: {tmp_path / 'd'}: is a folder; pass a file name to --out, e.g. "
        f"{tmp_path / 'd' / 'submission.txt'}"
    ]


# -- 4. a full disk ------------------------------------------------------------------------------------------


def _disk_fills_after(monkeypatch, files: int) -> None:
    """The ``files + 1``-th atomic write runs out of space (as on a full disk: the write itself fails)."""
    done = {"n": 0}
    real = atomic.os.replace

    def replace(src, dst):
        if done["n"] >= files:
            raise OSError(errno.ENOSPC, "No space left on device")
        done["n"] += 1
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_a_full_disk_stops_extract_with_one_line_and_keeps_finished_files(
    tiny, tmp_path, monkeypatch
) -> None:
    feats = tmp_path / "feats"
    _disk_fills_after(monkeypatch, 3)
    rc, stdout, err = _run(["extract", "--data", str(tiny / "data"), "--features", str(feats), "--quiet"])
    lines = _errors(err)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in stdout + err
    assert lines[0].startswith(
        f"vafusion: error: no space left on {atomic.mount_point(feats)} writing {feats}"
    )
    kept = sorted(feats.rglob("*.npz"))
    assert len(kept) == 3 and not list(feats.rglob(".*tmp*"))
    for f in kept:
        assert np.load(f)["features"].ndim == 2  # the finished files are whole


def test_a_full_disk_stops_predict_and_submit_with_one_line(tiny, clips, tmp_path, monkeypatch) -> None:
    _disk_fills_after(monkeypatch, 1)
    out = tmp_path / "o"
    rc, _, err = _predict(tiny, str(clips / "a/clip.mp4"), str(clips / "b/clip.mp4"), "--out", str(out))
    assert rc == 2 and _errors(err)[-1].startswith("vafusion: error: no space left on")
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["clip.csv"]  # the first result is kept, whole


# -- 6, 7. values out of range -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, allowed",
    [
        ("train.window=0", "train.window=0 is out of range; allowed: an integer >= 1"),
        (
            "model.kernel_sizes=[4]",
            "model.kernel_sizes=[4] is out of range; allowed: a non-empty list of odd",
        ),
        ("train.batch_size=-3", "train.batch_size=-3 is out of range; allowed: an integer >= 1"),
        ("model.dilations=[]", "model.dilations=[] is out of range; allowed: a non-empty list of integers"),
        (
            "train.hop=301",
            "train.hop=301 is out of range; allowed: an integer 1 <= hop <= train.window (300)",
        ),
        ("features.face_batch=0", "features.face_batch=0 is out of range; allowed: an integer >= 1"),
        ("features.audio_hop=-1", "features.audio_hop=-1.0 is out of range; allowed: a number >= 0"),
        ("train.lr=0", "train.lr=0.0 is out of range; allowed: a number > 0"),
        (
            "model.head_dropout=1.5",
            "model.head_dropout=1.5 is out of range; allowed: a probability 0 <= p < 1",
        ),
        ("cv.folds=[9]", "cv.folds=[9] is out of range; allowed: fold numbers 0..5"),
        ("cv.folds=[0,0]", "cv.folds=[0, 0] is out of range; allowed: a non-empty list of distinct fold"),
        ("cv.models=[visual,visual]", "cv.models=['visual', 'visual'] is out of range; allowed: a non-empty"),
        ("cv.seed=-1", "cv.seed=-1 is out of range; allowed: an integer 0 <= seed < 2**32"),
        ("train.accelerator=tpu9", "train.accelerator='tpu9' is out of range; allowed: one of auto, cpu"),
        ("train.precision=17", "train.precision='17' is out of range; allowed: one of 64-true"),
        ("cv.folds=0", "invalid configuration for cv.folds: "),
        ("train.max_epochs", "--set 'train.max_epochs' has no value; write --set KEY=VALUE"),
    ],
)
def test_config_values_are_range_checked_when_loaded(tiny, tmp_path, setting: str, allowed: str) -> None:
    for command in (
        [
            "cv",
            "--data",
            str(tiny / "data"),
            "--features",
            str(tiny / "feats"),
            "--out",
            str(tmp_path / "run"),
        ],
        ["extract", "--data", str(tiny / "data"), "--features", str(tmp_path / "feats")],
    ):
        rc, stdout, err = _run([*command, "--set", setting, "--quiet"])
        assert rc == 2 and not stdout and len(err.strip().splitlines()) == 1, (command, err)
        assert err.startswith(f"vafusion: error: {allowed}")
    assert not (tmp_path / "run").exists() and not (tmp_path / "feats").exists()


def test_bad_numbers_on_the_command_line_are_one_line(tiny, clips, tmp_path) -> None:
    for flag, value in (
        ("--detect-size", "0"),
        ("--detect-every", "0"),
        ("--smooth", "-1"),
        ("--audio-stream", "-1"),
        ("--detect-size", "big"),
    ):
        proc = subprocess.run(
            ["vafusion", "predict", str(clips / "a/clip.mp4"), "--model", str(tiny / "run"), flag, value],
            capture_output=True,
            text=True,
            check=False,
            env=dict(os.environ, PATH=f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"),
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"vafusion predict: error: argument {flag}:")


# -- 8. a fold without usable samples ------------------------------------------------------------------------


def test_an_empty_fold_is_found_before_any_training_and_names_the_samples(tmp_path) -> None:
    write_linear_feature_corpus(tmp_path, videos=10, frames=60)
    for k in range(3):  # the three Validation_Set videos: fold 0 loses every sample
        (tmp_path / "feats" / "logmel" / f"vid{k:02d}.npz").write_bytes(b"broken")
    run = tmp_path / "run"
    rc, stdout, err = _run(
        [
            "cv",
            "--data",
            str(tmp_path / "data"),
            "--features",
            str(tmp_path / "feats"),
            "--out",
            str(run),
            "--models",
            "visual",
            "--quiet",
            *fast_cv(1),
        ]
    )
    lines = _errors(err)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in stdout + err
    assert "fold 0 has 0 usable test and 7 training samples (3 left out:" in lines[0]
    assert all(str(tmp_path / "feats" / "logmel" / f"vid{k:02d}.npz") in lines[0] for k in range(3))
    assert not (run / "models").exists() and not (run / "work").exists()  # nothing was trained


# -- 9. a submission that fails half-way ---------------------------------------------------------------------


def test_a_failed_submission_says_where_its_finished_videos_are(
    tiny, predictor, tmp_path, monkeypatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny / "data", data)
    names = sorted(p.stem for p in (data / "annotations/VA_Estimation_Challenge/Train_Set").glob("*.txt"))[:3]
    real = submit_module.predict_sample
    calls: list[str] = []

    def failing(pred, sample, notes=None):
        calls.append(sample.name)
        if len(calls) == 3:
            raise VafusionError(sample.video, "simulated decoder failure", "re-encode it")
        return real(pred, sample, notes)

    monkeypatch.setattr(submit_module, "predict_sample", failing)
    out = tmp_path / "sub.txt"
    with pytest.raises(VafusionError) as caught:
        submit_module.write_submission(predictor, data, names, out)
    message = caught.value.one_line()
    assert "simulated decoder failure; re-encode it; " in message
    assert f"{out}.parts keeps the 2 videos finished so far: rerun the same command to continue" in message
    assert len(list(Path(f"{out}.parts").glob("*.npy"))) == 2 and not out.exists()


# -- 10. several audio streams -------------------------------------------------------------------------------


def _two_audio_streams(path: Path, seconds: float = 1.0) -> Path:
    """A video with two mono audio streams: a 220 Hz tone, then silence."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        tracks = [out.add_stream("aac", rate=16000, layout="mono") for _ in range(2)]
        tracks[1].metadata["language"] = "fra"
        for i in range(int(25 * seconds)):
            for p in vs.encode(
                av.VideoFrame.from_ndarray(np.full((48, 64, 3), 5 * i, np.uint8), format="rgb24")
            ):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        t = np.arange(int(16000 * seconds)) / 16000
        for track, wave in zip(tracks, (0.3 * np.sin(2 * np.pi * 220 * t), np.zeros_like(t))):
            for p in encode_audio(track, wave.astype(np.float32), 16000):
                out.mux(p)
    return path


def test_several_audio_streams_are_named_and_one_is_chosen(tiny, tmp_path) -> None:
    video = _two_audio_streams(tmp_path / "two.mp4")
    rc, _, err = _predict(tiny, str(video), "--out", str(tmp_path / "o"))
    assert rc == 0
    assert (
        f"vafusion: warning: {video}: 2 audio streams (0: aac, 1 ch, 16000 Hz; 1: aac, 1 ch, 16000 Hz, fra); "
        "using stream 0; --audio-stream N picks another"
    ) in err
    first = Predictor.from_run(tiny / "run").extract(video)
    second = Predictor.from_run(tiny / "run", audio_stream=1).extract(video)
    assert not np.allclose(first.feats["logmel"], second.feats["logmel"])  # tone vs silence
    rc, _, err = _predict(tiny, str(video), "--out", str(tmp_path / "o2"), "--audio-stream", "2")
    assert rc == 2 and "has 2 audio streams, no stream 2; pass --audio-stream 0..1" in err


# -- 11. a subject that is not there -------------------------------------------------------------------------


def test_a_subject_that_never_appears_is_said(tiny, tmp_path) -> None:
    video = SHARED_VIDEOS / "d12.mp4"
    if not video.is_file():
        pytest.skip("real test videos not found")
    rc, _, err = _predict(tiny, str(video), "--out", str(tmp_path / "o"), "--subject", "7")
    assert rc == 0
    assert (
        f"vafusion: warning: {video}: no face number 7 from the left (counting from 0): at most 1 face was "
        "visible at once; every frame is predicted without a face (--subject 0..0 picks one)"
    ) in err
    assert pd.read_csv(tmp_path / "o" / "d12.csv")["face"].sum() == 0


# -- 12. a video without audio in a submission ---------------------------------------------------------------


def test_a_video_without_audio_is_counted_once(tiny, predictor, tmp_path) -> None:
    manifest = json.loads((tiny / "data" / "synth_manifest.json").read_text())
    silent = manifest["cases"]["no_audio"]
    summary = submit_module.write_submission(predictor, tiny / "data", [silent], tmp_path / "s.txt")
    assert summary.notes["no audio track"] == [silent]


# -- 13. a model trained on the built-in synthetic corpus ----------------------------------------------------


def test_a_demo_model_says_so_once_per_command_and_on_its_outputs(tiny, clips, tmp_path) -> None:
    rc, _, err = _run(
        [
            "predict",
            str(clips / "a/clip.mp4"),
            str(clips / "b/clip.mp4"),
            "--model",
            str(tiny / "run"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert rc == 0 and err.count("trained on vafusion's built-in synthetic corpus") == 1
    predictor = Predictor.from_run(tiny / "run")
    assert "synthetic" in predictor.bundle.caption
    assert json.loads((tiny / "run" / "streams.json").read_text())["data"]["synthetic"] is True
    table = pd.read_csv(tmp_path / "o" / "a" / "clip.csv")
    write_plot(table, tmp_path / "plain.png")
    write_plot(table, tmp_path / "captioned.png", caption=predictor.bundle.caption)
    assert (tmp_path / "plain.png").read_bytes() != (tmp_path / "captioned.png").read_bytes()
    frame = np.full((240, 320, 3), 128, np.uint8)
    times, shown = np.arange(3) / 25, [Shown("", np.zeros((3, 2)), np.full((3, 4), np.nan))]
    plain = draw_overlay(frame, 2, times, shown)
    marked = draw_overlay(frame, 2, times, shown, caption=predictor.bundle.caption)
    assert (plain[:20] != marked[:20]).any() and (plain[40:] == marked[40:]).all()


def test_an_output_error_is_a_vafusion_error() -> None:
    assert issubclass(OutputError, VafusionError)


def test_a_requested_fold_without_samples_is_an_error_not_skipped(tiny, tmp_path) -> None:
    """A fold table that leaves a fold of cv.folds empty stops before training (the mean over folds would
    silently be over fewer folds)."""
    common = ["cv", "--data", str(tiny / "data"), "--features", str(tiny / "feats"), "--quiet"]
    folds = tmp_path / "folds.csv"
    table = assign_folds(scan(tiny / "data").samples, seed=0)
    table.loc[table["fold"] == 1, "fold"] = 2
    write_folds(table, folds)
    run = ["--out", str(tmp_path / "run"), "--folds", str(folds), "--set", "cv.folds=[0,1]"]
    rc, _, err = _run([*common, *run])
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"vafusion: error: {folds}: fold 1 of cv.folds has no samples")
    assert not (tmp_path / "run" / "results.csv").exists()
