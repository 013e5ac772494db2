"""AudioSet VGGish log-mel front end: the input examples of VGGish and of the paper's log-mel encoder.

The numbers follow the published AudioSet VGGish recipe (tensorflow/models research/audioset/vggish,
ported to PyTorch by harritaylor/torchvggish) so that the published weights give the published embeddings:

* mono, resampled to 16 kHz with a Kaiser-windowed sinc interpolator equal to resampy's
  ``kaiser_best`` filter (resampy 0.4.x), the resampler the reference uses (:mod:`.resample`);
* STFT magnitude, 25 ms (400 samples) periodic-Hann window, 10 ms (160 samples) hop, FFT length 512,
  no centring/padding of frames;
* 64 triangular mel bands 125-7500 Hz on the HTK mel scale, built in the mel domain, DC bin zeroed;
* ``log(mel + 0.01)``;
* 0.96 s examples of 96 frames x 64 bands.

All signal arithmetic is float64 (as the numpy reference) and cast to float32 at the end.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from vafusion.features.resample import resample, to_mono
from vafusion.models.vggish import EXAMPLE_FRAMES, NUM_MEL_BANDS

SAMPLE_RATE = 16000
WINDOW_LENGTH = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz
FFT_LENGTH = 512  # next power of two >= WINDOW_LENGTH
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
SILENCE_LOG_MEL = float(np.log(LOG_OFFSET))

_STFT_CHUNK_FRAMES = 4096


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale: ``1127 * ln(1 + hz / 700)``."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=4)
def mel_filterbank(
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    num_bands: int = NUM_MEL_BANDS,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """Mel weights ``(num_spectrogram_bins, num_bands)`` float64 that post-multiply STFT magnitude rows.

    Bin ``k`` sits at ``k * nyquist / (num_spectrogram_bins - 1)`` Hz; band ``b`` is a triangle that is
    linear in mel between edges ``m[b]``, ``m[b+1]``, ``m[b+2]`` of ``num_bands + 2`` points evenly spaced
    in mel from ``lower_hz`` to ``upper_hz``. The DC bin gets no weight (HTK convention).
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"need 0 <= lower_hz < upper_hz <= {nyquist}, got {lower_hz}, {upper_hz}")
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_bands + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower[None, :]) / (center - lower)[None, :]
    falling = (upper[None, :] - bins_mel[:, None]) / (upper - center)[None, :]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=1)
def _periodic_hann() -> np.ndarray:
    """Periodic Hann window of ``WINDOW_LENGTH`` (one full cosine period over the window)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / WINDOW_LENGTH * np.arange(WINDOW_LENGTH))


def _log_mel_16k(signal: np.ndarray) -> np.ndarray:
    """``(frames, 64)`` float64 log-mel of a float64 16 kHz signal; frame ``i`` covers samples
    ``[160 i, 160 i + 400)``; only whole frames are kept."""
    n_frames = 0 if signal.shape[0] < WINDOW_LENGTH else 1 + (signal.shape[0] - WINDOW_LENGTH) // HOP_LENGTH
    out = np.empty((n_frames, NUM_MEL_BANDS), dtype=np.float64)
    if n_frames == 0:
        return out
    frames = np.lib.stride_tricks.sliding_window_view(signal, WINDOW_LENGTH)[::HOP_LENGTH][:n_frames]
    window = _periodic_hann()
    mel = mel_filterbank()
    for start in range(0, n_frames, _STFT_CHUNK_FRAMES):
        chunk = frames[start : start + _STFT_CHUNK_FRAMES] * window
        magnitude = np.abs(np.fft.rfft(chunk, n=FFT_LENGTH, axis=1))
        out[start : start + chunk.shape[0]] = np.log(magnitude @ mel + LOG_OFFSET)
    return out


def _to_16k(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float64 at 16 kHz."""
    mono = to_mono(waveform)
    return mono if sample_rate == SAMPLE_RATE else resample(mono, sample_rate, SAMPLE_RATE)


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """VGGish log-mel spectrogram ``(frames, 64)`` float32 at a 10 ms hop.

    Frame ``i`` covers 16 kHz samples ``[160 i, 160 i + 400)``, i.e. it is centred at ``0.01 i + 0.0125`` s.

    Args:
        waveform: ``(samples,)`` or ``(samples, channels)``, nominally in [-1, 1].
        sample_rate: its rate in Hz; anything but 16 kHz is resampled first.
    """
    return _log_mel_16k(_to_16k(waveform, sample_rate)).astype(np.float32)


