"""The fused torch face path (``vafusion.features.face_fused``) vs the eager modules it replaced, and what
each part of it gives, side by side in interleaved rounds in one process:

* eager modules: the IResNet with its post-convolution BatchNorms folded, channels-last, one call per
  batch (the torch path before the fused one);
* fused, one call: the fused network, every layer on the whole batch;
* fused, plain ops: the chunked plan with ``conv2d`` + ``add_`` instead of oneDNN's fused op;
* fused (vafusion): the chunked plan with the fused op, as ``FaceEncoder`` runs it.

A fixed-seed IResNet-50 in the precision vafusion picks here (bf16 with AVX512-BF16/AMX, else fp32), with
freed memory kept as the face path keeps it; page faults per face counted over the timed calls::

    .venv/bin/python benchmarks/face_fused.py [--batch 32] [--rounds 7]
    .venv/bin/python benchmarks/avx2.py benchmarks/face_fused.py       # as on an AVX2-only CPU
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from _common import load_text, machine, table
from torch import nn

from vafusion.cpu import choose_precision, cpu_info, keep_freed_memory
from vafusion.features.face_fused import FusedIResNet, fold_batchnorms
from vafusion.models.iresnet import iresnet


class EagerModules:
    """The earlier torch path: folded eager modules, channels-last, fp32 head on the NCHW map."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        self.body = fold_batchnorms(net).to(memory_format=torch.channels_last).to(dtype)
        self.net, self.dtype = net, dtype

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.body.forward_features(x.to(self.dtype).contiguous(memory_format=torch.channels_last))
        return self.net.head(fmap.float())


def network(seed: int = 0) -> nn.Module:
    """A fixed-seed IResNet-50 (He-initialised; speed does not depend on the weights)."""
    torch.manual_seed(seed)
    net = iresnet("iresnet50").eval()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def setup(description: str) -> tuple[argparse.Namespace, str, torch.dtype, nn.Module]:
    """What the face-path benchmarks share: ``--batch`` and ``--rounds``, freed memory kept as the face path
    keeps it, the precision vafusion picks here, and the fixed-seed network."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=32, help="faces per timed call (default 32)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args()
    keep_freed_memory()
    precision = choose_precision(cpu_info())
    return args, precision, torch.bfloat16 if precision == "bf16" else torch.float32, network()


def main() -> None:
    args, precision, dtype, net = setup(__doc__.splitlines()[0])
    one_call = FusedIResNet(net, dtype)
    one_call.chunk_bytes = 1 << 40  # every layer on the whole batch: what the chunks are measured against
    paths = {
        "eager modules (before)": EagerModules(net, dtype),
        "fused, one call per batch": one_call,
        "fused, plain conv2d + add_": FusedIResNet(net, dtype, fused=False),
        "fused (vafusion)": FusedIResNet(net, dtype),
    }
    x = torch.randn(args.batch, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = paths["eager modules (before)"](x).numpy()
    rates: dict[str, list[float]] = {k: [] for k in paths}
    faults = dict.fromkeys(paths, 0)
    for fn in paths.values():
        fn(x)
    for _ in range(args.rounds):
        for name, fn in paths.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fn(x)
            rates[name].append(args.batch / (time.perf_counter() - t0))
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    base = np.array(rates["eager modules (before)"])
    rows = []
    for name, fn in paths.items():
        out = fn(x).numpy()
        cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        rows.append(
            [
                name,
                f"{np.median(rates[name]):.1f}",
                f"{np.median(np.array(rates[name]) / base):.2f}x",
                f"{faults[name] / (args.rounds * args.batch):,.0f}",
                f"{cos.min():.5f}",
            ]
        )
    print(f"machine: {machine()['cpu']}; precision {precision}; batch {args.batch}")
    print(f"medians of {args.rounds} interleaved rounds ({load_text()}):\n")
    print(table(["path", "faces/s", "× eager (within rounds)", "page faults per face", "min cosine"], rows))


if __name__ == "__main__":
    main()
