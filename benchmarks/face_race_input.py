"""Whether what the face-path race is timed on matters: each candidate path on held-out faces, on the
calibration crops (what the race uses) and on noise, side by side in interleaved rounds in one process.

The race (``vafusion.features.face_encoder``) times its candidates on the calibration set's crops where
there are any (``race_input``). This is the measurement behind that: a fixed-seed IResNet-50 (BatchNorm
statistics fitted on real crops), the float paths this CPU runs and the int8 path calibrated on real
crops, each fed a batch of 32 held-out real crops, 32 of the calibration crops and 32 fixed-seed N(0, 1)
images::

    .venv/bin/python benchmarks/face_race_input.py [--rounds 4]
    .venv/bin/python benchmarks/avx2.py --isa avx512_vnni benchmarks/face_race_input.py
"""

from __future__ import annotations

import argparse

from _common import load_text, race, table
from face_encoding import reference_net
from real_crops import load as load_real_crops

from vafusion.cpu import choose_precision, cpu_info
from vafusion.features.face_encoder import _build_path, race_input

BATCH = 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    args = ap.parse_args()
    sets = load_real_crops()
    if sets is None:
        raise SystemExit("no real crops: benchmarks/real_crops.py needs ../shared/testdata/videos")
    net = reference_net(sets["bn"])
    float_precision = choose_precision(cpu_info())
    names = [f"{float_precision}/torch", "fp32/onnxruntime", "int8/onnxruntime"]
    paths = {n: _build_path(net, *n.split("/"), sets["calib"]) for n in names}
    inputs = {
        "held-out faces": race_input(sets["test"], BATCH),
        "calibration faces": race_input(sets["calib"], BATCH),
        "noise": race_input(None, BATCH),
    }
    candidates = {
        (n, k): ((lambda f=f, x=x: f(x)), BATCH) for n, f in paths.items() for k, x in inputs.items()
    }
    res = race(candidates, args.rounds)
    rows = []
    for n in names:
        rows.append([n, *(f"{res.median((n, k)):.1f}" for k in inputs)])
    print(f"IResNet-50, batch {BATCH}, medians of {args.rounds} interleaved rounds; {res.load_range()}")
    print(table(["path", *(f"faces/s on {k}" for k in inputs)], rows))
    base = names[0]
    for k in inputs:
        print(f"int8/onnxruntime / {base} timed on {k}: {res.ratio(('int8/onnxruntime', k), (base, k)):.2f}x")
    print(load_text())


if __name__ == "__main__":
    main()
