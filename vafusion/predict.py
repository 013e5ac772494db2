"""Any raw video in, per-frame valence/arousal out: ``vafusion predict`` and ``vafusion.Predictor``.

One video goes through three streaming passes, so memory does not grow with the length of the video
beyond one small row per frame:

1. **Video**: PyAV decodes one frame at a time (rotation metadata applied, presentation timestamps kept,
   so variable-frame-rate video keeps its real timing). ``FaceTrack`` detects the subject every
   ``detect_every`` frames, tracks it in between and aligns it to the ArcFace 112x112 template; aligned
   crops are encoded by the run's face extractor in batches of ``features.face_batch``. With
   ``features.face_stride`` k > 1 only every k-th face of each run of frames with a face, and the run's
   last, is encoded and the rest interpolated, as ``vafusion extract`` does for the training features.
2. **Audio**: :func:`vafusion.features.audio_stream.stream_audio_features`, the function ``vafusion
   extract`` uses too: the first audio stream is decoded in order and downmixed to mono by FFmpeg at its
   own rate, then cut into ``audio_chunk_s`` chunks with ``audio_margin_s`` of context on each side; each
   audio extractor encodes the frames whose times fall in the chunk (and resamples to 16 kHz itself, as in
   training). Chunk edges are whole seconds, so the 10 ms analysis grids line up with a whole-file pass
   and the margin hides the chunk edges from every window.
3. **Fusion**: each fold model of the run predicts over overlapping windows
   (:func:`vafusion.inference.sliding_predict`), the fold predictions are averaged, optionally smoothed
   along time, and clipped to [-1, 1].

Frames without a face keep an invalid visual row; the model replaces it with its learned stand-in
(training hides whole streams and single face frames, ``train.branch_dropout``/``frame_dropout``), and the
output marks them ``face = 0``. A video without audio is predicted from the face alone in the same way.

Memory bound (per video): kept for every frame are its time (8 B), face box (16 B) and one feature row per
stream, ``4 * (D_visual + D_vggish + D_logmel)`` bytes: 1.2 kB with the offline stand-ins (136 + 25 + 128),
3.1 kB with IResNet-50 + VGGish + log-mel (512 + 128 + 128); during fusion one normalised copy of the rows
exists per fold model in turn. One hour at 30 fps (108,000 frames) therefore needs about 0.26 GB
(stand-ins) or 0.67 GB (published front ends) at the peak. Everything else is bounded by constants: one
decoded frame, one batch of crops (64 x 37 kB), one audio chunk (34 s at the track's rate, 6.5 MB at
48 kHz) with its log-mel patches, and 16 windows of the fusion network at a time.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd

from vafusion.config import Config, load_config
from vafusion.errors import MediaError, VafusionError, WeightsError
from vafusion.io.atomic import atomic_path
from vafusion.io.face import Box, FaceAligner, FaceTrack, Subject
from vafusion.io.video import VideoInfo, iter_frames, probe, read_ahead, row_times

COLUMNS = ["frame", "time", "valence", "arousal", "face"]
MODEL_KINDS = ("fusion", "visual", "vggish", "logmel")
FPS_TOLERANCE = 1.25
"""Warn when the video's frame rate differs from the training data's by more than this factor."""


class FpsWarning(UserWarning):
    """The video's frame rate is far from the training data's: the TCNs count frames, not seconds."""


class AudioWarning(UserWarning):
    """The audio track is missing or broke off: the model predicts from the face alone there."""


# ----------------------------------------------------------------------------------------------
# Timing wrapper for the face pipeline
# ----------------------------------------------------------------------------------------------


class TimedAligner(FaceAligner):
    """A ``FaceAligner`` that adds up the seconds spent detecting and aligning (for the timing split)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.detect_s = 0.0
        self.align_s = 0.0

    def detect(self, frame: np.ndarray):
        t0 = time.perf_counter()
        try:
            return super().detect(frame)
        finally:
            self.detect_s += time.perf_counter() - t0

    def align(self, frame: np.ndarray, box):
        t0 = time.perf_counter()
        try:
            return super().align(frame, box)
        finally:
            self.align_s += time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# Smoothing
# ----------------------------------------------------------------------------------------------


