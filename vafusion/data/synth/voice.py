"""The voice synthesiser: speech-like audio whose loudness, pitch and pace follow arousal.

A band-limited sawtooth glottal source plus breath noise and fricative bursts is shaped by a
time-varying three-formant filter, gated into phrases and syllables, and mixed with background noise
at a random SNR. Arousal drives it strongly and valence only slightly, the opposite of the face, so
that fusing the two modalities measurably helps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_VOWELS = np.array(
    [
        [730, 1090, 2440],
        [530, 1840, 2480],
        [300, 2300, 3000],
        [570, 840, 2410],
        [300, 870, 2240],
        [500, 1500, 2500],
    ],
    np.float64,
)  # a e i o u schwa, adult male (Hz)
_BANDWIDTHS = np.array([80.0, 110.0, 160.0])
_N_FFT, _HOP = 512, 128  # STFT of the formant filter: sqrt-Hann analysis/synthesis, hop N/4


def smooth_noise(n: int, rate: float, cutoff_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise of ``n`` samples at ``rate`` Hz, low-passed to about ``cutoff_hz``.

    Used wherever something should drift slowly and randomly: speaking rate, pitch jitter, head
    motion, lighting, expression nuisance.
    """
    if n < 2:
        return np.zeros(n)
    m = 2 * n
    f = np.fft.rfftfreq(m, 1.0 / rate)
    spec = (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f))) * np.exp(
        -0.5 * (f / cutoff_hz) ** 2
    )
    spec[0] = 0
    x = np.fft.irfft(spec, m)[:n]
    s = x.std()
    return x / s if s > 0 else x


