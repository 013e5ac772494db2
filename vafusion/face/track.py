"""Following one subject through a video: detect every ``detect_every`` frames, track in between.

Between detections ``dlib.correlation_tracker`` follows the subject. Its peak-to-side-lobe ratio (PSR) is
the confidence: below ``min_psr`` the track is lost and the detector runs on that same frame, so a lost
face costs one detection, not ``detect_every`` frames without a face.

Re-detection looks only around the face (:meth:`FaceDetector.detect_region`, a few ms), and a lost face
is looked for first around where it was. The whole frame is searched only without a track: the coarse
pass on every frame (a large face is found on the frame it appears), the fine pass for small faces every
``2 * detect_every`` frames, and every 30 frames once 10 frames have gone by without a face, which keeps the
cost of stretches without anyone in view within 1.3x that of the coarse pass alone (docs/predict.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal, NamedTuple

import dlib
import numpy as np

from vafusion.face.align import FaceAligner
from vafusion.face.detect import Box, FaceDetector, check_frame, iou, to_rect

Subject = Literal["largest", "first"] | int


class Search:
    """When a tracker without a face searches the whole frame with the fine pass (the coarse pass runs on
    every other frame): every ``every`` frames, every ``every_idle`` frames once ``idle_after`` frames have
    gone by without a confirmed face."""

    def __init__(
        self, detector: FaceDetector, every: int, every_idle: int = 30, idle_after: int = 10
    ) -> None:
        self.detector, self.every, self.every_idle, self.idle_after = detector, every, every_idle, idle_after
        self.last_fine = -(10**9)
        self.last_face = 0

    def __call__(self, frame: np.ndarray, frame_no: int) -> list[Box]:
        """The faces the search finds on frame ``frame_no``."""
        idle = frame_no - self.last_face >= self.idle_after
        fine = frame_no - self.last_fine >= (self.every_idle if idle else self.every)
        if fine and self.detector.fine_scale(frame) is not None:
            self.last_fine = frame_no
            return self.detector.detect(frame, every_face=True)
        return self.detector.detect(frame, fine=False)


def start_tracker(frame: np.ndarray, box: Box) -> dlib.correlation_tracker:
    """A correlation tracker following the face in ``box`` from ``frame`` on."""
    tracker = dlib.correlation_tracker()
    tracker.start_track(frame, to_rect(box))
    return tracker


def follow(tracker: dlib.correlation_tracker, frame: np.ndarray, min_psr: float) -> Box | None:
    """Where ``tracker`` moves its face on ``frame``, or ``None`` when its confidence (the peak-to-side-lobe
    ratio) is under ``min_psr``: the face is lost."""
    psr = tracker.update(frame)
    if not (np.isfinite(psr) and psr >= min_psr):
        return None
    p = tracker.get_position()
    return Box(p.left(), p.top(), p.right(), p.bottom())


class FaceFrame(NamedTuple):
    """Result for one frame: the aligned crop and the subject's box, both ``None`` without a face (the crop
    is also ``None`` when the caller asked ``FaceTrack.step`` not to align)."""

    crop: np.ndarray | None
    box: Box | None


class FaceTrack:
    """Follow one subject through a video: detect every ``detect_every`` frames, track in between.

    While there is no track (start, lost face), the detector runs on every frame, so a face is picked
    up on the frame it appears.

    Args:
        detector: finds the faces (a default HOG ``FaceDetector`` if ``None``).
        aligner: aligns the subject's face when ``step`` is asked to (a ``FaceAligner`` if ``None``).
        detect_every: run the detector on every k-th frame (1: every frame, no tracking).
        subject: which face to follow when several are found. ``"largest"``: the largest face at each
            (re)acquisition; ``"first"``: the first face found, re-acquired after a loss as the face
            nearest its last position; an int ``i``: the i-th face from the left at the first frame with
            more than ``i`` faces, re-acquired like ``"first"``. At a detection while tracking, the face
            overlapping the track most (IoU >= 0.3) continues it in every mode.
        min_psr: tracker confidence (peak-to-side-lobe ratio) under which the track counts as lost; a
            good track runs at 15-30, a blank or changed scene gives under 7.
        max_missed: how many scheduled detections in a row may find no face while the tracker still
            reports a confident track, before the track is dropped (limits drift onto background).
    """

    def __init__(
        self,
        detector: FaceDetector | None = None,
        aligner: FaceAligner | None = None,
        detect_every: int = 5,
        subject: Subject = "largest",
        min_psr: float = 7.0,
        max_missed: int = 2,
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if not (subject in ("largest", "first") or (isinstance(subject, int) and subject >= 0)):
            raise ValueError(f"subject must be 'largest', 'first' or an index >= 0, got {subject!r}")
        self.detector = detector if detector is not None else FaceDetector()
        self.aligner = aligner if aligner is not None else FaceAligner()
        self.detect_every = detect_every
        self.subject = subject
        self.min_psr = min_psr
        self.max_missed = max_missed
        self.lost_context = 4.0
        self.reset()

    def reset(self) -> None:
        """Forget the subject and the track (call between videos)."""
        self._tracker: dlib.correlation_tracker | None = None
        self._box: Box | None = None
        self._last_seen: Box | None = None
        self._missed = 0
        self._index = 0
        self._confirmed = False  # the track's face was found again by a re-detection around it
        self._search = Search(self.detector, 2 * self.detect_every)
        self.most_faces = 0  # the most faces one full search found (to explain a subject never found)

    def _pick(self, boxes: list[Box]) -> Box | None:
        """The subject among ``boxes`` (see the class docstring), or ``None``."""
        if not boxes:
            return None
        if self._box is not None:
            best = max(boxes, key=lambda b: iou(b, self._box))
            if iou(best, self._box) >= 0.3:
                return best
        if self.subject == "largest" or (self._last_seen is None and self.subject == "first"):
            return max(boxes, key=lambda b: b.area)
        if self._last_seen is None:
            ordered = sorted(boxes, key=lambda b: b.center[0])
            return ordered[self.subject] if len(ordered) > self.subject else None
        cx, cy = self._last_seen.center
        return min(boxes, key=lambda b: (b.center[0] - cx) ** 2 + (b.center[1] - cy) ** 2)

    def _start(self, frame: np.ndarray, box: Box) -> None:
        if self.detect_every > 1:
            self._tracker = start_tracker(frame, box)
        self._box = box
        self._last_seen = box
        self._missed = 0

    def _full(self, frame: np.ndarray) -> list[Box]:
        boxes = self._search(frame, self._index - 1)
        self.most_faces = max(self.most_faces, len(boxes))
        return boxes

    def _detect(self, frame: np.ndarray, tracked: Box | None) -> Box | None:
        """Re-detect around the track, or find the subject again. A track started by a full search is
        unconfirmed until a re-detection around it finds its face again; an unconfirmed track whose
        re-detection fails is dropped at once, so a false detection lasts at most ``detect_every`` frames."""
        region = False
        if tracked is not None:
            boxes, region = self.detector.detect_region(frame, tracked), True
        elif self._box is not None:  # lost just now: look around where it was, then everywhere
            boxes = self.detector.detect_region(frame, self._box, self.lost_context)
            region = bool(boxes) and self._confirmed
            boxes = boxes or self._full(frame)
        else:
            boxes = self._full(frame)
        box = self._pick(boxes)
        if box is not None:
            confirmed = region or (tracked is not None and self._confirmed)
            self._start(frame, box)
            self._confirmed = confirmed
            if confirmed:
                self._search.last_face = self._index - 1
            return box
        if tracked is not None and self._confirmed and self._missed < self.max_missed:
            self._missed += 1
            self._search.last_face = self._index - 1
            self._box = self._last_seen = tracked
            return tracked
        self._tracker = self._box = None
        self._confirmed = False
        return None

    def step(self, frame: np.ndarray, align: bool = True) -> FaceFrame:
        """Process the next frame of the video.

        With ``align=False`` the subject is still detected or tracked but not aligned: a face gives
        ``FaceFrame(None, box)`` and the caller aligns only the frames it needs (``aligner.align``).
        """
        frame = check_frame(frame)
        scheduled = self._index % self.detect_every == 0
        self._index += 1
        tracked = None if self._tracker is None else follow(self._tracker, frame, self.min_psr)
        if scheduled or tracked is None:
            box = self._detect(frame, tracked)
        else:
            box = self._box = self._last_seen = tracked
        if box is None:
            return FaceFrame(None, None)
        if not align:
            return FaceFrame(None, box)
        crop, _ = self.aligner.align(frame, box)
        return FaceFrame(crop, box)

    def process(self, frames: Iterable[np.ndarray]) -> Iterator[FaceFrame]:
        """Yield ``(crop, box)`` per frame of one video; both are ``None`` where no face is found."""
        self.reset()
        for frame in frames:
            yield self.step(frame)
