"""One video through the front ends: the face pass (decode, detect, track, align, encode), the audio pass.

Both passes stream, so memory does not grow with the length of the video beyond one small row per frame:

1. **Faces**: PyAV decodes one frame at a time in a read-ahead thread (rotation metadata applied,
   presentation timestamps kept, so variable-frame-rate video keeps its real timing). ``FaceTrack``
   detects the subject every ``detect_every`` frames and tracks it in between; with
   ``features.face_stride`` k > 1 only every k-th face of each run of frames with a face, and the run's last,
   is aligned and encoded (:class:`vafusion.features.timing.StrideAnchors`, the rule ``vafusion extract``
   uses for the training features) and the rest interpolated. Aligned crops are encoded in batches.
2. **Audio**: :func:`vafusion.features.audio_stream.stream_audio_features`, the function ``vafusion
   extract`` uses too, reads the track in chunks at the frames' times.

Frames without a face keep an invalid visual row; the model replaces it with its learned stand-in, and the
output marks them ``face = 0``. A video without audio is predicted from the face alone in the same way.
"""

from __future__ import annotations

import dataclasses
import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vafusion.errors import MediaError
from vafusion.face.detect import Box
from vafusion.face.track import FaceTrack, Subject
from vafusion.features.audio_stream import AudioFeatures, stream_audio_features
from vafusion.features.timing import StrideAnchors, fill_between_anchors
from vafusion.io.video import VideoInfo, iter_frames, read_ahead, row_times

Progress = Callable[[int, int | None], None]
"""``progress(frames_done, frames_total)``, called as frames are processed."""


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
        """Decoded frames."""
        return len(self.times)

    @property
    def fps(self) -> float:
        """Mean frame rate from the timestamps (the container's rate for a single frame)."""
        if self.length > 1 and self.times[-1] > self.times[0]:
            return (self.length - 1) / float(self.times[-1] - self.times[0])
        return float(self.info.fps)


