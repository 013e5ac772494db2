"""What a video shows: its people (VA trajectory, labels, expression, head motion) and background.

Every draw here comes from the video's own random generator in a fixed order, which is what makes
the corpus reproducible byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vafusion.data.synth.expression import NUISANCE, B, expression_coefs, random_identity
from vafusion.data.synth.face import PATCH, FaceTemplate, crop_matrix
from vafusion.data.synth.plan import VideoSpec
from vafusion.data.synth.voice import smooth_noise
from vafusion.face.align import CROP_SIZE

Spans = list[list[int]]
"""Disjoint 0-based [start, stop) frame spans."""


@dataclass
class Person:
    """One rendered subject: labels, per-frame warp coefficients and placement."""

    subject: str
    labels: np.ndarray  # (n, 2) with -5 on invalid frames
    expressed: np.ndarray  # (n, 2) the VA the face and voice show (labels lead by ``lag``)
    coefs: np.ndarray  # (n, B)
    place: np.ndarray  # (n, 2, 3) patch -> frame
    crop: np.ndarray  # (n, 2, 3) frame -> aligned crop
    visible: np.ndarray  # (n,) bool
    patch: np.ndarray  # (P, P, 4) tinted RGBA patch, colour premultiplied by alpha
    invalid_spans: Spans
    no_face_spans: Spans


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


def _spans(n: int, count: int, lo: int, hi: int, rng: np.random.Generator, avoid: int = 0) -> Spans:
    """``count`` disjoint [start, stop) frame spans of length lo..hi, none in the first ``avoid`` frames."""
    spans: Spans = []
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


def _labels(
    spec: VideoSpec, lag: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, Spans, np.ndarray, Spans]:
    """Expressed VA (n, 2), labels (n, 2; -5 in invalid spans), invalid spans, visibility (n,), no-face spans.

    The labels lead what the face and voice show by ``lag`` frames, as annotators react late.
    """
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
    return expressed, labels, invalid, visible, no_face


def _person_coefs(expressed: np.ndarray, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Basis coefficients (n, B): the expressed VA with noisy arousal cues, nuisance, blinks, identity."""
    n = len(expressed)
    coefs = expression_coefs(expressed[:, 0], expressed[:, 1])
    coefs[:, B["eyes_open"]] = (
        rng.uniform(0.4, 1.0) * expressed[:, 1]
        + 0.5 * smooth_noise(n, fps, 1.0, rng)
        + 0.2 * rng.standard_normal(n)
    )
    coefs[:, B["brows_up"]] = (
        rng.uniform(0.4, 1.0) * expressed[:, 1]
        + 0.5 * smooth_noise(n, fps, 0.7, rng)
        + 0.2 * rng.standard_normal(n)
    )
    for b in NUISANCE:
        coefs[:, B[b]] = rng.uniform(0.2, 0.6) * smooth_noise(n, fps, 0.8, rng)
    blink = np.zeros(n)
    for start in np.flatnonzero(rng.random(n) < 0.25 / fps):
        prof = np.array([0.5, 1.0, 0.6, 0.2])[: n - start]
        blink[start : start + len(prof)] = np.maximum(blink[start : start + len(prof)], prof)
    coefs[:, B["blink"]] = blink
    coefs += random_identity(rng)[None, :]
    return coefs


def _tinted_patch(tmpl: FaceTemplate, rng: np.random.Generator) -> np.ndarray:
    """The template's RGBA patch with a random skin tint, colour premultiplied by alpha."""
    tint = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.15)
    patch = tmpl.patch.copy()
    premultiplied = tmpl.patch[..., :3] * tint * (tmpl.patch[..., 3:] / 255.0)
    patch[..., :3] = np.clip(np.round(premultiplied), 0, 255).astype(np.uint8)
    return patch


def _head_motion(
    tmpl: FaceTemplate,
    coefs: np.ndarray,
    flip: bool,
    centre: tuple[float, float],
    base_scale: float,
    fps: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame patch -> frame placements (n, 2, 3) with slow head motion, and frame -> crop matrices.

    The crop follows the shown face's five points (expression included) plus a little alignment
    noise, as a real aligner's would; a mirrored person's crop is mirrored back.
    """
    n = len(coefs)
    scale = base_scale * (1 + 0.04 * smooth_noise(n, fps, 0.3, rng))
    angle = rng.uniform(-5, 5) + 3.0 * smooth_noise(n, fps, 0.3, rng)
    jitter = 0.02 * base_scale * PATCH
    px = centre[0] + jitter * smooth_noise(n, fps, 0.3, rng)
    py = centre[1] + jitter * smooth_noise(n, fps, 0.3, rng)
    mirror = np.array([[-1.0, 0, CROP_SIZE - 1], [0, 1.0, 0]])
    align_noise = 0.4 * rng.standard_normal((n, 2))
    place = np.empty((n, 2, 3))
    crop = np.empty((n, 2, 3))
    for i in range(n):
        place[i] = _affine(scale[i], angle[i], flip, (PATCH / 2, PATCH / 2), (px[i], py[i]))
        m = _compose(crop_matrix(tmpl, coefs[i], CROP_SIZE), cv2.invertAffineTransform(place[i]))
        if flip:
            m = _compose(mirror, m)
        m[:, 2] += align_noise[i]
        crop[i] = m
    return place, crop


def _make_person(
    tmpl: FaceTemplate,
    spec: VideoSpec,
    subject: str,
    lag: int,
    centre: tuple[float, float],
    base_scale: float,
    rng: np.random.Generator,
) -> Person:
    """Draw one person's trajectory, labels, expression coefficients and head motion."""
    expressed, labels, invalid, visible, no_face = _labels(spec, lag, rng)
    coefs = _person_coefs(expressed, spec.fps, rng)
    flip = bool(rng.random() < 0.5)
    patch = _tinted_patch(tmpl, rng)
    place, crop = _head_motion(tmpl, coefs, flip, centre, base_scale, spec.fps, rng)
    return Person(
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


def make_people(tmpl: FaceTemplate, spec: VideoSpec, lag: int, rng: np.random.Generator) -> list[Person]:
    """The video's one person near the centre, or its two people side by side (the two-person video)."""
    W, H = spec.width, spec.height
    if spec.two_person:
        subjects = [f"{spec.name}_left", f"{spec.name}_right"]
        scale = 0.62 * rng.uniform(0.95, 1.05)
        return [
            _make_person(
                tmpl, spec, s, lag, (W * (0.27 + 0.46 * j) + rng.uniform(-6, 6), H * 0.5), scale, rng
            )
            for j, s in enumerate(subjects)
        ]
    scale = rng.uniform(0.95, 1.15) * min(W, H) / 256
    centre = (W / 2 + rng.uniform(-0.06, 0.06) * W, H * 0.54 + rng.uniform(-0.04, 0.04) * H)
    return [_make_person(tmpl, spec, spec.name, lag, centre, scale, rng)]


def background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
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
