"""Real-time factor of ``vafusion predict`` on a 30 fps 720p clip with audio, split by stage.

Default clip: the real test video ``s32.mp4`` (1280x720, 30 fps, 6 s, AAC 44.1 kHz stereo);
``--loops N`` re-encodes it N times back to back for a longer clip. The model is a finished run (default
``runs/demo``: fusion, six fold models averaged). Prints seconds and milliseconds per frame for

    decode  (video frames to RGB + audio to mono)     detect (dlib HOG every k frames + tracking between)
    align   (5 + 68-point landmarks, ArcFace warp)    encode (face extractor on crops + audio extractors)
    fuse    (every fold model over sliding windows)

and RTF = processing seconds / media seconds (below 1: faster than real time). ``--memory`` also runs the
clip and a 4x longer one in fresh processes and prints their peak resident memory.

``--iresnet`` times the paper's visual front end instead of the demo's landmark stand-in: a timing run is
built next to the demo run with a fixed-seed IResNet-50 (BatchNorm statistics fitted on demo crops, so its
activations have a trained network's scale) and the demo's fold models widened to 512-d face features,
with random weights (speed does not depend on values). ``--strides 1,2`` times each
``features.face_stride`` side by side, in interleaved passes. ``make bench`` runs the section :func:`run`:
the demo run, and the IResNet-50 run at stride 1 and at the default.

    python benchmarks/predict_rtf.py [--run runs/demo] [--video PATH] [--loops 1] [--threads 2] [--memory]
    python benchmarks/predict_rtf.py --iresnet --strides 1,2
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
import cv2
import numpy as np
import torch
import yaml
from _common import DEMO, Section, demo_ready, load_text, table
from face_encoding import demo_crops, reference_net

from vafusion.config import load_config, to_dict
from vafusion.features.extractors import FeaturesConfig
from vafusion.inference.predictor import Predictor
from vafusion.models.checkpoint import Checkpoint
from vafusion.models.fusion import BranchSpec, FusionNet
from vafusion.models.normaliser import Normaliser
from vafusion.weights import load_checkpoint, save_checkpoint

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
    from vafusion.io.audio import encode_audio
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
        for p in encode_audio(aus, np.tile(wave, loops), sr):
            out.mux(p)
    return dst


def measure(
    run: Path, video: Path, threads: int, repeats: int, strides: tuple[int | None, ...] = (None,)
) -> dict:
    """Load one predictor per face stride (``None``: the run's own), predict ``video`` ``repeats`` times with
    each in interleaved order; timings of each pass and of the loads."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    predictors, loads = {}, {}
    for k in strides:
        t0 = time.perf_counter()
        predictors[k] = Predictor.from_run(
            run, feature_overrides=[] if k is None else [f"features.face_stride={k}"]
        )
        loads[k] = time.perf_counter() - t0
    passes: dict = {k: [] for k in strides}
    for _ in range(repeats):
        for k, predictor in predictors.items():
            res = predictor.predict_file(video)
            vf = res.features
            passes[k].append(
                {
                    "timings": vf.timings,
                    "frames": vf.length,
                    "media_s": float(vf.times[-1]) + 1.0 / vf.fps if vf.length else 0.0,
                    "face": float(res.table["face"].mean()),
                    "face_stride": int(predictor.features_config.face_stride),
                }
            )
    first = predictors[strides[0]]
    return {
        "load_s": loads[strides[0]],
        "folds": len(first.bundle.folds),
        "streams": first.streams,
        "passes": passes[strides[0]],
        "by_stride": {str(k): passes[k] for k in strides},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def iresnet_run(demo: Path, dst: Path, seed: int = 0) -> Path:
    """A timing run with the paper's visual front end (see the module docstring); returns ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    crops, _ = demo_crops(64, seed)
    weights = dst / "iresnet50_fixed_seed.pth"
    torch.save(reference_net(crops, "iresnet50", seed).state_dict(), weights)
    raw = yaml.safe_load((demo / "config.yaml").read_text())
    raw.setdefault("features", {}).update(
        visual="iresnet", iresnet_arch="iresnet50", iresnet_weights=str(weights)
    )
    (dst / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(dst / "config.yaml")
    for path in sorted((demo / "models" / "fusion").glob("fold*.pt")):
        old = load_checkpoint(path)
        norm = old.normaliser
        specs = [BranchSpec(b.name, 512 if b.name == "visual" else b.dim) for b in old.net.specs]
        torch.manual_seed(seed)
        net = FusionNet(old.net.cfg, specs).eval()
        mean = {**norm.mean, "visual": np.zeros(512, np.float32)}
        std = {**norm.std, "visual": np.ones(512, np.float32)}
        out = dst / "models" / "fusion" / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        # the visual stream's training features were the landmarks, not these: recorded for the audio only
        features = {r: f for r, f in old.features.items() if r != "visual"}
        ckpt = Checkpoint(
            net,
            Normaliser(mean, std),
            {**old.streams, "visual": "iresnet"},
            model=old.model,
            fps=old.fps,
            window=old.window,
            hop=old.hop,
            features=features,
            config=to_dict(cfg),
            extra=old.extra,
        )
        save_checkpoint(out, ckpt)
    return dst


def stage_row(label: str, p: dict) -> list[str]:
    """One table row: stage seconds, total, RTF and frames/s of one prediction pass."""
    t, n, media = p["timings"], p["frames"], p["media_s"]
    stages = [f"{sum(t.get(x, 0.0) for x in keys):.2f}" for keys in GROUPS.values()]
    return [label, *stages, f"{t['total']:.2f}", f"{t['total'] / media:.2f}", f"{n / t['total']:.1f}"]


def run(rounds: int = 2, stride_cost: dict | None = None) -> Section:
    """``make bench`` section: RTF of the demo run and of the IResNet-50 timing run at face stride 1 and
    at the default; ``stride_cost`` (the face-stride section's figures) gives the default's CCC cost."""
    why = demo_ready()
    if why:
        return Section("predict: real-time factor", f"Skipped: {why}.")
    if not DEFAULT_VIDEO.is_file():
        return Section("predict: real-time factor", f"Skipped: {DEFAULT_VIDEO} not found.")
    rows, data = [], {}
    default = FeaturesConfig().face_stride
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "demo run (landmarks stand-in)": (DEMO, (None,)),
            "IResNet-50 (fixed-seed weights)": (iresnet_run(DEMO, Path(tmp) / "iresnet"), (1, default)),
        }
        for label, (run_dir, strides) in cases.items():
            r = measure(run_dir, DEFAULT_VIDEO, 2, rounds, strides)
            data[label] = r
            for passes in r["by_stride"].values():
                best = min(passes, key=lambda p: p["timings"]["total"])
                stride = best["face_stride"]
                rows.append(stage_row(f"{label}, face_stride {stride}", best))
    iresnet = data["IResNet-50 (fixed-seed weights)"]["by_stride"][str(default)]
    best = min(iresnet, key=lambda p: p["timings"]["total"])
    rtf = best["timings"]["total"] / best["media_s"]
    cost = (stride_cost or {}).get("default_cost", {})
    costs = ", ".join(f"{m} {c:.4f} P" for m, c in cost.items())
    said = (
        f"CCC cost of the defaults vs encoding every face: {costs} (demo held-out folds, face-stride section)"
        if cost
        else "CCC cost: see the face-stride section"
    )
    md = [
        f"**predict, IResNet-50, default settings: RTF {rtf:.2f}** (face_stride {default}, detector every "
        f"5th frame; {said})",
        "",
        f"`vafusion predict` on `{DEFAULT_VIDEO.name}` (1280x720, 30 fps, 6 s, AAC), the demo's six fold "
        f"models averaged, 2 threads; best of {rounds} interleaved passes, seconds per stage "
        f"({load_text()} when done):",
        "",
        table(["model", *GROUPS, "total s", "RTF", "frames/s"], rows),
        "",
        "RTF = processing seconds / media seconds (below 1 = faster than real time). The CCC cost of a face "
        'stride is in "Doing less: face stride".',
    ]
    return Section("predict: real-time factor", "\n".join(md), data)


def report(result: dict, video: Path) -> None:
    print(
        f"model: {len(result.get('streams', {}))} streams {result['streams']}, {result['folds']} fold models "
        f"averaged; loading took {result['load_s']:.1f} s"
    )
    for k, p in enumerate(result["passes"], 1):
        t, n, media = p["timings"], p["frames"], p["media_s"]
        print(
            f"\npass {k}: {video.name}, {n} frames, {media:.2f} s of media, "
            f"face found in {100 * p['face']:.0f} %"
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
    ap.add_argument(
        "--iresnet",
        action="store_true",
        help="time a run with IResNet-50 faces built from --run (see above) instead of --run itself",
    )
    ap.add_argument(
        "--strides",
        default="",
        help="comma list of features.face_stride values to time side by side (default: the run's)",
    )
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    strides = tuple(int(x) for x in args.strides.split(",") if x.strip()) or (None,)
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video if args.loops <= 1 else looped(args.video, args.loops, Path(tmp) / "looped.mp4")
        if args.iresnet:
            args.run = iresnet_run(args.run, Path(tmp) / "iresnet")
        if args.json:
            print(json.dumps(measure(args.run, video, args.threads, args.repeats, strides)))
            return 0
        result = measure(args.run, video, args.threads, args.repeats, strides)
        for passes in result["by_stride"].values():
            if len(strides) > 1:
                print(f"\n=== features.face_stride {passes[0]['face_stride']} ===")
            report({**result, "passes": passes}, video)
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
                    f"memory: {p['frames']:5d} frames ({p['media_s']:.0f} s): "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
