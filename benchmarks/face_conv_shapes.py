"""Where the face path's % of peak is lost: IResNet-50's convolutions one by one against the peak.

"% of peak" (``face_encoding.py``) divides the network's speed by the fastest bare 3x3 convolution of its
four stage shapes. The network's own convolutions do not all run at that speed: this times each distinct
convolution of IResNet-50 alone as the fused path runs it (oneDNN's fused op, channels-last, with bias, as
many faces per call as the path gives that layer under ``face_fused.CHUNK_BYTES``), the four stage-shape
peaks, and the fused path itself, in interleaved rounds in one process, and prints

* each convolution's GFLOP/s and its share of the network's work and of the convolutions' time;
* the convolutions' ceiling: the network's work over the sum of their times, i.e. the most any fusion
  of the work between them (PReLU, border corrections, additions) could give, as % of the peak;
* the fused path as % of the peak and as % of that ceiling;
* the peak shape timed as a single call per round (what ``face_encoding.py`` did before 2026-12-02).

In the precision vafusion picks here (bf16 with AVX512-BF16/AMX, else fp32); a fixed-seed network::

    .venv/bin/python benchmarks/face_conv_shapes.py [--batch 32] [--rounds 7]
    .venv/bin/python benchmarks/avx2.py benchmarks/face_conv_shapes.py      # as on an AVX2-only CPU
"""

from __future__ import annotations

import math

import torch
from _common import load_text, machine, race, repeated, table
from face_encoding import conv_runner, distinct_convs, stage_probes
from face_fused import setup

from vafusion.features.face_fused import FusedIResNet


def main() -> None:
    args, precision, dtype, net = setup(__doc__.splitlines()[0])
    convs = distinct_convs(net)
    work = {  # GFLOP per face, all convolutions of the kind
        key: 2e-9 * math.prod(o) * m.in_channels * m.kernel_size[0] * m.kernel_size[1] * n
        for key, (m, _, o, n) in convs.items()
    }
    cands = {}
    for key, (m, i, o, n) in convs.items():
        cands[key] = repeated(conv_runner(m, i, o, args.batch, dtype), work[key] / n * args.batch)
    probes = stage_probes(f"{precision}/torch", args.batch)
    cands.update({f"peak {k}": repeated(fn, gflop) for k, (fn, gflop) in probes.items()})
    fused, x = FusedIResNet(net, dtype), torch.randn(args.batch, 3, 112, 112)
    cands["fused path"] = repeated(lambda: fused(x), args.batch, 0.5)
    # one call each, after the path and each other, so each finds its data cold
    cands.update({f"once {k}": probe for k, probe in probes.items()})
    res = race(cands, args.rounds)
    peak_name = max((k for k in cands if str(k).startswith("peak")), key=res.median)
    peak = res.median(peak_name)
    seconds = {key: work[key] / res.median(key) for key in convs}  # per face
    total, conv_s = sum(work.values()), sum(seconds.values())
    rows = []
    for key, (_, _, _, n) in convs.items():
        i, o, k, s, side = key
        rate = res.median(key)
        share, time_share = 100 * work[key] / total, 100 * seconds[key] / conv_s
        name = f"{i}->{o}, {k}x{k}, stride {s}, {side}x{side}"
        rows.append(
            [name, n, f"{share:.1f} %", f"{rate:.0f}", f"{100 * rate / peak:.0f} %", f"{time_share:.1f} %"]
        )
    ceiling = total / conv_s
    path = res.median("fused path")
    print(f"machine: {machine()['cpu']}; precision {precision}; batch {args.batch}; {res.load_range()}")
    print(f"medians of {args.rounds} interleaved rounds ({load_text()} at the end)\n")
    print(table(["convolution (in->out, kernel, stride, input)", "count", "share of work", "GFLOP/s",
                 "% of peak", "share of conv time"], rows))  # fmt: skip
    peaks = ", ".join(f"{k[5:]} {res.median(k):.0f}" for k in cands if str(k).startswith("peak"))
    once = res.median(f"once {peak_name[5:]}")
    print(f"\nstage-shape peaks (bare 3x3, batch {args.batch}), GFLOP/s: {peaks}; peak = {peak_name[5:]}")
    print(f"the peak shape as one call per round, after other work: {once:.0f} ({100 * once / peak:.0f} %)")
    print(
        f"**convolutions alone: {ceiling:.0f} GFLOP/s = {ceiling / total:.1f} faces/s = "
        f"{100 * ceiling / peak:.0f} % of peak; fused path {path:.1f} faces/s = "
        f"{100 * path * total / peak:.0f} % of peak = {100 * path * total / ceiling:.0f} % of the "
        f"convolutions' ceiling** ({total:.2f} GFLOP per face in convolutions)"
    )


if __name__ == "__main__":
    main()
