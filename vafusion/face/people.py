"""Following every person in a video, each under a number that stays theirs.

Each person's face is followed by its own ``dlib.correlation_tracker`` and re-detected around itself every
``detect_every`` frames (:meth:`FaceDetector.detect_region`); the whole frame is searched once for everyone
(never once per person) every ``detect_every`` frames, with the fine pass for small faces every
``fine_every`` frames, to find people who appear.

Identity rests on appearance plus position (:mod:`vafusion.face.identity`): a face nobody is tracking is
compared with the people seen before (a person who leaves and comes back keeps their number), and a
tracked face is checked against its person's descriptor when its box came close to another face, when its
picture changed abruptly (two people swapping places), after it was lost and found again, and every
``refresh_every`` frames. A check that fails re-assigns every visible face to the person it looks most
like. New people are numbered in order of appearance, left to right among those who appear together.
"""

from __future__ import annotations

from dataclasses import dataclass

import dlib
import numpy as np

from vafusion.face.detect import Box, FaceDetector, check_frame, iou
from vafusion.face.identity import SAME_PERSON, FaceDescriber, distance, signature, similar
from vafusion.face.track import Search, follow, start_tracker


@dataclass
class Person:
    """What the tracker knows about one person."""

    number: int
    box: Box | None = None
    last_box: Box | None = None
    tracker: dlib.correlation_tracker | None = None
    confirmed: bool = False
    missed: int = 0
    descriptor: np.ndarray | None = None
    described_at: int = -(10**9)
    signature: np.ndarray | None = None
    suspect: bool = False


def _overlaps(a: Box, b: Box) -> bool:
    cx, cy = a.center
    return iou(a, b) >= 0.3 or (b.left <= cx <= b.right and b.top <= cy <= b.bottom)


def _close(a: Box, b: Box) -> bool:
    """Two faces near enough for their trackers to trade places."""
    (ax, ay), (bx, by) = a.center, b.center
    return np.hypot(ax - bx, ay - by) < 1.2 * max(a.width, a.height, b.width, b.height)


