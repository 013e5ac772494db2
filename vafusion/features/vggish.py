"""AudioSet VGGish front end: log-mel examples, the VGGish network and its PCA post-processing.

The numbers follow the published AudioSet VGGish recipe (tensorflow/models research/audioset/vggish,
ported to PyTorch by harritaylor/torchvggish) so that the published weights
``vggish-10086976.pth`` / ``vggish_pca_params-970ea276.pth`` give the published embeddings:

* mono, resampled to 16 kHz with a Kaiser-windowed sinc interpolator equal to resampy's
  ``kaiser_best`` filter (resampy 0.4.x), the resampler the reference uses;
* STFT magnitude, 25 ms (400 samples) periodic-Hann window, 10 ms (160 samples) hop, FFT length 512,
  no centring/padding of frames;
* 64 triangular mel bands 125-7500 Hz on the HTK mel scale, built in the mel domain, DC bin zeroed;
* ``log(mel + 0.01)``;
* 0.96 s examples of 96 frames x 64 bands.

All signal arithmetic is float64 (as the numpy reference) and cast to float32 at the end.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
WINDOW_LENGTH = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz
FFT_LENGTH = 512  # next power of two >= WINDOW_LENGTH
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames
EMBEDDING_SIZE = 128
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0
SILENCE_LOG_MEL = float(np.log(LOG_OFFSET))

# resampy 0.4.x ``kaiser_best``: a Kaiser-windowed sinc with 50 zero crossings, 2**13 table entries per
# crossing. The constants reproduce the table shipped in resampy/data/kaiser_best.npz to 2e-15.
_KAISER_BEST_ZEROS = 50
_KAISER_BEST_PRECISION = 2**13
_KAISER_BEST_BETA = 12.984585247040464
_KAISER_BEST_ROLLOFF = 0.9173473712608761

_STFT_CHUNK_FRAMES = 4096
_RESAMPLE_CHUNK = 8192
_MAX_PHASES = 4096  # polyphase resampling up to this many distinct output phases


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """Float64 mono signal: a 1-D input as is, a 2-D ``(samples, channels)`` input averaged over channels.

    Integer PCM is scaled to [-1, 1) first (int16 / 32768, as the reference's WAV reader does).
    """
    x = np.asarray(waveform)
    if np.issubdtype(x.dtype, np.integer):
        x = x / float(2 ** (8 * x.dtype.itemsize - 1))
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float64)
    elif x.ndim != 1:
        raise ValueError(f"waveform must be (samples,) or (samples, channels), got shape {x.shape}")
    return x.astype(np.float64, copy=False)


@lru_cache(maxsize=1)
def _kaiser_best_half_window() -> np.ndarray:
    """Right half of the interpolation filter, ``(zeros * precision + 1,)`` float64."""
    n = _KAISER_BEST_ZEROS * _KAISER_BEST_PRECISION
    positions = np.linspace(0.0, _KAISER_BEST_ZEROS, n + 1)
    sinc = _KAISER_BEST_ROLLOFF * np.sinc(_KAISER_BEST_ROLLOFF * positions)
    taper = np.kaiser(2 * n + 1, _KAISER_BEST_BETA)[n:]
    table = taper * sinc
    table.setflags(write=False)
    return table


class _Interpolator:
    """The resampy ``kaiser_best`` interpolation weights for one rate pair.

    Output sample ``j`` at input time ``t = j * orig_sr / new_sr`` (``n = int(t)``) is
    ``sum_i w_left[i] x[n - i] + sum_k w_right[k] x[n + 1 + k]``, the weights read from the windowed-sinc
    table with linear interpolation between entries; when downsampling the filter is stretched (cut-off at
    the new Nyquist) and scaled by ``new_sr / orig_sr``.
    """

    def __init__(self, orig_sr: int, new_sr: int) -> None:
        self.ratio = float(new_sr) / orig_sr
        table = _kaiser_best_half_window()
        if self.ratio < 1:
            table = self.ratio * table
        delta = np.diff(table, append=table[-1])
        n_table = table.shape[0]
        self.scale = min(1.0, self.ratio)
        self.step = int(self.scale * _KAISER_BEST_PRECISION)
        # The reference uses only taps whose table index is at most n_table - step; zeroing the entries
        # above (and padding) lets every output use the same number of taps.
        self.taps = n_table // self.step + 1
        padded_len = (self.taps + 1) * self.step + _KAISER_BEST_PRECISION + 1
        usable = n_table - self.step + 1
        self.table = np.zeros(padded_len)
        self.delta = np.zeros(padded_len)
        self.table[:usable] = table[:usable]
        self.delta[:usable] = delta[:usable]
        self.tap_idx = np.arange(self.taps) * self.step

    def weights(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input times ``(B,)`` -> ``n (B,)`` int64 and weights ``(B, 2 taps)`` applying to samples
        ``x[n - taps + 1 .. n + taps]``."""
        n = t.astype(np.int64)
        frac = self.scale * (t - n)
        halves = []
        for pos in (frac * _KAISER_BEST_PRECISION, (self.scale - frac) * _KAISER_BEST_PRECISION):
            off = pos.astype(np.int64)
            idx = off[:, None] + self.tap_idx[None, :]
            halves.append(self.table[idx] + (pos - off)[:, None] * self.delta[idx])
        return n, np.concatenate([halves[0][:, ::-1], halves[1]], axis=1)


def resample(waveform: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal, numerically equal to ``resampy.resample(x, orig_sr, new_sr)``
    (default ``kaiser_best`` filter, resampy 0.4.x) to about 1e-12.

    The output has ``int(len(x) * new_sr / orig_sr)`` samples; sample ``j`` sits at input time
    ``j * orig_sr / new_sr``. For integer rates whose reduced ratio has at most 4096 output phases (every
    common audio rate to 16 kHz) the weights are computed once per phase (polyphase); otherwise per sample.

    Args:
        waveform: ``(samples,)`` signal.
        orig_sr: its sample rate in Hz.
        new_sr: the wanted sample rate in Hz.

    Returns:
        ``(int(samples * new_sr / orig_sr),)`` float64.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal, got shape {x.shape}")
    if orig_sr == new_sr:
        return x.copy()
    n_out = int(x.shape[0] * float(new_sr) / float(orig_sr))
    if n_out < 1:
        return np.zeros(0, dtype=np.float64)
    interp = _Interpolator(orig_sr, new_sr)
    taps = interp.taps
    # windows[n + 1] is x[n - taps + 1 .. n + taps] (zeros outside the signal)
    windows = np.lib.stride_tricks.sliding_window_view(np.concatenate([np.zeros(taps), x, np.zeros(taps)]),
                                                       2 * taps)
    out = np.empty(n_out, dtype=np.float64)
    increment = 1.0 / interp.ratio
    rational = float(orig_sr).is_integer() and float(new_sr).is_integer()
    g = math.gcd(int(orig_sr), int(new_sr)) if rational else 1
    phases, hop_in = int(new_sr) // g, int(orig_sr) // g
    if rational and phases <= _MAX_PHASES:
        # Output j = q * phases + r sits at input time q * hop_in + t_r: same weights for every q.
        n_r, w_r = interp.weights(np.arange(min(phases, n_out)) * increment)
        for r in range(n_r.shape[0]):
            rows = windows[n_r[r] + 1::hop_in][: len(range(r, n_out, phases))]
            out[r::phases] = np.einsum("qk,k->q", rows, w_r[r])
        return out
    t_all = np.arange(n_out) * increment
    for start in range(0, n_out, _RESAMPLE_CHUNK):
        n, w = interp.weights(t_all[start:start + _RESAMPLE_CHUNK])
        out[start:start + n.shape[0]] = np.einsum("bk,bk->b", w, windows[n + 1])
    return out


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
        chunk = frames[start:start + _STFT_CHUNK_FRAMES] * window
        magnitude = np.abs(np.fft.rfft(chunk, n=FFT_LENGTH, axis=1))
        out[start:start + chunk.shape[0]] = np.log(magnitude @ mel + LOG_OFFSET)
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


def _vgg_features() -> nn.Sequential:
    """VGGish convolution stack; module indices match torchvggish (``features.0`` ... ``features.13``)."""
    layers: list[nn.Module] = []
    channels = 1
    for spec in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool"):
        if spec == "pool":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(spec), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(spec)
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """VGGish: log-mel example ``(N, 96, 64)`` or ``(N, 1, 96, 64)`` -> raw embedding ``(N, 128)``.

    State-dict keys are torchvggish's: ``features.{0,3,6,8,11,13}.{weight,bias}`` (3x3 convs 1-64-128-256-
    256-512-512 with 2x2 max-pools) and ``embeddings.{0,2,4}.{weight,bias}`` (12288-4096-4096-128). The conv
    output ``(N, 512, 6, 4)`` is flattened in (time, band, channel) order, as TensorFlow's NHWC flatten that
    the published weights were trained with. torchvggish keeps a ReLU after the last layer
    (``final_relu=True``, the default, matching the published PyTorch port); the later TensorFlow release
    dropped it.

    PCA parameters (not part of the state dict) are attached with :meth:`set_pca`; :meth:`postprocess`
    then gives the AudioSet-release 8-bit embeddings.
    """

    pca_eigen_vectors: torch.Tensor | None
    pca_means: torch.Tensor | None

    def __init__(self, final_relu: bool = True) -> None:
        super().__init__()
        self.features = _vgg_features()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_SIZE),
            nn.ReLU(inplace=True) if final_relu else nn.Identity(),
        )
        self.register_buffer("pca_eigen_vectors", None, persistent=False)
        self.register_buffer("pca_means", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 96, 64)`` or ``(N, 1, 96, 64)`` log-mel -> ``(N, 128)``."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, EXAMPLE_FRAMES, NUM_MEL_BANDS):
            raise ValueError(f"VGGish expects (N, 96, 64) or (N, 1, 96, 64), got {tuple(x.shape)}")
        x = self.features(x)  # (N, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (N, 6 * 4 * 512) in NHWC order
        return self.embeddings(x)

    def set_pca(self, eigen_vectors: torch.Tensor | np.ndarray, means: torch.Tensor | np.ndarray) -> None:
        """Attach the AudioSet PCA: ``eigen_vectors (128, 128)`` (rows are components), ``means (128,)``."""
        ev = torch.as_tensor(np.asarray(eigen_vectors), dtype=torch.float32)
        mu = torch.as_tensor(np.asarray(means), dtype=torch.float32).reshape(-1)
        if tuple(ev.shape) != (EMBEDDING_SIZE, EMBEDDING_SIZE) or tuple(mu.shape) != (EMBEDDING_SIZE,):
            raise ValueError(f"PCA needs (128, 128) and (128,), got {tuple(ev.shape)} and {tuple(mu.shape)}")
        device = self.embeddings[0].weight.device
        self.pca_eigen_vectors = ev.to(device)
        self.pca_means = mu.to(device)

    def postprocess(self, embeddings: torch.Tensor) -> torch.Tensor:
        """AudioSet release post-processing ``(N, 128) -> (N, 128)``: PCA (with whitening), clip to
        [-2, 2], quantise to 8 bits; values are the integers 0..255 as float."""
        if self.pca_eigen_vectors is None or self.pca_means is None:
            raise RuntimeError("no PCA parameters: use vafusion.weights.load_vggish(..., pca=path)")
        if embeddings.dim() != 2 or embeddings.shape[1] != EMBEDDING_SIZE:
            raise ValueError(f"postprocess expects (N, 128), got {tuple(embeddings.shape)}")
        projected = (embeddings - self.pca_means) @ self.pca_eigen_vectors.T
        clipped = projected.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


class VGGLogMelEncoder(VGGish):
    """The paper's log-mel encoder (eq. 3-4: ``S = LogMel(A)``, ``F_lm = VGG(S)``) -> 128-d per example.

    It is deliberately the VGGish architecture, so the published VGGish checkpoint initialises it
    (:func:`vafusion.weights.load_vgg_logmel`) and it can then be fine-tuned; no PCA is applied. Any leading
    batch shape is accepted: ``(..., 96, 64)`` -> ``(..., 128)``, e.g. ``(B, T, 96, 64)`` -> ``(B, T, 128)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., 96, 64)`` log-mel examples -> ``(..., 128)``."""
        if x.dim() < 3 or tuple(x.shape[-2:]) != (EXAMPLE_FRAMES, NUM_MEL_BANDS):
            raise ValueError(f"VGGLogMelEncoder expects (..., 96, 64), got {tuple(x.shape)}")
        lead = x.shape[:-2]
        out = super().forward(x.reshape(-1, EXAMPLE_FRAMES, NUM_MEL_BANDS))
        return out.reshape(*lead, EMBEDDING_SIZE)
