"""Face finding: recall by face size, roll, light and canvas, and the cost per frame (docs/predict.md).

Two parts, both on real clips (``../shared/testdata/videos``) re-rendered with known face boxes
(:mod:`vafusion.data.faceset`, :mod:`vafusion.data.scenes`):

1. **Single frames**: the labelled set (``face_set``: faces of 40-140 px on canvases from 640x360 to
   1920x1080, rolled by up to +-40 deg, darkened with sensor noise, and pairs of faces) through
   ``FaceDetector`` with the coarse pass alone (what ``vafusion predict`` did before the fine pass) and
   with today's defaults: recall per cell, wrong boxes per frame, time per ``detect`` call.
2. **Video**: consecutive frames of each clip at 720p and at 48-90 px, rolled, dark, and 720p frames
   without anyone, through ``FaceTrack`` (``--detect-every 5``): share of frames whose box is on the face,
   and time per frame. ``--before DIR`` also times the tracker of another checkout of vafusion (e.g.
   ``git worktree add /tmp/before d55e173``) on the same frames, in a subprocess per round, interleaved
   with today's: the cost ratio the issue bounds at 1.3x.

    python benchmarks/face_finding.py                     # about 6 min on 2 cores
    python benchmarks/face_finding.py --quick             # about 1 min
    python benchmarks/face_finding.py --before /tmp/before --rounds 3 --part video
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import REPO, Section, load_text, table

from vafusion.data.faceset import SetSpec, face_set, match_faces
from vafusion.data.scenes import face_sequence
from vafusion.face.detect import FaceDetector
from vafusion.face.track import FaceTrack
from vafusion.io.audio import write_clip

VIDEOS = REPO.parent / "shared" / "testdata" / "videos"
SEQUENCES = {  # name: (clip, canvas, face height, roll, dark)
    "720p as recorded (s32)": ("s32", None, None, 0.0, False),
    "full body 720x1080, 90 px": ("d11", (720, 1080), 90, 0.0, False),
    "720p, 48 px": ("d12", (1280, 720), 48, 0.0, False),
    "720p, 60 px": ("s32", (1280, 720), 60, 0.0, False),
    "1080p, 56 px": ("s29", (1920, 1080), 56, 0.0, False),
    "720p, 64 px, roll +30": ("d11", (1280, 720), 64, 30.0, False),
    "720p, 64 px, roll -30": ("s29", (1280, 720), 64, -30.0, False),
    "720p, 100 px, dark": ("d12", (1280, 720), 100, 0.0, True),
    "720p, no face": (None, (1280, 720), None, 0.0, False),
}


def single_frames(per_clip: int) -> tuple[str, dict]:
    """Recall and cost of the coarse pass alone vs today's detector on the labelled set."""
    samples = list(face_set(sorted(VIDEOS.glob("*.mp4")), SetSpec(per_clip=per_clip)))
    detectors = {"coarse pass only (before)": FaceDetector(min_face=None), "vafusion": FaceDetector()}
    hits: dict[str, dict[str, list[bool]]] = {k: defaultdict(list) for k in detectors}
    wrong = dict.fromkeys(detectors, 0)
    cost: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in detectors}
    for s in samples:
        for name, det in detectors.items():
            t0 = time.perf_counter()
            boxes = det.detect(s.image)
            cost[name][f"{s.image.shape[1]}x{s.image.shape[0]}"].append(time.perf_counter() - t0)
            hit, extra = match_faces(boxes, [f.box for f in s.faces])
            wrong[name] += extra
            for face, ok in zip(s.faces, hit, strict=True):
                height = round(face.box.height / 8) * 8
                hits[name][f"{s.variant} {_band(height)}"].append(ok)
                if s.variant == "roll":
                    hits[name][f"roll {face.roll:+.0f}"].append(ok)
    cells = sorted({c for h in hits.values() for c in h}, key=_cell_order)
    rows = [[c, len(hits["vafusion"][c])] + [_pct(hits[k][c]) for k in detectors] for c in cells]
    rows.append(
        ["wrong boxes per frame", len(samples)] + [f"{wrong[k] / len(samples):.3f}" for k in detectors]
    )
    sizes = sorted({sz for c in cost.values() for sz in c}, key=lambda s: int(s.split("x")[0]))
    rows += [
        [f"ms per detect(), {sz}", len(cost["vafusion"][sz])]
        + [f"{1000 * np.mean(cost[k][sz]):.0f}" for k in detectors]
        for sz in sizes
    ]
    md = table(["faces", "n", *detectors], rows)
    data = {k: {c: float(np.mean(v)) for c, v in hits[k].items()} for k in detectors}
    return md, {"recall": data, "wrong_per_frame": {k: wrong[k] / len(samples) for k in detectors}}


def _band(height: float) -> str:
    return f"{int(height)} px" if height < 160 else ">= 160 px"


def _cell_order(cell: str) -> tuple:
    variant, _, rest = cell.partition(" ")
    num = "".join(ch for ch in rest if ch in "+-0123456789") or "999"
    return (["native", "height", "roll", "dark", "pair"].index(variant), int(num))