def smooth_series(values: np.ndarray, times: np.ndarray, sigma_s: float) -> np.ndarray:
    """Gaussian smoothing along time with standard deviation ``sigma_s`` seconds (0: unchanged copy).

    Weights come from the real frame times, so variable-frame-rate video is smoothed in seconds, not
    frames; near the ends the kernel is renormalised over the frames that exist.
    """
    values = np.asarray(values, np.float64)
    out = values.copy()
    n = len(values)
    if sigma_s <= 0 or n < 2:
        return out.astype(np.float32)
    times = np.asarray(times, np.float64)
    steps = np.diff(times)
    steps = steps[steps > 0]
    period = float(np.median(steps)) if steps.size else 1.0 / 30
    k = min(math.ceil(3.0 * sigma_s / period), n - 1)
    acc = np.zeros_like(values)
    wsum = np.zeros(n)
    extra = (slice(None),) + (None,) * (values.ndim - 1)
    for d in range(-k, k + 1):
        lo, hi = max(0, -d), min(n, n - d)
        w = np.exp(-0.5 * ((times[lo + d : hi + d] - times[lo:hi]) / sigma_s) ** 2)
        acc[lo:hi] += w[extra] * values[lo + d : hi + d]
        wsum[lo:hi] += w
    return (acc / wsum[extra]).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Features of one video
# ----------------------------------------------------------------------------------------------


@dataclass
class VideoFeatures:
    """Per-frame inputs of the model for one video, plus what the passes found and how long they took."""

    path: Path
    info: VideoInfo
    times: np.ndarray  # (T,) float64 s from the first frame
    face: np.ndarray  # (T,) bool
    boxes: np.ndarray  # (T, 4) float32 left, top, right, bottom; NaN without a face
    feats: dict[str, np.ndarray]  # role -> (T, D) float32
    valid: dict[str, np.ndarray]  # role -> (T,) bool
    audio_seconds: float | None  # None: no audio track
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.times)

    @property
    def fps(self) -> float:
        """Mean frame rate from the timestamps (the container's rate for a single frame)."""
        if self.length > 1 and self.times[-1] > self.times[0]:
            return (self.length - 1) / float(self.times[-1] - self.times[0])
        return float(self.info.fps)


@dataclass
class Prediction:
    """``table`` (``frame,time,valence,arousal,face``; frame 1-based) and the features behind it."""

    table: pd.DataFrame
    features: VideoFeatures
    folds: list[int]
    warnings: list[str]


@dataclass
class FoldModel:
    """One trained network of a run with its feature normaliser."""

    fold: int
    net: Any
    normaliser: Any
    path: Path


def _model_files(run: Path, kind: str, fold: int | None) -> list[tuple[int, Path]]:
    folder = run / "models" / kind
    found = sorted((int(p.stem[4:]), p) for p in folder.glob("fold*.pt") if p.stem[4:].isdigit())
    if not found:
        present = sorted(d.name for d in (run / "models").glob("*") if d.is_dir() and any(d.glob("fold*.pt")))
        if present:
            raise WeightsError(
                folder,
                f"the run has no {kind} models (it has: {', '.join(present)})",
                f"pass --which {present[0]}, or train {kind} with `vafusion cv --models {kind}`",
            )
        raise WeightsError(
            run,
            "the run has no trained models (no models/<model>/fold<k>.pt)",
            "pass the run directory written by `vafusion cv` or `vafusion demo`, or train one first",
        )
    if fold is not None:
        chosen = [(k, p) for k, p in found if k == fold]
        if not chosen:
            raise WeightsError(
                folder / f"fold{fold}.pt",
                f"no {kind} model for fold {fold}",
                f"choose one of folds {', '.join(str(k) for k, _ in found)}, or leave --fold out "
                "to average them all",
            )
        return chosen
    return found


PREDICT_SECTIONS = ("features", "cv")
"""The parts of a run's configuration that inference uses: front ends and evaluation windows."""

LEGACY_DEFAULTS = {"features": {"audio_hop": 0.0, "face_stride": 1}}
"""Settings whose default changed: a run whose config.yaml predates a key was made with these values."""


def run_config(path: Path, stored: dict | None, overrides: list[str]) -> Config:
    """The run's ``features`` and ``cv`` settings from ``RUN/config.yaml`` (else the checkpoint's copy).

    Only the sections inference uses are read, key by key, so a run made by an older or newer version
    (with training keys this one does not know) still loads; ``overrides`` (``features.*=...``) go on top.
    """
    import yaml

    raw: dict | None = None
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise VafusionError(
                path,
                f"unreadable run configuration ({exc.__class__.__name__})",
                "restore config.yaml from the run, or delete it to use the checkpoints' copy",
            ) from None
    if not isinstance(raw, dict):
        raw = stored if isinstance(stored, dict) else {}
    defaults = Config()
    dotlist = []
    for section in PREDICT_SECTIONS:
        known = {f.name for f in dataclasses.fields(getattr(defaults, section))}
        stored_section = raw.get(section) or {}
        for key, value in {**LEGACY_DEFAULTS.get(section, {}), **stored_section}.items():
            if key in known:
                dotlist.append(f"{section}.{key}={'null' if value is None else _yaml_value(value)}")
    return load_config(None, dotlist + list(overrides))


