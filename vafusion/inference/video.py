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
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vafusion.errors import MediaError
from vafusion.face.align import FaceAligner
from vafusion.face.detect import Box, FaceDetector
from vafusion.face.track import FaceTrack, Subject
from vafusion.features.audio_stream import AudioFeatures, stream_audio_features
from vafusion.features.timing import StrideAnchors, fill_between_anchors
from vafusion.io.video import VideoInfo, iter_frames, read_ahead, row_times

Progress = Callable[[int, int | None], None]
"""``progress(frames_done, frames_total)``, called as frames are processed."""


class Follower(Protocol):
    """Finds faces frame by frame: ``step(frame) -> {person: box}``, with the detector it uses."""

    detector: FaceDetector

    def step(self, frame: np.ndarray) -> dict[int, Box]: ...


class OneFace:
    """A :class:`FaceTrack` (one subject) as a :class:`Follower` whose one person is number 0."""

    def __init__(self, track: FaceTrack) -> None:
        self.track, self.detector = track, track.detector

    def step(self, frame: np.ndarray) -> dict[int, Box]:
        """``{0: box}`` where the subject's face is found, else ``{}``."""
        box = self.track.step(frame, align=False).box
        return {} if box is None else {0: box}


@dataclass
class FaceRows:
    """One person's face through a video: where it was found, its box, and its rows of each face stream."""

    person: int
    face: np.ndarray  # (T,) bool
    boxes: np.ndarray  # (T, 4) float32 left, top, right, bottom; NaN without a face
    feats: dict[str, np.ndarray]  # face role -> (T, D) float32
    valid: dict[str, np.ndarray]  # face role -> (T,) bool