class PeopleTrack:
    """Every face of a video, numbered by person; :meth:`step` gives ``{person: box}`` for each frame."""

    def __init__(
        self,
        detector: FaceDetector | None = None,
        describer: FaceDescriber | None = None,
        detect_every: int = 5,
        fine_every: int = 10,
        refresh_every: int = 60,
        min_psr: float = 7.0,
        max_missed: int = 2,
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector = detector if detector is not None else FaceDetector()
        self.describer = describer if describer is not None else FaceDescriber()
        self.detect_every, self.refresh_every = detect_every, refresh_every
        self.fine_every, self.min_psr, self.max_missed = fine_every, min_psr, max_missed
        self.reset()

    def reset(self) -> None:
        """Forget everyone (call between videos)."""
        self.people: list[Person] = []
        self._index = 0
        self._search = Search(self.detector, self.fine_every)
        self.most_faces = 0

    def step(self, frame: np.ndarray) -> dict[int, Box]:
        """Process the next frame: the box of every person whose face is visible in it."""
        frame = check_frame(frame)
        i, self._index = self._index, self._index + 1
        lost = self._follow(frame)
        scheduled = i % self.detect_every == 0
        if scheduled:
            self._redetect(frame, lost)
        if any(p.box is not None for p in self.people):
            self._search.last_face = i  # someone is in view: keep looking for newcomers at the usual rate
        if scheduled or not any(p.box is not None for p in self.people):
            self._discover(frame, i)
        self._check_identities(frame, i)
        return {p.number: p.box for p in self.people if p.box is not None}

    def _start(self, person: Person, frame: np.ndarray, box: Box) -> None:
        person.tracker = start_tracker(frame, box) if self.detect_every > 1 else None
        person.box = person.last_box = box
        person.missed = 0

    def _drop(self, person: Person) -> None:
        person.box, person.tracker, person.confirmed = None, None, False

    def _follow(self, frame: np.ndarray) -> list[Person]:
        """Move every tracked face with its tracker; the people whose tracker lost them now."""
        lost = []
        for p in self.people:
            if p.tracker is None:
                if p.box is not None:  # no tracker (detect_every 1): look again around where it was
                    lost.append(p)
                p.box = None
                continue
            box = follow(p.tracker, frame, self.min_psr)
            if box is not None:
                p.box = p.last_box = box
            else:
                lost.append(p)
                self._drop(p)
        return lost

    def _redetect(self, frame: np.ndarray, lost: list[Person]) -> None:
        """Find each tracked (and just lost) face again around itself."""
        for p in self.people:
            around = p.box if p.box is not None else (p.last_box if p in lost else None)
            if around is None:
                continue
            found = [
                b
                for b in self.detector.detect_region(frame, around, 2.5 if p.box else 4.0)
                if iou(b, around) >= 0.3 or p.box is None
            ]
            if found:
                box = max(found, key=lambda b: iou(b, around))
                sig = signature(frame, box)
                p.suspect = p.suspect or p.box is None or similar(sig, p.signature) < 0.5
                p.signature = sig
                self._start(p, frame, box)
                p.confirmed = True
            elif p.box is not None and p.confirmed and p.missed < self.max_missed:
                p.missed += 1
            else:
                self._drop(p)

    def _discover(self, frame: np.ndarray, i: int) -> None:
        """Search the whole frame for faces nobody is following: people who return, or new people."""
        boxes = self._search(frame, i)
        self.most_faces = max(self.most_faces, len(boxes))
        busy = [p.box for p in self.people if p.box is not None]
        fresh = sorted(
            (b for b in boxes if not any(_overlaps(b, t) for t in busy)), key=lambda b: b.center[0]
        )
        for box in fresh:
            desc = self.describer(frame, box)
            away = [p for p in self.people if p.box is None and p.descriptor is not None]
            best = min(away, key=lambda p: distance(desc, p.descriptor), default=None)
            if best is None or distance(desc, best.descriptor) > SAME_PERSON:
                best = Person(len(self.people))
                self.people.append(best)
            self._start(best, frame, box)
            best.descriptor, best.described_at, best.suspect = desc, i, False
            best.signature = signature(frame, box)
        if fresh:
            self._search.last_face = i

    def _check_identities(self, frame: np.ndarray, i: int) -> None:
        """Check suspect faces (and every face now and then) against their person's descriptor."""
        visible = [p for p in self.people if p.box is not None]
        crowded = [any(q is not p and _close(p.box, q.box) for q in visible) for p in visible]
        for p, near in zip(visible, crowded):
            p.suspect = p.suspect or near  # re-checked once the faces are apart again
        due = [
            p
            for p, near in zip(visible, crowded)
            if not near and (p.suspect or i - p.described_at >= self.refresh_every)
        ]
        for p in due:
            desc = self.describer(frame, p.box)
            if p.descriptor is None or distance(desc, p.descriptor) <= SAME_PERSON:
                mixed = desc if p.descriptor is None else p.descriptor + 0.3 * (desc - p.descriptor)
                p.descriptor = mixed / max(float(np.linalg.norm(mixed)), 1e-9)
                p.described_at, p.suspect = i, False
            else:
                self._reassign(frame, i)
                return

    def _reassign(self, frame: np.ndarray, i: int) -> None:
        """Give every visible face to the person it looks most like (a swap, or a face taken over)."""
        visible = [p for p in self.people if p.box is not None]
        faces = [(p.box, self.describer(frame, p.box)) for p in visible]
        for p in visible:
            self._drop(p)
        known = [p for p in self.people if p.descriptor is not None]
        pairs = sorted(
            ((distance(d, p.descriptor), k, p) for k, (_, d) in enumerate(faces) for p in known),
            key=lambda x: (x[0], x[1]),
        )
        taken: set[int] = set()
        for dist, k, p in pairs:
            if dist > SAME_PERSON or k in taken or p.box is not None:
                continue
            taken.add(k)
            self._start(p, frame, faces[k][0])
            p.confirmed, p.described_at, p.suspect = True, i, False
        for k, (box, desc) in enumerate(faces):
            if k not in taken:  # a face like nobody seen so far: a new person
                person = Person(len(self.people), descriptor=desc, described_at=i)
                self.people.append(person)
                self._start(person, frame, box)
