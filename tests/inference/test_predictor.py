"""`vafusion predict` / `Predictor`: raw video in, per-frame VA out.

Clips are made here from matplotlib's real photograph (Grace Hopper) at 25/30/60 fps, rotated, with a
variable frame rate, with and without audio (16/44.1/8 kHz, mono/stereo); plus the real test videos. The
model is a tiny run trained in the test (`tiny`/`predictor` in conftest.py, trained once per session).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest

from vafusion.cli import main
from vafusion.errors import MediaError, VafusionError, WeightsError
from vafusion.face.align import ARCFACE_TEMPLATE, CROP_SIZE
from vafusion.features.extractors import EGeMAPSExtractor, LogMelExtractor
from vafusion.features.timing import anchor_rows
from vafusion.inference.ensemble import smooth_series
from vafusion.inference.overlay import write_overlay
from vafusion.inference.predictor import AudioWarning, FpsWarning, Predictor
from vafusion.io.audio import encode_audio, iter_audio_chunks
from vafusion.io.video import probe, read_audio


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def voice(seconds: float, rate: int) -> np.ndarray:
    """A voiced, syllable-modulated 140 Hz harmonic tone (mono float32)."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (0.2 * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2)).astype(np.float32)


def photo_clip(
    path: Path,
    photo: np.ndarray,
    n: int = 30,
    fps: int = 30,
    size: tuple[int, int] = (320, 240),
    audio_rate: int | None = 16000,
    channels: int = 1,
    rotation: int = 0,
    times: np.ndarray | None = None,
    face: np.ndarray | None = None,
) -> Path:
    """H.264 (+ AAC) clip of the photo on grey, gently moving; ``rotation`` is stored as display metadata
    (pixels turned the other way, so a player that applies it shows the face upright)."""
    w, h = size
    scale = 0.8 * h / photo.shape[0]
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    vfr = times is not None
    if times is None:
        times = np.arange(n) / fps
    k = {0: 0, 90: 1, 180: 2, 270: 3}[rotation]
    enc_w, enc_h = (h, w) if k % 2 else (w, h)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = enc_w, enc_h, "yuv420p"
        tb = Fraction(1, 1000) if vfr else Fraction(1, fps)
        vs.codec_context.time_base = tb
        if rotation:
            vs.set_display_rotation(rotation)
        aus = None
        if audio_rate:
            aus = out.add_stream("aac", rate=audio_rate, layout="stereo" if channels == 2 else "mono")
        for i, t in enumerate(times):
            frame = np.full((h, w, 3), 110, np.uint8)
            if face is None or face[i]:
                x = int((w - small.shape[1]) / 2 + 6 * np.sin(i / 5))
                y = int((h - small.shape[0]) / 2)
                frame[y : y + small.shape[0], x : x + small.shape[1]] = small
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(frame, -k)), format="rgb24")
            vf.pts, vf.time_base = round(t / tb), tb
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if aus is not None:
            wave = voice(float(times[-1]) + 1 / fps, audio_rate)
            planes = np.stack([wave, 0.8 * wave]) if channels == 2 else wave[None]
            for p in encode_audio(aus, planes, audio_rate):
                out.mux(p)
    return path


def eye_positions(landmark_rows: np.ndarray) -> np.ndarray:
    """Mean (x, y) of each eye's six points, in crop pixels, from landmark feature rows (N, 136)."""
    pts = landmark_rows.reshape(-1, 68, 2) * CROP_SIZE
    return np.stack([pts[:, 36:42].mean(1), pts[:, 42:48].mean(1)], axis=1)


def check_table(df: pd.DataFrame, n: int) -> None:
    assert list(df.columns) == ["frame", "time", "valence", "arousal", "face"] + [
        "box_x",
        "box_y",
        "box_w",
        "box_h",
        "valence_sd",
        "arousal_sd",
    ]
    boxes = df[["box_x", "box_y", "box_w", "box_h"]]
    assert boxes.isna().all(axis=1).eq(df["face"] == 0).all()  # a box exactly where a face was found
    assert (boxes[df["face"] == 1][["box_w", "box_h"]] > 0).all().all()
    assert (df[["valence_sd", "arousal_sd"]] >= 0).all().all()
    assert len(df) == n and df["frame"].tolist() == list(range(1, n + 1))
    assert np.isfinite(df[["valence", "arousal"]].to_numpy()).all()
    assert df[["valence", "arousal"]].abs().le(1).all().all()
    assert np.all(np.diff(df["time"].to_numpy()) > 0)


