"""The ``egemaps`` extractor: openSMILE eGeMAPSv02 low-level descriptors at video frame times.

openSMILE gives 25 LLDs (loudness, spectral balance, MFCC 1-4, F0, jitter, shimmer, HNR, formants...)
every 10 ms, each from a short analysis frame with a start and end time. A row's time is the centre
of its analysis frame (start + half the median frame length, 10 ms for eGeMAPSv02).

Alignment to video frames (``times``, seconds): for frame time ``t`` the LLD rows whose centre lies in
``[t - window/2, t + window/2)`` are averaged. Centres sit on a 10 ms grid, so at 25 and 30 fps most
window edges fall exactly on a centre; edges are compared with a 1 microsecond tolerance
(``EDGE_TOLERANCE_S``), so such a row is taken at the lower edge and left at the upper one whatever the
rounding of ``t``: the same rows whether ``t`` counts from the file's start or from a chunk's.
``window`` defaults to the median spacing of ``times`` (one frame period: 40 ms at 25 fps, i.e. 4 rows).
When no row falls inside (a window under 10 ms), each LLD is linearly interpolated between the nearest
rows (edge rows repeat at the ends).

Validity: a frame is valid when ``0 <= t <= duration`` of the audio. Invalid frames get zeros. Audio too
short to give a single LLD frame (under about 0.1 s, or empty) gives all frames invalid, not an error,
so a video with a broken or missing audio track still yields a validity mask the models can use.

The signal is resampled to 16 kHz first (``sample_rate=None`` keeps the input rate): the voicing-based
LLDs (F0, jitter, shimmer, formants) change with the input rate, and videos come at 44.1 or 48 kHz,
so a fixed rate keeps features comparable across videos; it also halves the cost at 44.1 kHz. The
resampling is vafusion's own (:func:`vafusion.features.resample.resample`, the VGGish front end's), not
openSMILE's: it is shift-invariant to the last bit for chunks that start on a whole second, so audio read
in chunks (``stream_audio_features``) gives the rows of a whole-file pass at every input rate, whereas
openSMILE's resampler differs by ~1e-7 between a chunk and the whole file and its formant tracker turns
that into jumps.
Voicing-based LLDs are 0 on unvoiced rows (openSMILE's convention) and are averaged as such.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import opensmile

from vafusion.features.resample import resample

NAME = "egemaps"
DIM = 25
DEFAULT_SAMPLE_RATE = 16000
EDGE_TOLERANCE_S = 1e-6
PARAMS: dict[str, Any] = {
    "feature_set": "eGeMAPSv02",
    "level": "LowLevelDescriptors",
    "window": None,
    "sample_rate": DEFAULT_SAMPLE_RATE,
    "edge_tolerance_s": EDGE_TOLERANCE_S,
    "resampler": "vafusion kaiser_best",
    "opensmile": opensmile.__version__,
}
"""The settings of :func:`egemaps_at` with its defaults (what ``EgemapsExtractor().params`` returns)."""


@functools.lru_cache(maxsize=1)
def _smile() -> opensmile.Smile:
    """openSMILE at the rate it is given (resampling, when wanted, happens before: see the module doc)."""
    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
    )


class EgemapsExtractor:
    """eGeMAPSv02 LLDs averaged over a window centred on each video frame time.

    Args:
        window: averaging window in seconds (``None``: the median spacing of the frame times).
        sample_rate: rate the audio is resampled to before openSMILE (``None``: keep the input rate).
    """

    name = NAME
    dim = DIM

    def __init__(self, window: float | None = None, sample_rate: int | None = DEFAULT_SAMPLE_RATE) -> None:
        if window is not None and not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        self.window = window
        self.sample_rate = sample_rate
        self._smile = _smile()
        self.columns: list[str] = list(self._smile.feature_names)
        if len(self.columns) != self.dim:
            raise RuntimeError(f"openSMILE eGeMAPSv02 gives {len(self.columns)} LLDs, expected {self.dim}")

    @property
    def params(self) -> dict[str, Any]:
        """Settings that change the output (stored next to cached features)."""
        return {**PARAMS, "window": self.window, "sample_rate": self.sample_rate}

    def lld(self, waveform: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw LLD rows ``(R, 25)`` float32 and their centre times ``(R,)`` in seconds (R may be 0)."""
        waveform = _check_waveform(waveform, sample_rate)
        if waveform.size == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0)
        if self.sample_rate is not None and sample_rate != self.sample_rate:
            waveform = resample(waveform, sample_rate, self.sample_rate).astype(np.float32)
            sample_rate = self.sample_rate
            if waveform.size == 0:
                return np.zeros((0, self.dim), np.float32), np.zeros(0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Segment too short")
            df = self._smile.process_signal(waveform, sample_rate)
        values = df.to_numpy(dtype=np.float32)
        starts = df.index.get_level_values("start").total_seconds().to_numpy()
        ends = df.index.get_level_values("end").total_seconds().to_numpy()
        keep = np.isfinite(values).all(axis=1)
        if not keep.any():
            return np.zeros((0, self.dim), np.float32), np.zeros(0)
        centres = starts + np.median(ends - starts) / 2.0
        return values[keep], centres[keep]

    def __call__(
        self, waveform: np.ndarray, sample_rate: int, times: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """LLDs at ``times``: features ``(T, 25)`` float32 and ``valid`` ``(T,)`` bool (see module doc)."""
        times = np.asarray(times, dtype=np.float64)
        if times.ndim != 1 or not np.isfinite(times).all():
            raise ValueError(f"times must be a 1-D array of finite seconds, got shape {times.shape}")
        values, centres = self.lld(waveform, sample_rate)
        feats = np.zeros((len(times), self.dim), dtype=np.float32)
        duration = np.asarray(waveform).shape[0] / sample_rate
        valid = (times >= 0.0) & (times <= duration) & (len(values) > 0)
        if not valid.any():
            return feats, valid
        window = self.window if self.window is not None else _frame_period(times)
        t = times[valid]
        lo = np.searchsorted(centres, t - window / 2.0 - EDGE_TOLERANCE_S, side="left")
        hi = np.searchsorted(centres, t + window / 2.0 - EDGE_TOLERANCE_S, side="left")
        count = hi - lo
        csum = np.concatenate([np.zeros((1, self.dim)), np.cumsum(values, axis=0, dtype=np.float64)])
        mean = (csum[hi] - csum[lo]) / np.maximum(count, 1)[:, None]
        empty = count == 0
        if empty.any():
            mean[empty] = np.stack(
                [np.interp(t[empty], centres, values[:, j]) for j in range(self.dim)], axis=1
            )
        feats[valid] = mean
        return feats, valid


def _check_waveform(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(
            f"waveform must be mono (1-D), got shape {waveform.shape}; average the channels first"
        )
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    waveform = waveform.astype(np.float32, copy=False)
    if not np.isfinite(waveform).all():
        raise ValueError("waveform contains NaN or infinite samples")
    return np.ascontiguousarray(waveform)


def _frame_period(times: np.ndarray) -> float:
    """Median spacing of the frame times; 40 ms (25 fps) for a single frame."""
    steps = np.diff(np.sort(times))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 0.04


@functools.lru_cache(maxsize=1)
def _default_extractor() -> EgemapsExtractor:
    return EgemapsExtractor()


def egemaps_at(
    waveform: np.ndarray, sample_rate: int, times: np.ndarray, window: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """eGeMAPSv02 LLDs at video frame ``times`` (seconds): ``(T, 25)`` float32 features, ``(T,)`` valid."""
    extractor = _default_extractor() if window is None else EgemapsExtractor(window=window)
    return extractor(waveform, sample_rate, times)
