"""Audio features at frame times from a media file, streamed chunk by chunk.

``vafusion extract`` and ``vafusion predict`` both go through :func:`stream_audio_features`, so the rows a
model is trained on and the rows it predicts from come from the same code. Memory is bounded by one
chunk (``chunk_s + 2 * margin_s`` seconds of audio and what a front end builds from it) plus the output
rows, whatever the length of the file.

Why the chunks give the whole-file rows: each frame is encoded from the chunk whose core holds its time,
and every front end looks at most 0.48 s (half a 0.96 s log-mel patch) plus its resampling filter (a few
ms) to either side, well inside the 2 s margin. Chunk borders are whole seconds, so the 16 kHz resampling
phase and the 10 ms hop grids match the whole file's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vafusion.io.audio import AudioChunk, iter_audio_chunks

CHUNK_S = 30
MARGIN_S = 2
REACH_S = 0.5
"""How far (s) from a frame's time any front end looks: half a 0.96 s log-mel patch plus its filters."""


@dataclass
class AudioFeatures:
    """Rows of each extractor, in the order given: ``feats[i]`` (T, D_i) float32, ``valid[i]`` (T,) bool.

    ``seconds`` is the audio track's length (``None``: no audio track, ``0.0``: an empty one);
    ``nonfinite[i]`` counts rows extractor ``i`` gave with NaN/Inf, or whose audio held NaN/Inf samples
    (float PCM can), zeroed and marked invalid.
    ``decode_s``/``encode_s`` split the wall time between reading audio and the extractors; ``lead`` (s) is
    how long after the video's first frame the track starts (negative: before it).
    """

    feats: list[np.ndarray]
    valid: list[np.ndarray]
    seconds: float | None
    nonfinite: list[int] = field(default_factory=list)
    decode_s: float = 0.0
    encode_s: float = 0.0
    lead: float = 0.0


def _encode_chunk(
    chunk: AudioChunk,
    extractors: Sequence,
    times: np.ndarray,
    sel: np.ndarray,
    feats: list[np.ndarray],
    valid: list[np.ndarray],
    nonfinite: list[int],
) -> None:
    """Rows ``sel`` (frames whose times fall in the chunk's core) of every extractor, from one chunk."""
    n = len(times)
    # One frame either side as context (its row is dropped): extractors that read the frame spacing from
    # the times (eGeMAPS' averaging window) then see it even in a chunk holding a single frame.
    span = chunk.wave.size / chunk.rate
    before = [sel[0] - 1] if sel[0] > 0 and times[sel[0] - 1] >= chunk.start else []
    after = [sel[-1] + 1] if sel[-1] + 1 < n and times[sel[-1] + 1] - chunk.start <= span else []
    ctx = np.array([*before, *sel, *after], np.int64)
    keep = slice(len(before), len(before) + sel.size)
    local = times[ctx] - chunk.start
    if chunk.total is not None:
        # a frame exactly at the track's end stays inside the chunk despite rounding in ``local``
        local = np.where(times[ctx] <= chunk.total, np.minimum(local, span), local)
    wave, touched = _without_nonfinite(chunk.wave, chunk.rate, local[keep])
    for i, ext in enumerate(extractors):
        # origin: the chunk's start in the track, for hop grids anchored to the whole track
        f, v = ext.at_times(wave, chunk.rate, local, origin=chunk.start)
        f = np.asarray(f, np.float32)[keep]
        v = np.asarray(v, bool)[keep]
        if chunk.total is not None:
            v = v & (times[sel] <= chunk.total)
        bad = touched | ~np.isfinite(f).all(axis=1)
        if bad.any():
            nonfinite[i] += int(bad.sum())
            f[bad] = 0.0
            v = v & ~bad
        feats[i][sel] = f
        valid[i][sel] = v


def _without_nonfinite(wave: np.ndarray, rate: int, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``wave`` with NaN/Inf samples set to 0, and which frames (times ``local`` s in the chunk) lie within
    ``REACH_S`` of such a sample: their rows are treated as missing audio, like frames past the track's
    end, instead of failing the whole file. A finite ``wave`` comes back as it is."""
    finite = np.isfinite(wave)
    if finite.all():
        return wave, np.zeros(len(local), bool)
    at = np.flatnonzero(~finite) / rate
    near = np.searchsorted(at, local + REACH_S, side="right") > np.searchsorted(at, local - REACH_S)
    return np.where(finite, wave, 0.0).astype(np.float32), near


def stream_audio_features(
    path: str | Path,
    extractors: Sequence,
    times: np.ndarray,
    chunk_s: int = CHUNK_S,
    margin_s: int = MARGIN_S,
    stream: int = 0,
) -> AudioFeatures:
    """Each audio extractor's rows at frame ``times`` (T,) s of ``path``'s audio stream ``stream``.

    ``times`` count from the video's first frame; each frame takes the audio presented with it (by the
    streams' timestamps, as players align them), so where the audio starts later than the video the first
    frames are invalid, and where it starts earlier they skip its beginning (``AudioFeatures.lead``).
    Frames are valid where the extractor says so, never after the end of the track (those rows are zero
    and not encoded: a video whose sound stops early costs nothing more); a file without an audio track,
    or with an empty one, gives zero rows that are all invalid. A track that breaks mid-way
    ends at its last decodable sample; one that cannot be decoded at all raises ``MediaError``.
    """
    times = np.asarray(times, np.float64)
    n = len(times)
    feats = [np.zeros((n, ext.dim), np.float32) for ext in extractors]
    valid = [np.zeros(n, bool) for _ in extractors]
    nonfinite = [0] * len(extractors)
    seconds = None
    lead = 0.0
    decode_s = encode_s = 0.0
    t0 = time.perf_counter()
    frame_times = times
    for chunk in iter_audio_chunks(path, chunk_s, margin_s, stream):
        t1 = time.perf_counter()
        decode_s += t1 - t0
        seconds, lead = chunk.total, chunk.lead
        times = frame_times - lead if lead else frame_times  # in the track's own time
        inside = (times >= chunk.core_start) & (times < chunk.core_end)
        if chunk.total is not None:
            inside &= times <= chunk.total  # frames after the track's end stay zero and invalid, unencoded
        sel = np.flatnonzero(inside)
        if extractors and sel.size and chunk.wave.size:
            _encode_chunk(chunk, extractors, times, sel, feats, valid, nonfinite)
        t0 = time.perf_counter()
        encode_s += t0 - t1
    decode_s += time.perf_counter() - t0
    return AudioFeatures(feats, valid, seconds, nonfinite, decode_s, encode_s, lead)