# -- decoding variants -------------------------------------------------------------------------------


def test_photo_clip_30fps_with_audio_face_found_and_aligned(tmp_path, predictor, photo):
    clip = photo_clip(tmp_path / "a.mp4", photo, n=30, fps=30)
    res = predictor.predict_file(clip)
    df, vf = res.table, res.features
    check_table(df, 30)
    assert np.allclose(df["time"], np.arange(30) / 30, atol=1e-9)
    assert df["face"].mean() >= 0.9
    # the crops the model saw are ArcFace-aligned: eye centres sit on the template's (within 4 px of 112;
    # the landmark extractor re-fits the eyes inside the crop, which moves them by up to ~3 px)
    eyes = eye_positions(vf.feats["visual"][vf.face])
    assert np.abs(np.median(eyes, axis=0) - ARCFACE_TEMPLATE[:2]).max() < 4.0
    for role in ("vggish", "logmel"):
        assert vf.valid[role].all() and np.abs(vf.feats[role]).sum(1).min() > 0
    assert vf.audio_seconds == pytest.approx(1.0, abs=0.05)
    assert set(vf.timings) >= {
        "video_decode",
        "detect",
        "track",
        "align",
        "face_encode",
        "audio_decode",
        "audio_encode",
        "fuse",
        "total",
    }


def test_25fps_without_audio_predicts_from_the_face_and_warns(tmp_path, predictor, photo):
    clip = photo_clip(tmp_path / "silent.mp4", photo, n=25, fps=25, audio_rate=None)
    with pytest.warns(AudioWarning, match="no audio track"):
        res = predictor.predict_file(clip)
    check_table(res.table, 25)
    assert np.allclose(res.table["time"], np.arange(25) / 25, atol=1e-9)
    assert res.features.audio_seconds is None
    assert not res.features.valid["vggish"].any() and not res.features.valid["logmel"].any()
    assert res.table["face"].mean() >= 0.9


def test_undecodable_audio_predicts_from_the_face_and_says_why(tmp_path, predictor, photo):
    silent = photo_clip(tmp_path / "silent.mp4", photo, n=25, fps=25, audio_rate=None)
    clip = tmp_path / "bad_audio.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(silent)) as src, av.open(str(clip), "w") as out:
        video = out.add_stream_from_template(src.streams.video[0])
        audio = out.add_stream("aac", rate=16000, layout="mono")
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                out.mux(packet)
        for k in range(16):  # one second of AAC packets holding random bytes
            packet = av.Packet(rng.bytes(300))
            packet.stream, packet.pts, packet.dts, packet.time_base = (
                audio,
                k * 1024,
                k * 1024,
                Fraction(1, 16000),
            )
            out.mux(packet)
    with pytest.warns(AudioWarning, match="audio stream cannot be decoded .*predicting from the face alone"):
        res = predictor.predict_file(clip)
    check_table(res.table, 25)
    assert res.features.audio_seconds is None and not res.features.valid["logmel"].any()
    assert res.table["face"].mean() >= 0.9


def test_no_face_and_no_audio_say_nothing_is_left_to_predict_from(tmp_path, predictor, photo):
    face = np.zeros(20, bool)
    clip = photo_clip(tmp_path / "empty.mp4", photo, n=20, fps=25, audio_rate=None, face=face)
    with pytest.warns(AudioWarning) as caught:
        res = predictor.predict_file(clip)
    said = [str(w.message) for w in caught if issubclass(w.category, AudioWarning)]
    assert any("no face found in any frame; predicting from nothing" in m for m in said), said
    assert any("no audio track; predicting from nothing" in m for m in said), said
    assert not any("alone" in m for m in said), said  # neither modality is left to predict from
    check_table(res.table, 20)
    assert not res.table["face"].any()
    # with the voice present the same faceless clip is predicted from the voice, and says so
    voiced = photo_clip(tmp_path / "voiced.mp4", photo, n=20, fps=25, face=face)
    with pytest.warns(AudioWarning, match="no face found in any frame; predicting from the voice alone"):
        predictor.predict_file(voiced)


