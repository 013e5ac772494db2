"""The expression basis: how valence, arousal, nuisance and identity move the 68 face landmarks.

Each basis is one landmark displacement pattern at coefficient 1; a face is the photograph warped by
a weighted sum of them (see ``face.py``). Valence drives smile/frown and arousal eyes_open/brows_up,
the nuisance bases move at random and the identity bases are constant per person, so that a model
must find the VA signal among unrelated face motion.
"""

from __future__ import annotations

import numpy as np

BASES = (
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
"""Names of the bases, in coefficient order."""

B = {name: i for i, name in enumerate(BASES)}
"""Coefficient index of each basis name."""

NUISANCE = ("mouth_wide", "lip_press", "smirk", "brow_tilt", "lid_left", "lid_right")
IDENTITY = tuple(b for b in BASES if b.startswith("id_"))

Moves = dict[int, tuple[float, float]]
"""Landmark index -> (dx, dy) in percent of the jaw width."""


def _mirror(points: Moves, pairs: dict[int, int]) -> Moves:
    """``points`` plus, for each image-left point of ``pairs``, its image-right partner moved mirror-wise."""
    out = dict(points)
    for left, right in pairs.items():
        dx, dy = points[left]
        out[right] = (-dx, dy)
    return out


_LIP_PAIRS = {48: 54, 49: 53, 50: 52, 59: 55, 58: 56, 60: 64, 61: 63, 67: 65}

# Data table: the fixed landmark moves of every basis but "blink" and "id_face_wide" (which depend on
# the landmarks themselves, see ``basis_displacements``). Percent of the jaw width (0-16), so they do
# not depend on the patch size; image-left points move by -x for "outward", image-right by +x.
_MOVES: dict[str, Moves] = {
    "smile": _mirror(
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
        {**_LIP_PAIRS, 40: 47, 41: 46, 31: 35},
    ),
    "frown": _mirror(
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
        {**_LIP_PAIRS, 21: 22, 20: 23},
    ),
    "eyes_open": {**dict.fromkeys((37, 38, 43, 44), (0, -1.6)), **dict.fromkeys((40, 41, 46, 47), (0, 0.4))},
    "brows_up": {i: (0, -3.0 if i in (19, 20, 23, 24) else -2.5) for i in range(17, 27)},
    "mouth_wide": _mirror(
        {48: (-2, 0), 60: (-2, 0), 49: (-1, 0), 59: (-1, 0), 61: (-1, 0), 67: (-1, 0)},
        {48: 54, 60: 64, 49: 53, 59: 55, 61: 63, 67: 65},
    ),
    "lip_press": {50: (0, 1.2), 51: (0, 1.2), 52: (0, 1.2), 56: (0, -1.2), 57: (0, -1.2), 58: (0, -1.2)},
    "smirk": {
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
    "brow_tilt": {**dict.fromkeys(range(17, 22), (0, -1.5)), **dict.fromkeys(range(22, 27), (0, 1.5))},
    "lid_left": {37: (0, -1), 38: (0, -1)},
    "lid_right": {43: (0, -1), 44: (0, -1)},
    "id_eyes_apart": {
        **dict.fromkeys(range(36, 42), (-1.5, 0)),
        **dict.fromkeys(range(42, 48), (1.5, 0)),
        **dict.fromkeys(range(17, 22), (-1, 0)),
        **dict.fromkeys(range(22, 27), (1, 0)),
    },
    "id_nose_long": {28: (0, 0.5), 29: (0, 1), **dict.fromkeys(range(30, 36), (0, 2))},
    "id_mouth_low": dict.fromkeys(range(48, 68), (0, 2)),
    "id_brow_high": dict.fromkeys(range(17, 27), (0, -2)),
    "id_chin_long": {5: (0, 1.5), 11: (0, 1.5), **dict.fromkeys(range(6, 11), (0, 3))},
}


def _put(d: np.ndarray, basis: str, points: Moves, unit: float) -> None:
    """Write ``points`` (percent of the jaw width) into basis ``basis`` of ``d`` in patch pixels."""
    for i, (dx, dy) in points.items():
        d[B[basis], i] = (dx * unit, dy * unit)


def basis_displacements(lm: np.ndarray) -> np.ndarray:
    """Landmark displacements (B, 68, 2) per unit coefficient, in patch pixels, for landmarks ``lm``.

    The table ``_MOVES`` gives most bases; "blink" closes each upper lid onto the lower one and
    "id_face_wide" widens the jaw line in proportion to each point's distance from its centre.
    """
    unit = (lm[16, 0] - lm[0, 0]) / 100.0
    d = np.zeros((len(BASES), 68, 2))
    for basis, points in _MOVES.items():
        _put(d, basis, points, unit)
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        d[B["blink"], upper] = (0.0, 0.9 * (lm[lower, 1] - lm[upper, 1]))
    cx = lm[:17, 0].mean()
    half = (lm[16, 0] - lm[0, 0]) / 2
    _put(d, "id_face_wide", {i: (3 * (lm[i, 0] - cx) / half, 0) for i in range(17)}, unit)
    return d


def expression_coefs(valence: np.ndarray, arousal: np.ndarray) -> np.ndarray:
    """Noise-free coefficients (n, B) of the VA-driven bases: the expression the ground truth asks for."""
    valence = np.atleast_1d(np.asarray(valence, np.float64))
    arousal = np.atleast_1d(np.asarray(arousal, np.float64))
    c = np.zeros((len(valence), len(BASES)))
    c[:, B["smile"]] = np.clip(valence, 0, None)
    c[:, B["frown"]] = np.clip(-valence, 0, None)
    c[:, B["eyes_open"]] = arousal
    c[:, B["brows_up"]] = arousal
    return c


def random_identity(rng: np.random.Generator) -> np.ndarray:
    """Identity coefficients (B,) of one synthetic person, so that faces differ between videos."""
    c = np.zeros(len(BASES))
    for b in IDENTITY:
        c[B[b]] = np.clip(rng.normal(0, 1), -2, 2)
    return c
