"""Streaming audio: the first audio stream of a media file as overlapping mono chunks, and the encoder side
(:func:`encode_audio`) that the synthetic corpus, the tests and the benchmarks write their tracks with, and
:func:`write_clip` for their short video clips.

A whole hour of 44.1 kHz audio is 600 MB as float32 and several GB once a front end resamples it and
builds its spectrogram in float64; chunks keep that bounded by the chunk length instead of the file's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vafusion.errors import MediaError
from vafusion.io.video import _open, video_start


def encode_audio(
    stream: av.audio.stream.AudioStream, wave: np.ndarray, rate: int, start: int = 0, flush: bool = True
) -> Iterator[av.Packet]:
    """Encode float audio into ``stream`` and yield its packets (the caller muxes them, or alters them first).

    Args:
        stream: an audio output stream (e.g. ``container.add_stream("aac", rate=rate, layout="mono")``).
        wave: ``(samples,)`` mono or ``(channels, samples)`` planar float32 in [-1, 1].
        rate: its sample rate in Hz; frames of 1024 samples get ``pts`` counted in samples from ``start``.
        flush: end the stream after ``wave`` (``False`` to feed it more pieces later).
    """
    planes = np.atleast_2d(np.asarray(wave, np.float32))
    layout = "stereo" if len(planes) == 2 else "mono"
    for s in range(0, planes.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(planes[:, s : s + 1024]), format="fltp", layout=layout
        )
        frame.sample_rate, frame.pts, frame.time_base = rate, start + s, Fraction(1, rate)
        yield from stream.encode(frame)
    if flush:
        yield from stream.encode(None)


@dataclass
class AudioChunk:
    """A stretch of mono audio: ``wave`` starts at ``start`` s; frames at ``core_start <= t < core_end``
    use it.

    ``total`` (s) is the length of the whole track, known only on the last chunk (``None`` before).
    ``lead`` (s) is how long after the video's first frame the track's first sample is presented (negative:
    before), from the streams' timestamps, so a frame at ``t`` s from the first frame hears ``t - lead``.
    """

    wave: np.ndarray
    rate: int
    start: float
    core_start: float
    core_end: float
    total: float | None
    lead: float = 0.0


def _decoded(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    resampler: av.AudioResampler,
    path: Path,
) -> Iterator[tuple[float | None, np.ndarray]]:
    """Mono float32 sample blocks of ``stream`` in order, each with the presentation time (s) of the decoded
    frame it came from (``None``: unknown); a stream broken after some samples just ends."""
    got = False
    try:
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                got = True
                yield frame.time, out.to_ndarray().reshape(-1)
    except av.error.FFmpegError as exc:
        if not got:
            raise MediaError(
                path,
                f"audio stream cannot be decoded ({exc})",
                "re-encode the audio with ffmpeg, or run without audio features",
            ) from None
        return
    for out in resampler.resample(None):
        yield None, out.to_ndarray().reshape(-1)


def _lead(container: av.container.InputContainer, first: float | None) -> float:
    """Seconds from the first video frame to the audio's first sample at ``first`` s, as players align them
    (by timestamps); 0 without a video stream or timestamps."""
    start = video_start(container)
    if first is None or start is None:
        return 0.0
    return float(first) - float(start)


def _audio_stream(
    container: av.container.InputContainer, stream: int, path: Path
) -> av.audio.stream.AudioStream | None:
    """Audio stream number ``stream``; ``None`` without audio, ``MediaError`` when there is no such stream."""
    if not container.streams.audio:
        return None
    if not 0 <= stream < len(container.streams.audio):
        raise MediaError(
            path,
            f"has {len(container.streams.audio)} audio streams, no stream {stream}",
            f"pass --audio-stream 0..{len(container.streams.audio) - 1}",
        )
    return container.streams.audio[stream]


def iter_audio_chunks(
    path: str | Path, chunk_s: int = 30, margin_s: int = 2, stream: int = 0
) -> Iterator[AudioChunk]:
    """Decode audio stream ``stream`` (0: the first) in order and yield overlapping mono chunks; nothing if
    there is no audio.

    Samples are FFmpeg's mono downmix at the stream's own rate, exactly what
    :func:`vafusion.io.video.read_audio` returns with ``sample_rate=None``; chunk ``k`` holds the samples
    from ``k * chunk_s - margin_s`` to ``(k + 1) * chunk_s + margin_s`` seconds (clipped to the track), so at
    most ``chunk_s + 2 * margin_s`` seconds are held at a time. Chunk borders are whole seconds, so any
    resampling to 16 kHz and the 10 ms analysis grids of the front ends line up with a whole-file pass.

    Every chunk carries the track's ``lead`` over the video. The last chunk's core runs to infinity and
    carries ``total``; an empty audio stream yields one empty chunk with ``total = 0``. A stream that breaks
    mid-way ends at the last decodable sample, like ``read_audio``; one that cannot be decoded at all raises
    the same ``MediaError`` as ``read_audio``.
    """
    if chunk_s < 1 or margin_s < 1 or int(chunk_s) != chunk_s or int(margin_s) != margin_s:
        raise ValueError(f"chunk_s and margin_s must be whole seconds >= 1, got {chunk_s} and {margin_s}")
    path = Path(path)
    container = _open(path)  # the one-line errors for a missing, empty or foreign file
    with container:
        audio = _audio_stream(container, stream, path)
        if audio is None:
            return
        rate = int(audio.rate or audio.codec_context.sample_rate or 0)
        if rate <= 0:
            return
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        size, margin = int(chunk_s) * rate, int(margin_s) * rate
        buf = np.zeros(0, np.float32)
        buf_start = 0  # sample index of buf[0] in the track
        pieces: list[np.ndarray] = []
        pending = 0
        core = 0
        lead: float | None = None
        for t, samples in _decoded(container, audio, resampler, path):
            if lead is None:
                lead = _lead(container, t)
            pieces.append(samples)
            pending += samples.size
            if buf_start + buf.size + pending < core + size + margin:
                continue
            buf = np.concatenate([buf, *pieces])
            pieces, pending = [], 0
            while buf_start + buf.size >= core + size + margin:
                lo = max(0, core - margin)
                seg = buf[lo - buf_start : core + size + margin - buf_start]
                yield AudioChunk(seg, rate, lo / rate, core / rate, (core + size) / rate, None, lead)
                core += size
                drop = max(0, core - margin) - buf_start
                buf = buf[drop:].copy()
                buf_start += drop
        buf = np.concatenate([buf, *pieces]).astype(np.float32, copy=False)
        lo = max(0, core - margin)
        total = buf_start + buf.size
        yield AudioChunk(
            buf[lo - buf_start :], rate, lo / rate, core / rate, math.inf, total / rate, lead or 0.0
        )


def write_clip(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25,
    wave: np.ndarray | None = None,
    rate: int = 16000,
    crf: int = 18,
) -> Path:
    """Write RGB ``(H, W, 3)`` uint8 ``frames`` as an H.264 MP4 (quality ``crf``: 0 lossless, 18 near
    lossless), with ``wave`` (float audio at ``rate`` Hz, see :func:`encode_audio`) as an AAC track when
    given. Odd frame sizes are padded by one pixel (4:2:0 needs even sizes). For test and benchmark clips."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.pix_fmt, vs.options = "yuv420p", {"crf": str(crf)}
        planes = None if wave is None else np.atleast_2d(wave)
        if planes is not None:
            aus = out.add_stream("aac", rate=rate, layout="stereo" if len(planes) == 2 else "mono")
        for k, img in enumerate(frames):
            h, w = img.shape[:2]
            if k == 0:
                vs.width, vs.height = w + w % 2, h + h % 2
            img = np.pad(img, ((0, vs.height - h), (0, vs.width - w), (0, 0)), mode="edge")
            for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if planes is not None:
            for p in encode_audio(aus, planes, rate):
                out.mux(p)
    return path