@pytest.mark.parametrize("rotation", [90])
def test_rotation_metadata_is_applied(tmp_path, predictor, photo, rotation):
    clip = photo_clip(tmp_path / f"rot{rotation}.mp4", photo, n=20, fps=30, rotation=rotation)
    info = probe(clip)
    assert info.rotation == rotation and (info.width, info.height) == (320, 240)
    res = predictor.predict_file(clip)
    check_table(res.table, 20)
    # HOG finds only upright faces: found means the frames were turned upright
    assert res.table["face"].mean() >= 0.9
    boxes = res.features.boxes[res.features.face]
    assert (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 240).all()


def test_variable_frame_rate_keeps_the_real_times(tmp_path, predictor, photo):
    times = np.cumsum(np.r_[0, np.random.default_rng(1).uniform(0.02, 0.08, 29)])
    clip = photo_clip(tmp_path / "vfr.mp4", photo, times=times)
    res = predictor.predict_file(clip)
    check_table(res.table, 30)
    assert np.abs(res.table["time"].to_numpy() - (np.round(times * 1000) / 1000)).max() < 1e-6
    assert res.features.valid["logmel"].all()
    # the audio rows follow the real times: the log-mel row of frame i is the patch centred at times[i]
    wave, sr = read_audio(clip, sample_rate=None)
    ext = LogMelExtractor(hop=predictor.features_config.audio_hop)
    ref, _ = ext.at_times(wave, sr, res.table["time"].to_numpy())
    assert np.allclose(res.features.feats["logmel"], ref, atol=1e-5)


@pytest.mark.parametrize("rate,channels", [(44100, 2), (8000, 1)])
def test_any_audio_rate_and_channel_count(tmp_path, predictor, photo, rate, channels):
    clip = photo_clip(tmp_path / f"a{rate}.mp4", photo, n=15, fps=30, audio_rate=rate, channels=channels)
    res = predictor.predict_file(clip)
    check_table(res.table, 15)
    assert res.features.valid["vggish"].all() and res.features.valid["logmel"].all()
    # the same features `vafusion extract` computes from the whole track (FFmpeg mono downmix, native rate)
    wave, sr = read_audio(clip, sample_rate=None)
    assert sr == rate
    ext = LogMelExtractor(hop=predictor.features_config.audio_hop)
    ref, _ = ext.at_times(wave, sr, res.table["time"].to_numpy())
    assert np.allclose(res.features.feats["logmel"], ref, atol=1e-5)


def test_frames_without_face_are_flagged_and_still_predicted(tmp_path, predictor, photo):
    face = np.ones(40, bool)
    face[15:27] = False
    clip = photo_clip(tmp_path / "gap.mp4", photo, n=40, fps=30, face=face)
    res = predictor.predict_file(clip)
    check_table(res.table, 40)
    got = res.table["face"].to_numpy().astype(bool)
    assert (got == face).mean() >= 0.9
    assert not res.features.valid["visual"][~got].any()
    assert np.isnan(res.features.boxes[~got]).all()


# -- streaming audio -----------------------------------------------------------------------------------


def test_audio_chunks_are_bounded_and_match_a_whole_file_pass(tmp_path, photo):
    clip = photo_clip(tmp_path / "long.mp4", photo, n=5 * 25, fps=25, audio_rate=22050)
    wave, sr = read_audio(clip, sample_rate=None)
    times = np.arange(125) / 25
    chunks = list(iter_audio_chunks(clip, chunk_s=1, margin_s=1))
    assert len(chunks) >= 4
    assert max(c.wave.size for c in chunks) <= 3 * sr  # chunk + 2 margins: memory does not grow with length
    assert chunks[-1].total == pytest.approx(len(wave) / sr)
    ext = LogMelExtractor()
    ref, ref_valid = ext.at_times(wave, sr, times)
    out, valid = np.zeros_like(ref), np.zeros(len(times), bool)
    for c in chunks:
        sel = (times >= c.core_start) & (times < c.core_end)
        assert np.array_equal(c.wave, wave[round(c.start * sr) :][: c.wave.size])
        out[sel], valid[sel] = ext.at_times(c.wave, c.rate, times[sel] - c.start)
    assert np.abs(out - ref).max() < 1e-5 and np.array_equal(valid, ref_valid)
    # eGeMAPS: the frames of the first chunk get the whole-file values (openSMILE needs chunks of >= 2 s)
    eg = EGeMAPSExtractor()
    first = next(iter_audio_chunks(clip, chunk_s=2, margin_s=1))
    sel = times < first.core_end
    a, _ = eg.at_times(wave, sr, times)
    b, _ = eg.at_times(first.wave, sr, times[sel] - first.start)
    assert np.allclose(a[sel], b, atol=1e-4)
    assert list(iter_audio_chunks(photo_clip(tmp_path / "mute.mp4", photo, n=5, audio_rate=None))) == []


