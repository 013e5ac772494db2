"""Peak memory vs video length: audio features and decoding + face tracking on long synthetic clips.

    .venv/bin/python benchmarks/memory.py     # audio and video 1/10/60 min (4 min idle; make bench)
    .venv/bin/python benchmarks/memory.py --audio-minutes 1 10 --video-minutes 1 10   # 1 min idle
    .venv/bin/python benchmarks/memory.py --quick             # audio and video 1/5 min

Every case runs in a fresh process and reports its peak resident set (``VmHWM``) and the resident set
just before the measured work started (imports, extractors and the frame times already in memory), so
growth = what the work itself needed.

The input is one L-minute MP4 per length: 30 fps 64x48 noise video (tiny frames keep the clip cheap to
make) and a 44.1 kHz mono AAC track of the synthetic corpus's speech-like voice (``synth_voice``, looped).

* audio: ``stream_audio_features`` (what ``vafusion extract`` and ``vafusion predict`` run) with the
  log-mel (per-frame patches, band-statistics encoder) and eGeMAPS extractors at the 30 fps frame times;
  the output it must keep is 614 B per frame (128 + 25 float32 and two flags), 1.05 MB per minute;
* video: ``iter_frames`` + ``FaceTrack(detect_every=5)`` over the same clip (no face is found, so the
  detector runs on every frame).

``make bench`` (``run_all.py``) runs all three lengths: the 60-minute cases take about 3 minutes on the idle
2-core EPYC (making the clip 50 s, audio 80 s, video 58 s); on a busy machine that can triple.
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


def child_audio(path: str, minutes: float) -> dict:
    from vafusion.features.audio_stream import stream_audio_features
    from vafusion.features.extractors import EGeMAPSExtractor, LogMelExtractor

    extractors = [LogMelExtractor(), EGeMAPSExtractor()]
    times = np.arange(int(round(minutes * 60 * FPS))) / FPS
    before = _rss_mb()
    t0 = time.perf_counter()
    got = stream_audio_features(path, extractors, times)
    return {
        "before_mb": before,
        "peak_mb": _peak_mb(),
        "seconds": time.perf_counter() - t0,
        "decode_s": got.decode_s,
        "encode_s": got.encode_s,
        "audio_s": got.seconds,
        "rows": len(times),
        "valid_frac": [float(v.mean()) for v in got.valid],
        "output_mb": sum(f.nbytes for f in got.feats + got.valid) / 2**20,
    }


def _voice_block(seconds: float = 10.0) -> np.ndarray:
    """Ten seconds of the synthetic corpus's speech-like voice at 44.1 kHz (mono float32), looped by the
    clip."""
    from vafusion.data.synth import synth_voice

    t = np.arange(int(round(seconds * FPS))) / FPS
    return synth_voice(0.5 * np.sin(0.4 * t), np.sin(0.7 * t), FPS, SR, np.random.default_rng(0))


def make_clip(path: Path, minutes: float) -> None:
    """An L-minute 30 fps 64x48 H.264 clip of noise with a 44.1 kHz AAC track, written piece by piece."""
    import av

    from vafusion.io.audio import encode_audio

    noise = np.random.default_rng(0).integers(0, 256, (16, 48, 64, 3), dtype=np.uint8)
    block = _voice_block()
    n_frames, n_samples = int(round(minutes * 60 * FPS)), int(round(minutes * 60 * SR))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        aus = out.add_stream("aac", rate=SR, layout="mono")
        done = 0  # audio samples written; kept just ahead of the video so the muxer interleaves
        for i in range(n_frames):
            for p in vs.encode(av.VideoFrame.from_ndarray(noise[i % 16], format="rgb24")):
                out.mux(p)
            while done < min(n_samples, (i + 1) * SR // FPS + 1024):
                k = done % block.size
                piece = block[k : k + min(1024, n_samples - done, block.size - k)]
                for p in encode_audio(aus, piece, SR, start=done, flush=False):
                    out.mux(p)
                done += piece.size
        for stream in (vs, aus):
            for p in stream.encode():
                out.mux(p)


def child_video(path: str) -> dict:
    from vafusion.face.track import FaceTrack
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
    audio_minutes: tuple[float, ...] = (1, 10, 60), video_minutes: tuple[float, ...] = (1, 10, 60)
) -> Section:
    rows, data = [], {"audio": {}, "video": {}, "make_seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for m in sorted(set(audio_minutes) | set(video_minutes)):
            clip = Path(tmp) / f"clip{m:g}.mp4"
            t0 = time.perf_counter()
            make_clip(clip, m)
            data["make_seconds"][m] = time.perf_counter() - t0
            if m in audio_minutes:
                r = data["audio"][m] = _spawn("audio", str(clip), str(m))
                rows.append(
                    [
                        f"audio features (log-mel + eGeMAPS, 44.1 kHz), {m:g} min",
                        f"{r['before_mb']:.0f}",
                        f"{r['peak_mb']:.0f}",
                        f"{r['peak_mb'] - r['before_mb']:.0f}",
                        f"{r['output_mb']:.1f} out",
                        f"{r['seconds']:.1f} ({r['decode_s']:.1f} decode)",
                        load_text(),
                    ]
                )
            if m in video_minutes:
                r = data["video"][m] = _spawn("video", str(clip))
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
        growth = (
            (part[b]["peak_mb"] - part[b]["before_mb"]) - (part[a]["peak_mb"] - part[a]["before_mb"])
        ) / (b - a)
        return f"peak {per_min:.2f} MB per minute, growth {growth:.2f} MB per minute ({a:g} → {b:g} min)"

    md = [
        "Peak resident memory per case, each in a fresh process (MB); one synthetic clip per length "
        "(30 fps 64x48 video, 44.1 kHz AAC audio):",
        "",
        table(["case", "RSS before work", "peak RSS", "growth", "inherent data", "seconds", "load"], rows),
        "",
        f"Trend: audio {slope(data['audio'])}; decode + tracking {slope(data['video'])}. "
        "The audio output itself is 1.05 MB per minute.",
    ]
    return Section("Peak memory vs video length", "\n".join(md), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="audio and video 1/5 min")
    parser.add_argument("--audio-minutes", type=float, nargs="+", default=None)
    parser.add_argument("--video-minutes", type=float, nargs="+", default=None)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        print(json.dumps(child_audio(rest[0], float(rest[1])) if kind == "audio" else child_video(rest[0])))
        return
    audio = tuple(args.audio_minutes or ((1, 5) if args.quick else (1, 10, 60)))
    video = tuple(args.video_minutes or ((1, 5) if args.quick else (1, 10, 60)))
    t0 = time.perf_counter()
    section = run(audio, video)
    print(section.markdown)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