def vggish_examples(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Non-overlapping 0.96 s VGGish input examples ``(N, 96, 64)`` float32, the remainder dropped.

    Same as the reference ``waveform_to_examples``: example ``k`` is log-mel frames ``96 k .. 96 k + 95``.
    """
    log_mel = log_mel_spectrogram(waveform, sample_rate)
    n = log_mel.shape[0] // EXAMPLE_FRAMES
    return np.ascontiguousarray(log_mel[: n * EXAMPLE_FRAMES].reshape(n, EXAMPLE_FRAMES, NUM_MEL_BANDS))


def example_start_frames(times: np.ndarray) -> np.ndarray:
    """First log-mel frame ``(T,)`` int64 of the 96-frame example centred nearest to each time (s).

    An example starting at frame ``s`` covers 16 kHz samples ``[160 s, 160 s + 15600)``, whose centre is
    sample ``160 s + 7800``; ``s = round((16000 t - 7800) / 160)`` (rounding half up), so the centre is
    within 5 ms of ``t``.
    """
    t = np.asarray(times, dtype=np.float64)
    centre_offset = (EXAMPLE_FRAMES - 1) * HOP_LENGTH + WINDOW_LENGTH  # 15600 samples covered
    return np.floor((t * SAMPLE_RATE - centre_offset / 2.0) / HOP_LENGTH + 0.5).astype(np.int64)


class CentredExamples:
    """The whole file's log-mel spectrogram, computed once, sliced into 0.96 s examples centred at any times.

    Build it once per audio track and call it for as many chunks of frame times as needed: the resampling
    and STFT are not repeated. Audio outside the file counts as digital silence (zeros): the signal is
    zero-padded by 96 hops on each side and frames beyond the padding are filled with ``log(0.01)``, the
    log-mel of silence.
    """

    def __init__(self, waveform: np.ndarray, sample_rate: int) -> None:
        signal = _to_16k(waveform, sample_rate)
        self.n_samples = int(signal.shape[0])
        pad = EXAMPLE_FRAMES * HOP_LENGTH  # whole hops, so padded frame j is frame j - 96 of the file
        padded = np.concatenate([np.zeros(pad), signal, np.zeros(pad + WINDOW_LENGTH)])
        self.log_mel = _log_mel_16k(padded).astype(np.float32)  # (frames + 192, 64)

    def valid(self, times: np.ndarray) -> np.ndarray:
        """``(T,)`` bool: the example centred at each time lies wholly inside the audio."""
        starts = example_start_frames(np.asarray(times, dtype=np.float64))
        span = (EXAMPLE_FRAMES - 1) * HOP_LENGTH + WINDOW_LENGTH
        return (starts >= 0) & (starts * HOP_LENGTH + span <= self.n_samples)

    def __call__(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame times ``(T,)`` s -> examples ``(T, 96, 64)`` float32 and :meth:`valid` ``(T,)`` bool."""
        t = np.asarray(times, dtype=np.float64)
        if t.ndim != 1:
            raise ValueError(f"times must be 1-D (T,), got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError("times must be finite")
        rows = example_start_frames(t)[:, None] + EXAMPLE_FRAMES + np.arange(EXAMPLE_FRAMES)[None, :]
        inside = (rows >= 0) & (rows < self.log_mel.shape[0])
        examples = self.log_mel[np.clip(rows, 0, self.log_mel.shape[0] - 1)]
        examples[~inside] = SILENCE_LOG_MEL
        return examples, self.valid(t)


def vggish_frame_examples(
    waveform: np.ndarray, sample_rate: int, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One 0.96 s VGGish example centred at each video frame time (see :class:`CentredExamples`).

    Args:
        waveform: ``(samples,)`` or ``(samples, channels)``.
        sample_rate: its rate in Hz.
        times: ``(T,)`` frame times in seconds from the start of the audio.

    Returns:
        examples ``(T, 96, 64)`` float32 and valid ``(T,)`` bool, False where the example reaches outside
        the audio (its outside part is then silence). For many chunks of one file, build one
        :class:`CentredExamples` instead of calling this per chunk.
    """
    return CentredExamples(waveform, sample_rate)(times)