# -- model, ensembling, smoothing ------------------------------------------------------------------


def test_features_match_training_and_faces_follow_the_synthetic_truth(tiny, predictor):
    manifest = json.loads((tiny / "data/synth_manifest.json").read_text())
    entry = next(
        e
        for e in manifest["videos"]
        if e["name"] in manifest["cases"]["no_face_spans"] and e["audio_channels"]
    )
    vf = predictor.extract(tiny / "data" / entry["video"])
    name = entry["name"]
    for role, ext in (("vggish", "egemaps"), ("logmel", "logmel")):
        with np.load(tiny / "feats" / ext / f"{name}.npz") as z:
            assert np.array_equal(vf.valid[role], z["valid"])
            assert np.allclose(vf.feats[role], z["features"], atol=1e-4)
    truth = np.ones(entry["frames"], bool)
    for s, e in entry["no_face_spans"][name]:
        truth[s:e] = False
    assert (vf.face == truth).mean() >= 0.9
    with np.load(tiny / "feats/landmarks" / f"{name}.npz") as z:
        both = vf.face & z["valid"]
        # detection-based crops land within ~2 px of the corpus' own crops (median over the landmarks)
        assert np.median(np.abs(vf.feats["visual"][both] - z["features"][both])) * CROP_SIZE < 2.0


def test_fold_ensemble_is_the_mean_of_the_folds(tiny):
    from vafusion.data.affwild2 import scan
    from vafusion.data.sequence import load_sequence

    p_all = Predictor.from_run(tiny / "run")
    p1 = Predictor.from_run(tiny / "run", fold=1)
    assert [m.fold for m in p_all.bundle.folds] == [0, 1] and [m.fold for m in p1.bundle.folds] == [1]
    p0 = Predictor(dataclasses.replace(p_all.bundle, folds=p_all.bundle.folds[:1]))
    sample = scan(tiny / "data").samples[0]
    seq = load_sequence(sample, tiny / "feats", p_all.streams, p_all.roles)
    a0, a1 = (p.predict_arrays(seq.feats, seq.valid) for p in (p0, p1))
    both = p_all.predict_arrays(seq.feats, seq.valid)
    inside = (np.abs(a0) < 1).all(1) & (np.abs(a1) < 1).all(1)
    assert np.allclose(both[inside], (a0[inside] + a1[inside]) / 2, atol=1e-5)
    assert not np.allclose(a0, a1)
    # the spread is the standard deviation of the fold models' (clipped) predictions; 0 with one model
    _, sd = p_all.predict_arrays(seq.feats, seq.valid, spread=True)
    assert np.allclose(sd, np.abs(a0 - a1) / 2, atol=1e-5) and sd.max() > 0
    assert not p0.predict_arrays(seq.feats, seq.valid, spread=True)[1].any()


def test_smoothing_in_seconds():
    rng = np.random.default_rng(0)
    t = np.arange(300) / 30
    signal = np.sin(2 * np.pi * 0.2 * t)[:, None].repeat(2, 1)
    noisy = signal + 0.3 * rng.standard_normal(signal.shape)
    out = smooth_series(noisy, t, 0.2)
    assert np.abs(out - signal).mean() < 0.5 * np.abs(noisy - signal).mean()
    assert np.array_equal(smooth_series(noisy, t, 0.0), noisy.astype(np.float32))
    assert np.allclose(smooth_series(np.full((50, 2), 0.4), t[:50], 1.0), 0.4)
    # variable frame rate: the kernel is in seconds, so a frame far from its neighbours keeps its value
    t2 = np.r_[np.arange(20) / 30, 5.0 + np.arange(20) / 30]
    x = np.r_[np.zeros(20), np.ones(20)][:, None]
    assert np.allclose(smooth_series(x, t2, 0.1)[[0, 19, 20, 39]].ravel(), [0, 0, 1, 1], atol=1e-6)


