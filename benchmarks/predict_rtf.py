"""Real-time factor of ``vafusion predict`` on a 30 fps 720p clip with audio, split by stage.

Default clip: the real test video ``s32.mp4`` (1280x720, 30 fps, 6 s, AAC 44.1 kHz stereo);
``--loops N`` re-encodes it N times back to back for a longer clip. The model is a finished run (default
``runs/demo``: fusion, six fold models averaged). Prints seconds and milliseconds per frame for

    decode  (video frames to RGB + audio to mono)     detect (dlib HOG every k frames + tracking between)
    align   (5 + 68-point landmarks, ArcFace warp)    encode (face extractor on crops + audio extractors)
    fuse    (every fold model over sliding windows)

and RTF = processing seconds / media seconds (below 1: faster than real time). ``--memory`` also runs the
clip and a 4x longer one in fresh processes and prints their peak resident memory.

    python benchmarks/predict_rtf.py [--run runs/demo] [--video PATH] [--loops 1] [--threads 2] [--memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "testdata" / "videos" / "s32.mp4"
GROUPS = {
    "decode": ("video_decode", "audio_decode"),
    "detect": ("detect", "track"),
    "align": ("align",),
    "encode": ("face_encode", "audio_encode"),
    "fuse": ("fuse",),
}


def looped(src: Path, loops: int, dst: Path) -> Path:
    """``src`` played ``loops`` times in one H.264 + AAC file (same size, rate and audio)."""
    from vafusion.io.video import iter_frames, probe, read_audio

    info = probe(src)
    wave, sr = read_audio(src, sample_rate=None) or (np.zeros(0, np.float32), 44100)
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(info.fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = info.width, info.height, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "20"}
        aus = out.add_stream("aac", rate=sr, layout="mono")
        pts = 0
        for _ in range(loops):
            for frame in iter_frames(src):
                vf = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
                vf.pts = pts
                pts += 1
                for p in vs.encode(vf):
                    out.mux(p)
        for p in vs.encode():
            out.mux(p)
        full = np.tile(wave, loops)
        for s in range(0, full.size, 1024):
            af = av.AudioFrame.from_ndarray(full[None, s : s + 1024], format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = sr, s, Fraction(1, sr)
            for p in aus.encode(af):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    return dst


def measure(run: Path, video: Path, threads: int, repeats: int) -> dict:
    """Load the predictor, predict ``video`` ``repeats`` times; timings of each pass and the load."""
    import torch

    torch.set_num_threads(threads)
    import cv2

    cv2.setNumThreads(threads)
    from vafusion.predict import Predictor

    t0 = time.perf_counter()
    predictor = Predictor.from_run(run)
    load = time.perf_counter() - t0
    passes = []
    for _ in range(repeats):
        res = predictor.run(video)
        vf = res.features
        passes.append(
            {
                "timings": vf.timings,
                "frames": vf.length,
                "media_s": float(vf.times[-1]) + 1.0 / vf.fps if vf.length else 0.0,
                "face": float(res.table["face"].mean()),
            }
        )
    return {
        "load_s": load,
        "folds": len(predictor.models),
        "streams": predictor.streams,
        "passes": passes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def report(result: dict, video: Path) -> None:
    print(
        f"model: {len(result.get('streams', {}))} streams {result['streams']}, {result['folds']} fold models "
        f"averaged; loading took {result['load_s']:.1f} s"
    )
    for k, p in enumerate(result["passes"], 1):
        t, n, media = p["timings"], p["frames"], p["media_s"]
        print(
            f"\npass {k}: {video.name}, {n} frames, {media:.2f} s of media, face found in {100 * p['face']:.0f} %"
        )
        print(f"{'stage':8s} {'seconds':>8s} {'ms/frame':>9s} {'share':>6s}   parts")
        for g, keys in GROUPS.items():
            s = sum(t.get(x, 0.0) for x in keys)
            parts = ", ".join(f"{x} {t.get(x, 0.0):.2f}" for x in keys)
            print(f"{g:8s} {s:8.2f} {1000 * s / n:9.1f} {100 * s / t['total']:5.0f}%   {parts}")
        other = t["total"] - sum(t.get(x, 0.0) for keys in GROUPS.values() for x in keys)
        print(f"{'other':8s} {other:8.2f} {1000 * other / n:9.1f} {100 * other / t['total']:5.0f}%")
        print(
            f"{'total':8s} {t['total']:8.2f} {1000 * t['total'] / n:9.1f}         "
            f"RTF {t['total'] / media:.2f} ({n / t['total']:.1f} frames/s)"
        )
    print(f"\npeak resident memory: {result['peak_rss_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--loops", type=int, default=1, help="play the clip this many times in a row")
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenCV threads (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="prediction passes (the first includes warm-up)")
    ap.add_argument("--memory", action="store_true", help="peak memory of the clip vs a 4x longer one")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video if args.loops <= 1 else looped(args.video, args.loops, Path(tmp) / "looped.mp4")
        if args.json:
            print(json.dumps(measure(args.run, video, args.threads, args.repeats)))
            return 0
        report(measure(args.run, video, args.threads, args.repeats), video)
        if args.memory:
            long = looped(args.video, 4 * max(args.loops, 1), Path(tmp) / "long.mp4")
            for clip in (video, long):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--run",
                        str(args.run),
                        "--video",
                        str(clip),
                        "--threads",
                        str(args.threads),
                        "--repeats",
                        "1",
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                p = r["passes"][0]
                print(
                    f"memory: {p['frames']:5d} frames ({p['media_s']:.0f} s): peak RSS {r['peak_rss_mb']:.0f} MB"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
