"""The built-in synthetic corpus: Aff-Wild2-shaped data whose VA signal is known, for ``make demo`` and tests.

Real Aff-Wild2 cannot be shipped, yet every newcomer needs data on which the whole pipeline
(face crops -> features -> models -> CCC) runs and on which fusion measurably helps. This module
writes a small corpus in the Aff-Wild2 layout *as distributed*::

    OUT/videos/batch1/<name>.mp4                                  H.264 yuv420p + AAC (one without audio)
    OUT/cropped_aligned/<name>/00001.jpg ...                      112x112 ArcFace-aligned RGB crops
    OUT/annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<name>.txt
    OUT/synth_manifest.json                                       names, split, fps, awkward cases

Per video a smooth random ground-truth VA trajectory drives both modalities, each better at one
dimension, as in real data:

* face: a real photograph (matplotlib's ``grace_hopper.jpg``) whose dlib 68 landmarks are moved and
  warped piecewise-affinely. Valence moves the mouth (corners up and out = smile, down = frown)
  strongly; arousal opens the eyelids and raises the brows, with small amplitude and noise.
* voice: a harmonic glottal source with formant filtering and syllable/pause structure. Arousal sets
  loudness, pitch (f0 about 80-250 Hz), syllable rate and breathiness strongly; valence only shifts
  formants and spectral brightness slightly.

Per-video nuisance (face shape, mirroring, tint, scale, position, head motion, background, speaker
pitch and vocal tract, recording level, background noise at a random SNR) makes a model generalise
across videos. The real data's awkward cases are present and listed in the manifest; see
``docs/synthetic_data.md``.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import dlib
import numpy as np

from vafusion.errors import VafusionError
from vafusion.io.atomic import write_text
from vafusion.io.audio import encode_audio
from vafusion.io.face import (
    ARCFACE_TEMPLATE,
    CROP_SIZE,
    five_points,
    load_shape_predictor,
    similarity_transform,
)

SAMPLE_RATE = 16000
"""Audio sample rate of the corpus (Hz)."""

FPS = 30
"""Frame rate of all videos but the one 25 fps video."""

MANIFEST = "synth_manifest.json"
_GENERATOR = "vafusion.data.synth"
ANNOTATION_DIR = Path("annotations") / "VA_Estimation_Challenge"
VIDEO_DIR = Path("videos") / "batch1"
CROP_DIR = Path("cropped_aligned")

_PATCH = 224  # side of the face patch cut from the photograph, in pixels
_BASES = (
    # expression: driven by the ground truth
    "smile",
    "frown",
    "eyes_open",
    "brows_up",
    "blink",
    # expression nuisance: random, unrelated to VA
    "mouth_wide",
    "lip_press",
    "smirk",
    "brow_tilt",
    "lid_left",
    "lid_right",
    # identity: constant per person
    "id_eyes_apart",
    "id_face_wide",
    "id_nose_long",
    "id_mouth_low",
    "id_brow_high",
    "id_chin_long",
)
_B = {name: i for i, name in enumerate(_BASES)}
_NUISANCE = ("mouth_wide", "lip_press", "smirk", "brow_tilt", "lid_left", "lid_right")
_IDENTITY = tuple(b for b in _BASES if b.startswith("id_"))


# ----------------------------------------------------------------------------------------------
# Face: landmarks of the photograph, displacement bases, piecewise-affine warp
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FaceTemplate:
    """Everything derived once from the photograph (see ``_face_template``)."""

    patch: np.ndarray  # (P, P, 4) uint8 RGBA: the face patch and its soft head mask
    landmarks: np.ndarray  # (68, 2) float64 landmarks in patch pixels
    displacements: np.ndarray  # (B, 68, 2) landmark displacement of each basis at coefficient 1
    fields: np.ndarray  # (B, h * w * 2) float32 dense displacement per basis inside ``roi``
    roi: tuple[int, int, int, int]  # y0, y1, x0, x1: where any displacement is non-zero
    grid: np.ndarray  # (h, w, 2) float32 pixel coordinates inside ``roi`` (local, from 0)


def _photo() -> np.ndarray:
    """Grace Hopper as RGB uint8: the real face photograph that matplotlib ships."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.imread(str(path))
    if image is None:
        raise VafusionError(path, "matplotlib's sample photograph cannot be read", "reinstall matplotlib")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _basis_displacements(lm: np.ndarray) -> np.ndarray:
    """Landmark displacements (B, 68, 2) per unit coefficient, in patch pixels.

    Magnitudes are written in percent of the jaw width (0-16), so they do not depend on the patch
    size. Image-left points move by -x for "outward", image-right by +x.
    """
    unit = (lm[16, 0] - lm[0, 0]) / 100.0
    d = np.zeros((len(_BASES), 68, 2))

    def put(basis: str, points: dict[int, tuple[float, float]]) -> None:
        for i, (dx, dy) in points.items():
            d[_B[basis], i] = (dx * unit, dy * unit)

    def mirror(
        points: dict[int, tuple[float, float]], pairs: dict[int, int]
    ) -> dict[int, tuple[float, float]]:
        out = dict(points)
        for left, right in pairs.items():
            dx, dy = points[left]
            out[right] = (-dx, dy)
        return out

    lip_pairs = {48: 54, 49: 53, 50: 52, 59: 55, 58: 56, 60: 64, 61: 63, 67: 65}
    put(
        "smile",
        mirror(
            {
                48: (-4, -9),
                49: (-1.5, -5),
                50: (-0.5, -2),
                51: (0, -0.5),
                59: (-1.5, -5),
                58: (-0.5, -1.5),
                57: (0, 1),
                60: (-3.5, -8.5),
                61: (-1.5, -5),
                67: (-1.5, -5),
                62: (0, -0.5),
                66: (0, -0.5),
                40: (0, -1.2),
                41: (0, -1.2),
                31: (0, -0.6),
            },
            {**lip_pairs, 40: 47, 41: 46, 31: 35},
        ),
    )
    put(
        "frown",
        mirror(
            {
                48: (1, 7),
                49: (0.5, 3),
                50: (0, 0.8),
                51: (0, 0),
                59: (0.5, 3.5),
                58: (0, 0),
                57: (0, -1.5),
                60: (1, 6.5),
                61: (0.5, 2.5),
                67: (0.5, 2.5),
                62: (0, -0.3),
                66: (0, -0.3),
                21: (1.5, 2.5),
                20: (0.8, 1.2),
            },
            {**lip_pairs, 21: 22, 20: 23},
        ),
    )
    put("eyes_open", {**{i: (0, -1.6) for i in (37, 38, 43, 44)}, **{i: (0, 0.4) for i in (40, 41, 46, 47)}})
    put("brows_up", {i: (0, -3.0 if i in (19, 20, 23, 24) else -2.5) for i in range(17, 27)})
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        d[_B["blink"], upper] = (0.0, 0.9 * (lm[lower, 1] - lm[upper, 1]))
    put(
        "mouth_wide",
        mirror(
            {48: (-2, 0), 60: (-2, 0), 49: (-1, 0), 59: (-1, 0), 61: (-1, 0), 67: (-1, 0)},
            {48: 54, 60: 64, 49: 53, 59: 55, 61: 63, 67: 65},
        ),
    )
    put("lip_press", {50: (0, 1.2), 51: (0, 1.2), 52: (0, 1.2), 56: (0, -1.2), 57: (0, -1.2), 58: (0, -1.2)})
    put(
        "smirk",
        {
            48: (0, -2.5),
            60: (0, -2.5),
            49: (0, -1.2),
            59: (0, -1.2),
            61: (0, -1.2),
            67: (0, -1.2),
            54: (0, 2.5),
            64: (0, 2.5),
            53: (0, 1.2),
            55: (0, 1.2),
            63: (0, 1.2),
            65: (0, 1.2),
        },
    )
    put("brow_tilt", {**{i: (0, -1.5) for i in range(17, 22)}, **{i: (0, 1.5) for i in range(22, 27)}})
    put("lid_left", {37: (0, -1), 38: (0, -1)})
    put("lid_right", {43: (0, -1), 44: (0, -1)})
    put(
        "id_eyes_apart",
        {
            **{i: (-1.5, 0) for i in range(36, 42)},
            **{i: (1.5, 0) for i in range(42, 48)},
            **{i: (-1, 0) for i in range(17, 22)},
            **{i: (1, 0) for i in range(22, 27)},
        },
    )
    cx = lm[:17, 0].mean()
    half = (lm[16, 0] - lm[0, 0]) / 2
    put("id_face_wide", {i: (3 * (lm[i, 0] - cx) / half, 0) for i in range(17)})
    put("id_nose_long", {28: (0, 0.5), 29: (0, 1), **{i: (0, 2) for i in range(30, 36)}})
    put("id_mouth_low", {i: (0, 2) for i in range(48, 68)})
    put("id_brow_high", {i: (0, -2) for i in range(17, 27)})
    put("id_chin_long", {5: (0, 1.5), 11: (0, 1.5), **{i: (0, 3) for i in range(6, 11)}})
    return d


