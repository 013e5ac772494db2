"""Finding faces as small as 48 px, rolled, dark, in frames of any size (issue 14), on a labelled set
rendered from the real clips, and following them through time."""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import pytest

from tests.helpers import SHARED_VIDEOS
from vafusion.data.faceset import SetSpec, face_set, match_faces
from vafusion.data.scenes import face_sequence
from vafusion.face.detect import Box, FaceDetector
from vafusion.face.track import FaceTrack

pytestmark = pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason="real test videos not found")
CLIPS = sorted(SHARED_VIDEOS.glob("*.mp4"))


@pytest.fixture(scope="module")
def labelled() -> list:
    """Faces of 48, 64 and 100 px on four canvas sizes, rolled by +-30 deg, and dark with sensor noise."""
    spec = SetSpec(
        heights=(48, 64, 100),
        rolls=(-30, 30),
        roll_heights=(48, 64, 100),
        dark_heights=(100, 140, -1),
        per_clip=3,
        variants=("height", "roll", "dark"),
        truth_step=10,
        seed=3,
    )
    return list(face_set(CLIPS, spec))


def recall(detector: FaceDetector, samples: list) -> dict[str, float]:
    """Share of true faces found, per variant."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        hit, _ = match_faces(detector.detect(s.image), [f.box for f in s.faces])
        hits[s.variant] += hit
    return {v: float(np.mean(h)) for v, h in hits.items()}


def test_faces_from_48_px_rolled_30_deg_and_dark_are_found(labelled):
    assert {s.variant for s in labelled} == {"height", "roll", "dark"}
    found = recall(FaceDetector(), labelled)
    assert found["height"] >= 0.95 and found["dark"] >= 0.95, found
    assert found["roll"] >= 0.85, found  # one frame alone; a track also re-detects turned by +-30 deg
    # the set is hard for the coarse pass alone (the detector before the fine pass existed)
    assert recall(FaceDetector(min_face=None), labelled)["height"] < 0.6


def test_detector_returns_boxes_in_the_original_frame_and_finds_nothing_in_an_empty_one(labelled):
    detector = FaceDetector()
    small = next(s for s in labelled if s.variant == "height" and s.params["height"] == 48)
    (box,) = detector.detect(small.image)
    assert abs(box.height - small.faces[0].box.height) < 0.25 * small.faces[0].box.height
    assert detector.detect(np.full((720, 1280, 3), 110, np.uint8)) == []


def tracked_share(samples: list, track: FaceTrack) -> float:
    """Share of the frames with a true face in which the track's box matches it."""
    track.reset()
    hits = []
    for s in samples:
        box = track.step(s.image, align=False).box
        if s.faces:
            hits.append(box is not None and match_faces([box], [s.faces[0].box])[0][0])
    return float(np.mean(hits))


@pytest.mark.parametrize(
    ("clip", "canvas", "height", "roll", "dark"),
    [
        ("d11", (720, 1080), 90, 0.0, False),  # a full-body portrait frame: a frontal face ~90 px tall
        ("s32", (1280, 720), 55, 0.0, False),  # a person far from the camera in a 720p frame
        ("d12", (1280, 720), 65, 0.0, False),
        ("s29", (1920, 1080), 48, 0.0, False),
        ("d11", (1280, 720), 56, 30.0, False),
        ("d12", None, None, 25.0, False),  # tilted and in low light, at the size recorded: kept at 100 %
        ("s32", None, None, 0.0, True),
    ],
)
def test_track_follows_small_tilted_and_dark_faces_in_nine_frames_of_ten(clip, canvas, height, roll, dark):
    frames = face_sequence(
        SHARED_VIDEOS / f"{clip}.mp4", 30, canvas, height, roll=roll, dark=dark, seed=1, truth_step=2
    )
    share = tracked_share(frames, FaceTrack(FaceDetector(), detect_every=5))
    assert share >= (1.0 if canvas is None else 0.9), share


def test_region_redetection_box_does_not_depend_on_the_reference_box():
    """A re-detection's box should be the face's, not follow the box it searched around: a tracker's box
    and the previous frame's detection differ by a few per cent, and before the region scale and corner
    were snapped to the HOG grid that gave another box on 85 % of such pairs (the aligned crop moved)."""
    detector = FaceDetector()
    same = []
    for clip in ("d11", "s32"):
        for sample in face_sequence(SHARED_VIDEOS / f"{clip}.mp4", 4, None, None, seed=1, truth_step=2):
            ref = detector.detect(sample.image)[0]
            cx, cy = ref.center
            boxes = []
            for k, dx, dy in itertools.product((0.98, 1.0, 1.02), (-1, 0, 1), (-1, 0, 1)):
                hw, hh = ref.width * k / 2, ref.height * k / 2
                found = detector.detect_region(
                    sample.image, Box(cx - hw + dx, cy - hh + dy, cx + hw + dx, cy + hh + dy)
                )
                boxes.append(found[0])
            same += [b == boxes[13] for b in boxes]  # boxes[13]: the unperturbed reference
    assert np.mean(same) >= 0.6, np.mean(same)
