"""Peak memory vs video length: audio features and decoding + face tracking on long synthetic media.

    .venv/bin/python benchmarks/memory.py                     # audio 1/10/60 min, video 1/10 min
    .venv/bin/python benchmarks/memory.py --video-minutes 1 10 60
    .venv/bin/python benchmarks/memory.py --quick             # audio 1/10 min, video 1/5 min

Every case runs in a fresh process and reports its peak resident set (``VmHWM``) and the resident set
just before the measured work started (imports and the input already in memory), so growth = what the
work itself needed.

* audio: ``LogMelExtractor.at_times`` on an L-minute 44.1 kHz mono waveform (the rate ``read_audio``
  returns for typical video) at 30 fps frame times; the input itself is 10.6 MB per minute and the
  output (128 float32 per frame) 0.92 MB per minute;
* video: ``iter_frames`` + ``FaceTrack(detect_every=5)`` over an L-minute 30 fps clip of 64x48 noise
  (tiny frames keep the clip cheap to make; no face is found, so the detector runs on every frame).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import Section, load_text, table

FPS = 30
SR = 44100


def _status_mb(key: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    """Peak RSS of this process image (``VmHWM``; ``ru_maxrss`` survives exec and reports the parent's)."""
    return _status_mb("VmHWM")


def child_audio(minutes: float) -> dict:
    from vafusion.features.extractors import LogMelExtractor

    n = int(minutes * 60 * SR)
    wave = (np.random.default_rng(0).standard_normal(n) * 0.1).astype(np.float32)
    times = np.arange(int(minutes * 60 * FPS)) / FPS
    ext = LogMelExtractor()
    before = _rss_mb()
    t0 = time.perf_counter()
    feats, valid = ext.at_times(wave, SR, times)
    return {
        "before_mb": before,
        "peak_mb": _peak_mb(),
        "seconds": time.perf_counter() - t0,
        "rows": len(feats),
        "input_mb": wave.nbytes / 2**20,
        "output_mb": feats.nbytes / 2**20,
    }


def make_clip(path: Path, minutes: float) -> None:
    """An L-minute 30 fps 64x48 H.264 clip of random noise, written frame by frame."""
    import av

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (16, 48, 64, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        for i in range(int(minutes * 60 * FPS)):
            for p in vs.encode(av.VideoFrame.from_ndarray(noise[i % 16], format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)


def child_video(path: str) -> dict:
    from vafusion.io.face import FaceTrack
    from vafusion.io.video import iter_frames

    track = FaceTrack(detect_every=5)
    before = _rss_mb()
    t0 = time.perf_counter()
    n = found = 0
    for face in track.process(fr.image for fr in iter_frames(path)):
        n += 1
        found += face.crop is not None
    return {"before_mb": before, "peak_mb": _peak_mb(), "seconds": time.perf_counter() - t0, "frames": n}


def _spawn(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(
    audio_minutes: tuple[float, ...] = (1, 10, 60), video_minutes: tuple[float, ...] = (1, 10)
) -> Section:
    rows, data = [], {"audio": {}, "video": {}}
    for m in audio_minutes:
        r = _spawn("audio", str(m))
        data["audio"][m] = r
        rows.append(
            [
                f"audio features (LogMel, 44.1 kHz), {m:g} min",
                f"{r['before_mb']:.0f}",
                f"{r['peak_mb']:.0f}",
                f"{r['peak_mb'] - r['before_mb']:.0f}",
                f"{r['input_mb']:.0f} in + {r['output_mb']:.0f} out",
                f"{r['seconds']:.1f}",
                load_text(),
            ]
        )
    with tempfile.TemporaryDirectory() as tmp:
        for m in video_minutes:
            clip = Path(tmp) / f"clip{m:g}.mp4"
            t0 = time.perf_counter()
            make_clip(clip, m)
            made = time.perf_counter() - t0
            r = _spawn("video", str(clip))
            r["make_seconds"] = made
            data["video"][m] = r
            rows.append(
                [
                    f"decode + FaceTrack, {m:g} min ({r['frames']} frames)",
                    f"{r['before_mb']:.0f}",
                    f"{r['peak_mb']:.0f}",
                    f"{r['peak_mb'] - r['before_mb']:.0f}",
                    "—",
                    f"{r['seconds']:.1f}",
                    load_text(),
                ]
            )
            clip.unlink()

    def slope(part: dict) -> str:
        ms = sorted(part)
        if len(ms) < 2:
            return "n/a"
        a, b = ms[0], ms[-1]
        per_min = (part[b]["peak_mb"] - part[a]["peak_mb"]) / (b - a)
        return f"{per_min:.1f} MB per minute ({a:g} → {b:g} min)"

    md = [
        "Peak resident memory per case, each in a fresh process (MB):",
        "",
        table(["case", "RSS before work", "peak RSS", "growth", "inherent data", "seconds", "load"], rows),
        "",
        f"Trend of peak RSS: audio {slope(data['audio'])}; decode + tracking {slope(data['video'])}.",
    ]
    return Section("Peak memory vs video length", "\n".join(md), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="audio 1/10 min, video 1/5 min")
    parser.add_argument("--audio-minutes", type=float, nargs="+", default=None)
    parser.add_argument("--video-minutes", type=float, nargs="+", default=None)
    args = parser.parse_args()
    if args.child:
        kind, arg = args.child
        print(json.dumps(child_audio(float(arg)) if kind == "audio" else child_video(arg)))
        return
    audio = tuple(args.audio_minutes or ((1, 10) if args.quick else (1, 10, 60)))
    video = tuple(args.video_minutes or ((1, 5) if args.quick else (1, 10)))
    print(run(audio, video).markdown)


if __name__ == "__main__":
    main()
