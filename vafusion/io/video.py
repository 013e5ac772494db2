"""Video and audio decoding with PyAV: probe, frames with timestamps, mono audio.

Everything reads streams incrementally, so memory does not grow with video length.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vafusion.errors import MediaError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


@dataclass(frozen=True)
class VideoInfo:
    """What a container holds. ``width``/``height`` are after rotation metadata is applied."""

    path: Path
    fps: float
    n_frames: int
    width: int
    height: int
    duration: float
    rotation: int
    has_audio: bool
    audio_rate: int | None
    audio_channels: int | None
    audio_streams: tuple[str, ...] = field(default=(), compare=False)
    """One description per audio stream (``"0: aac, 2 ch, 48000 Hz, eng"``), in the container's order."""
    video_streams: tuple[str, ...] = field(default=(), compare=False)
    """One description per video stream but cover art (``"0: h264, 64x64"``); the first is the one read."""
    times: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Presentation time (s from the first frame) of every frame, from its packet (if frames were counted)."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: 0-based ``index``, ``time`` in s from the stream start, RGB ``image`` (H, W, 3)."""

    index: int
    time: float
    image: np.ndarray


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise MediaError(path, "file not found", "check the path")
    if not path.is_file():
        raise MediaError(path, "is not a file", "pass a video file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)", "re-copy or re-download the video")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        raise MediaError(
            path,
            f"not a readable media file ({detail})",
            "check that it is a complete video (a copy cut short loses its index); "
            "re-copy it, or re-encode it with ffmpeg",
        ) from None


