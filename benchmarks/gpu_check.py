"""GPU check: the training path on CUDA (one fold of `vafusion cv`), fusion training throughput CPU-free,
and IResNet-50 face encoding throughput by precision. Prints measured figures; run where a GPU exists:

    python benchmarks/gpu_check.py --data runs/demo/data --features runs/demo/features --out /tmp/gpu_run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vafusion.cli import main as cli
from vafusion.models.iresnet import iresnet


def face_throughput(batch: int = 256, repeats: int = 10) -> dict[str, float]:
    """IResNet-50 faces/s on the GPU for fp32, TF32, bf16 autocast (channels-last, inference mode)."""
    net = iresnet("iresnet50").cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 112, 112, device="cuda").to(memory_format=torch.channels_last)
    out = {}
    for name, ctx, tf32 in (("fp32", None, False), ("tf32", None, True), ("bf16", torch.bfloat16, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=ctx or torch.float32, enabled=ctx is not None),
        ):
            for _ in range(3):
                net(x)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(repeats):
                net(x)
            torch.cuda.synchronize()
        out[name] = batch * repeats / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
    t = time.perf_counter()
    rc = cli(
        [
            "cv",
            "--data",
            str(args.data),
            "--features",
            str(args.features),
            "--out",
            str(args.out),
            "--quiet",
            "--models",
            "fusion,visual,vggish,logmel",
            "--set",
            "cv.folds=[0]",
            "--set",
            "train.accelerator=gpu",
        ]
    )
    print(f"cv fold 0 (4 models) on GPU: exit {rc}, {time.perf_counter() - t:.1f} s")
    for m in ("visual", "vggish", "logmel", "fusion"):
        r = json.loads((args.out / "metrics" / m / "fold0.json").read_text())
        fps = r["train_frames"] * r["epochs"] / r["train_seconds"] if r["train_seconds"] else float("nan")
        print(
            f"  {m:7s} CCC V {r['valence']:.4f} A {r['arousal']:.4f}  epochs {r['epochs']}  "
            f"train {r['train_seconds']:.1f} s  ~{fps:.0f} train frames/s (incl. Lightning overhead)"
        )
    for k, v in face_throughput().items():
        print(f"IResNet-50 112x112 batch 256 {k}: {v:.0f} faces/s")


if __name__ == "__main__":
    main()