def test_smoothing_option_changes_only_the_temporal_detail(predictor, photo, tmp_path):
    clip = photo_clip(tmp_path / "s.mp4", photo, n=30, fps=30)
    vf = predictor.extract(clip)
    smoother = Predictor(predictor.bundle, smooth=0.3)
    rough = predictor.predict_arrays(vf.feats, vf.valid, vf.times)
    smooth = smoother.predict_arrays(vf.feats, vf.valid, vf.times)
    assert np.abs(np.diff(smooth, axis=0)).sum() < np.abs(np.diff(rough, axis=0)).sum()
    assert np.allclose(smooth.mean(0), rough.mean(0), atol=0.05)
    assert np.allclose(smooth, smooth_series(rough, vf.times, 0.3), atol=1e-6)


def test_frame_rate_far_from_training_warns(tiny, photo, tmp_path):
    clip = photo_clip(tmp_path / "fast.mp4", photo, n=20, fps=60, size=(160, 120))
    p = Predictor.from_run(tiny / "run", train_fps=30.0)
    with pytest.warns(FpsWarning, match="60.0 fps"):
        p.predict(clip)


# -- errors and the command line ---------------------------------------------------------------------


def test_runs_without_models_are_clear_errors(tiny, tmp_path):
    with pytest.raises(WeightsError, match="no trained models"):
        Predictor.from_run(tmp_path)
    with pytest.raises(WeightsError, match="no visual models .*it has: fusion"):
        Predictor.from_run(tiny / "run", which="visual")
    with pytest.raises(WeightsError, match="no fusion model for fold 4"):
        Predictor.from_run(tiny / "run", fold=4)
    with pytest.raises(VafusionError, match="run directory not found"):
        Predictor.from_run(tmp_path / "nope")


def test_cli_writes_csv_plot_and_overlay(tiny, photo, tmp_path, capsys):
    clip = photo_clip(tmp_path / "talk.mp4", photo, n=30, fps=30, audio_rate=44100, channels=2)
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(clip),
                "--model",
                str(tiny / "run"),
                "--out",
                str(out),
                "--overlay",
                "--detect-every",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    assert "30 frames" in capsys.readouterr().out
    df = pd.read_csv(out / "talk.csv")
    check_table(df, 30)
    assert (out / "talk.png").stat().st_size > 5000
    info = probe(out / "talk_overlay.mp4", count_frames=True)
    assert info.n_frames == 30 and info.has_audio and (info.width, info.height) == (320, 240)
    assert not list(out.glob(".*tmp*"))


