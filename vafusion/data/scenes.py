"""Moving test scenes rendered from real clips, with the true face box of every person in every frame.

* :func:`face_sequence`: one clip's consecutive frames at another face size, roll, canvas or light (the
  face keeps its own motion), for measuring tracking and finding over time;
* :func:`people_scene`: two or more clips side by side as people in one video, who may swap places,
  be hidden for a while, arrive late or leave and come back, for measuring identity over time.

Ground truth comes from :func:`vafusion.data.faceset.ground_truth` (HOG on the recorded frames) mapped by
the same transforms that draw the frames. A person's number is the order of their face from the left
among the people visible when they first appear, as ``vafusion predict --faces all`` numbers them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vafusion.data.faceset import (
    Face,
    Sample,
    background,
    darken,
    ground_truth,
    map_box,
    match_score,
    read_frames,
    similarity,
)
from vafusion.face.detect import Box


def face_sequence(
    video: Path,
    length: int,
    canvas: tuple[int, int] | None,
    face_height: float | None,
    roll: float = 0.0,
    dark: bool = False,
    start: int = 0,
    seed: int = 0,
    truth_step: int = 1,
) -> list[Sample]:
    """``length`` consecutive frames of ``video`` rendered with one fixed transform: scaled so that the
    first face is ``face_height`` px (``None``: as recorded), rolled by ``roll`` deg, placed at a random
    spot of ``canvas`` (``None``: the recorded frame), darkened with noise if ``dark``. Frames whose
    ground truth is missing get no face (a tracker's output there is not scored); ``truth_step`` k > 1 makes
    ground truth for every k-th frame only."""
    truth = ground_truth(video, step=truth_step, detect_size=640, stop=start + length)
    frames = read_frames(video, range(start, start + length))
    first = next((truth.box(i) for i in range(start, start + length) if truth.box(i) is not None), None)
    if first is None:
        raise ValueError(f"{video}: no face in frames {start}..{start + length - 1}")
    rng = np.random.default_rng(seed)
    size = truth.size if canvas is None else canvas
    scale = 1.0 if face_height is None else face_height / first.height
    reach = 0.5 * math.hypot(first.width * scale, first.height * scale) + 0.1 * max(size)
    dst = (
        first.center
        if canvas is None
        else (rng.uniform(reach, size[0] - reach), rng.uniform(reach, size[1] - reach))
    )
    matrix = similarity(scale, roll, first.center, dst)
    bg = background(size, rng, frames[start].reshape(-1, 3).mean(axis=0))
    mask = cv2.warpAffine(
        np.full(frames[start].shape[:2], 255, np.uint8), matrix, size, flags=cv2.INTER_NEAREST
    )
    out = []
    for i in sorted(frames):
        warped = cv2.warpAffine(
            frames[i], matrix, size, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        image = bg.copy()
        image[mask > 0] = warped[mask > 0]
        if dark:
            image = darken(image, rng)
        box = truth.box(i)
        faces = () if box is None else (Face(map_box(box, matrix), video.stem, i, roll),)
        params = {
            "height": -1 if face_height is None else face_height,
            "roll": roll,
            "canvas": "native" if canvas is None else f"{canvas[0]}x{canvas[1]}",
        }
        out.append(Sample(f"seq-{video.stem}-{i}", "sequence", image, faces, params))
    return out


@dataclass
class PeopleScene:
    """Frames of a scene and, per frame, the true face box of each visible person (by true person number)."""

    frames: list[np.ndarray]
    boxes: list[dict[int, Box]]
    fps: float
    events: list[str] = field(default_factory=list)
    scored: list[bool] = field(default_factory=list)
    """Frames with ground truth for every person (all when empty); only these are scored."""


@dataclass(frozen=True)
class Actor:
    """One person of a scene: a clip, the face height it is drawn at, and when it is off screen.

    ``hidden``: ``(first, stop)`` frame spans where a grey card covers the face (an occlusion);
    ``absent``: spans where the person is not in the picture at all (arrives late, leaves, comes back).
    """

    video: Path
    face_height: float
    hidden: tuple[tuple[int, int], ...] = ()
    absent: tuple[tuple[int, int], ...] = ()


def _clip_index(t: int, n: int) -> int:
    """The frame of an ``n``-frame clip shown at scene time ``t`` (played forwards, backwards, ...)."""
    i = t % (2 * n - 2) if n > 1 else 0
    return i if i < n else 2 * n - 2 - i


def _inside(t: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(a <= t < b for a, b in spans)


def people_scene(
    actors: Sequence[Actor],
    length: int,
    canvas: tuple[int, int] = (1280, 720),
    swap_at: int | None = None,
    fps: float = 25.0,
    seed: int = 0,
    truth_step: int = 1,
) -> PeopleScene:
    """``actors`` side by side, one per vertical strip of ``canvas`` (in order, left to right), for
    ``length`` frames; at frame ``swap_at`` the first two trade places. Clips shorter than the scene play
    forwards and backwards (a face never jumps). With ``truth_step`` k > 1 ground truth is made for every
    k-th frame of each clip only (faster); the other frames have no true boxes and are not scored."""
    rng = np.random.default_rng(seed)
    truths = [ground_truth(a.video, step=truth_step, detect_size=640, stop=length) for a in actors]
    clips = [read_frames(a.video, range(length)) for a in actors]
    w, h = canvas
    strip = w / len(actors)
    bg = background(canvas, rng)
    frames, boxes, scored = [], [], []
    for t in range(length):
        scored.append(
            all(
                _clip_index(t, min(len(c), len(r.boxes))) % truth_step == 0
                for c, r in zip(clips, truths, strict=True)
            )
        )
        image = bg.copy()
        visible: dict[int, Box] = {}
        for k, (actor, truth, clip) in enumerate(zip(actors, truths, clips, strict=True)):
            slot = (1 - k if k < 2 else k) if swap_at is not None and t >= swap_at else k
            if _inside(t, actor.absent):
                continue
            box, near = _draw(image, actor, truth, clip, t, (slot * strip, (slot + 1) * strip), h)
            if _inside(t, actor.hidden):
                cv2.rectangle(image, *_ints(near, 0.15, 0.3), (128, 128, 128), -1)
            elif box is not None:
                visible[k] = box
        frames.append(image)
        boxes.append(visible)
    events = [f"swap at {swap_at}"] if swap_at is not None else []
    return PeopleScene(frames, _renumber(boxes), fps, events, scored)


def _ints(box: Box, grow_x: float, grow_y: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Corners of ``box`` grown by the given fractions of its size (a card hiding the whole face)."""
    dx, dy = box.width * grow_x, box.height * grow_y
    return (int(box.left - dx), int(box.top - dy)), (int(box.right + dx), int(box.bottom + dy))


def _draw(
    image: np.ndarray,
    actor: Actor,
    truth,
    clip: dict[int, np.ndarray],
    t: int,
    strip: tuple[float, float],
    height: int,
) -> tuple[Box | None, Box]:
    """Draw ``actor``'s frame for scene time ``t`` into ``strip`` of ``image``; its true face box (if the
    frame has one) and the box of the nearest frame that has one (where a card hides the face)."""
    i = _clip_index(t, min(len(clip), len(truth.boxes)))
    valid = np.flatnonzero(truth.valid)
    ref = truth.box(int(valid[0]))
    scale = actor.face_height / ref.height
    x0, x1 = strip
    matrix = similarity(scale, 0.0, ref.center, ((x0 + x1) / 2, height * 0.45))
    size = (image.shape[1], image.shape[0])
    warped = cv2.warpAffine(clip[i], matrix, size, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full(clip[i].shape[:2], 255, np.uint8), matrix, size, flags=cv2.INTER_NEAREST)
    mask[:, : int(x0)] = 0
    mask[:, math.ceil(x1) :] = 0
    image[mask > 0] = warped[mask > 0]
    box = truth.box(i)
    near = truth.box(int(valid[np.argmin(np.abs(valid - i))]))
    return (None if box is None else map_box(box, matrix)), map_box(near, matrix)


def _renumber(boxes: list[dict[int, Box]]) -> list[dict[int, Box]]:
    """Person numbers in order of first appearance, left to right among those who appear together."""
    order: dict[int, int] = {}
    for frame in boxes:
        for k in sorted((k for k in frame if k not in order), key=lambda k: frame[k].center[0]):
            order[k] = len(order)
    return [{order[k]: b for k, b in frame.items()} for frame in boxes]


@dataclass
class PeopleScore:
    """How well per-frame ``{person: box}`` outputs follow a scene's people.

    ``found``: per true person, the share of the frames where they are visible in which an output box
    matches their face; ``switches``: how often the output number on a true person changed from one
    matched frame to the next (an identity switch); ``numbers``: per true person, the output number
    matched most often; ``wrong``: output boxes that match no visible face, per frame.
    """

    found: dict[int, float]
    switches: int
    numbers: dict[int, int]
    wrong: float
    events: list[str] = field(default_factory=list)


def score_people(scene: PeopleScene, outputs: Sequence[dict[int, Box]]) -> PeopleScore:
    """Score a multi-person tracker's outputs on ``scene`` (one ``{person: box}`` per frame)."""
    seen: dict[int, int] = {}
    hits: dict[int, int] = {}
    last: dict[int, int] = {}
    counts: dict[int, dict[int, int]] = {}
    switches = wrong = 0
    events = []
    for t, (truth, found) in enumerate(zip(scene.boxes, outputs, strict=True)):
        if scene.scored and not scene.scored[t]:
            continue
        pairs = sorted(
            ((match_score(b, tb), n, p) for n, b in found.items() for p, tb in truth.items()), reverse=True
        )
        used: set[int] = set()
        matched: dict[int, int] = {}
        for score, n, p in pairs:
            if score > 0 and n not in used and p not in matched:
                used.add(n)
                matched[p] = n
        wrong += len(found) - len(used)
        for p in truth:
            seen[p] = seen.get(p, 0) + 1
        for p, n in matched.items():
            hits[p] = hits.get(p, 0) + 1
            counts.setdefault(p, {}).setdefault(n, 0)
            counts[p][n] += 1
            if p in last and last[p] != n:
                switches += 1
                events.append(f"frame {t}: person {p} went from output {last[p]} to {n}")
            last[p] = n
    return PeopleScore(
        {p: hits.get(p, 0) / seen[p] for p in sorted(seen)},
        switches,
        {p: max(c, key=c.get) for p, c in sorted(counts.items())},
        wrong / max(sum(scene.scored) if scene.scored else len(outputs), 1),
        events,
    )
