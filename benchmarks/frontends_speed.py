"""Throughput of the exact front ends on this machine (random weights: speed does not depend on values).

    .venv/bin/python benchmarks/frontends_speed.py            # full run, prints a markdown table
    .venv/bin/python benchmarks/frontends_speed.py --quick    # fewer repeats
    python benchmarks/frontends_speed.py --device cuda        # networks on a GPU (front end stays on CPU)

Measures IResNet-50 faces/s (batch 32, fp32, eval, inference mode) and, for VGGish, seconds of audio
processed per second of wall time: the log-mel front end (from 44.1 kHz, which includes resampling, and
from 16 kHz), the network on non-overlapping 0.96 s examples, and the pipeline's use: one example centred
at every frame of a 30 fps video.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from vafusion.features.iresnet import iresnet
from vafusion.features.vggish import VGGish, log_mel_spectrogram, vggish_examples, vggish_frame_examples


def best_of(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Fastest wall time of ``repeats`` calls after one warm-up call (GPU work waited for)."""

    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed repeat instead of three")
    parser.add_argument("--audio-seconds", type=float, default=30.0, help="length of the test signal")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="where the networks run: cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str]] = []

    net = iresnet("iresnet50").eval().to(device)
    faces = torch.randn(32, 3, 112, 112, device=device)
    with torch.inference_mode():
        sec = best_of(lambda: net(faces), repeats, device)
    rows.append(("IResNet-50, batch 32, fp32", f"{32 / sec:.1f} faces/s"))

    dur = args.audio_seconds
    wave44 = rng.uniform(-0.5, 0.5, int(dur * 44100))
    wave16 = rng.uniform(-0.5, 0.5, int(dur * 16000))
    cpu = torch.device("cpu")
    sec = best_of(lambda: log_mel_spectrogram(wave44, 44100), repeats, cpu)
    rows.append(("log-mel front end from 44.1 kHz (resample + STFT + mel)", f"{dur / sec:.0f} s audio/s"))
    sec = best_of(lambda: log_mel_spectrogram(wave16, 16000), repeats, cpu)
    rows.append(("log-mel front end from 16 kHz", f"{dur / sec:.0f} s audio/s"))

    vgg = VGGish().eval().to(device)
    examples = torch.from_numpy(vggish_examples(wave16, 16000)).to(device)
    with torch.inference_mode():
        sec = best_of(lambda: [vgg(examples[i:i + 32]) for i in range(0, len(examples), 32)], repeats, device)
    rows.append(("VGGish network, non-overlapping 0.96 s examples, batch 32",
                 f"{len(examples) * 0.96 / sec:.1f} s audio/s ({len(examples) / sec:.1f} examples/s)"))

    short = min(dur, 5.0)
    times = np.arange(0.0, short, 1 / 30)

    def frame_centred() -> None:
        ex, _ = vggish_frame_examples(wave44[: int(short * 44100)], 44100, times)
        batch = torch.from_numpy(ex).to(device)
        with torch.inference_mode():
            for i in range(0, len(batch), 32):
                vgg(batch[i:i + 32])

    sec = best_of(frame_centred, repeats, device)
    rows.append(("VGGish per video frame (30 fps, centred examples, from 44.1 kHz)",
                 f"{short / sec:.2f} s audio/s"))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; networks on {where}")
    print()
    print("| front end | throughput |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