def video_streams(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """The container's video streams except attached pictures (cover art), in order; the first is decoded."""
    streams = list(container.streams.video)
    return [s for s in streams if not s.disposition & av.stream.Disposition.attached_pic] or streams


def video_start(container: av.container.InputContainer) -> Fraction | None:
    """Presentation time (s) of the decoded video stream's start, where frame times count from; ``None``
    without a video stream or its timestamps."""
    videos = video_streams(container)
    if not videos or videos[0].start_time is None or videos[0].time_base is None:
        return None
    return Fraction(videos[0].start_time) * videos[0].time_base


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    streams = video_streams(container)
    if not streams:
        raise MediaError(
            path, "no video stream (audio-only or not a video)", "pass a file with a video track"
        )
    return streams[0]


def describe_video(index: int, stream: av.video.stream.VideoStream) -> str:
    """``"1: h264, 512x512, 75 frames"`` (frames where the container lists them)."""
    ctx = stream.codec_context
    frames = f", {stream.frames} frames" if stream.frames else ""
    return f"{index}: {ctx.name}, {ctx.width}x{ctx.height}{frames}"


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        return 0.0
    return float(Fraction(rate))


def _rotation(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> int:
    """Display rotation in degrees (0, 90, 180, 270), read from the first decoded frame's side data."""
    try:
        for frame in container.decode(stream):
            return int(round(getattr(frame, "rotation", 0) or 0)) % 360
    except av.error.FFmpegError:
        return 0
    return 0


def _count_frames(path: Path, stream_index: int, listed: int) -> tuple[int, np.ndarray | None]:
    """Frames of the stream numbered ``stream_index`` in the file, counted from its packets, and their
    presentation times (s from the first).

    The file is opened afresh rather than rewound: raw H.264, FLV and some Matroska files cannot seek back.
    A truncated MP4/MOV (fewer packets than its index lists) is an error.
    """
    pts: list[int] = []
    container = _open(path)
    with container:
        stream = container.streams[stream_index]
        try:
            n_frames, present = _demux_count(container, stream, pts)
        except av.error.FFmpegError as exc:
            raise MediaError(
                path,
                f"stream is corrupt ({exc})",
                "the file is probably truncated; re-copy it or re-encode with ffmpeg",
            ) from None
        # only MP4/MOV indexes list every frame exactly (an AVI header may count a few more)
        exact_index = "mov" in container.format.name.split(",")
        time_base = stream.time_base
    if exact_index and 0 < present < listed:
        raise MediaError(
            path,
            f"truncated: its index lists {listed} video frames but only {present} are in the file",
            "re-copy or re-download the complete file",
        )
    times = None
    if pts and len(pts) == n_frames and time_base is not None:
        ticks = np.sort(np.asarray(pts, np.int64))
        times = (ticks - ticks[0]).astype(np.float64) * float(time_base)
    return n_frames, times


def _demux_count(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, pts: list[int]
) -> tuple[int, int]:
    """(frames with data, packets present) of ``stream``; appends each frame's pts to ``pts``."""
    n_frames = present = 0
    for packet in container.demux(stream):
        if packet.size or packet.dts is not None:  # not the end-of-stream flush packet
            present += 1  # AVI keeps empty packets for dropped frames in its frame count
        if packet.size:
            n_frames += 1
            if packet.pts is not None:
                pts.append(packet.pts)
    return n_frames, present


def describe_audio(index: int, stream: av.audio.stream.AudioStream) -> str:
    """``"0: aac, 2 ch, 48000 Hz, eng"``: how a user tells the audio streams of a file apart."""
    parts = [stream.codec_context.name, f"{stream.channels} ch", f"{stream.rate} Hz"]
    language = (stream.metadata or {}).get("language")
    if language and language != "und":
        parts.append(language)
    return f"{index}: " + ", ".join(parts)


def probe(path: str | Path, count_frames: bool = False) -> VideoInfo:
    """Read container facts; ``count_frames`` demuxes every packet for an exact frame count."""
    path = Path(path)
    container = _open(path)
    with container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        ctx = stream.codec_context
        width, height = int(ctx.width), int(ctx.height)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        listed = int(stream.frames or 0)
        n_frames = listed
        times = None
        if count_frames or n_frames <= 0:
            n_frames, times = _count_frames(path, stream.index, listed)
        if fps <= 0 and duration > 0:
            fps = n_frames / duration
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_streams = tuple(describe_audio(k, a) for k, a in enumerate(container.streams.audio))
        videos = tuple(describe_video(k, v) for k, v in enumerate(video_streams(container)))
        rotation = _rotation(stream, container)
    if rotation in (90, 270):
        width, height = height, width
    if n_frames <= 0:
        raise MediaError(path, "video stream holds no frames", "check that the file is a complete video")
    return VideoInfo(
        path=path,
        fps=fps,
        n_frames=n_frames,
        width=width,
        height=height,
        duration=duration,
        rotation=rotation,
        has_audio=audio is not None,
        audio_rate=int(audio.rate) if audio is not None else None,
        audio_channels=int(audio.channels) if audio is not None else None,
        audio_streams=audio_streams,
        video_streams=videos,
        times=times,
    )


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply display rotation (counter-clockwise degrees, FFmpeg's convention) so the image stands upright."""
    k = {0: 0, 90: 1, 180: 2, 270: 3}.get(rotation % 360, 0)
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def iter_frames(path: str | Path, start_time: float | None = None) -> Iterator[Frame]:
    """Yield every frame as RGB with its presentation time (seconds from the first frame).

    Times come from the stream's timestamps, so variable-frame-rate video keeps its real timing. Where
    they stop increasing (recordings joined byte-wise, whose clock restarts) the times go on from the last
    one by the last frame interval, as the decoded audio goes on, so they never run backwards.
    A stream that breaks mid-way raises ``MediaError`` after the frames decoded so far.
    """
    path = Path(path)
    container = _open(path)
    with container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        t0: float | None = start_time
        index, shift, last = 0, 0.0, -math.inf
        fps = _stream_fps(stream) or 30.0
        step = 1.0 / fps
        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is None:
                    t = index / fps + (t0 or 0.0)
                if t0 is None:
                    t0 = t
                if t + shift <= last:  # the clock restarted: continue from the last frame
                    shift = last + step - t
                elif index:
                    step = t + shift - last
                last = t + shift
                image = _rotate(
                    frame.to_ndarray(format="rgb24"), int(round(getattr(frame, "rotation", 0) or 0))
                )
                yield Frame(index=index, time=float(last - t0), image=image)
                index += 1
        except av.error.FFmpegError as exc:
            raise MediaError(
                path,
                f"decoding stopped at frame {index} ({exc})",
                "the file is probably truncated or corrupt; re-encode it with ffmpeg",
            ) from None
    if index == 0:
        raise MediaError(path, "no frame could be decoded", "check that the file is a complete video")


def read_ahead(items: Iterable, depth: int = 8) -> Iterator:
    """Yield ``items`` in order while a background thread produces up to ``depth`` of them in advance.

    FFmpeg decodes without holding the GIL, so wrapping :func:`iter_frames` overlaps decoding with the
    single-threaded face detection and tracking that consume the frames. An exception raised by the
    producer is raised here at the same point of the sequence; closing this generator early stops the
    thread (and with it the decoder) within a fraction of a second.
    """
    box: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    source = iter(items)

    def produce() -> None:
        try:
            for item in source:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as exc:
            put((False, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator such as iter_frames closes its file here, in its own thread

    worker = threading.Thread(target=produce, name="vafusion-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = box.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def read_audio(path: str | Path, sample_rate: int | None = 16000) -> tuple[np.ndarray, int] | None:
    """Decode the first audio stream as mono float32 in [-1, 1]; ``None`` if the file has no audio.

    ``sample_rate=None`` keeps the native rate (exact front ends such as VGGish resample themselves).
    Channels are averaged (FFmpeg's downmix).
    """
    path = Path(path)
    container = _open(path)
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = int(sample_rate or stream.rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            if not chunks:
                raise MediaError(
                    path,
                    f"audio stream cannot be decoded ({exc})",
                    "re-encode the audio with ffmpeg, or run without audio features",
                ) from None
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return wave, rate


def frame_times(n_frames: int, fps: float) -> np.ndarray:
    """Times of annotation frames: line i (1-based) <-> frame i <-> (i - 1) / fps seconds."""
    return np.arange(n_frames, dtype=np.float64) / float(fps)


def row_times(info: VideoInfo, n_rows: int) -> np.ndarray:
    """Times of annotation rows 1..n_rows: ``frame_times`` for constant frame rate video.

    When the frames' own timestamps (``probe(count_frames=True)``) stray from ``(i - 1) / fps`` by more
    than half a frame, the video has a variable frame rate and row i takes frame i's real time, so the
    audio features of a row come from the moment its frame is shown. Rows past the last frame continue
    at the average rate.
    """
    nominal = frame_times(n_rows, info.fps)
    t = info.times
    if t is None or len(t) == 0 or info.fps <= 0:
        return nominal
    k = min(len(t), n_rows)
    if np.abs(t[:k] - nominal[:k]).max() <= 0.5 / info.fps:
        return nominal
    out = nominal.copy()
    out[:k] = t[:k]
    if n_rows > k:
        out[k:] = t[k - 1] + np.arange(1, n_rows - k + 1) / info.fps
    return out
