"""``vafusion finetune-face``: stage 1 of the paper's training, the IResNet fine-tuned on FER+."""
from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Fine-tune an ArcFace IResNet (arcface_torch backbone.pth, e.g. ms1mv3_arcface_r50_fp16) on FER+ before
Aff-Wild2, as the paper does: backbone + linear head over the 8 FER+ emotions, cross-entropy, AdamW
(head at 10x the backbone's learning rate, warm-up then cosine decay), best epoch by validation accuracy.

--data is either a folder holding fer2013.csv (Kaggle FER2013) and fer2013new.csv (microsoft/FERPlus
votes), split by Usage (Training / PublicTest = validation / PrivateTest = test), or an image folder
DATA/{train,val[,test]}/<class>/*.png|jpg. Faces are resized to 112x112 RGB (grey replicated) and
normalised like the IResNet extractor; training adds a random flip and a small random crop.

Writes OUT (the fine-tuned backbone with arcface_torch keys: pass it to `vafusion extract
--iresnet-weights OUT`), OUT's stem + .head.pt (the classifier), + .json (classes, counts, history,
accuracies) and OUT.work/ (Lightning checkpoints; --resume continues from OUT.work/last.ckpt).
"""


def cmd_finetune_face(args: argparse.Namespace) -> int:
    """Run the fine-tuning and print a short summary."""
    from vafusion.train.finetune_face import FinetuneConfig, finetune_face, output_paths

    cfg = FinetuneConfig(arch=args.arch, labels=args.labels, epochs=args.epochs, batch=args.batch, lr=args.lr,
                         head_lr_scale=args.head_lr_scale, weight_decay=args.weight_decay, workers=args.workers,
                         seed=args.seed, accelerator=args.accelerator, precision=args.precision)
    summary = finetune_face(args.data, args.weights, args.out, cfg, resume=args.resume, progress=not args.quiet)
    for split, counts in summary["counts"].items():
        print(f"{split:5s} {sum(counts.values()):6d} faces  " + "  ".join(f"{c} {n}" for c, n in counts.items()))
    for h in summary["history"]:
        print(f"epoch {h['epoch']:3d}  train loss {h['train_loss']:.4f}  val loss {h['val_loss']:.4f}  "
              f"val acc {h['val_acc']:.4f}")
    test = f", test accuracy {summary['test_acc']:.4f}" if "test_acc" in summary else ""
    print(f"best epoch {summary['best_epoch']}: validation accuracy {summary['best_val_acc']:.4f}{test} "
          f"({summary['train_seconds']:.0f} s)")
    paths = output_paths(args.out)
    print(f"backbone: {paths['backbone']}  (vafusion extract --iresnet-weights {paths['backbone']} "
          f"--iresnet-arch {summary['arch']})")
    print(f"head: {paths['head']}  summary: {paths['summary']}")
    return 0


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``finetune-face`` on the ``vafusion`` parser."""
    p = sub.add_parser("finetune-face", help="stage 1: fine-tune the IResNet face backbone on FER+",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="folder with fer2013.csv + fer2013new.csv, or with train/<class>/ and val/<class>/ images")
    p.add_argument("--weights", type=Path, required=True,
                   help="arcface_torch backbone.pth to start from (MS1M-trained, e.g. ms1mv3_arcface_r50_fp16)")
    p.add_argument("--out", type=Path, required=True,
                   help="fine-tuned backbone to write (e.g. weights/fer_r50.pth); head, summary and work "
                        "folder go beside it")
    p.add_argument("--arch", default="iresnet50", choices=["iresnet18", "iresnet34", "iresnet50", "iresnet100"],
                   help="architecture of --weights (default iresnet50, the paper's)")
    p.add_argument("--labels", default="majority", choices=["majority", "soft"],
                   help="FER+ targets: majority = one class when it has more than half of the votes (else the "
                        "image is dropped); soft = FERPlus's cross-entropy distribution over the top voted "
                        "emotions. Images won by unknown/NF are dropped either way (default majority)")
    p.add_argument("--epochs", type=_positive(int), default=10, help="training epochs (default 10)")
    p.add_argument("--batch", type=_positive(int), default=64, help="faces per batch (default 64)")
    p.add_argument("--lr", type=_positive(float), default=1e-4,
                   help="AdamW learning rate of the backbone after warm-up (default 1e-4)")
    p.add_argument("--head-lr-scale", type=_positive(float), default=10.0,
                   help="the new head's learning rate as a multiple of --lr (default 10)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW weight decay (default 5e-4)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0: in process)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu (default auto)")
    p.add_argument("--precision", default="32-true",
                   help="Lightning precision, e.g. 32-true, 16-mixed, bf16-mixed (default 32-true)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.work/last.ckpt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=cmd_finetune_face)
