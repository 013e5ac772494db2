"""Any raw video in, per-frame valence/arousal out: :class:`Predictor`.

A video goes through the face and audio passes of :mod:`vafusion.inference.video`, then through every fold
model of the run over overlapping windows (:func:`vafusion.models.windows.sliding_predict`); the fold
predictions are averaged, optionally smoothed along time, and clipped to [-1, 1].

Memory bound (per video): kept for every frame are its time (8 B), face box (16 B) and one feature row per
stream, ``4 * (D_visual + D_vggish + D_logmel)`` bytes: 1.2 kB with the offline stand-ins (136 + 25 + 128),
3.1 kB with IResNet-50 + VGGish + log-mel (512 + 128 + 128); during fusion one normalised copy of the rows
exists per fold model in turn. One hour at 30 fps (108,000 frames) therefore needs about 0.26 GB
(stand-ins) or 0.67 GB (published front ends) at the peak. Everything else is bounded by constants: one
decoded frame, one batch of crops (64 x 37 kB), one audio chunk (34 s at the track's rate, 6.5 MB at
48 kHz) with its log-mel patches, and 16 windows of the fusion network at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vafusion.cpu import torch_threads
from vafusion.errors import MediaError, VafusionError, WeightsError
from vafusion.face.align import FaceAligner
from vafusion.face.detect import FaceDetector
from vafusion.face.identity import FaceDescriber
from vafusion.face.people import PeopleTrack
from vafusion.face.track import FaceTrack, Subject
from vafusion.features.extractors import FeaturesConfig, configured_extractor
from vafusion.inference.bundle import RunBundle, feature_mismatches
from vafusion.inference.ensemble import ensemble
from vafusion.inference.onnx_net import onnx_in_run
from vafusion.inference.tables import Faces, person_table, prediction_table
from vafusion.inference.video import Follower, OneFace, VideoFeatures, audio_pass, face_pass, no_face_warning
from vafusion.io.video import probe
from vafusion.models.windows import sliding_predict

FPS_TOLERANCE = 1.25
"""Warn when the video's frame rate differs from the training data's by more than this factor."""


class PredictionWarning(UserWarning):
    """Something about a video or the model that makes its predictions less trustworthy."""


class FpsWarning(PredictionWarning):
    """The video's frame rate is far from the training data's: the TCNs count frames, not seconds."""


class AudioWarning(PredictionWarning):
    """The audio track is missing or broke off: the model predicts from the face alone there."""


class FeaturesWarning(PredictionWarning):
    """The front ends differ from the ones that made the training features, or the model is untrained."""


Hook = Callable[..., None]
"""``hook(step, artifact=None, *, file=None, completed=None, total=None)``: called at each step of a video
(``"faces"`` with progress counts, ``"features"`` with the :class:`VideoFeatures`, ``"prediction"`` with the
:class:`Prediction`); see :mod:`vafusion.inference.hooks`."""


@dataclass
class Prediction:
    """``table`` (``frame,time,valence,arousal,face``; frame 1-based), the features behind it, and the
    warnings about this video (the run's own notes are :attr:`Predictor.notes`)."""

    table: pd.DataFrame
    features: VideoFeatures
    folds: list[int]
    warnings: list[str]
    caption: str = ""
    """Shown with the plot and overlay when the values are not measurements (a demo or untrained model)."""
    faces: str = "one"


class Predictor:
    """Per-frame valence/arousal for any video, with the models and front ends of one training run.

    Build it with :meth:`from_run`; :meth:`predict` returns a ``pandas.DataFrame`` with one row per decoded
    frame: ``frame`` (1-based), ``time`` (s, from the stream's timestamps), ``valence``, ``arousal`` (in
    [-1, 1]) and ``face`` (1 where the subject's face was found). :meth:`predict_file` also returns the
    features behind it; :meth:`predict_arrays` predicts from feature rows made elsewhere.

    Args:
        bundle: the run's fold models, streams and settings (:class:`RunBundle`).
        smooth: Gaussian smoothing of the output along time, standard deviation in seconds (0: off).
        detect_every: run the face detector every k-th frame and track in between (1: detect every frame).
        subject: which face to follow: ``"largest"``, ``"first"`` or the i-th face from the left (int).
        detector: ``"hog"`` (fast) or ``"cnn"`` (dlib MMOD, robust to pose, far slower on CPU).
        detect_size: the detector sees frames shrunk to this longer side (pixels).
        train_fps: frame rate of the training data, for the frame-rate warning (default: the run's).
        audio_chunk_s, audio_margin_s: audio is processed in chunks of this many seconds with this margin.
        fuse_threads: torch threads while the fold models run (restored afterwards; ``None``: leave as is).
            The fusion network's layers are small: on a busy 2-core machine one thread ran a 180-frame
            window in 0.03-0.07 s and two threads in 0.3-3 s (OpenMP threads waiting on each other).
        hook: called at each step of each video (progress bars, keeping intermediate results).
    """

    def __init__(
        self,
        bundle: RunBundle,
        smooth: float = 0.0,
        detect_every: int = 5,
        subject: Subject = "largest",
        detector: str = "hog",
        detect_size: int | None = 640,
        train_fps: float | None = None,
        audio_chunk_s: int = 30,
        audio_margin_s: int = 2,
        fuse_threads: int | None = 1,
        hook: Hook | None = None,
        audio_stream: int = 0,
    ) -> None:
        if not bundle.folds:
            raise WeightsError(None, "no models to predict with", "pass a run directory with trained models")
        if not 0 <= smooth < math.inf:
            raise VafusionError(
                None,
                f"smoothing must be a finite number >= 0 seconds, got {smooth}",
                "pass --smooth 0 or more",
            )
        if detect_every < 1:
            raise VafusionError(
                None, f"detect_every must be >= 1, got {detect_every}", "pass --detect-every 1 or more"
            )
        self.bundle = bundle
        self.roles = bundle.roles
        _check_folds(bundle, self.roles)
        self.streams = {r: bundle.streams[r] for r in self.roles}
        self.smooth = float(smooth)
        self.window, self.hop = int(bundle.config.cv.eval_window), int(bundle.config.cv.eval_hop)
        self.train_fps = train_fps if train_fps is not None else bundle.train_fps
        self.audio_chunk_s, self.audio_margin_s = audio_chunk_s, audio_margin_s
        self.fuse_threads = fuse_threads
        self.hook = hook
        self.extractors = {
            n: configured_extractor(n, bundle.config.features) for n in dict.fromkeys(self.streams.values())
        }
        for role, name in self.streams.items():
            want = bundle.folds[0].net.branches[role].missing.shape[0]
            if self.extractors[name].dim != want:
                raise WeightsError(
                    None,
                    f"stream {role}: extractor {name} gives {self.extractors[name].dim}-d "
                    f"features, the model expects {want}-d",
                    "use the front-end weights the run was trained with (RUN/config.yaml)",
                )
        self.notes = list(bundle.notes) + feature_mismatches(bundle, self.extractors)
        for note in self.notes:
            warnings.warn(note, FeaturesWarning, stacklevel=2)
        self.detector = FaceDetector(detector, detect_size)
        self.aligner = FaceAligner()
        self.describer: FaceDescriber | None = None
        self.detect_every = detect_every
        self.subject = subject
        self.audio_stream = audio_stream

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        which: str = "fusion",
        fold: int | None = None,
        feature_overrides: list[str] | None = None,
        backend: str = "torch",
        **kwargs: Any,
    ) -> Predictor:
        """Load the fold models of ``RUN/models/<which>/`` with the run's streams and features config.

        ``run`` may also be a ``RUN/models/<model>`` folder, one ``fold<k>.pt``, or ``"vafusion_tiny"``
        (an untrained model, for smoke runs). ``fold=None`` averages every fold model (the default); an int
        picks one. ``feature_overrides`` (``["features.iresnet_weights=PATH", ...]``) repoints weight files
        that moved since training. ``backend="onnx"`` runs each fold network in ONNX Runtime from
        ``RUN/onnx/<which>/fold<k>.onnx``, exported there (parity-checked) on first use or when the
        checkpoint changed. Other keyword arguments go to the constructor.
        """
        if backend not in ("torch", "onnx"):
            raise VafusionError(None, f"unknown backend {backend!r}", "use --backend torch or --backend onnx")
        bundle = RunBundle.load(run, which=which, fold=fold, feature_overrides=feature_overrides)
        predictor = cls(bundle, **kwargs)
        if backend == "onnx":
            if not bundle.trained:
                raise VafusionError(None, f"{run} has no checkpoint to export", "use --backend torch")
            for m in bundle.folds:
                m.net = onnx_in_run(Path(run), which, m.fold, m.path, predictor.fuse_threads or 0)
        return predictor

    @property
    def features_config(self) -> FeaturesConfig:
        """The front-end settings (``features.*``) the run's features were made with."""
        return self.bundle.config.features

    def extractor(self, role: str) -> Any:
        """The extractor that fills stream ``role``, as configured for this run."""
        return self.extractors[self.streams[role]]

    def roles_with(self, modality: str) -> list[str]:
        """The model's streams filled by ``face`` or ``audio`` extractors."""
        return [r for r in self.roles if self.extractor(r).modality == modality]

    def fingerprint(self) -> str:
        """Identifies the models and settings behind a prediction (for caches of per-video results)."""
        items = [
            [str(m.path.resolve()), m.path.stat().st_mtime_ns, m.path.stat().st_size]
            for m in self.bundle.folds
            if m.path is not None
        ]
        spec = {
            "models": items or [self.bundle.which],
            "smooth": self.smooth,
            "detect_every": self.detect_every,
            "features": {k: str(v) for k, v in vars(self.features_config).items()},
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _follower(self, subject: Subject | None, faces: Faces) -> Follower:
        """What finds the faces: one subject's track (person 0), or every person's."""
        if faces == "all":
            return PeopleTrack(self.detector, self._describer(), detect_every=self.detect_every)
        if faces != "one":
            raise VafusionError(
                None, f"faces must be 'one' or 'all', got {faces!r}", "pass --faces one or all"
            )
        return OneFace(
            FaceTrack(
                self.detector,
                self.aligner,
                detect_every=self.detect_every,
                subject=self.subject if subject is None else subject,
            )
        )

    def _describer(self) -> FaceDescriber:
        if self.describer is None:
            self.describer = FaceDescriber()
        return self.describer

    def extract(
        self, path: str | Path, subject: Subject | None = None, faces: Faces = "one"
    ) -> VideoFeatures:
        """The model's inputs for one video: the face pass (one subject, or every person), the audio pass."""
        path = Path(path)
        info = probe(path, count_frames=True)  # demux only: finds a truncated file before any work is done
        if info.audio_streams and self.audio_stream >= len(info.audio_streams) and self.roles_with("audio"):
            raise MediaError(
                path,
                f"has {len(info.audio_streams)} audio streams, no stream {self.audio_stream}",
                f"pass --audio-stream 0..{len(info.audio_streams) - 1}",
            )
        follower = self._follower(subject, faces)
        extractors = {
            n: self.extractors[n] for n in dict.fromkeys(self.streams[r] for r in self.roles_with("face"))
        }
        stride = max(1, int(self.features_config.face_stride))

        def progress(done: int, total: int | None) -> None:
            if self.hook is not None:
                self.hook("faces", file=path, completed=done, total=total)

        fp = face_pass(
            path,
            info,
            follower,
            self.aligner,
            extractors,
            stride,
            int(self.features_config.face_batch),
            progress,
        )
        people = fp.rows({r: self.extractor(r) for r in self.roles_with("face")}, stride)
        vf = VideoFeatures(path, info, fp.times, people, timings=fp.timings, warnings=fp.warnings)
        no_face = not any(p.face.any() for p in people) and bool(self.roles_with("face"))
        audio_pass(
            vf,
            {r: self.streams[r] for r in self.roles_with("audio")},
            self.extractors,
            self.audio_chunk_s,
            self.audio_margin_s,
            self.audio_stream,
            rest="the face alone" if self.roles_with("face") and not no_face else None,
        )
        if no_face:  # said first; what is left to predict from is known once the audio is read
            rest = "the voice alone" if any(v.any() for v in vf.audio_valid.values()) else None
            track = follower.track if isinstance(follower, OneFace) else follower
            subject = getattr(track, "subject", "largest")
            vf.warnings.insert(0, no_face_warning(path, subject, track.most_faces, rest))
        if self.hook is not None:
            self.hook("features", vf, file=path)
        return vf

    def _fold_predictions(
        self, feats: dict[str, np.ndarray], valid: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        """Each fold model's ``(T, 2)`` prediction for raw feature rows."""
        f = {r: feats[r] for r in self.roles}
        v = {r: valid[r] for r in self.roles}
        with torch_threads(self.fuse_threads or 0):
            return [
                sliding_predict(m.net, m.normaliser.apply(f, v), v, self.window, min(self.hop, self.window))
                for m in self.bundle.folds
            ]

    def predict_arrays(
        self,
        feats: dict[str, np.ndarray],
        valid: dict[str, np.ndarray],
        times: np.ndarray | None = None,
        spread: bool = False,
    ) -> Any:
        """Fold-averaged ``(T, 2)`` valence/arousal for raw (unnormalised) feature rows, smoothed and clipped.

        ``times`` (s) are needed only for smoothing (default: frame index / 30). With ``spread`` also the
        ``(T, 2)`` standard deviation of the fold models' predictions (each smoothed and clipped alike).
        """
        n = len(next(iter(valid.values())))
        if n == 0:
            empty = np.zeros((0, 2), np.float32)
            return (empty, empty) if spread else empty
        t = np.arange(n) / 30.0 if times is None else times
        mean, sd = ensemble(self._fold_predictions(feats, valid), t, self.smooth)
        return (mean, sd) if spread else mean

    def predict_file(
        self, path: str | Path, subject: Subject | None = None, faces: Faces = "one"
    ) -> Prediction:
        """Features, fold-averaged prediction, output table and warnings of one video (one subject, or every
        person with ``faces="all"``)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"predict takes one video path, got a {type(path).__name__}; one call per file")
        start = time.perf_counter()
        vf = self.extract(path, subject=subject, faces=faces)
        t0 = time.perf_counter()
        parts = []
        for k, rows in enumerate(vf.people):
            mean, sd = self.predict_arrays(*vf.inputs(k), vf.times, spread=True)
            parts.append(person_table(vf, rows, mean, sd, faces))
        vf.timings["fuse"] = time.perf_counter() - t0
        vf.timings["total"] = time.perf_counter() - start
        raised: list[tuple[str, type[PredictionWarning]]] = [(m, AudioWarning) for m in vf.warnings]
        fps = self._fps_warning(vf)
        if fps:
            raised.append((fps, FpsWarning))
        for msg, category in raised:
            warnings.warn(msg, category, stacklevel=2)
        folds = [m.fold for m in self.bundle.folds]
        table = prediction_table(parts, faces)
        prediction = Prediction(table, vf, folds, [m for m, _ in raised], self.bundle.caption, faces)
        if self.hook is not None:
            self.hook("prediction", prediction, file=vf.path)
        return prediction

    def predict(self, path: str | Path, subject: Subject | None = None, faces: Faces = "one") -> pd.DataFrame:
        """The prediction table of ``path`` (:mod:`vafusion.inference.tables`): one row per decoded frame, or
        with ``faces="all"`` one row per person and frame."""
        return self.predict_file(path, subject=subject, faces=faces).table

    def _fps_warning(self, vf: VideoFeatures) -> str | None:
        if not self.train_fps or vf.length < 2:
            return None
        ratio = vf.fps / self.train_fps
        if 1 / FPS_TOLERANCE <= ratio <= FPS_TOLERANCE:
            return None
        return (
            f"{vf.path}: {vf.fps:.1f} fps, the training data had {self.train_fps:.1f} fps; the temporal "
            "models count frames, so predictions may be less accurate"
        )


def _check_folds(bundle: RunBundle, roles: list[str]) -> None:
    """Every fold model must read the same streams, and the run must say which extractor fills each."""
    first = bundle.folds[0]
    for m in bundle.folds[1:]:
        if list(m.net.names) != roles:
            raise WeightsError(
                m.path,
                f"model uses streams {m.net.names}, fold {first.fold} uses {roles}",
                "predict with models of one run",
            )
    missing = [r for r in roles if r not in bundle.streams]
    if missing:
        raise WeightsError(
            None,
            f"no extractor recorded for stream(s) {', '.join(missing)}",
            "check RUN/streams.json against the models",
        )