def _yaml_value(value: Any) -> str:
    """A config value written so that ``OmegaConf.from_dotlist`` reads it back unchanged."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _training_fps(run: Path, payloads: list[dict]) -> float | None:
    """The training data's frame rate, if the run recorded it (streams.json, a feature manifest, checkpoints)."""
    import json

    streams_file = run / "streams.json"
    if streams_file.is_file():
        try:
            meta = json.loads(streams_file.read_text())
        except (OSError, ValueError):
            meta = {}
        for key in ("fps", "train_fps"):
            if isinstance(meta.get(key), (int, float)) and meta[key] > 0:
                return float(meta[key])
    for p in payloads:
        fps = (p.get("extra") or {}).get("fps")
        if isinstance(fps, (int, float)) and fps > 0:
            return float(fps)
    manifest = run / "features" / "manifest.parquet"
    if manifest.is_file():
        try:
            fps = pd.read_parquet(manifest, columns=["fps"])["fps"].dropna()
        except (OSError, ValueError, KeyError):
            return None
        if len(fps):
            return float(fps.median())
    return None


class Predictor:
    """Per-frame valence/arousal for any video, with the models and front ends of one training run.

    Build it with :meth:`from_run`; ``predict(path)`` returns a ``pandas.DataFrame`` with one row per
    decoded frame: ``frame`` (1-based), ``time`` (s, from the stream's timestamps), ``valence``, ``arousal``
    (in [-1, 1]) and ``face`` (1 where the subject's face was found).

    Args:
        models: the fold networks to average (at least one); all use the same streams.
        streams: role -> extractor name (the run's ``streams.json``).
        config: the run's configuration (front-end weights in ``features``, windows in ``cv``).
        smooth: Gaussian smoothing of the output along time, standard deviation in seconds (0: off).
        detect_every: run the face detector every k-th frame and track in between (1: detect every frame).
        subject: which face to follow: ``"largest"``, ``"first"`` or the i-th face from the left (int).
        detector: ``"hog"`` (fast) or ``"cnn"`` (dlib MMOD, robust to pose, far slower on CPU).
        detect_size: the detector sees frames shrunk to this longer side (pixels).
        train_fps: frame rate of the training data, for the frame-rate warning (``None``: no check).
        audio_chunk_s, audio_margin_s: audio is processed in chunks of this many seconds with this margin.
        fuse_threads: torch threads while the fold models run (restored afterwards; ``None``: leave as is).
            The fusion network's layers are small: on a busy 2-core machine one thread ran a 180-frame
            window in 0.03-0.07 s and two threads in 0.3-3 s (OpenMP threads waiting on each other).
        progress: show a progress bar per video.
    """

    def __init__(
        self,
        models: list[FoldModel],
        streams: dict[str, str],
        config: Config,
        smooth: float = 0.0,
        detect_every: int = 5,
        subject: Subject = "largest",
        detector: str = "hog",
        detect_size: int | None = 640,
        train_fps: float | None = None,
        audio_chunk_s: int = 30,
        audio_margin_s: int = 2,
        fuse_threads: int | None = 1,
        progress: bool = False,
    ) -> None:
        from vafusion.features.extractors import build_extractor

        if not models:
            raise WeightsError(None, "no models to predict with", "pass a run directory with trained models")
        if smooth < 0:
            raise VafusionError(
                None, f"smoothing must be >= 0 seconds, got {smooth}", "pass --smooth 0 or more"
            )
        if detect_every < 1:
            raise VafusionError(
                None, f"detect_every must be >= 1, got {detect_every}", "pass --detect-every 1 or more"
            )
        self.models = models
        self.roles: list[str] = list(models[0].net.names)
        for m in models[1:]:
            if list(m.net.names) != self.roles:
                raise WeightsError(
                    m.path,
                    f"model uses streams {m.net.names}, fold {models[0].fold} uses {self.roles}",
                    "predict with models of one run",
                )
        missing = [r for r in self.roles if r not in streams]
        if missing:
            raise WeightsError(
                None,
                f"no extractor recorded for stream(s) {', '.join(missing)}",
                "check RUN/streams.json against the models",
            )
        self.streams = {r: streams[r] for r in self.roles}
        self.config = config
        self.smooth = float(smooth)
        self.window, self.hop = int(config.cv.eval_window), int(config.cv.eval_hop)
        self.train_fps = train_fps
        self.audio_chunk_s, self.audio_margin_s = audio_chunk_s, audio_margin_s
        self.fuse_threads = fuse_threads
        self.progress = progress
        self.extractors: dict[str, Any] = {}
        for name in dict.fromkeys(self.streams.values()):
            self.extractors[name] = build_extractor(name, config.features)
        for role, name in self.streams.items():
            want = models[0].net.branches[role].missing.shape[0]
            if self.extractors[name].dim != want:
                raise WeightsError(
                    None,
                    f"stream {role}: extractor {name} gives {self.extractors[name].dim}-d "
                    f"features, the model expects {want}-d",
                    "use the front-end weights the run was trained with (RUN/config.yaml)",
                )
        self.aligner = TimedAligner(detector=detector, detect_size=detect_size)
        self.detect_every = detect_every
        self.subject = subject

    # -- construction -------------------------------------------------------------------------

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

        ``fold=None`` averages every fold model (the default); an int picks one. ``feature_overrides``
        (``["features.iresnet_weights=PATH", ...]``) repoints weight files that moved since training.
        ``backend="onnx"`` runs each fold network in ONNX Runtime from ``RUN/onnx/<which>/fold<k>.onnx``,
        exported there (parity-checked) on first use or when the checkpoint changed.
        Other keyword arguments go to the constructor.
        """
        import json

        from vafusion.weights import load_model

        run = Path(run)
        if not run.is_dir():
            raise VafusionError(
                run,
                "run directory not found",
                "pass the directory written by `vafusion cv` or "
                "`vafusion demo` (it holds models/ and config.yaml)",
            )
        if which not in MODEL_KINDS:
            raise VafusionError(None, f"unknown model {which!r}", f"choose one of {', '.join(MODEL_KINDS)}")
        models, payloads, streams = [], [], None
        for k, path in _model_files(run, which, fold):
            net, norm, net_streams, payload = load_model(path)
            if streams is None:
                streams = dict(net_streams)
            elif any(streams.get(r) != e for r, e in net_streams.items()):
                raise WeightsError(
                    path,
                    f"fold models disagree on their extractors ({net_streams} vs {streams})",
                    "retrain the run, or pick one model with --fold",
                )
            models.append(FoldModel(k, net, norm, path))
            payloads.append(payload)
        assert streams is not None
        streams_file = run / "streams.json"
        if streams_file.is_file():
            try:
                recorded = json.loads(streams_file.read_text()).get("streams", {})
            except (OSError, ValueError):
                raise VafusionError(
                    streams_file, "unreadable streams file", "rewrite it by rerunning `vafusion cv`"
                ) from None
            clash = {r: (e, recorded[r]) for r, e in streams.items() if r in recorded and recorded[r] != e}
            if clash:
                raise WeightsError(
                    streams_file,
                    f"models and streams.json disagree: {clash}",
                    "the models were trained with other features; rerun `vafusion cv`",
                )
        overrides = list(feature_overrides or [])
        bad = [o for o in overrides if not o.startswith("features.")]
        if bad:
            raise VafusionError(
                None,
                f"only features.* keys can be changed for prediction, got {bad[0]!r}",
                "the model's settings come from the run; repoint weight files with features.*",
            )
        cfg = run_config(run / "config.yaml", payloads[0].get("config"), overrides)
        kwargs.setdefault("train_fps", _training_fps(run, payloads))
        if backend not in ("torch", "onnx"):
            raise VafusionError(None, f"unknown backend {backend!r}", "use --backend torch or --backend onnx")
        predictor = cls(models, streams, cfg, **kwargs)
        if backend == "onnx":
            from vafusion.export import onnx_runner

            for m in predictor.models:
                cached = run / "onnx" / which / f"fold{m.fold}.onnx"
                m.net = onnx_runner(m.path, cached, predictor.fuse_threads or 0)
        return predictor

    # -- features -----------------------------------------------------------------------------

    def roles_with(self, modality: str) -> list[str]:
        """The model's streams filled by ``face`` or ``audio`` extractors."""
        return [r for r in self.roles if self.extractors[self.streams[r]].modality == modality]

    def extract(
        self, path: str | Path, subject: Subject | None = None, progress: bool | None = None
    ) -> VideoFeatures:
        """Run the video and audio passes over one file (see the module docstring)."""
        from tqdm import tqdm

        path = Path(path)
        info = probe(path, count_frames=True)  # demux only: finds a truncated file before any work is done
        show = self.progress if progress is None else progress
        face_names = list(dict.fromkeys(self.streams[r] for r in self.roles_with("face")))
        batch = max(1, int(self.config.features.face_batch))
        stride = max(1, int(self.config.features.face_stride))
        track = FaceTrack(
            self.aligner, detect_every=self.detect_every, subject=self.subject if subject is None else subject
        )
        self.aligner.detect_s = self.aligner.align_s = 0.0
        t = {"video_decode": 0.0, "face_step": 0.0, "face_encode": 0.0}
        times, boxes = array("d"), array("f")
        rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in face_names}
        idx_pending: list[int] = []
        crops_pending: list[np.ndarray] = []
        run_length = 0  # faces in the current run of consecutive frames with a face
        held: tuple[int, np.ndarray, Box] | None = None  # the run's latest face not yet queued (stride > 1)

        def queue(index: int, image: np.ndarray, box: Box) -> None:
            """Align one face (only faces that will be encoded are aligned) and encode when a batch is full."""
            if not face_names:
                return
            t0 = time.perf_counter()
            crop, _ = self.aligner.align(image, box)
            t["face_step"] += time.perf_counter() - t0
            idx_pending.append(index)
            crops_pending.append(crop)
            if len(crops_pending) >= batch:
                flush()

        def flush() -> None:
            if not crops_pending:
                return
            t0 = time.perf_counter()
            crops = np.stack(crops_pending)
            for name in face_names:
                rows[name].append((np.asarray(idx_pending, np.int64), self.extractors[name].encode(crops)))
            t["face_encode"] += time.perf_counter() - t0
            idx_pending.clear()
            crops_pending.clear()

        frames = read_ahead(iter_frames(path))  # decoding runs in a thread, beside detection and tracking
        bar = tqdm(
            total=info.n_frames,
            desc=path.name,
            unit="frame",
            disable=not show,
            dynamic_ncols=True,
            leave=False,
        )
        nan4 = (math.nan,) * 4
        try:
            while True:
                t0 = time.perf_counter()
                frame = next(frames, None)
                t1 = time.perf_counter()
                t["video_decode"] += t1 - t0
                if frame is None:
                    break
                found = track.step(frame.image, align=False)
                t["face_step"] += time.perf_counter() - t1
                times.append(frame.time)
                if found.box is not None:
                    boxes.extend(found.box)
                    # features.face_stride: encode every k-th face of a run and its last, as `extract` does
                    if run_length % stride == 0:
                        queue(frame.index, frame.image, found.box)
                        held = None
                    else:
                        held = (frame.index, frame.image, found.box)
                    run_length += 1
                else:
                    boxes.extend(nan4)
                    if held is not None:
                        queue(*held)
                    held, run_length = None, 0
                bar.update(1)
            if held is not None:
                queue(*held)
        finally:
            frames.close()
            bar.close()
        flush()
        n = len(times)
        times_np = np.frombuffer(times, np.float64).copy()
        if n:
            # constant frame rate: the nominal grid (i / fps), as `vafusion extract` uses for the audio rows
            times_np = row_times(dataclasses.replace(info, times=times_np), n)
        boxes_np = np.frombuffer(boxes, np.float32).reshape(n, 4).copy()
        face = np.isfinite(boxes_np[:, 0])
        feats: dict[str, np.ndarray] = {}
        valid: dict[str, np.ndarray] = {}
        for role in self.roles_with("face"):
            ext = self.extractors[self.streams[role]]
            f = np.zeros((n, ext.dim), np.float32)
            v = np.zeros(n, bool)
            for idx, x in rows[self.streams[role]]:
                f[idx] = x
                v[idx] = True
            bad = ~np.isfinite(f).all(axis=1)
            f[bad] = 0.0
            v &= ~bad
            if stride > 1:
                from vafusion.accel import fill_between_anchors

                f, v = fill_between_anchors(f, v, face & ~bad)
            feats[role], valid[role] = f, v
        timings = {
            "video_decode": t["video_decode"],
            "detect": self.aligner.detect_s,
            "track": max(t["face_step"] - self.aligner.detect_s - self.aligner.align_s, 0.0),
            "align": self.aligner.align_s,
            "face_encode": t["face_encode"],
        }
        vf = VideoFeatures(path, info, times_np, face, boxes_np, feats, valid, None, timings)
        self._audio_pass(vf)
        return vf

    def _audio_pass(self, vf: VideoFeatures) -> None:
        """Audio rows of every audio stream, read in chunks (:func:`stream_audio_features`)."""
        from vafusion.features.audio_stream import AudioFeatures, stream_audio_features

        roles = self.roles_with("audio")
        names = list(dict.fromkeys(self.streams[r] for r in roles))
        n = vf.length
        broken = None
        try:
            got = stream_audio_features(
                vf.path, [self.extractors[m] for m in names], vf.times, self.audio_chunk_s, self.audio_margin_s
            )
        except MediaError as exc:  # no sample decodes: as without a track, but say why
            broken = exc.one_line()
            dims = [self.extractors[m].dim for m in names]
            got = AudioFeatures([np.zeros((n, d), np.float32) for d in dims], [np.zeros(n, bool)] * len(names), None)
        for role in roles:
            k = names.index(self.streams[role])
            vf.feats[role] = np.where(got.valid[k][:, None], got.feats[k], 0.0).astype(np.float32)
            vf.valid[role] = got.valid[k].copy()
        total = got.seconds
        vf.audio_seconds = total
        vf.timings.update(audio_decode=got.decode_s, audio_encode=got.encode_s)
        if roles:
            if broken:
                vf.warnings.append(f"{broken}; predicting from the face alone")
            elif total is None or total == 0:
                vf.warnings.append(f"{vf.path}: no audio track; predicting from the face alone")
            elif n and vf.times[-1] > total + 0.5:
                vf.warnings.append(
                    f"{vf.path}: audio ends at {total:.1f} s, video at {vf.times[-1]:.1f} s; "
                    "later frames are predicted from the face alone"
                )

    # -- fusion -------------------------------------------------------------------------------

    def predict_features(
        self, feats: dict[str, np.ndarray], valid: dict[str, np.ndarray], times: np.ndarray | None = None
    ) -> np.ndarray:
        """Fold-averaged (T, 2) valence/arousal for raw (unnormalised) feature rows, smoothed and clipped.

        ``times`` (s) are needed only for smoothing (default: frame index / 30).
        """
        from vafusion.inference import sliding_predict
        from vafusion.train.data import Sequence

        n = len(next(iter(valid.values())))
        if n == 0:
            return np.zeros((0, 2), np.float32)
        from vafusion.accel import torch_threads

        acc = np.zeros((n, 2), np.float64)
        with torch_threads(self.fuse_threads or 0):
            for m in self.models:
                seq = Sequence(
                    "video",
                    "video",
                    {r: feats[r] for r in self.roles},
                    {r: valid[r] for r in self.roles},
                    np.zeros((n, 2), np.float32),
                    np.zeros(n, bool),
                )
                acc += sliding_predict(
                    m.net, m.normaliser.apply(seq), self.window, min(self.hop, self.window)
                )
        pred = (acc / len(self.models)).astype(np.float32)
        if self.smooth > 0:
            pred = smooth_series(pred, np.arange(n) / 30.0 if times is None else times, self.smooth)
        return np.clip(pred, -1.0, 1.0)

    def run(
        self, path: str | Path, subject: Subject | None = None, progress: bool | None = None
    ) -> Prediction:
        """Features, fold-averaged prediction and the output table of one video."""
        start = time.perf_counter()
        vf = self.extract(path, subject=subject, progress=progress)
        t0 = time.perf_counter()
        pred = self.predict_features(vf.feats, vf.valid, vf.times)
        vf.timings["fuse"] = time.perf_counter() - t0
        vf.timings["total"] = time.perf_counter() - start
        raised: list[tuple[str, type[UserWarning]]] = [(m, AudioWarning) for m in vf.warnings]
        if self.train_fps and vf.length > 1:
            ratio = vf.fps / self.train_fps
            if ratio > FPS_TOLERANCE or ratio < 1 / FPS_TOLERANCE:
                message = (
                    f"{vf.path}: {vf.fps:.1f} fps, the training data had {self.train_fps:.1f} fps; the "
                    "temporal models count frames, so predictions may be less accurate"
                )
                raised.append((message, FpsWarning))
        for msg, category in raised:
            warnings.warn(msg, category, stacklevel=2)
        messages = [m for m, _ in raised]
        table = pd.DataFrame(
            {
                "frame": np.arange(1, vf.length + 1, dtype=np.int64),
                "time": vf.times,
                "valence": pred[:, 0],
                "arousal": pred[:, 1],
                "face": vf.face.astype(np.int8),
            },
            columns=COLUMNS,
        )
        return Prediction(table, vf, [m.fold for m in self.models], messages)

    def predict(
        self, path: str | Path, subject: Subject | None = None, progress: bool | None = None
    ) -> pd.DataFrame:
        """``frame,time,valence,arousal,face`` for every decoded frame of ``path``."""
        return self.run(path, subject=subject, progress=progress).table