@dataclass
class VideoFeatures:
    """Per-frame inputs of the model for one video (each person's face rows and the shared audio rows),
    plus what the passes found and how long they took. ``face``, ``boxes``, ``feats`` and ``valid`` are
    those of the first person (the one subject of ``--faces one``), with the audio streams."""

    path: Path
    info: VideoInfo
    times: np.ndarray  # (T,) float64 s from the first frame
    people: list[FaceRows]
    audio_feats: dict[str, np.ndarray] = field(default_factory=dict)  # audio role -> (T, D) float32
    audio_valid: dict[str, np.ndarray] = field(default_factory=dict)  # audio role -> (T,) bool
    audio_seconds: float | None = None  # None: no audio track
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

    def inputs(self, k: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The model's inputs for person ``k`` of :attr:`people`: their face rows and the audio rows."""
        face = self.people[k] if self.people else None
        return (
            {**(face.feats if face else {}), **self.audio_feats},
            {**(face.valid if face else {}), **self.audio_valid},
        )

    @property
    def face(self) -> np.ndarray:
        return self.people[0].face if self.people else np.zeros(self.length, bool)

    @property
    def boxes(self) -> np.ndarray:
        return self.people[0].boxes if self.people else np.full((self.length, 4), np.nan, np.float32)

    @property
    def feats(self) -> dict[str, np.ndarray]:
        return self.inputs(0)[0]

    @property
    def valid(self) -> dict[str, np.ndarray]:
        return self.inputs(0)[1]


class CropEncoder:
    """Aligns the faces it is given and encodes them in batches with every face extractor of the model."""

    def __init__(self, aligner: FaceAligner, extractors: dict[str, Any], batch: int) -> None:
        self.aligner, self.extractors, self.batch = aligner, extractors, max(1, batch)
        self.rows: dict[str, dict[int, list[tuple[np.ndarray, np.ndarray]]]] = {n: {} for n in extractors}
        self.seconds = 0.0
        self._items: list[tuple[int, int]] = []
        self._crops: list[np.ndarray] = []

    def add(self, item: tuple[int, int, np.ndarray, Box]) -> None:
        """Align the face ``(person, frame index, image, box)``; encode when a batch is full."""
        if not self.extractors:
            return
        person, index, image, box = item
        crop, _ = self.aligner.align(image, box)
        self._items.append((person, index))
        self._crops.append(crop)
        if len(self._crops) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Encode the queued crops."""
        if not self._crops:
            return
        t0 = time.perf_counter()
        crops = np.stack(self._crops)
        people = np.asarray([p for p, _ in self._items])
        index = np.asarray([i for _, i in self._items], np.int64)
        for name, ext in self.extractors.items():
            encoded = ext.encode(crops)
            for person in np.unique(people):
                take = people == person
                self.rows[name].setdefault(int(person), []).append((index[take], encoded[take]))
        self.seconds += time.perf_counter() - t0
        self._items.clear()
        self._crops.clear()

    def features(
        self, name: str, dim: int, person: int, face: np.ndarray, stride: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(T, dim)`` rows and validity of ``person`` for extractor ``name``; faces between encoded ones
        interpolated."""
        n = len(face)
        f = np.zeros((n, dim), np.float32)
        v = np.zeros(n, bool)
        for idx, x in self.rows[name].get(person, []):
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
    """What the face pass found: frame times, each person's boxes, the encoder's rows and what to tell the
    user about the video stream read."""

    times: np.ndarray
    boxes: dict[int, np.ndarray]  # person -> (T, 4), NaN without a face
    encoder: CropEncoder
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def rows(self, roles: dict[str, Any], stride: int) -> list[FaceRows]:
        """Every person's :class:`FaceRows` (``roles``: face role -> its extractor), by person number; at
        least person 0."""
        out = []
        n = len(self.times)
        for person in sorted(self.boxes) or [0]:  # nobody found: person 0 without a face in any frame
            boxes = self.boxes.get(person, np.full((n, 4), np.nan, np.float32))
            found = np.isfinite(boxes[:, 0])
            feats, valid = {}, {}
            for role, ext in roles.items():
                feats[role], valid[role] = self.encoder.features(ext.name, ext.dim, person, found, stride)
            face = found & np.logical_and.reduce(list(valid.values())) if valid else found
            boxes = np.where(face[:, None], boxes, np.nan).astype(np.float32)
            out.append(FaceRows(person, face, boxes, feats, valid))
        return out


class _Boxes:
    """Each person's box per frame, grown as frames come (a person found late has NaN rows before)."""

    def __init__(self) -> None:
        self.frames = 0
        self.seen: dict[int, list[tuple[int, Box]]] = {}

    def add(self, found: dict[int, Box]) -> None:
        for person, box in found.items():
            self.seen.setdefault(person, []).append((self.frames, box))
        self.frames += 1

    def arrays(self) -> dict[int, np.ndarray]:
        out = {}
        for person, rows in self.seen.items():
            a = np.full((self.frames, 4), np.nan, np.float32)
            for i, box in rows:
                a[i] = box
            out[person] = a
        return out


def face_pass(
    path: Path,
    info: VideoInfo,
    follower: Follower,
    aligner: FaceAligner,
    extractors: dict[str, Any],
    stride: int,
    batch: int,
    progress: Progress | None = None,
) -> FacePass:
    """Decode ``path``, find the faces in every frame and encode, for each person, the ones the stride
    selects (every k-th face of each of their runs of frames with a face, and the run's last)."""
    encoder = CropEncoder(aligner, extractors, batch)
    select: dict[int, StrideAnchors[tuple[int, int, np.ndarray, Box]]] = {}
    detect0, align0 = follower.detector.seconds, aligner.seconds
    decode = step = 0.0
    times, boxes = array("d"), _Boxes()
    frames = read_ahead(iter_frames(path))  # decoding runs in a thread, beside detection and tracking
    try:
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            t1 = time.perf_counter()
            decode += t1 - t0
            if frame is None:
                break
            found = follower.step(frame.image)
            step += time.perf_counter() - t1
            times.append(frame.time)
            boxes.add(found)
            for person in found.keys() | select.keys():
                item = (person, frame.index, frame.image, found.get(person))
                for chosen in select.setdefault(person, StrideAnchors(max(1, stride))).push(
                    item, person in found
                ):
                    encoder.add(chosen)
            if progress is not None:
                progress(len(times), info.n_frames)
        for anchors in select.values():
            for chosen in anchors.finish():
                encoder.add(chosen)
    finally:
        frames.close()
    encoder.flush()
    n = len(times)
    times_np = np.frombuffer(times, np.float64).copy()
    if n:  # constant frame rate: the nominal grid (i / fps), as `vafusion extract` uses for the audio rows
        times_np = row_times(dataclasses.replace(info, times=times_np), n)
    detect, align = follower.detector.seconds - detect0, aligner.seconds - align0
    timings = {
        "video_decode": decode,
        "detect": detect,
        "track": max(step - detect, 0.0),
        "align": align,
        "face_encode": encoder.seconds,
    }
    return FacePass(times_np, boxes.arrays(), encoder, timings, video_stream_warning(info))


def audio_pass(
    vf: VideoFeatures,
    roles: dict[str, str],
    extractors: dict[str, Any],
    chunk_s: int,
    margin_s: int,
    stream: int = 0,
    rest: str | None = "the face alone",
) -> None:
    """Fill ``vf``'s audio streams (``roles``: role -> extractor name) from audio stream ``stream``;
    where there is no audio, the warning says the frames are predicted from ``rest`` (None: nothing)."""
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
        vf.audio_feats[role] = np.where(got.valid[k][:, None], got.feats[k], 0.0).astype(np.float32)
        vf.audio_valid[role] = got.valid[k].copy()
    vf.audio_seconds = got.seconds
    vf.timings.update(audio_decode=got.decode_s, audio_encode=got.encode_s)
    if not roles:
        return
    total, rest = got.seconds, rest or NOTHING
    if broken or not total:
        vf.warnings.append(f"{broken or f'{vf.path}: no audio track'}; predicting from {rest}")
        return
    if max(got.nonfinite, default=0):
        vf.warnings.append(
            f"{vf.path}: the audio of {max(got.nonfinite)} frames holds NaN or infinite samples (or gives "
            f"such features); those frames are predicted from {rest}"
        )
    if n and got.lead > 0.5:
        vf.warnings.append(
            f"{vf.path}: audio starts {got.lead:.1f} s after the video; "
            f"earlier frames are predicted from {rest}"
        )
    if n and vf.times[-1] > got.lead + total + 0.5:
        vf.warnings.append(
            f"{vf.path}: audio ends at {got.lead + total:.1f} s, video at {vf.times[-1]:.1f} s; "
            f"later frames are predicted from {rest}"
        )


def video_stream_warning(info: VideoInfo) -> list[str]:
    """The warning for a file with several video streams (cover art aside): which one is read, and how to
    read another (there is no flag: FFmpeg copies the wanted one into a file of its own in seconds)."""
    if len(info.video_streams) < 2:
        return []
    return [
        f"{info.path}: {len(info.video_streams)} video streams ({'; '.join(info.video_streams)}); using "
        f"stream 0; for another, copy it out first: ffmpeg -i IN -map 0:v:N -map 0:a? -c copy OUT.mkv"
    ]


NOTHING = "nothing: every value is the model's output without input, not a measurement"


def no_face_warning(path: Path, subject: Subject, most: int, rest: str | None = "the voice alone") -> str:
    """The warning for a video in which the subject's face was never found (``rest``: what the model has
    left to predict from; None: nothing)."""
    if isinstance(subject, int) and subject >= most > 0:
        seen = "1 face was" if most == 1 else f"{most} faces were"
        return (
            f"{path}: no face number {subject} from the left (counting from 0): at most {seen} visible at "
            f"once; every frame is predicted without a face (--subject 0..{most - 1} picks one)"
        )
    return f"{path}: no face found in any frame; predicting from {rest or NOTHING}"
