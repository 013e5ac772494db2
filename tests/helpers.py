"""Test helpers: tiny media files and feature corpora made inside the tests (nothing is downloaded)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vafusion.cli import main
from vafusion.cpu import torch_threads
from vafusion.data.synth import make_corpus
from vafusion.features.store import feature_path, write_features
from vafusion.io.audio import encode_audio, write_clip

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "testdata" / "videos"
TINY_NET = [
    "train.accelerator=cpu",
    "model.tcn_channels=8",
    "model.attn_dim=8",
    "model.head_hidden=8",
    "model.dilations=[1,2]",
    "train.window=40",
    "train.hop=20",
]
"""``--set`` values of a tiny network on 40-frame windows: training in seconds on CPU."""


def write_timed_frames(out: av.container.OutputContainer, n: int, start_s: float = 0.0) -> None:
    """``n`` 64x48 H.264 frames at 25 fps (no B-frames) into ``out``, the first at ``start_s`` s; frame i
    shows brightness 5 * i."""
    vs = out.add_stream("libx264", rate=25, options={"bf": "0"})
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    vs.time_base = Fraction(1, 1000)
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 5 * i, np.uint8), format="rgb24")
        frame.pts, frame.time_base = round(1000 * start_s) + 40 * i, Fraction(1, 1000)
        for packet in vs.encode(frame):
            out.mux(packet)
    for packet in vs.encode():
        out.mux(packet)


def write_video(
    path: Path,
    n_frames: int,
    fps: int = 30,
    size: tuple[int, int] = (64, 48),
    audio: bool = True,
    audio_seconds: float | None = None,
    sample_rate: int = 16000,
    tone: float = 440.0,
    codec: str = "libx264",
) -> Path:
    """Write an H.264 (+ AAC) clip whose frame i shows brightness i so frames can be identified."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = None
        if audio:
            aus = out.add_stream("aac", rate=sample_rate)
            aus.layout = "mono"
        for i in range(n_frames):
            img = np.full((h, w, 3), (i * 7) % 256, np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if aus is not None:
            secs = audio_seconds if audio_seconds is not None else n_frames / fps
            t = np.arange(int(secs * sample_rate)) / sample_rate
            wave = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
            for p in encode_audio(aus, wave, sample_rate):
                out.mux(p)
    return path


def write_frames(path: Path, frames: list[np.ndarray], fps: int = 25, sample_rate: int = 16000) -> Path:
    """Write RGB ``frames`` as an H.264 clip with a quiet 220 Hz tone as long as the video."""
    t = np.arange(int(len(frames) / fps * sample_rate)) / sample_rate
    return write_clip(path, frames, fps, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)


def write_annotation(
    path: Path, rows: list[tuple[float, float]] | np.ndarray, header: str = "valence,arousal"
) -> Path:
    """An Aff-Wild2 VA annotation file with ``rows`` under ``header``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"{v},{a}" for v, a in rows)
    path.write_text(f"{header}\n{body}\n")
    return path


FEATURE_DIMS = {"landmarks": 136, "egemaps": 25, "logmel": 128}
"""The offline streams' widths (visual landmarks, eGeMAPS, log-mel statistics)."""


def write_linear_feature_corpus(
    root: Path, videos: int, frames: int, seed: int = 0, noise: float = 0.5, invalid_rows: int = 0
) -> None:
    """Annotations (3 validation, the rest training videos) under ``root/data`` and feature files under
    ``root/feats`` that carry the labels linearly plus noise, so training is fast and must learn something.

    ``invalid_rows`` annotation rows per video are ``-5,-5`` (Aff-Wild2's invalid marker).
    """
    rng = np.random.default_rng(seed)
    mix = {e: rng.normal(size=(2, d)) for e, d in FEATURE_DIMS.items()}
    t = np.arange(frames)
    for k in range(videos):
        name = f"vid{k:02d}"
        split = "Validation_Set" if k < 3 else "Train_Set"
        va = 0.8 * np.stack(
            [
                np.sin(2 * np.pi * t / rng.uniform(40, 90) + rng.uniform(0, 6)),
                np.cos(2 * np.pi * t / rng.uniform(40, 90) + rng.uniform(0, 6)),
            ],
            1,
        )
        rows = [f"{v:.4f},{a:.4f}" for v, a in va]
        if invalid_rows:
            for i in rng.choice(frames, invalid_rows, replace=False):
                rows[i] = "-5,-5"
        ann = root / "data/annotations/VA_Estimation_Challenge" / split / f"{name}.txt"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text("valence,arousal\n" + "\n".join(rows) + "\n")
        for ext, d in FEATURE_DIMS.items():
            x = va @ mix[ext] + noise * rng.normal(size=(frames, d))
            write_features(
                feature_path(root / "feats", ext, name),
                x,
                rng.random(frames) > 0.1,
                t / 30.0,
                {"extractor": ext, "fingerprint": "test", "dim": d, "frames": frames, "fps": 30.0},
            )


def fast_cv(epochs: int = 1, *extra: str) -> list[str]:
    """``--set`` options for a tiny, quick network (8 channels, 40-frame windows) trained ``epochs``."""
    sets = [
        "model.tcn_channels=8",
        "model.attn_dim=8",
        "model.head_hidden=8",
        f"train.max_epochs={epochs}",
        "train.window=40",
        "train.hop=20",
        "cv.eval_window=40",
        "cv.eval_hop=20",
        *extra,
    ]
    return [arg for s in sets for arg in ("--set", s)]


def build_tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic corpus -> features -> fusion models for folds 0 and 1, built once per test session
    (in pytest's base temp folder, so every module that asks for it shares it)."""
    root = tmp_path_factory.getbasetemp() / "tiny_run"
    if (root / "done").exists():
        return root
    make_corpus(root / "data", videos=8, seconds=2, seed=5, progress=False, workers=1)
    assert main(["extract", "--data", str(root / "data"), "--features", str(root / "feats"), "--quiet"]) == 0
    settings = fast_cv(
        1, "model.kernel_sizes=[3]", "model.dilations=[1,2]", "fusion_stage.init=scratch", "cv.folds=[0,1]"
    )
    with torch_threads(1):
        assert (
            main(
                [
                    "cv",
                    "--data",
                    str(root / "data"),
                    "--features",
                    str(root / "feats"),
                    "--out",
                    str(root / "run"),
                    "--models",
                    "fusion",
                    "--quiet",
                    *settings,
                ]
            )
            == 0
        )
    assert sorted(p.name for p in (root / "run/models/fusion").glob("*.pt")) == ["fold0.pt", "fold1.pt"]
    (root / "done").write_text("ok\n")
    return root
