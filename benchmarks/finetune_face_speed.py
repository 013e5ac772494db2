"""Stage-1 fine-tuning (``vafusion finetune-face``) end to end on a generated FER+ corpus: speed and sanity.

    .venv/bin/python benchmarks/finetune_face_speed.py --out /tmp/ferbench --arch iresnet18 --train 64 \
        --epochs 1
    python benchmarks/finetune_face_speed.py --out /tmp/ferbench --train 16000 --epochs 3 --batch 128 \
        --precision bf16-mixed --workers 8                                  # on a GPU

Writes ``fer2013.csv`` + ``fer2013new.csv`` (48x48 grey faces whose mouth angle encodes one of the 8 FER+
emotions, with position, contrast and noise jitter; 10 votes per image, some won by unknown/NF so they are
dropped), a randomly initialised arcface_torch ``backbone.pth`` (no MS1M weights here: accuracy shows that
the loop learns, not what FER+ gives), runs :func:`finetune_face`, reloads the result with
``load_iresnet`` (strict) and prints faces/s and the per-epoch history as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vafusion.data.ferplus import FER_CSV, FERPLUS_CSV, VOTE_COLUMNS
from vafusion.models.iresnet import iresnet, preprocess
from vafusion.train.finetune_face import FinetuneConfig, finetune_face
from vafusion.weights import load_iresnet


def synthetic_face(k: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 grey cartoon face; the mouth's slope (class ``k`` of 8) is what the classes differ in."""
    img = np.full((48, 48), rng.uniform(20, 60))
    cx, cy = 24 + rng.integers(-3, 4), 24 + rng.integers(-3, 4)
    skin = rng.uniform(120, 200)
    cv2.ellipse(img, (int(cx), int(cy)), (16, 20), 0, 0, 360, skin, -1)
    for dx in (-7, 7):
        cv2.circle(img, (int(cx + dx), int(cy - 6)), 2, skin - 90, -1)
    angle = np.deg2rad((k - 3.5) * 11)
    dx, dy = 8 * np.cos(angle), 8 * np.sin(angle)
    cv2.line(img, (int(cx - dx), int(cy + 9 - dy)), (int(cx + dx), int(cy + 9 + dy)), skin - 100, 2)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def write_corpus(root: Path, n_train: int, n_val: int, n_test: int, seed: int = 0) -> None:
    """fer2013.csv + fer2013new.csv in the published formats."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    usage = ["Training"] * n_train + ["PublicTest"] * n_val + ["PrivateTest"] * n_test
    with open(root / FER_CSV, "w") as fer, open(root / FERPLUS_CSV, "w") as plus:
        fer.write("emotion,pixels,Usage\n")
        plus.write("Usage,Image name," + ",".join(VOTE_COLUMNS) + "\n")
        for i, u in enumerate(usage):
            k = int(rng.integers(0, 8))
            votes = np.zeros(10, int)
            votes[k] = rng.integers(5, 11)
            for _ in range(10 - votes[k]):
                votes[rng.integers(0, 10)] += 1
            if rng.random() < 0.03:
                votes[:] = 0
                votes[9] = 10  # not a face: dropped
            fer.write(f"{k % 7},{' '.join(map(str, synthetic_face(k, rng).ravel()))},{u}\n")
            plus.write(f"{u},fer{i:07d}.png," + ",".join(map(str, votes)) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder (corpus, weights, outputs)")
    ap.add_argument("--arch", default="iresnet50", help="IResNet depth (default iresnet50)")
    ap.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    ap.add_argument("--eval", type=int, default=500, help="validation and test images each (default 500)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    ap.add_argument(
        "--lr", type=float, default=1e-3, help="backbone learning rate (default 1e-3: random init)"
    )
    ap.add_argument("--labels", default="soft", choices=["majority", "soft"], help="FER+ label mode")
    ap.add_argument("--precision", default="32-true", help="Lightning precision (default 32-true)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()

    data = args.out / "data"
    t0 = time.perf_counter()
    if not (data / FERPLUS_CSV).exists():
        write_corpus(data, args.train, args.eval, args.eval)
    t_data = time.perf_counter() - t0
    init = args.out / "random_init" / "backbone.pth"
    init.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(iresnet(args.arch).state_dict(), init)
    cfg = FinetuneConfig(
        arch=args.arch,
        labels=args.labels,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        workers=args.workers,
        precision=args.precision,
    )
    out = args.out / f"fer_{args.arch}_{args.precision}.pth"
    t1 = time.perf_counter()
    summary = finetune_face(data, init, out, cfg, progress=not args.quiet)
    total = time.perf_counter() - t1
    net = load_iresnet(args.arch, out)
    faces = np.stack(
        [
            np.repeat(cv2.resize(synthetic_face(k, np.random.default_rng(k)), (112, 112))[:, :, None], 3, 2)
            for k in range(8)
        ]
    )
    with torch.inference_mode():
        emb = net(preprocess(faces))
    report = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "arch": args.arch,
        "precision": args.precision,
        "batch": args.batch,
        "workers": args.workers,
        "corpus_seconds": round(t_data, 1),
        "counts": summary["counts"],
        "train_seconds": summary["train_seconds"],
        "finetune_face_seconds": round(total, 1),
        "train_faces_per_s_incl_val": round(
            summary["epochs"] * summary["train_faces"] / summary["train_seconds"], 1
        ),
        "history": summary["history"],
        "best_val_acc": summary["best_val_acc"],
        "test_acc": summary.get("test_acc"),
        "reloaded_strict": True,
        "embedding_shape": list(emb.shape),
        "embedding_finite": bool(torch.isfinite(emb).all()),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
