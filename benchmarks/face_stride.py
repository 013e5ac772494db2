"""Doing less on the face side: encode every k-th face and interpolate; detect every k-th frame and track.

    .venv/bin/python benchmarks/face_stride.py            # needs runs/demo (make demo)
    .venv/bin/python benchmarks/face_stride.py --quick    # fewer tracked frames

1. Encoding stride (``features.face_stride``): the demo's visual-stream rows encoded at stride 1 (the
   stored ones when the demo was extracted with ``face_stride=1``; else extracted once more at stride 1
   into ``runs/bench_face_stride``) are kept only at the rows ``vafusion.features.timing.anchor_rows``
   picks (every k-th face of each run of frames with a face, plus the run's last) and the rest are
   filled by ``fill_between_anchors`` (linear interpolation), exactly what
   ``face_features`` does with ``face_stride=k``. The trained fold models then score their held-out folds
   (the report's CCC). The demo's visual stream is the landmark stand-in for IResNet (no weights offline).
2. Detection stride (``FaceTrack(detect_every=k)``): frames/s of decode-free tracking on one demo video
   and how far its crops move from detecting on every frame (mean absolute pixel difference).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
from _common import DEMO, DemoEval, Section, demo_ready, load_text, table

from vafusion.config import load_config
from vafusion.data.affwild2 import scan
from vafusion.data.extract import extract
from vafusion.face.track import FaceTrack
from vafusion.features.extractors import FeaturesConfig
from vafusion.features.store import feature_path, read_features
from vafusion.features.timing import anchor_rows, fill_between_anchors
from vafusion.io.video import iter_frames

STRIDES = (1, 2, 3, 5)
TOLERANCE = 0.002


def stride_one_rows(ev: DemoEval, role: str = "visual") -> tuple[dict[str, tuple], str]:
    """The face stream of every demo sequence encoded at stride 1, and where the rows came from."""
    name = ev.streams[role]
    first = read_features(feature_path(DEMO / "features", name, next(iter(ev.seqs))))
    store, source = DEMO / "features", f"the demo's stored `{name}` rows (extracted at stride 1)"
    if int(first.meta.get("params", {}).get("face_stride", 1)) != 1:
        store = DEMO.parent / "bench_face_stride" / "features"
        cfg = load_config(DEMO / "config.yaml", ["features.face_stride=1"]).features
        extract(scan(DEMO / "data"), store, cfg, [name], progress=False)
        where = store.relative_to(DEMO.parent.parent)
        source = f"`{name}` re-extracted at stride 1 into `{where}` (the demo's store used a stride)"
    rows = {}
    for n, seq in ev.seqs.items():
        ff = read_features(feature_path(store, name, n))
        rows[n] = (ff.features[: seq.length], ff.valid[: seq.length])
    return rows, source


def strided(k: int, rows: dict[str, tuple], role: str = "visual"):
    """Sequence transform: the face stream as ``face_stride=k`` extraction would produce it."""

    def transform(seq):
        feats, present = rows[seq.name]
        encoded = np.zeros(len(present), bool)
        encoded[anchor_rows(present, k)] = True
        feats, valid = fill_between_anchors(feats, encoded, present)
        return replace(seq, feats={**seq.feats, role: feats}, valid={**seq.valid, role: valid})

    return transform


def encoded_fraction(ev: DemoEval, k: int) -> float:
    """Share of the frames with a face that are actually encoded at stride ``k``."""
    have = sum(int(s.valid["visual"].sum()) for s in ev.seqs.values())
    done = sum(len(anchor_rows(s.valid["visual"], k)) for s in ev.seqs.values())
    return done / have


def tracking(frames_limit: int) -> tuple[list[list[object]], dict]:
    """FaceTrack speed and crop agreement per ``detect_every`` on the first demo video."""
    video = sorted((DEMO / "data" / "videos").rglob("*.mp4"))[0]
    frames = []
    for fr in iter_frames(video):
        frames.append(fr.image)
        if len(frames) >= frames_limit:
            break
    crops: dict[int, list] = {}
    rows, data = [], {}
    for k in STRIDES:
        track = FaceTrack(detect_every=k)
        t0 = time.perf_counter()
        crops[k] = [f.crop for f in track.process(frames)]
        fps = len(frames) / (time.perf_counter() - t0)
        both = [(a, b) for a, b in zip(crops[1], crops[k], strict=True) if a is not None and b is not None]
        diff = (
            float(np.mean([np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() for a, b in both]))
            if both
            else None
        )
        found = sum(c is not None for c in crops[k]) / len(frames)
        rows.append(
            [k, f"{fps:.1f}", f"{100 * found:.0f} %", "—" if diff is None else f"{diff:.2f}", load_text()]
        )
        data[k] = {"frames_per_s": fps, "found": found, "crop_mad": diff}
    return rows, {"video": video.name, "frames": len(frames), "per_k": data}


def run(quick: bool = False) -> Section:
    """CCC per encoding stride for the fusion and visual models, and FaceTrack per detection stride."""
    why = demo_ready()
    if why:
        return Section("Doing less: face stride", f"Skipped: {why}.")
    ev = DemoEval()
    rows_one, source = stride_one_rows(ev)
    scores = {m: {k: ev.score(m, strided(k, rows_one)) for k in STRIDES} for m in ("fusion", "visual")}
    rows = []
    for k in STRIDES:
        row = [k, f"{100 * encoded_fraction(ev, k):.0f} %"]
        for m in ("fusion", "visual"):
            s = scores[m][k]
            row += [f"{s['P']:.4f}", f"{s['P'] - scores[m][1]['P']:+.4f}"]
        rows.append(row)
    ok = [k for k in STRIDES if all(scores[m][1]["P"] - scores[m][k]["P"] <= TOLERANCE for m in scores)]
    pick = max(ok)
    default = FeaturesConfig().face_stride
    cost = {m: scores[m][1]["P"] - scores[m][default]["P"] for m in scores} if default in STRIDES else {}
    said = ", ".join(f"{m} {c:.4f} P" for m, c in cost.items())
    track_rows, track = tracking(90 if quick else 150)
    md = [
        f"Encoding stride, CCC on the held-out folds of `runs/demo` (mean over {len(ev.fold_ids)} folds; "
        f"P = mean of valence and arousal CCC; Δ vs k = 1; the demo's trained models, visual rows from "
        f"{source}):",
        "",
        table(["k", "faces encoded", "fusion P", "Δ fusion", "visual P", "Δ visual"], rows),
        "",
        f"Largest stride costing at most {TOLERANCE} P on both models: k = {pick}. The default "
        f"`features.face_stride` = {default} costs {said or 'n/a'} (goal: at most 0.01 P, for `predict` "
        f"faster than real time on AVX2) ({load_text()} when done).",
        "",
        f"Detection stride, `FaceTrack(detect_every=k)` on {track['frames']} frames of `{track['video']}` "
        "(decoded beforehand; crop difference vs k = 1 in grey levels):",
        "",
        table(
            ["detect_every", "frames/s", "frames with a face", "mean |crop − crop(k=1)|", "load"],
            track_rows,
        ),
    ]
    data = {
        "scores": {m: {str(k): v for k, v in s.items()} for m, s in scores.items()},
        "encoded_fraction": {str(k): encoded_fraction(ev, k) for k in STRIDES},
        "pick": pick,
        "default": default,
        "default_cost": cost,
        "tolerance": TOLERANCE,
        "tracking": track,
    }
    return Section("Doing less: face stride", "\n".join(md), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="track 90 frames instead of 150")
    print(run(parser.parse_args().quick).markdown)


if __name__ == "__main__":
    main()
