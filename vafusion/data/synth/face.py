"""The face renderer: a real photograph, landmarked once, warped piecewise-affinely per expression.

The photograph (matplotlib's ``grace_hopper.jpg``) is landmarked with dlib, cut into a square patch
with a soft head mask and triangulated (Delaunay) over its landmarks and a fixed ring around the face.
Because the warp is piecewise linear in the landmark moves, each expression basis becomes a dense
displacement field computed once; a face for any coefficients is then one matrix product and two
remaps. ``render_face`` returns an ArcFace-aligned crop, as the corpus's ``cropped_aligned`` holds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import dlib
import matplotlib.cbook
import numpy as np

from vafusion.data.synth.expression import (
    BASES,
    NUISANCE,
    B,
    basis_displacements,
    expression_coefs,
    random_identity,
)
from vafusion.errors import VafusionError
from vafusion.face.align import ARCFACE_TEMPLATE, CROP_SIZE, five_points, similarity_transform
from vafusion.weights.dlib import load_shape_predictor

PATCH = 224
"""Side of the face patch cut from the photograph, in pixels."""

Roi = tuple[int, int, int, int]


@dataclass(frozen=True)
class FaceTemplate:
    """Everything derived once from the photograph (see ``face_template``)."""

    patch: np.ndarray  # (P, P, 4) uint8 RGBA: the face patch and its soft head mask
    landmarks: np.ndarray  # (68, 2) float64 landmarks in patch pixels
    displacements: np.ndarray  # (B, 68, 2) landmark displacement of each basis at coefficient 1
    fields: np.ndarray  # (B, h * w * 2) float32 dense displacement per basis inside ``roi``
    roi: Roi  # y0, y1, x0, x1: where any displacement is non-zero
    grid: np.ndarray  # (h, w, 2) float32 pixel coordinates inside ``roi`` (local, from 0)


def _photo() -> np.ndarray:
    """Grace Hopper as RGB uint8: the real face photograph that matplotlib ships."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.imread(str(path))
    if image is None:
        raise VafusionError(path, "matplotlib's sample photograph cannot be read", "reinstall matplotlib")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _landmark(photo: np.ndarray) -> np.ndarray:
    """The dlib 68 landmarks (68, 2) of the largest face in ``photo``."""
    faces = dlib.get_frontal_face_detector()(photo, 1)
    if not faces:
        raise VafusionError(
            None,
            "dlib finds no face in matplotlib's grace_hopper.jpg",
            "check the dlib and matplotlib installs",
        )
    rect = max(faces, key=lambda r: r.area())
    shape = load_shape_predictor("shape_predictor_68_face_landmarks.dat")(photo, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


def _cut_patch(photo: np.ndarray, lm_src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The RGBA face patch (P, P, 4), its alpha a soft ellipse around the head, and its landmarks (68, 2)."""
    width = lm_src[16, 0] - lm_src[0, 0]
    centre = (lm_src.min(axis=0) + lm_src.max(axis=0)) / 2
    half = 1.25 * width
    scale = PATCH / (2 * half)
    to_patch = np.array(
        [[scale, 0, PATCH / 2 - scale * centre[0]], [0, scale, PATCH / 2 - scale * centre[1]]]
    )
    rgb = cv2.warpAffine(photo, to_patch, (PATCH, PATCH), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    lm = lm_src @ to_patch[:, :2].T + to_patch[:, 2]

    ys, xs = np.mgrid[0:PATCH, 0:PATCH].astype(np.float64)
    w_patch = width * scale
    head = np.hypot(
        (xs - PATCH / 2) / (0.80 * w_patch), (ys - (PATCH / 2 - 0.12 * w_patch)) / (1.05 * w_patch)
    )
    alpha = np.clip((1.0 - head) / 0.12, 0.0, 1.0)
    alpha = alpha * alpha * (3 - 2 * alpha)
    return np.dstack([rgb, np.round(255 * alpha).astype(np.uint8)]), lm


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


def _barycentric(points: np.ndarray, tris: np.ndarray, roi: Roi) -> tuple[np.ndarray, np.ndarray]:
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


def _mesh(lm: np.ndarray, disp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp mesh vertices (V, 2), their displacements per basis (B, V, 2), and the ring (see ``_ring``).

    Vertices are the distinct landmarks, the ring around the face and the patch border (the last two
    fixed). Coincident landmarks (closed lips) become one vertex; its displacement is their mean.
    """
    key = np.round(lm, 3)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    n_unique = len(first)
    vert_disp = np.zeros((len(BASES), n_unique, 2))
    np.add.at(vert_disp, (slice(None), inverse), disp)
    vert_disp /= np.bincount(inverse, minlength=n_unique)[None, :, None]
    ring = _ring(lm)
    edge = np.array(
        [
            [0, 0],
            [PATCH / 2, 0],
            [PATCH - 1, 0],
            [PATCH - 1, PATCH / 2],
            [PATCH - 1, PATCH - 1],
            [PATCH / 2, PATCH - 1],
            [0, PATCH - 1],
            [0, PATCH / 2],
        ],
        np.float64,
    )
    points = np.concatenate([lm[first], ring, edge])
    vert_disp = np.concatenate([vert_disp, np.zeros((len(BASES), len(ring) + len(edge), 2))], axis=1)
    return points, vert_disp, ring


def _dense_fields(
    points: np.ndarray, vert_disp: np.ndarray, ring: np.ndarray
) -> tuple[np.ndarray, Roi, np.ndarray]:
    """Per-basis dense displacement fields (B, h * w * 2) over the ring's bounding box, that box, its grid."""
    tris = _delaunay(points, PATCH)
    rx0, ry0 = np.floor(ring.min(axis=0)).astype(int)
    rx1, ry1 = np.ceil(ring.max(axis=0)).astype(int) + 1
    roi = (max(ry0, 0), min(ry1, PATCH), max(rx0, 0), min(rx1, PATCH))
    idx, bary = _barycentric(points, tris, roi)
    h, w = roi[1] - roi[0], roi[3] - roi[2]
    fields = np.einsum("nk,bnkc->ncb", bary, vert_disp[:, idx])  # (n, 2, B)
    fields = fields.reshape(h * w * 2, len(BASES)).T.astype(np.float32)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.ascontiguousarray(fields), roi, np.dstack([gx, gy])


@functools.lru_cache(maxsize=1)
def face_template() -> FaceTemplate:
    """Landmark the photograph once (dlib), cut the face patch, triangulate, and precompute warp fields.

    Costly (about 1 s, mostly loading the shape predictor), so it is cached once per process and
    handed to worker processes instead of being recomputed there.
    """
    photo = _photo()
    patch, lm = _cut_patch(photo, _landmark(photo))
    disp = basis_displacements(lm)
    points, vert_disp, ring = _mesh(lm, disp)
    fields, roi, grid = _dense_fields(points, vert_disp, ring)
    return FaceTemplate(patch=patch, landmarks=lm, displacements=disp, fields=fields, roi=roi, grid=grid)


def warp_patch(tmpl: FaceTemplate, image: np.ndarray, coefs: np.ndarray) -> np.ndarray:
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


def crop_matrix(tmpl: FaceTemplate, coefs: np.ndarray, size: int) -> np.ndarray:
    """2x3 patch -> aligned crop: the shown face's five points onto the ArcFace template at ``size``.

    The points include the expression (mouth corners move with a smile), exactly as a real 5-point
    aligner sees them, so the dataset's crops match what ``vafusion predict`` aligns from raw video.
    """
    landmarks = tmpl.landmarks + np.tensordot(coefs, tmpl.displacements, axes=1)
    return similarity_transform(five_points(landmarks), ARCFACE_TEMPLATE * size / CROP_SIZE)


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
    tmpl = face_template()
    coefs = expression_coefs(np.array([valence]), np.array([arousal]))[0]
    if rng is not None:
        coefs += random_identity(rng)
        for b in NUISANCE:
            coefs[B[b]] += rng.normal(0, 0.5)
        coefs[B["eyes_open"]] += rng.normal(0, 0.4)
        coefs[B["brows_up"]] += rng.normal(0, 0.4)
    warped = warp_patch(tmpl, tmpl.patch[..., :3], coefs)
    return cv2.warpAffine(
        warped,
        crop_matrix(tmpl, coefs, size),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