def _ring(lm: np.ndarray, n: int = 20) -> np.ndarray:
    """Fixed control points on an ellipse around the face: the warp leaves everything outside unchanged."""
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    radii = np.array([0.68 * (x1 - x0), 0.74 * (y1 - y0)])
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return centre + radii * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _delaunay(points: np.ndarray, size: int) -> np.ndarray:
    """Delaunay triangles (T, 3) as indices into ``points`` (all inside the ``size`` square)."""
    subdiv = cv2.Subdiv2D((0, 0, size + 1, size + 1))
    for x, y in points:
        subdiv.insert((float(x), float(y)))
    tris = []
    for t in subdiv.getTriangleList().reshape(-1, 3, 2):
        dist = np.linalg.norm(points[None, :, :] - t[:, None, :], axis=2)
        idx = dist.argmin(axis=1)
        if dist[np.arange(3), idx].max() < 1e-3 and len(set(idx.tolist())) == 3:
            tris.append(idx)
    return np.array(tris, dtype=np.int64)


def _barycentric(
    points: np.ndarray, tris: np.ndarray, roi: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of ``roi``: the vertices (n, 3) and barycentric weights (n, 3) of its triangle."""
    y0, y1, x0, x1 = roi
    ys, xs = np.mgrid[y0:y1, x0:x1]
    px = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    idx = np.zeros((len(px), 3), np.int64)
    bary = np.zeros((len(px), 3), np.float64)
    done = np.zeros(len(px), bool)
    for tri in tris:
        a, b, c = points[tri]
        v0, v1 = b - a, c - a
        den = v0[0] * v1[1] - v1[0] * v0[1]
        if abs(den) < 1e-9:
            continue
        lo = np.floor(np.minimum(np.minimum(a, b), c)).astype(int)
        hi = np.ceil(np.maximum(np.maximum(a, b), c)).astype(int)
        sel = ~done & (px[:, 0] >= lo[0]) & (px[:, 0] <= hi[0]) & (px[:, 1] >= lo[1]) & (px[:, 1] <= hi[1])
        where = np.flatnonzero(sel)
        v2 = px[where] - a
        l1 = (v2[:, 0] * v1[1] - v1[0] * v2[:, 1]) / den
        l2 = (v0[0] * v2[:, 1] - v2[:, 0] * v0[1]) / den
        l0 = 1.0 - l1 - l2
        inside = (l0 >= -1e-7) & (l1 >= -1e-7) & (l2 >= -1e-7)
        hit = where[inside]
        idx[hit] = tri
        bary[hit] = np.stack([l0, l1, l2], axis=1)[inside]
        done[hit] = True
    return idx, bary


@functools.lru_cache(maxsize=1)
def _face_template() -> _FaceTemplate:
    """Landmark the photograph once (dlib), cut the face patch, triangulate, and precompute warp fields.

    Costly (about 1 s, mostly loading the shape predictor), so it is cached once per process and
    handed to worker processes instead of being recomputed there.
    """
    photo = _photo()
    faces = dlib.get_frontal_face_detector()(photo, 1)
    if not faces:
        raise VafusionError(
            None,
            "dlib finds no face in matplotlib's grace_hopper.jpg",
            "check the dlib and matplotlib installs",
        )
    rect = max(faces, key=lambda r: r.area())
    shape = load_shape_predictor("shape_predictor_68_face_landmarks.dat")(photo, rect)
    lm_src = np.array([(p.x, p.y) for p in shape.parts()], np.float64)

    width = lm_src[16, 0] - lm_src[0, 0]
    centre = (lm_src.min(axis=0) + lm_src.max(axis=0)) / 2
    half = 1.25 * width
    scale = _PATCH / (2 * half)
    to_patch = np.array(
        [[scale, 0, _PATCH / 2 - scale * centre[0]], [0, scale, _PATCH / 2 - scale * centre[1]]]
    )
    rgb = cv2.warpAffine(
        photo, to_patch, (_PATCH, _PATCH), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT
    )
    lm = lm_src @ to_patch[:, :2].T + to_patch[:, 2]

    ys, xs = np.mgrid[0:_PATCH, 0:_PATCH].astype(np.float64)
    w_patch = width * scale
    head = np.hypot(
        (xs - _PATCH / 2) / (0.80 * w_patch), (ys - (_PATCH / 2 - 0.12 * w_patch)) / (1.05 * w_patch)
    )
    alpha = np.clip((1.0 - head) / 0.12, 0.0, 1.0)
    alpha = alpha * alpha * (3 - 2 * alpha)
    patch = np.dstack([rgb, np.round(255 * alpha).astype(np.uint8)])

    disp = _basis_displacements(lm)
    # Coincident landmarks (closed lips) become one vertex; its displacement is their mean.
    key = np.round(lm, 3)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    n_unique = len(first)
    vert_disp = np.zeros((len(_BASES), n_unique, 2))
    np.add.at(vert_disp, (slice(None), inverse), disp)
    vert_disp /= np.bincount(inverse, minlength=n_unique)[None, :, None]
    ring = _ring(lm)
    edge = np.array(
        [
            [0, 0],
            [_PATCH / 2, 0],
            [_PATCH - 1, 0],
            [_PATCH - 1, _PATCH / 2],
            [_PATCH - 1, _PATCH - 1],
            [_PATCH / 2, _PATCH - 1],
            [0, _PATCH - 1],
            [0, _PATCH / 2],
        ],
        np.float64,
    )
    points = np.concatenate([lm[first], ring, edge])
    vert_disp = np.concatenate([vert_disp, np.zeros((len(_BASES), len(ring) + len(edge), 2))], axis=1)
    tris = _delaunay(points, _PATCH)

    rx0, ry0 = np.floor(ring.min(axis=0)).astype(int)
    rx1, ry1 = np.ceil(ring.max(axis=0)).astype(int) + 1
    roi = (max(ry0, 0), min(ry1, _PATCH), max(rx0, 0), min(rx1, _PATCH))
    idx, bary = _barycentric(points, tris, roi)
    h, w = roi[1] - roi[0], roi[3] - roi[2]
    fields = np.einsum("nk,bnkc->ncb", bary, vert_disp[:, idx])  # (n, 2, B)
    fields = fields.reshape(h * w * 2, len(_BASES)).T.astype(np.float32)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    return _FaceTemplate(
        patch=patch,
        landmarks=lm,
        displacements=disp,
        fields=np.ascontiguousarray(fields),
        roi=roi,
        grid=np.dstack([gx, gy]),
    )


def _warp_patch(tmpl: _FaceTemplate, image: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """Warp ``image`` (the patch, any channel count) by the basis combination ``coefs`` (B,).

    The piecewise-linear displacement field D over the Delaunay triangles is a linear function of the
    landmark displacements, so it is a precomputed matrix times ``coefs``. Backward mapping needs the
    inverse warp: ``src = x - D(x - D(x))`` (one fixed-point step) is accurate to a fraction of a
    pixel for these displacements. The product uses ``einsum``, not BLAS: a threaded BLAS competing with
    the encoder for two cores made it 50x slower.
    """
    y0, y1, x0, x1 = tmpl.roi
    h, w = y1 - y0, x1 - x0
    d = np.einsum("bn,b->n", tmpl.fields, coefs.astype(np.float32)).reshape(h, w, 2)
    first = tmpl.grid - d
    d2 = cv2.remap(d, first, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    src = tmpl.grid - d2
    src[..., 0] += x0
    src[..., 1] += y0
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.remap(image, src, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


def _crop_matrix(tmpl: _FaceTemplate, coefs: np.ndarray, size: int) -> np.ndarray:
    """2x3 patch -> aligned crop: the shown face's five points onto the ArcFace template at ``size``.

    The points include the expression (mouth corners move with a smile), exactly as a real 5-point
    aligner sees them, so the dataset's crops match what ``vafusion predict`` aligns from raw video.
    """
    landmarks = tmpl.landmarks + np.tensordot(coefs, tmpl.displacements, axes=1)
    return similarity_transform(five_points(landmarks), ARCFACE_TEMPLATE * size / CROP_SIZE)


def _expression_coefs(valence: np.ndarray, arousal: np.ndarray) -> np.ndarray:
    """Noise-free coefficients (n, B) of the VA-driven bases."""
    valence = np.atleast_1d(np.asarray(valence, np.float64))
    arousal = np.atleast_1d(np.asarray(arousal, np.float64))
    c = np.zeros((len(valence), len(_BASES)))
    c[:, _B["smile"]] = np.clip(valence, 0, None)
    c[:, _B["frown"]] = np.clip(-valence, 0, None)
    c[:, _B["eyes_open"]] = arousal
    c[:, _B["brows_up"]] = arousal
    return c


def _random_identity(rng: np.random.Generator) -> np.ndarray:
    """Identity coefficients (B,) of one synthetic person."""
    c = np.zeros(len(_BASES))
    for b in _IDENTITY:
        c[_B[b]] = np.clip(rng.normal(0, 1), -2, 2)
    return c


def render_face(
    valence: float, arousal: float, size: int = 112, rng: np.random.Generator | None = None
) -> np.ndarray:
    """An ArcFace-aligned face crop (size, size, 3) uint8 RGB showing the expression for (valence, arousal).

    Valence moves the mouth (smile/frown) strongly, arousal the eyelids and brows weakly, exactly as in
    the corpus. Without ``rng`` the face is the neutral identity with no noise; with ``rng`` a random
    identity and random expression nuisance are added, as for a corpus person.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    tmpl = _face_template()
    coefs = _expression_coefs(np.array([valence]), np.array([arousal]))[0]
    if rng is not None:
        coefs += _random_identity(rng)
        for b in _NUISANCE:
            coefs[_B[b]] += rng.normal(0, 0.5)
        coefs[_B["eyes_open"]] += rng.normal(0, 0.4)
        coefs[_B["brows_up"]] += rng.normal(0, 0.4)
    warped = _warp_patch(tmpl, tmpl.patch[..., :3], coefs)
    return cv2.warpAffine(
        warped,
        _crop_matrix(tmpl, coefs, size),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


# ----------------------------------------------------------------------------------------------
# Voice
# ----------------------------------------------------------------------------------------------

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


def _smooth_noise(n: int, rate: float, cutoff_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise of ``n`` samples at ``rate`` Hz, low-passed to about ``cutoff_hz``."""
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

    rate = np.clip(4.0 + 1.8 * a + 0.3 * _smooth_noise(n, sample_rate, 0.5, rng), 1.5, 7.0)
    syl = np.cumsum(rate) / sample_rate + rng.uniform(0, 1)
    k = np.floor(syl).astype(np.int64)
    frac = syl - k
    n_syl = int(k[-1]) + 1
    vowel = rng.integers(0, len(_VOWELS), n_syl)
    has_onset = rng.random(n_syl) < 0.6
    accent = rng.normal(0, 0.04, n_syl)

    voiced_env = np.clip((frac - 0.12) / 0.1, 0, 1) * np.clip((0.97 - frac) / 0.25, 0, 1)
    fric_env = np.exp(-(((frac - 0.07) / 0.055) ** 2)) * has_onset[k]

    phrase_pos = np.zeros(n)  # 0..1 within each phrase, for declination
    edges = np.flatnonzero(np.diff((gate > 0).astype(np.int8)) != 0) + 1
    for s, e in zip(np.r_[0, edges], np.r_[edges, n], strict=True):
        phrase_pos[s:e] = np.linspace(0, 1, e - s)
    f0 = (
        f0_base
        * 2.0 ** (0.4 * a)
        * (1.06 - 0.12 * phrase_pos)
        * (1 + accent[k])
        * (1 + 0.01 * _smooth_noise(n, sample_rate, 30.0, rng))
    )
    f0 = np.clip(f0, 70.0, 300.0)

    dt = f0 / sample_rate
    phase = np.cumsum(dt) % 1.0
    saw = 2.0 * phase - 1.0 - _poly_blep(phase, dt)
    breath = 0.08 + 0.25 * (1.0 - a) / 2.0
    loud = 10.0 ** (10.0 * a / 20.0)
    voiced = (saw + breath * rng.standard_normal(n)) * voiced_env * loud * gate
    fric = 0.5 * rng.standard_normal(n) * fric_env * loud * gate

    # Time-varying formant filter in the STFT domain (sqrt-Hann analysis/synthesis, hop N/4).
    n_fft, hop = 512, 128
    window = np.sin(np.pi * np.arange(n_fft) / n_fft)
    m = (n + n_fft) // hop + 1
    padded_len = (m - 1) * hop + n_fft
    starts = np.arange(m) * hop
    frames_idx = starts[:, None] + np.arange(n_fft)[None, :]

    def frames(x: np.ndarray) -> np.ndarray:
        return np.pad(x, (n_fft, padded_len - n - n_fft))[frames_idx] * window

    centre = np.clip(starts + n_fft // 2 - n_fft, 0, n - 1)
    kernel = np.ones(5) / 5.0
    formants = np.stack(
        [np.convolve(_VOWELS[vowel[k[centre]], j], kernel, mode="same") for j in range(3)], axis=1
    )
    formants *= (tract * (1.0 + 0.05 * v[centre]))[:, None]
    tilt = (0.9 - 0.35 * a[centre] - 0.1 * v[centre])[:, None]
    f = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)[None, :]
    env = np.ones((m, len(f[0])))
    for j in range(3):
        fj = formants[:, j : j + 1]
        env *= fj**2 / np.sqrt((fj**2 - f**2) ** 2 + (_BANDWIDTHS[j] * f) ** 2)
    env *= (1.0 + (f / 300.0) ** 2) ** (-tilt / 2.0)
    fric_shape = f**2 / (f**2 + 3500.0**2) * 3.0
    spec = np.fft.rfft(frames(voiced), axis=1) * env + np.fft.rfft(frames(fric), axis=1) * fric_shape
    out = np.zeros(padded_len)
    np.add.at(out, frames_idx, np.fft.irfft(spec, n_fft, axis=1) * window)
    speech = out[n_fft : n_fft + n] / 2.0

    active = gate > 0.5
    level = np.sqrt(np.mean(speech[active] ** 2)) if active.any() else 1e-3
    snr_db = rng.uniform(8.0, 30.0)
    white = rng.standard_normal(n)
    spec_noise = np.fft.rfft(white)
    pink = np.fft.irfft(spec_noise / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), 20.0)), n)
    colour = rng.uniform(0, 1)
    noise = colour * pink / (pink.std() + 1e-12) + (1 - colour) * white
    noise *= level / 10.0 ** (snr_db / 20.0) / (noise.std() + 1e-12)
    y = speech + noise
    peak = np.abs(y).max()
    return (y * (rng.uniform(0.25, 0.8) / peak if peak > 0 else 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VideoSpec:
    """What one video carries; decided up front so that workers only render."""

    index: int
    name: str
    split: str
    fps: int
    frames: int
    width: int
    height: int
    two_person: bool
    audio_channels: int  # 0: no audio track
    invalid_spans: bool
    no_face_spans: bool
    seed: int


def _va_trajectory(n: int, fps: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth ground-truth valence and arousal (n,) in (-1, 1), weakly correlated.

    Each is a random offset plus a sum of five slow sinusoids (0.03-0.5 Hz, random phases) scaled to a
    fixed within-video spread, squashed by tanh so it spans most of [-1, 1] without clipping.
    """
    t = np.arange(n) / fps
    z = []
    for _ in range(2):
        freq = np.exp(rng.uniform(np.log(0.03), np.log(0.5), 5))
        amp = freq**-0.5 * rng.uniform(0.5, 1.0, 5)
        phase = rng.uniform(0, 2 * np.pi, 5)
        s = (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None, :] + phase[:, None])).sum(axis=0)
        s = (s - s.mean()) / (s.std() + 1e-9) if n > 1 else s * 0
        z.append(rng.normal(0, 0.4) + 0.55 * s)
    rho = rng.uniform(-0.3, 0.3)
    za = rho * z[0] + math.sqrt(1 - rho * rho) * z[1]
    return np.tanh(1.1 * z[0]), np.tanh(1.1 * za)


def _spans(n: int, count: int, lo: int, hi: int, rng: np.random.Generator, avoid: int = 0) -> list[list[int]]:
    """``count`` disjoint [start, stop) frame spans of length lo..hi, none in the first ``avoid`` frames."""
    spans: list[list[int]] = []
    hi = max(min(hi, n // 4), 1)
    lo = min(lo, hi)
    for _ in range(20 * count):
        if len(spans) == count:
            break
        length = int(rng.integers(lo, hi + 1))
        if n - length <= avoid:
            break
        start = int(rng.integers(avoid, n - length))
        if all(start >= s1 + 3 or start + length + 3 <= s0 for s0, s1 in spans):
            spans.append([start, start + length])
    return sorted(spans)


def _affine(
    scale: float, angle_deg: float, flip: bool, src: tuple[float, float], dst: tuple[float, float]
) -> np.ndarray:
    """2x3 similarity (optionally mirrored) taking point ``src`` to ``dst``."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    lin = scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])
    return np.hstack([lin, (np.asarray(dst) - lin @ np.asarray(src))[:, None]])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine ``outer(inner(x))``."""
    return np.vstack([outer, [0, 0, 1]])[:2] @ np.vstack([inner, [0, 0, 1]])


@dataclass
class _Person:
    """One rendered subject: labels, per-frame warp coefficients and placement."""

    subject: str
    labels: np.ndarray  # (n, 2) with -5 on invalid frames
    expressed: np.ndarray  # (n, 2) the VA the face and voice show (labels lead by ``lag``)
    coefs: np.ndarray  # (n, B)
    place: np.ndarray  # (n, 2, 3) patch -> frame
    crop: np.ndarray  # (n, 2, 3) frame -> aligned crop
    visible: np.ndarray  # (n,) bool
    patch: np.ndarray  # (P, P, 4) tinted RGBA patch, colour premultiplied by alpha
    invalid_spans: list[list[int]]
    no_face_spans: list[list[int]]


def _make_person(
    tmpl: _FaceTemplate,
    spec: _VideoSpec,
    subject: str,
    lag: int,
    centre: tuple[float, float],
    base_scale: float,
    rng: np.random.Generator,
) -> _Person:
    """Draw one person's trajectory, labels, expression coefficients and head motion."""
    n, fps = spec.frames, spec.fps
    gv, ga = _va_trajectory(n + lag, fps, rng)
    expressed = np.stack([gv[lag:], ga[lag:]], axis=1)
    labels = np.round(np.stack([gv[:n], ga[:n]], axis=1), 3) + 0.0

    invalid = _spans(n, int(rng.integers(1, 3)), 5, 25, rng, avoid=n // 10) if spec.invalid_spans else []
    for s0, s1 in invalid:
        labels[s0:s1] = -5.0
    visible = np.ones(n, bool)
    no_face = _spans(n, int(rng.integers(1, 3)), 8, 40, rng, avoid=n // 10) if spec.no_face_spans else []
    for s0, s1 in no_face:
        visible[s0:s1] = False

    coefs = _expression_coefs(expressed[:, 0], expressed[:, 1])
    coefs[:, _B["eyes_open"]] = (
        rng.uniform(0.4, 1.0) * expressed[:, 1]
        + 0.5 * _smooth_noise(n, fps, 1.0, rng)
        + 0.2 * rng.standard_normal(n)
    )
    coefs[:, _B["brows_up"]] = (
        rng.uniform(0.4, 1.0) * expressed[:, 1]
        + 0.5 * _smooth_noise(n, fps, 0.7, rng)
        + 0.2 * rng.standard_normal(n)
    )
    for b in _NUISANCE:
        coefs[:, _B[b]] = rng.uniform(0.2, 0.6) * _smooth_noise(n, fps, 0.8, rng)
    blink = np.zeros(n)
    for start in np.flatnonzero(rng.random(n) < 0.25 / fps):
        prof = np.array([0.5, 1.0, 0.6, 0.2])[: n - start]
        blink[start : start + len(prof)] = np.maximum(blink[start : start + len(prof)], prof)
    coefs[:, _B["blink"]] = blink
    coefs += _random_identity(rng)[None, :]

    flip = bool(rng.random() < 0.5)
    tint = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.15)
    patch = tmpl.patch.copy()
    premultiplied = tmpl.patch[..., :3] * tint * (tmpl.patch[..., 3:] / 255.0)
    patch[..., :3] = np.clip(np.round(premultiplied), 0, 255).astype(np.uint8)

    scale = base_scale * (1 + 0.04 * _smooth_noise(n, fps, 0.3, rng))
    angle = rng.uniform(-5, 5) + 3.0 * _smooth_noise(n, fps, 0.3, rng)
    jitter = 0.02 * base_scale * _PATCH
    px = centre[0] + jitter * _smooth_noise(n, fps, 0.3, rng)
    py = centre[1] + jitter * _smooth_noise(n, fps, 0.3, rng)
    mirror = np.array([[-1.0, 0, CROP_SIZE - 1], [0, 1.0, 0]])
    align_noise = 0.4 * rng.standard_normal((n, 2))
    place = np.empty((n, 2, 3))
    crop = np.empty((n, 2, 3))
    for i in range(n):
        place[i] = _affine(scale[i], angle[i], flip, (_PATCH / 2, _PATCH / 2), (px[i], py[i]))
        m = _compose(_crop_matrix(tmpl, coefs[i], CROP_SIZE), cv2.invertAffineTransform(place[i]))
        if flip:
            m = _compose(mirror, m)
        m[:, 2] += align_noise[i]
        crop[i] = m
    return _Person(
        subject=subject,
        labels=labels,
        expressed=expressed,
        coefs=coefs.astype(np.float32),
        place=place,
        crop=crop,
        visible=visible,
        patch=patch,
        invalid_spans=invalid,
        no_face_spans=no_face,
    )


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A static scene: a random two-colour gradient with a few soft blobs, RGB uint8."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    g = np.cos(angle) * xs / width + np.sin(angle) * ys / height
    g = (g - g.min()) / (np.ptp(g) + 1e-6)
    c0, c1 = rng.uniform(20, 230, 3), rng.uniform(20, 230, 3)
    img = c0[None, None, :] * (1 - g[..., None]) + c1[None, None, :] * g[..., None]
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(15, 60)
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-60, 60, 3)[None, None, :]
    return np.clip(img, 0, 255).astype(np.uint8)


def _turns(n: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Who speaks per frame in the two-person video: 0 left, 1 right, alternating turns of 2-5 s."""
    who = np.zeros(n, np.int64)
    pos, side = 0, int(rng.integers(0, 2))
    while pos < n:
        length = int(rng.uniform(2.0, 5.0) * fps)
        who[pos : pos + length] = side
        pos += length
        side = 1 - side
    return who


def _audio(
    spec: _VideoSpec, people: list[_Person], rng: np.random.Generator
) -> tuple[np.ndarray, list[list]]:
    """The waveform (channels, samples) for a video, and the speaker turns of a two-person video."""
    voices = [synth_voice(p.expressed[:, 0], p.expressed[:, 1], spec.fps, SAMPLE_RATE, rng) for p in people]
    turns: list[list] = []
    if len(voices) == 1:
        y = voices[0].astype(np.float64)
    else:
        who = _turns(spec.frames, spec.fps, rng)
        t = (np.arange(len(voices[0])) + 0.5) / SAMPLE_RATE
        right = np.interp(t, (np.arange(spec.frames) + 0.5) / spec.fps, who.astype(np.float64))
        k = max(int(0.05 * SAMPLE_RATE), 1)
        right = np.convolve(right, np.ones(k) / k, mode="same")
        y = (1 - right) * voices[0] / (np.abs(voices[0]).max() + 1e-9) + right * voices[1] / (
            np.abs(voices[1]).max() + 1e-9
        )
        y *= 0.7
        edges = np.flatnonzero(np.diff(who) != 0) + 1
        for s, e in zip(np.r_[0, edges], np.r_[edges, spec.frames], strict=True):
            turns.append([int(s), int(e), people[int(who[s])].subject])
    if spec.audio_channels == 2:
        delay = 7
        other = 0.75 * np.r_[np.zeros(delay), y[:-delay]] + 0.003 * rng.standard_normal(len(y))
        return np.stack([y, other]).astype(np.float32), turns
    return y[None, :].astype(np.float32), turns


def _write_annotation(path: Path, labels: np.ndarray) -> None:
    """``valence,arousal`` header then one ``v,a`` row per frame (``-5,-5`` when invalid)."""
    rows = ["valence,arousal"]
    for v, a in labels:
        rows.append("-5,-5" if v == -5.0 else f"{v:.3f},{a:.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def _render_video(spec: _VideoSpec, out: Path, tmpl: _FaceTemplate) -> dict[str, Any]:
    """Render, encode and write one video with its crops and annotations; return its manifest entry."""
    rng = np.random.default_rng([spec.seed, spec.index])
    n, W, H = spec.frames, spec.width, spec.height
    lag = int(rng.integers(2, 7))
    if spec.two_person:
        subjects = [f"{spec.name}_left", f"{spec.name}_right"]
        scale = 0.62 * rng.uniform(0.95, 1.05)
        people = [
            _make_person(
                tmpl, spec, s, lag, (W * (0.27 + 0.46 * j) + rng.uniform(-6, 6), H * 0.5), scale, rng
            )
            for j, s in enumerate(subjects)
        ]
    else:
        scale = rng.uniform(0.95, 1.15) * min(W, H) / 256
        centre = (W / 2 + rng.uniform(-0.06, 0.06) * W, H * 0.54 + rng.uniform(-0.04, 0.04) * H)
        people = [_make_person(tmpl, spec, spec.name, lag, centre, scale, rng)]
    background = _background(W, H, rng)
    light = (
        rng.uniform(0.85, 1.15) * (1 + 0.05 * _smooth_noise(n, spec.fps, 0.2, rng)),
        rng.uniform(-12, 12),
    )
    audio, turns = _audio(spec, people, rng) if spec.audio_channels else (None, [])

    video_path = out / VIDEO_DIR / f"{spec.name}.mp4"
    video_path.parent.mkdir(parents=True, exist_ok=True)
    for p in people:
        (out / CROP_DIR / p.subject).mkdir(parents=True, exist_ok=True)
    with av.open(str(video_path), "w", format="mp4") as container:
        vs = container.add_stream("libx264", rate=spec.fps)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "23", "preset": "superfast"}
        vs.codec_context.thread_count = 1
        aus = None
        if audio is not None:
            aus = container.add_stream(
                "aac", rate=SAMPLE_RATE, layout="stereo" if len(audio) == 2 else "mono"
            )
            aus.bit_rate = 48000 * len(audio)
        for i in range(n):
            frame = background.copy()
            for p in people:
                if not p.visible[i]:
                    continue
                face = _warp_patch(tmpl, p.patch, p.coefs[i])
                fg = cv2.warpAffine(
                    face,
                    p.place[i],
                    (W, H),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0,
                )
                behind = cv2.bitwise_not(fg[..., 3])
                frame = cv2.add(
                    cv2.cvtColor(fg, cv2.COLOR_RGBA2RGB),
                    cv2.multiply(frame, cv2.merge([behind, behind, behind]), scale=1.0 / 255.0),
                )
            frame = cv2.convertScaleAbs(frame, alpha=float(light[0][i]), beta=float(light[1]))
            for p in people:
                if p.visible[i]:
                    crop = cv2.warpAffine(
                        frame,
                        p.crop[i],
                        (CROP_SIZE, CROP_SIZE),
                        flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE,
                    )
                    cv2.imwrite(
                        str(out / CROP_DIR / p.subject / f"{i + 1:05d}.jpg"),
                        crop[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 92],
                    )
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
            vf.pts = i
            for packet in vs.encode(vf):
                container.mux(packet)
        for packet in vs.encode(None):
            container.mux(packet)
        if aus is not None:
            for packet in encode_audio(aus, audio, SAMPLE_RATE):
                container.mux(packet)

    for p in people:
        _write_annotation(out / ANNOTATION_DIR / spec.split / f"{p.subject}.txt", p.labels)

    cases = []
    if spec.two_person:
        cases.append("two_person")
    if spec.fps != FPS:
        cases.append("fps_25")
    if spec.audio_channels == 0:
        cases.append("no_audio")
    if spec.audio_channels == 2:
        cases.append("stereo_audio")
    if any(p.invalid_spans for p in people):
        cases.append("invalid_spans")
    if any(p.no_face_spans for p in people):
        cases.append("no_face_spans")
    entry: dict[str, Any] = {
        "name": spec.name,
        "video": (VIDEO_DIR / f"{spec.name}.mp4").as_posix(),
        "split": spec.split,
        "subjects": [p.subject for p in people],
        "fps": spec.fps,
        "frames": n,
        "width": W,
        "height": H,
        "audio_channels": spec.audio_channels,
        "sample_rate": SAMPLE_RATE if spec.audio_channels else None,
        "label_lag_frames": lag,
        "cases": cases,
        "invalid_spans": {p.subject: p.invalid_spans for p in people if p.invalid_spans},
        "no_face_spans": {p.subject: p.no_face_spans for p in people if p.no_face_spans},
    }
    if turns:
        entry["speaker_turns"] = turns
    return entry


def _plan(videos: int, seconds: float, seed: int) -> list[_VideoSpec]:
    """Names, split, sizes and awkward cases of every video, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 400), size=videos, replace=False)
    order = rng.permutation(videos)
    roles = ["two_person", "fps_25", "no_audio", "stereo_audio"]
    role_of = {int(order[j]): roles[j] for j in range(min(len(roles), videos))}
    others = [i for i in range(videos) if role_of.get(i) != "two_person"]
    invalid = set(rng.choice(videos, size=max(1, round(0.4 * videos)), replace=False).tolist())
    no_face = (
        set(rng.choice(others, size=min(len(others), max(1, round(videos / 4))), replace=False).tolist())
        if others
        else set()
    )
    n_val = round(videos / 4) if videos >= 2 else 0
    val = set(rng.choice(others, size=min(n_val, len(others)), replace=False).tolist()) if others else set()
    specs = []
    for i in range(videos):
        role = role_of.get(i)
        fps = 25 if role == "fps_25" else FPS
        if role == "two_person" or rng.random() < 0.3:
            w, h = 320, 240
        else:
            w, h = 256, 256
        vid = int(ids[i])
        name = f"video{vid}" if rng.random() < 0.35 and role != "two_person" else f"{vid}-{fps}-{w}x{h}"
        specs.append(
            _VideoSpec(
                index=i,
                name=name,
                split="Validation_Set" if i in val else "Train_Set",
                fps=fps,
                frames=max(int(round(seconds * fps)), 1),
                width=w,
                height=h,
                two_person=role == "two_person",
                audio_channels={"no_audio": 0, "stereo_audio": 2}.get(role or "", 1),
                invalid_spans=i in invalid,
                no_face_spans=i in no_face,
                seed=seed,
            )
        )
    return specs


_WORKER_TEMPLATE: _FaceTemplate | None = None


def _init_worker(tmpl: _FaceTemplate) -> None:
    """Give a worker process the parent's face template and keep OpenCV to one thread per worker."""
    global _WORKER_TEMPLATE
    _WORKER_TEMPLATE = tmpl
    cv2.setNumThreads(1)


def _worker(spec: _VideoSpec, out: str) -> dict[str, Any]:
    assert _WORKER_TEMPLATE is not None
    return _render_video(spec, Path(out), _WORKER_TEMPLATE)


def _prepare_out(out: Path) -> None:
    """Create ``out``; replace an earlier synthetic corpus there, refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise VafusionError(out, "exists and is not a folder", "pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            ours = json.loads((out / MANIFEST).read_text()).get("generator") == _GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise VafusionError(
                out,
                f"folder is not empty and holds no synthetic corpus (no {MANIFEST} of {_GENERATOR})",
                "pass a new or empty folder, so that no data of yours is overwritten",
            )
        for sub in (VIDEO_DIR, CROP_DIR, ANNOTATION_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    # Written first, so that a run cut short still marks the folder as ours and may be re-run over.
    write_text(out / MANIFEST, json.dumps({"generator": _GENERATOR, "complete": False}) + "\n")


def make_corpus(
    out: Path,
    videos: int = 24,
    seconds: float = 15.0,
    seed: int = 0,
    progress: bool = True,
    *,
    workers: int | None = None,
) -> dict:
    """Write the synthetic corpus under ``out`` in the Aff-Wild2 layout; return (and save) its manifest.

    Deterministic for a given ``(videos, seconds, seed)``: same files, byte for byte, whatever
    ``workers`` is. About 1/4 of the videos go to Validation_Set. ``workers`` processes render videos
    in parallel (default: one per available CPU, at most 4). An earlier synthetic corpus in ``out`` is
    replaced; any other non-empty folder is refused. The manifest says ``"complete": true`` only once
    every file is written.
    """
    out = Path(out)
    if videos < 1:
        raise VafusionError(None, f"videos must be at least 1, got {videos}", "pass --videos 1 or more")
    if not seconds > 0:
        raise VafusionError(None, f"seconds must be positive, got {seconds}", "pass --seconds > 0")
    _prepare_out(out)
    specs = _plan(videos, seconds, seed)
    tmpl = _face_template()
    if workers is None:
        workers = min(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4
        )
    workers = max(1, min(workers, len(specs)))
    if mp.current_process().daemon:
        workers = 1
    entries: list[dict[str, Any]] = []

    def report(entry: dict[str, Any]) -> None:
        entries.append(entry)
        if progress:
            print(
                f"synth: [{len(entries)}/{len(specs)}] {entry['name']} ({entry['frames']} frames)",
                file=sys.stderr,
                flush=True,
            )

    if workers == 1:
        for spec in specs:
            report(_render_video(spec, out, tmpl))
    else:
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(tmpl,),
        ) as pool:
            futures = [pool.submit(_worker, spec, str(out)) for spec in specs]
            for fut in as_completed(futures):
                report(fut.result())
    order = {s.name: s.index for s in specs}
    entries.sort(key=lambda e: order[e["name"]])

    def first(case: str) -> str | None:
        return next((e["name"] for e in entries if case in e["cases"]), None)

    manifest: dict[str, Any] = {
        "generator": _GENERATOR,
        "format_version": 1,
        "complete": True,
        "seed": seed,
        "seconds": seconds,
        "sample_rate": SAMPLE_RATE,
        "frame_index": "0-based [start, stop) spans; crop files are 1-based (frame i -> %05d.jpg of i + 1)",
        "label_lag": "all videos: face and voice at frame t show the label of frame t + label_lag_frames",
        "splits": {
            s: [sub for e in entries if e["split"] == s for sub in e["subjects"]]
            for s in ("Train_Set", "Validation_Set")
        },
        "cases": {
            "two_person": first("two_person"),
            "fps_25": first("fps_25"),
            "no_audio": first("no_audio"),
            "stereo_audio": first("stereo_audio"),
            "invalid_spans": [e["name"] for e in entries if "invalid_spans" in e["cases"]],
            "no_face_spans": [e["name"] for e in entries if "no_face_spans" in e["cases"]],
        },
        "videos": entries,
    }
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m vafusion.data.synth OUT [--videos N] [--seconds S] [--seed K] [--workers W]``."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m vafusion.data.synth", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = make_corpus(args.out, args.videos, args.seconds, args.seed, workers=args.workers)
    except VafusionError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    frames = sum(e["frames"] for e in manifest["videos"])
    print(
        f"wrote {len(manifest['videos'])} videos, {frames} frames to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
