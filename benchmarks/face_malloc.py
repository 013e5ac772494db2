"""The torch face path with glibc's malloc keeping freed memory (``vafusion.cpu.keep_freed_memory``) vs not.

The setting is process-wide, so each measurement is its own process: the two settings alternate round by
round (``VAFUSION_MALLOC=default`` turns the tuning off). Each process times a fixed-seed IResNet-50
through ``FaceEncoder``'s torch path in the precision vafusion picks for this CPU (bf16 with
AVX512-BF16/AMX, else fp32), batch 32 and 16, 64 faces per pass, median of 4 passes after a warm-up, and
counts the page faults of those passes (for % of peak, see ``face_encoding.py``):

    .venv/bin/python benchmarks/face_malloc.py [--rounds 3]
    .venv/bin/python benchmarks/avx2.py benchmarks/face_malloc.py       # as on an AVX2-only CPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from _common import load_text, machine, table

from vafusion.cpu import choose_precision, cpu_info
from vafusion.features.face_encoder import FaceEncoder
from vafusion.models.iresnet import iresnet

PASSES = 4
BATCHES = (32, 16)


def _median_seconds(fn, passes: int) -> float:
    fn()
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def child() -> dict:
    """One process: the face path's faces/s and page faults per pass, per batch size."""
    precision = choose_precision(cpu_info())
    torch.manual_seed(0)
    net = iresnet("iresnet50").eval()
    crops = np.random.default_rng(0).integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
    rates, faults = {}, {}
    for batch in BATCHES:
        encoder = FaceEncoder(net, batch, precision, "torch")
        encoder(crops)  # first pass: the heap grows to its working size
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        rates[batch] = 64 / _median_seconds(lambda e=encoder: e(crops), PASSES)
        faults[batch] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (PASSES + 1)
    return {"precision": precision, "faces_per_s": rates, "faults": faults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child()))
        return
    print(f"machine: {machine()['cpu']}")
    settings = {
        "kept (default)": {},
        "glibc default (VAFUSION_MALLOC=default)": {"VAFUSION_MALLOC": "default"},
    }
    got: dict[str, list[dict]] = {k: [] for k in settings}
    for r in range(args.rounds):
        order = list(settings) if r % 2 == 0 else list(reversed(settings))
        for name in order:
            env = {k: v for k, v in os.environ.items() if k != "VAFUSION_MALLOC"} | settings[name]
            out = subprocess.run(
                [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True
            )
            got[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    kept, plain = (got[k] for k in settings)
    rows = []
    for name, runs in got.items():
        for batch in BATCHES:
            rate = float(np.median([g["faces_per_s"][str(batch)] for g in runs]))
            faults = float(np.median([g["faults"][str(batch)] for g in runs]))
            rows.append([name, batch, f"{rate:.1f}", f"{faults:,.0f}"])
    print(
        f"\nprecision {kept[0]['precision']}; medians of {args.rounds} alternating processes "
        f"({load_text()}):\n"
    )
    print(table(["malloc", "batch", "faces/s", "page faults per 64 faces"], rows))
    for batch in BATCHES:
        ratio = np.median(
            [
                a["faces_per_s"][str(batch)] / b["faces_per_s"][str(batch)]
                for a, b in zip(kept, plain, strict=True)
            ]
        )
        print(f"\nbatch {batch}: kept / glibc default = {ratio:.2f}x (median of within-round ratios)")


if __name__ == "__main__":
    main()