def _pct(values: list[bool]) -> str:
    return f"{100 * np.mean(values):.0f}" if values else "-"


def render_sequences(length: int, folder: Path) -> dict[str, tuple[list, Path]]:
    """Each sequence's labelled frames, also written as a near-lossless MP4 for the ``--before`` child."""
    out = {}
    for name, (clip, canvas, height, roll, dark) in SEQUENCES.items():
        if clip is None:
            rng = np.random.default_rng(0)
            base = rng.integers(60, 200, (canvas[1] // 16, canvas[0] // 16, 3)).astype(np.uint8)
            image = np.kron(base, np.ones((16, 16, 1), np.uint8))
            frames = [type("S", (), {"image": image, "faces": ()})() for _ in range(length)]
        else:
            frames = face_sequence(
                VIDEOS / f"{clip}.mp4", length, canvas, height, roll=roll, dark=dark, seed=2
            )
        path = folder / f"seq{len(out)}.mp4"
        write_clip(path, [f.image for f in frames], 25, crf=10)
        out[name] = (frames, path)
    return out


CHILD = """
import json, sys, time
import av
try:
    from vafusion.face.track import FaceTrack
    make = lambda: FaceTrack(detect_every=5)
except ImportError:
    from vafusion.io.face import FaceAligner, FaceTrack
    make = lambda: FaceTrack(FaceAligner(), detect_every=5)
out = {}
with av.open(sys.argv[1]) as c:  # load the models before timing
    first = next(c.decode(video=0)).to_ndarray(format="rgb24")
make().step(first, align=False)
for path in sys.argv[1:]:
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    track = make()
    t0 = time.perf_counter()
    for f in frames:
        track.step(f, align=False)
    out[path] = (time.perf_counter() - t0) / len(frames)
print(json.dumps(out))
"""


def child_times(src: Path, paths: list[Path]) -> dict[str, float]:
    """Seconds per frame of the tracker in checkout ``src`` on each MP4 (decoded before timing)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def video(length: int, rounds: int, before: Path | None) -> tuple[str, dict]:
    """Share of frames tracked and time per frame of FaceTrack on each sequence (and of ``before``'s)."""
    with tempfile.TemporaryDirectory() as tmp:
        seqs = render_sequences(length, Path(tmp))
        found = {name: _tracked(frames) for name, (frames, _) in seqs.items()}
        paths = [p for _, p in seqs.values()]
        times: dict[str, list[float]] = {"now": [], "before": []}
        per: dict[str, dict[str, list[float]]] = {"now": defaultdict(list), "before": defaultdict(list)}
        for _ in range(rounds):
            for who, src in (("before", before), ("now", REPO)):
                if src is None:
                    continue
                got = child_times(src, paths)
                for name, (_, p) in seqs.items():
                    per[who][name].append(got[str(p)])
                times[who].append(float(np.mean(list(got.values()))))
    rows = []
    for name in seqs:
        now = 1000 * np.median(per["now"][name])
        row = [name, _pct(found[name]) if found[name] else "-", f"{now:.1f}"]
        if before is not None:
            old = 1000 * np.median(per["before"][name])
            row += [f"{old:.1f}", f"{now / old:.2f}"]
        rows.append(row)
    header = ["frames", "face found, %", "ms/frame"] + (["ms/frame before", "ratio"] if before else [])
    data = {"found": {k: float(np.mean(v)) if v else None for k, v in found.items()}, "ms": per}
    return table(header, rows), data


def _tracked(frames: list) -> list[bool]:
    track = FaceTrack(detect_every=5)
    out = []
    for s in frames:
        box = track.step(s.image, align=False).box
        if s.faces:
            out.append(box is not None and match_faces([box], [s.faces[0].box])[0][0])
    return out


def run(quick: bool = False, rounds: int = 2, before: Path | None = None, parts: str = "all") -> Section:
    """The parts asked for (``frames``, ``video`` or ``all``), as one section of RESULTS.md."""
    md, data = [], {}
    if parts in ("frames", "all"):
        load0 = load_text()
        frames_md, data["frames"] = single_frames(3 if quick else 10)
        md.append(f"Single frames (labelled set, recall %; 'n' faces per cell; {load0}):\n\n{frames_md}")
    if parts in ("video", "all"):
        video_md, data["video"] = video(30 if quick else 90, 1 if quick else rounds, before)
        md.append(
            f"Video (`FaceTrack`, detect every 5th frame, one process per round; {load_text()}):"
            f"\n\n{video_md}"
        )
    return Section("Face finding", "\n\n".join(md), data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 frames per clip and cell, 30-frame sequences")
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds of the video part (default 2)")
    ap.add_argument("--before", type=Path, help="another vafusion checkout to time on the same frames")
    ap.add_argument(
        "--part", choices=["frames", "video", "all"], default="all", help="which part (default all)"
    )
    args = ap.parse_args()
    sec = run(args.quick, args.rounds, args.before, args.part)
    print(f"## {sec.title}\n\n{sec.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
