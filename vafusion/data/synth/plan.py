"""What the corpus holds: its Aff-Wild2 folder layout and the spec of every video, drawn from the seed.

The plan is decided up front in the parent process, so that worker processes only render and the
corpus is the same, byte for byte, whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
"""Audio sample rate of the corpus (Hz)."""

FPS = 30
"""Frame rate of all videos but the one 25 fps video."""

MANIFEST = "synth_manifest.json"
GENERATOR = "vafusion.data.synth"
"""The manifest's ``generator``: marks a folder as a synthetic corpus that may be overwritten."""

ANNOTATION_DIR = Path("annotations") / "VA_Estimation_Challenge"
VIDEO_DIR = Path("videos") / "batch1"
CROP_DIR = Path("cropped_aligned")

_ROLES = ["two_person", "fps_25", "no_audio", "stereo_audio"]
"""Awkward cases that exactly one video each carries (when there are enough videos)."""


@dataclass(frozen=True)
class VideoSpec:
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


def _draw_cases(videos: int, rng: np.random.Generator) -> tuple[dict[int, str], set[int], set[int], set[int]]:
    """Which video has which role, which have invalid-label spans, no-face spans, and go to validation."""
    order = rng.permutation(videos)
    role_of = {int(order[j]): _ROLES[j] for j in range(min(len(_ROLES), videos))}
    others = [i for i in range(videos) if role_of.get(i) != "two_person"]
    invalid = set(rng.choice(videos, size=max(1, round(0.4 * videos)), replace=False).tolist())
    no_face = (
        set(rng.choice(others, size=min(len(others), max(1, round(videos / 4))), replace=False).tolist())
        if others
        else set()
    )
    n_val = round(videos / 4) if videos >= 2 else 0
    val = set(rng.choice(others, size=min(n_val, len(others)), replace=False).tolist()) if others else set()
    return role_of, invalid, no_face, val


def plan_videos(videos: int, seconds: float, seed: int) -> list[VideoSpec]:
    """Names, split, sizes and awkward cases of every video, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 400), size=videos, replace=False)
    role_of, invalid, no_face, val = _draw_cases(videos, rng)
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
            VideoSpec(
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