def _speech_gate(n: int, sample_rate: int, arousal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0/1 envelope (n,) of phrases separated by pauses (shorter pauses at high arousal), 15 ms ramps."""
    gate = np.zeros(n)
    pos = rng.uniform(0.0, 0.3)
    total = n / sample_rate
    ramp = int(0.015 * sample_rate)
    while pos < total:
        dur = rng.uniform(1.0, 3.2)
        a, b = int(pos * sample_rate), min(int((pos + dur) * sample_rate), n)
        if b - a > 2 * ramp:
            seg = np.ones(b - a)
            seg[:ramp] = np.linspace(0, 1, ramp)
            seg[-ramp:] = np.linspace(1, 0, ramp)
            gate[a:b] = seg
        mid = arousal[min((a + b) // 2, n - 1)]
        pos += dur + rng.uniform(0.12, 0.6) * (1.0 - 0.4 * mid)
    return gate


def _poly_blep(t: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """PolyBLEP correction that band-limits a sawtooth's jump (``t``: phase in [0, 1), ``dt``: f0 / rate)."""
    out = np.zeros_like(t)
    lo = t < dt
    x = t[lo] / dt[lo]
    out[lo] = x + x - x * x - 1.0
    hi = t > 1.0 - dt
    x = (t[hi] - 1.0) / dt[hi]
    out[hi] = x * x + x + x + 1.0
    return out


@dataclass(frozen=True)
class _Syllables:
    """Per-sample syllable index (``k``) and position in it (``frac``), and the per-syllable draws."""

    k: np.ndarray  # (n,) int64 syllable index of each sample
    frac: np.ndarray  # (n,) position within the syllable, 0..1
    vowel: np.ndarray  # (syllables,) row of ``_VOWELS``
    has_onset: np.ndarray  # (syllables,) bool: starts with a fricative
    accent: np.ndarray  # (syllables,) relative pitch accent


def _syllables(n: int, sample_rate: int, a: np.ndarray, rng: np.random.Generator) -> _Syllables:
    """Syllables at 2-6 per second (faster at high arousal), each with a random vowel and accent."""
    rate = np.clip(4.0 + 1.8 * a + 0.3 * smooth_noise(n, sample_rate, 0.5, rng), 1.5, 7.0)
    syl = np.cumsum(rate) / sample_rate + rng.uniform(0, 1)
    k = np.floor(syl).astype(np.int64)
    frac = syl - k
    n_syl = int(k[-1]) + 1
    vowel = rng.integers(0, len(_VOWELS), n_syl)
    has_onset = rng.random(n_syl) < 0.6
    accent = rng.normal(0, 0.04, n_syl)
    return _Syllables(k=k, frac=frac, vowel=vowel, has_onset=has_onset, accent=accent)


def _f0(
    f0_base: float,
    a: np.ndarray,
    gate: np.ndarray,
    syl: _Syllables,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pitch contour (n,) in Hz: raised by arousal, falling over each phrase, accented, jittered."""
    n = len(a)
    phrase_pos = np.zeros(n)  # 0..1 within each phrase, for declination
    edges = np.flatnonzero(np.diff((gate > 0).astype(np.int8)) != 0) + 1
    for s, e in zip(np.r_[0, edges], np.r_[edges, n], strict=True):
        phrase_pos[s:e] = np.linspace(0, 1, e - s)
    f0 = (
        f0_base
        * 2.0 ** (0.4 * a)
        * (1.06 - 0.12 * phrase_pos)
        * (1 + syl.accent[syl.k])
        * (1 + 0.01 * smooth_noise(n, sample_rate, 30.0, rng))
    )
    return np.clip(f0, 70.0, 300.0)


def _formant_filter(
    voiced: np.ndarray,
    fric: np.ndarray,
    syl: _Syllables,
    a: np.ndarray,
    v: np.ndarray,
    tract: float,
    sample_rate: int,
) -> np.ndarray:
    """Filter the voiced source through the syllables' formants and the fricatives through a high shelf.

    A time-varying filter in the STFT domain; the vocal tract length, valence (smiled speech) and
    arousal (spectral tilt) shift and brighten the spectrum. Returns the speech (n,).
    """
    n = len(voiced)
    window = np.sin(np.pi * np.arange(_N_FFT) / _N_FFT)
    m = (n + _N_FFT) // _HOP + 1
    padded_len = (m - 1) * _HOP + _N_FFT
    starts = np.arange(m) * _HOP
    frames_idx = starts[:, None] + np.arange(_N_FFT)[None, :]

    def frames(x: np.ndarray) -> np.ndarray:
        return np.pad(x, (_N_FFT, padded_len - n - _N_FFT))[frames_idx] * window

    centre = np.clip(starts + _N_FFT // 2 - _N_FFT, 0, n - 1)
    kernel = np.ones(5) / 5.0
    formants = np.stack(
        [np.convolve(_VOWELS[syl.vowel[syl.k[centre]], j], kernel, mode="same") for j in range(3)], axis=1
    )
    formants *= (tract * (1.0 + 0.05 * v[centre]))[:, None]
    tilt = (0.9 - 0.35 * a[centre] - 0.1 * v[centre])[:, None]
    f = np.fft.rfftfreq(_N_FFT, 1.0 / sample_rate)[None, :]
    env = np.ones((m, len(f[0])))
    for j in range(3):
        fj = formants[:, j : j + 1]
        env *= fj**2 / np.sqrt((fj**2 - f**2) ** 2 + (_BANDWIDTHS[j] * f) ** 2)
    env *= (1.0 + (f / 300.0) ** 2) ** (-tilt / 2.0)
    fric_shape = f**2 / (f**2 + 3500.0**2) * 3.0
    spec = np.fft.rfft(frames(voiced), axis=1) * env + np.fft.rfft(frames(fric), axis=1) * fric_shape
    out = np.zeros(padded_len)
    np.add.at(out, frames_idx, np.fft.irfft(spec, _N_FFT, axis=1) * window)
    return out[_N_FFT : _N_FFT + n] / 2.0


def _add_noise(
    speech: np.ndarray, gate: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """``speech`` plus white-to-pink background noise at a random SNR (8-30 dB) over the active speech."""
    n = len(speech)
    active = gate > 0.5
    level = np.sqrt(np.mean(speech[active] ** 2)) if active.any() else 1e-3
    snr_db = rng.uniform(8.0, 30.0)
    white = rng.standard_normal(n)
    spec_noise = np.fft.rfft(white)
    pink = np.fft.irfft(spec_noise / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), 20.0)), n)
    colour = rng.uniform(0, 1)
    noise = colour * pink / (pink.std() + 1e-12) + (1 - colour) * white
    noise *= level / 10.0 ** (snr_db / 20.0) / (noise.std() + 1e-12)
    return speech + noise


def synth_voice(
    valence: np.ndarray, arousal: np.ndarray, fps: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Speech-like mono audio (float32, peak < 1) for per-frame VA; length ``round(len / fps * sample_rate)``.

    Arousal drives loudness (about +-10 dB), f0 (x2^(0.4 a)), syllable rate (2-6 /s), pause length and
    breathiness; valence only raises formants (up to 5 %, like smiled speech) and brightens the
    spectrum slightly. ``rng`` draws the speaker (base f0 105-185 Hz, vocal-tract length), the
    phrasing, the vowels, the recording level and the background noise (SNR 8-30 dB).
    """
    valence = np.asarray(valence, np.float64).ravel()
    arousal = np.asarray(arousal, np.float64).ravel()
    if valence.shape != arousal.shape:
        raise ValueError(f"valence and arousal differ in length: {valence.shape} vs {arousal.shape}")
    if fps <= 0 or sample_rate < 8000:
        raise ValueError(f"need fps > 0 and sample_rate >= 8000, got {fps} and {sample_rate}")
    n = int(round(len(valence) / fps * sample_rate))
    if n == 0:
        return np.zeros(0, np.float32)
    t = (np.arange(n) + 0.5) / sample_rate
    tf = (np.arange(len(valence)) + 0.5) / fps
    a = np.clip(np.interp(t, tf, arousal), -1, 1)
    v = np.clip(np.interp(t, tf, valence), -1, 1)

    f0_base = rng.uniform(105.0, 185.0)
    tract = 1.0 + 0.15 * (f0_base - 105.0) / 80.0 + rng.normal(0, 0.03)
    gate = _speech_gate(n, sample_rate, a, rng)
    syl = _syllables(n, sample_rate, a, rng)
    voiced_env = np.clip((syl.frac - 0.12) / 0.1, 0, 1) * np.clip((0.97 - syl.frac) / 0.25, 0, 1)
    fric_env = np.exp(-(((syl.frac - 0.07) / 0.055) ** 2)) * syl.has_onset[syl.k]
    f0 = _f0(f0_base, a, gate, syl, sample_rate, rng)

    dt = f0 / sample_rate
    phase = np.cumsum(dt) % 1.0
    saw = 2.0 * phase - 1.0 - _poly_blep(phase, dt)
    breath = 0.08 + 0.25 * (1.0 - a) / 2.0
    loud = 10.0 ** (10.0 * a / 20.0)
    voiced = (saw + breath * rng.standard_normal(n)) * voiced_env * loud * gate
    fric = 0.5 * rng.standard_normal(n) * fric_env * loud * gate

    y = _add_noise(_formant_filter(voiced, fric, syl, a, v, tract, sample_rate), gate, sample_rate, rng)
    peak = np.abs(y).max()
    return (y * (rng.uniform(0.25, 0.8) / peak if peak > 0 else 1.0)).astype(np.float32)