def test_cli_bad_video_is_one_line_exit_2(tiny, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    assert (
        main(["predict", str(bad), "--model", str(tiny / "run"), "--out", str(tmp_path / "o"), "--quiet"])
        == 2
    )
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "vafusion: warning:" not in line]
    assert len(err) == 1 and "broken.mp4" in err[0] and err[0].startswith("vafusion: error:")
    out = tmp_path / "o2"
    assert main(["predict", str(bad), "--model", str(tmp_path / "norun"), "--out", str(out), "--quiet"]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert not out.exists()  # a command that fails before writing leaves no empty folder
    (tmp_path / "kept").mkdir()  # but a folder that was there already stays
    assert (
        main(["predict", str(bad), "--model", str(tiny / "run"), "--out", str(tmp_path / "kept"), "--quiet"])
        == 2
    )
    assert (tmp_path / "kept").is_dir()


def test_overlay_of_a_rotated_vfr_clip_keeps_times_and_upright_frames(tmp_path, predictor, photo):
    times = np.cumsum(np.r_[0, np.random.default_rng(2).uniform(0.02, 0.06, 14)])
    clip = photo_clip(tmp_path / "rv.mp4", photo, times=times, rotation=270, audio_rate=None)
    with pytest.warns(AudioWarning):
        res = predictor.predict_file(clip)
    dst = write_overlay(clip, res, tmp_path / "rv_overlay.mp4")
    info = probe(dst, count_frames=True)
    assert (info.width, info.height, info.rotation) == (320, 240, 0) and not info.has_audio
    assert np.abs(info.times - (times - times[0])).max() < 2e-3


def test_import_is_cheap_and_predictor_is_lazy():
    code = (
        "import sys, vafusion; assert 'torch' not in sys.modules; "
        "from vafusion import Predictor; assert Predictor.__module__ == 'vafusion.inference.predictor'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_file_is_a_media_error(predictor, tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        predictor.predict(tmp_path / "none.mp4")


# -- real videos ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d12.mp4", "s29.mp4"])
def test_real_videos(shared_videos, predictor, name):
    path = shared_videos / name
    info = probe(path, count_frames=True)
    res = predictor.predict_file(path)
    check_table(res.table, info.n_frames)
    assert np.allclose(res.table["time"], np.arange(info.n_frames) / info.fps, atol=1e-6)
    assert res.table["face"].mean() >= 0.9
    eyes = eye_positions(res.features.feats["visual"][res.features.face])
    assert np.abs(np.median(eyes, axis=0) - ARCFACE_TEMPLATE[:2]).max() < 4.0
    assert res.features.valid["logmel"].mean() > 0.95


def test_a_run_from_before_a_default_changed_keeps_its_settings(tmp_path) -> None:
    """A run whose config.yaml has no ``audio_hop`` / ``face_stride`` was trained with per-frame audio
    patches and every face encoded: inference must compute its features the same way, not the new defaults."""
    from vafusion.config import Config
    from vafusion.inference.bundle import run_config

    old = tmp_path / "config.yaml"
    old.write_text("features:\n  visual: landmarks\n  face_batch: 16\ncv:\n  eval_hop: 100\n")
    cfg = run_config(old, None, [])
    assert cfg.features.audio_hop == 0.0 and cfg.features.face_stride == 1
    assert cfg.features.face_batch == 16 and cfg.cv.eval_hop == 100
    new = tmp_path / "new.yaml"
    new.write_text("features:\n  audio_hop: 0.24\n  face_stride: 3\n")
    cfg = run_config(new, None, ["features.audio_hop=0.96"])
    assert cfg.features.audio_hop == 0.96 and cfg.features.face_stride == 3
    assert Config().features.audio_hop == 0.48  # a new run records the new default


def test_face_stride_encodes_every_kth_face_of_a_run_and_interpolates(tmp_path, tiny, photo):
    """``features.face_stride`` k: predict encodes the first, every k-th and the last face of each run of
    frames with a face (as ``extract`` does) and interpolates the rest; runs are never bridged."""
    face = np.ones(40, bool)
    face[15:27] = False
    clip = photo_clip(tmp_path / "stride.mp4", photo, n=40, fps=30, face=face)
    runs = {}
    for k in (1, 3):
        pred = Predictor.from_run(tiny / "run", feature_overrides=[f"features.face_stride={k}"])
        ext = pred.extractor("visual")
        seen = []
        encode = ext.encode
        ext.encode = lambda crops, encode=encode, seen=seen: (seen.append(len(crops)), encode(crops))[1]
        runs[k] = (pred.extract(clip), sum(seen))
    (one, n1), (three, n3) = runs[1], runs[3]
    assert np.array_equal(one.face, three.face) and n1 == one.face.sum()
    present = np.flatnonzero(three.face)
    anchors = anchor_rows(three.face, 3)
    assert n3 == len(anchors) < n1 / 2
    f1, f3 = one.feats["visual"], three.feats["visual"]
    assert np.array_equal(three.valid["visual"], one.valid["visual"])
    assert np.allclose(f3[anchors], f1[anchors], atol=1e-5)  # encoded rows: the same crops, the same rows
    others = np.setdiff1d(present, anchors)
    assert len(others) and not np.allclose(f3[others], f1[others], atol=1e-6)  # interpolated, not encoded
    for r in others:  # each interpolated row lies between its run's neighbouring anchors
        lo, hi = anchors[anchors < r].max(), anchors[anchors > r].min()
        assert hi - lo <= 3 and three.face[lo : hi + 1].all()
        w = (r - lo) / (hi - lo)
        assert np.allclose(f3[r], (1 - w) * f3[lo] + w * f3[hi], atol=1e-5)