class CropEncoder:
    """Aligns the faces it is given and encodes them in batches with every face extractor of the model."""

    def __init__(self, track: FaceTrack, extractors: dict[str, Any], batch: int) -> None:
        self.track, self.extractors, self.batch = track, extractors, max(1, batch)
        self.rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in extractors}
        self.seconds = 0.0
        self._index: list[int] = []
        self._crops: list[np.ndarray] = []

    def add(self, item: tuple[int, np.ndarray, Box]) -> None:
        """Align the face ``(frame index, image, box)``; encode when a batch is full."""
        if not self.extractors:
            return
        index, image, box = item
        crop, _ = self.track.aligner.align(image, box)
        self._index.append(index)
        self._crops.append(crop)
        if len(self._crops) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Encode the queued crops."""
        if not self._crops:
            return
        t0 = time.perf_counter()
        crops = np.stack(self._crops)
        for name, ext in self.extractors.items():
            self.rows[name].append((np.asarray(self._index, np.int64), ext.encode(crops)))
        self.seconds += time.perf_counter() - t0
        self._index.clear()
        self._crops.clear()

    def features(self, name: str, dim: int, face: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """``(T, dim)`` rows and validity of extractor ``name``; faces between encoded ones interpolated."""
        n = len(face)
        f = np.zeros((n, dim), np.float32)
        v = np.zeros(n, bool)
        for idx, x in self.rows[name]:
            f[idx] = x
            v[idx] = True
        bad = ~np.isfinite(f).all(axis=1)
        f[bad] = 0.0
        v &= ~bad
        if stride > 1:
            f, v = fill_between_anchors(f, v, face & ~bad)
        return f, v


@dataclass
class FacePass:
    """What the face pass found: frame times, the subject's boxes and the encoder's rows."""

    times: np.ndarray
    boxes: np.ndarray
    encoder: CropEncoder
    timings: dict[str, float]

    @property
    def face(self) -> np.ndarray:
        """``(T,)`` bool: frames where the subject's face was found."""
        return np.isfinite(self.boxes[:, 0])

    def streams(
        self, roles: dict[str, Any], stride: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Rows and validity of each face stream (``roles``: role -> its extractor)."""
        feats, valid = {}, {}
        for role, ext in roles.items():
            feats[role], valid[role] = self.encoder.features(ext.name, ext.dim, self.face, stride)
        return feats, valid


def face_pass(
    path: Path,
    info: VideoInfo,
    track: FaceTrack,
    extractors: dict[str, Any],
    stride: int,
    batch: int,
    progress: Progress | None = None,
) -> FacePass:
    """Decode ``path``, find the subject in every frame and encode the faces the stride selects."""
    encoder = CropEncoder(track, extractors, batch)
    select: StrideAnchors[tuple[int, np.ndarray, Box]] = StrideAnchors(max(1, stride))
    detect0, align0 = track.detector.seconds, track.aligner.seconds
    decode = step = 0.0
    times, boxes = array("d"), array("f")
    frames = read_ahead(iter_frames(path))  # decoding runs in a thread, beside detection and tracking
    try:
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            t1 = time.perf_counter()
            decode += t1 - t0
            if frame is None:
                break
            found = track.step(frame.image, align=False)
            step += time.perf_counter() - t1
            times.append(frame.time)
            boxes.extend(found.box if found.box is not None else (math.nan,) * 4)
            for item in select.push((frame.index, frame.image, found.box), found.box is not None):
                encoder.add(item)
            if progress is not None:
                progress(len(times), info.n_frames)
        for item in select.finish():
            encoder.add(item)
    finally:
        frames.close()
    encoder.flush()
    n = len(times)
    times_np = np.frombuffer(times, np.float64).copy()
    if n:  # constant frame rate: the nominal grid (i / fps), as `vafusion extract` uses for the audio rows
        times_np = row_times(dataclasses.replace(info, times=times_np), n)
    detect, align = track.detector.seconds - detect0, track.aligner.seconds - align0
    timings = {
        "video_decode": decode,
        "detect": detect,
        "track": max(step - detect, 0.0),
        "align": align,
        "face_encode": encoder.seconds,
    }
    return FacePass(times_np, np.frombuffer(boxes, np.float32).reshape(n, 4).copy(), encoder, timings)


def audio_pass(
    vf: VideoFeatures,
    roles: dict[str, str],
    extractors: dict[str, Any],
    chunk_s: int,
    margin_s: int,
    stream: int = 0,
) -> None:
    """Fill ``vf``'s audio streams (``roles``: role -> extractor name) from audio stream ``stream``."""
    names = list(dict.fromkeys(roles.values()))
    n = vf.length
    broken = None
    streams = vf.info.audio_streams
    if roles and len(streams) > 1:
        vf.warnings.append(
            f"{vf.path}: {len(streams)} audio streams ({'; '.join(streams)}); using stream "
            f"{stream}; --audio-stream N picks another"
        )
    try:
        got = stream_audio_features(
            vf.path, [extractors[m] for m in names], vf.times, chunk_s, margin_s, stream
        )
    except MediaError as exc:  # no sample decodes: as without a track, but say why
        broken = exc.one_line()
        got = AudioFeatures(
            [np.zeros((n, extractors[m].dim), np.float32) for m in names],
            [np.zeros(n, bool)] * len(names),
            None,
        )
    for role, name in roles.items():
        k = names.index(name)
        vf.feats[role] = np.where(got.valid[k][:, None], got.feats[k], 0.0).astype(np.float32)
        vf.valid[role] = got.valid[k].copy()
    vf.audio_seconds = got.seconds
    vf.timings.update(audio_decode=got.decode_s, audio_encode=got.encode_s)
    if not roles:
        return
    total = got.seconds
    if broken:
        vf.warnings.append(f"{broken}; predicting from the face alone")
    elif total is None or total == 0:
        vf.warnings.append(f"{vf.path}: no audio track; predicting from the face alone")
    elif n and vf.times[-1] > total + 0.5:
        vf.warnings.append(
            f"{vf.path}: audio ends at {total:.1f} s, video at {vf.times[-1]:.1f} s; "
            "later frames are predicted from the face alone"
        )


def no_face_warning(path: Path, subject: Subject, most: int) -> str:
    """The warning for a video in which the subject's face was never found."""
    if isinstance(subject, int) and subject >= most > 0:
        seen = "1 face was" if most == 1 else f"{most} faces were"
        return (
            f"{path}: no face number {subject} from the left (counting from 0): at most {seen} visible at "
            f"once; every frame is predicted without a face (--subject 0..{most - 1} picks one)"
        )
    return f"{path}: no face found in any frame; predicting from the voice alone"
