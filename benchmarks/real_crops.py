"""Real aligned face crops from the test videos, made with vafusion's own detector and aligner.

    .venv/bin/python benchmarks/real_crops.py      # -> runs/bench_carry/real_crops.npz (about 1 min)

Every frame of ``../shared/testdata/videos/*.mp4`` goes through ``FaceDetector`` (largest face) and
``FaceAligner`` (ArcFace 112x112 template). The crops are split by frame and video so that no set sees
another's frames: ``bn`` (every 4th frame of the first three videos, to fit a random network's BatchNorm
statistics), ``calib`` (two frames in four of the same videos, to calibrate int8 activations) and
``test`` (the remaining frames of those videos plus every frame of the last video, never calibrated on).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from _common import REPO

from vafusion.face.align import FaceAligner
from vafusion.face.detect import FaceDetector
from vafusion.io.video import iter_frames

VIDEOS = REPO.parent / "shared" / "testdata" / "videos"
CACHE = REPO / "runs" / "bench_carry" / "real_crops.npz"


def make_crops(videos: Path = VIDEOS) -> dict[str, np.ndarray]:
    """``{"crops": (N, 112, 112, 3) uint8, "video": (N,) str, "frame": (N,) int}`` of every detected face."""
    detector, aligner = FaceDetector(), FaceAligner()
    crops, names, frames = [], [], []
    for path in sorted(videos.glob("*.mp4")):
        for fr in iter_frames(path):
            boxes = detector.detect(fr.image)
            if not boxes:
                continue
            crop, _ = aligner.align(fr.image, max(boxes, key=lambda b: b.area))
            crops.append(crop)
            names.append(path.stem)
            frames.append(fr.index)
    return {"crops": np.stack(crops), "video": np.array(names), "frame": np.array(frames)}


def splits(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Disjoint ``bn`` / ``calib`` / ``test`` crop sets (see the module docstring)."""
    videos = sorted(set(data["video"].tolist()))
    held_out_video = data["video"] == videos[-1]
    phase = data["frame"] % 4
    return {
        "bn": data["crops"][~held_out_video & (phase == 1)],
        "calib": data["crops"][~held_out_video & ((phase == 0) | (phase == 2))],
        "test": data["crops"][held_out_video | (phase == 3)],
    }


def load(cache: Path = CACHE, videos: Path = VIDEOS) -> dict[str, np.ndarray] | None:
    """The split crops, made once and cached; ``None`` when the test videos are absent."""
    if not cache.exists():
        if not videos.is_dir() or not any(videos.glob("*.mp4")):
            return None
        cache.parent.mkdir(parents=True, exist_ok=True)
        data = make_crops(videos)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **data)
        tmp.replace(cache)
    with np.load(cache) as z:
        return splits({k: z[k] for k in z.files})


def main() -> None:
    t0 = time.perf_counter()
    sets = load()
    if sets is None:
        sys.exit(f"no test videos at {VIDEOS}")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    print(f"{sizes} crops in {CACHE} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