# ----------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """The prediction table as CSV, atomically (times and values to 6 decimals)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index spans where ``mask`` is true."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def write_plot(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Valence and arousal over time, frames without a face shaded grey; PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t = table["time"].to_numpy()
    no_face = table["face"].to_numpy() == 0
    period = float(np.median(np.diff(t))) if len(t) > 1 else 1 / 30
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.8), sharex=True)
    for ax, col, colour in zip(axes, ("valence", "arousal"), ("tab:blue", "tab:red"), strict=True):
        for s, e in _runs(no_face):
            ax.axvspan(t[s] - period / 2, t[e - 1] + period / 2, color="0.85", lw=0)
        ax.plot(t, table[col].to_numpy(), color=colour, lw=1.2)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    axes[0].legend(handles=[Patch(color="0.85", label="no face found")], loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    share = 100.0 * (1 - no_face.mean()) if len(no_face) else 0.0
    fig.suptitle(f"{title}  ({len(t)} frames, face found in {share:.0f} %)".strip())
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


_MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"}


def _draw_overlay(
    image: np.ndarray, k: int, times: np.ndarray, va: np.ndarray, box: np.ndarray, history_s: float = 10.0
) -> np.ndarray:
    """Frame ``k`` with the face box, the last ``history_s`` s of valence/arousal and a VA-plane dot."""
    import cv2

    img = image.copy()
    h, w = img.shape[:2]
    u = max(min(h, w) / 480.0, 0.5)
    thick = max(1, round(2 * u))
    if np.isfinite(box).all():
        cv2.rectangle(img, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), (0, 220, 0), thick)
    # trace strip along the bottom
    sh = int(0.22 * h)
    y0 = h - sh
    strip = img[y0:h]
    strip[:] = (strip.astype(np.float32) * 0.35).astype(np.uint8)
    mid = y0 + sh // 2
    cv2.line(img, (0, mid), (w - 1, mid), (128, 128, 128), 1)
    lo = np.searchsorted(times, times[k] - history_s)
    seg_t = times[lo : k + 1]
    if len(seg_t) > 1:
        xs = (w - 1) * (1 - (times[k] - seg_t) / history_s)
        for col, colour in ((0, (80, 160, 255)), (1, (255, 90, 90))):
            ys = mid - va[lo : k + 1, col] * (sh / 2 - 3)
            pts = np.stack([xs, ys], axis=1).round().astype(np.int32)
            cv2.polylines(img, [pts], False, colour, thick, cv2.LINE_AA)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * u
    cv2.putText(
        img,
        f"valence {va[k, 0]:+.2f}",
        (int(6 * u), y0 + int(16 * u)),
        font,
        scale,
        (80, 160, 255),
        thick,
        cv2.LINE_AA,
    )
    cv2.putText(
        img,
        f"arousal {va[k, 1]:+.2f}",
        (int(6 * u), y0 + int(34 * u)),
        font,
        scale,
        (255, 90, 90),
        thick,
        cv2.LINE_AA,
    )
    # valence-arousal plane, top right
    r = int(0.11 * min(h, w))
    cx, cy = w - r - int(10 * u), r + int(10 * u)
    cv2.circle(img, (cx, cy), r, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.line(img, (cx - r, cy), (cx + r, cy), (200, 200, 200), 1)
    cv2.line(img, (cx, cy - r), (cx, cy + r), (200, 200, 200), 1)
    cv2.putText(img, "V", (cx + r - int(12 * u), cy - 4), font, 0.4 * u, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(img, "A", (cx + 4, cy - r + int(12 * u)), font, 0.4 * u, (255, 255, 255), 1, cv2.LINE_AA)
    dot = (round(cx + va[k, 0] * r), round(cy - va[k, 1] * r))
    cv2.circle(img, dot, max(3, int(5 * u)), (255, 220, 0), -1, cv2.LINE_AA)
    return img


def write_overlay(src: str | Path, prediction: Prediction, dst: str | Path, progress: bool = False) -> Path:
    """A copy of ``src`` with the VA trace, a VA-plane dot and the face box drawn on every frame.

    H.264 video with the source's timestamps (variable frame rate kept, rotation applied to the pixels);
    the audio is copied when MP4 can hold its codec and re-encoded to AAC otherwise. Streams frame by
    frame, written atomically.
    """
    from fractions import Fraction

    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    table, vf = prediction.table, prediction.features
    va = table[["valence", "arousal"]].to_numpy(np.float64)
    times = vf.times
    n = len(times)
    if n == 0:
        raise MediaError(src, "no frames to draw on", "check that the file is a complete video")
    first = next(iter_frames(src))
    h, w = first.image.shape[:2]
    ph, pw = h + h % 2, w + w % 2  # yuv420p needs even sizes
    rate = Fraction(vf.fps).limit_denominator(1001) if vf.fps > 0 else Fraction(30)
    time_base = Fraction(1, 90000)
    with atomic_path(dst) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = pw, ph, "yuv420p"
        vs.time_base = time_base
        vs.codec_context.time_base = time_base
        vs.options = {"crf": "20", "preset": "veryfast"}
        audio_in = av.open(str(src), metadata_errors="ignore")
        try:
            a_stream = audio_in.streams.audio[0] if audio_in.streams.audio else None
            a_out, a_packets, a_encode = None, None, None
            if a_stream is not None and a_stream.codec_context.name in _MP4_AUDIO:
                a_out = out.add_stream_from_template(a_stream)
                a_packets = (p for p in audio_in.demux(a_stream) if p.dts is not None)
            elif a_stream is not None:
                a_out = out.add_stream(
                    "aac", rate=48000, layout="stereo" if a_stream.channels > 1 else "mono"
                )
                resampler = av.AudioResampler(format="fltp", layout=a_out.layout.name, rate=48000)

                def a_encode_gen() -> Iterator[av.Packet]:
                    try:
                        for fr in audio_in.decode(a_stream):
                            for r in resampler.resample(fr):
                                yield from a_out.encode(r)
                    except av.error.FFmpegError:
                        pass
                    yield from a_out.encode(None)

                a_encode = a_encode_gen()
            pending_audio: av.Packet | None = None
            audio_source = a_packets if a_packets is not None else a_encode

            def mux_audio_until(t_s: float) -> None:
                nonlocal pending_audio
                if audio_source is None:
                    return
                while True:
                    if pending_audio is None:
                        pending_audio = next(audio_source, None)
                        if pending_audio is None:
                            return
                    pt = pending_audio.pts if pending_audio.pts is not None else pending_audio.dts
                    if (
                        pt is not None
                        and pending_audio.time_base is not None
                        and float(pt * pending_audio.time_base) > t_s
                    ):
                        return
                    pending_audio.stream = a_out
                    out.mux(pending_audio)
                    pending_audio = None

            bar = tqdm(total=n, desc=f"overlay {src.name}", unit="frame", disable=not progress, leave=False)
            last_pts = -1
            for frame in iter_frames(src):
                k = min(frame.index, n - 1)
                img = _draw_overlay(frame.image, k, times, va, vf.boxes[k])
                if (ph, pw) != img.shape[:2]:
                    img = np.pad(img, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
                vframe = av.VideoFrame.from_ndarray(img, format="rgb24")
                pts = max(round(times[k] / time_base), last_pts + 1)
                vframe.pts, vframe.time_base = pts, time_base
                last_pts = pts
                for p in vs.encode(vframe):
                    out.mux(p)
                mux_audio_until(float(times[k]) + 1.0)
                bar.update(1)
            bar.close()
            for p in vs.encode(None):
                out.mux(p)
            mux_audio_until(math.inf)
        finally:
            audio_in.close()
    return dst


def predict_to_files(
    predictor: Predictor,
    video: str | Path,
    out_dir: str | Path,
    overlay: bool = False,
    plot: bool = True,
    progress: bool = False,
) -> tuple[Prediction, dict[str, Path]]:
    """Predict one video and write ``OUT/<stem>.csv``, ``OUT/<stem>.png`` and with ``overlay`` ``<stem>_overlay.mp4``."""
    video, out_dir = Path(video), Path(out_dir)
    prediction = predictor.run(video, progress=progress)
    files = {"csv": out_dir / f"{video.stem}.csv"}
    write_csv(prediction.table, files["csv"])
    if plot:
        files["png"] = out_dir / f"{video.stem}.png"
        write_plot(prediction.table, files["png"], title=video.name)
    if overlay:
        files["overlay"] = write_overlay(
            video, prediction, out_dir / f"{video.stem}_overlay.mp4", progress=progress
        )
    return prediction, files
