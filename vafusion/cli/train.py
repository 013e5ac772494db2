"""Training commands: ``cv`` (the paper's 6-fold protocol), ``demo`` (everything on built-in data),
``config`` (the resolved settings) and ``finetune-face`` (stage 1: the face backbone on FER+)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vafusion.cli.common import (
    add_common,
    add_output,
    add_weights,
    config_from,
    models_help,
    non_negative,
    positive,
)
from vafusion.config import ACCELERATORS, PRECISIONS, config_names, to_yaml
from vafusion.evaluation.report import write_report
from vafusion.io.atomic import prepare_file
from vafusion.models.iresnet import ARCH_LAYERS
from vafusion.pipeline import CVRun, run_cv, run_demo
from vafusion.train.finetune_face import FinetuneConfig, finetune_face, output_paths

EPILOG = "Configuration keys: `vafusion config --show` prints every key with its default."

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
accuracies) and OUT.work/ (Lightning checkpoints; --resume continues from OUT.work/last.ckpt, written
after every epoch). An existing OUT is not replaced: without --resume the command stops before any work.
The same --seed gives the same weights (on CPU), also when a run is interrupted and resumed.
"""


def _rank_zero() -> bool:
    """False in the extra processes of a multi-device run (Lightning, torchrun and SLURM set these)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "0").strip() not in ("", "0"):
            return False
    return True


def _print_results(run: CVRun) -> None:
    """The mean row of every model."""
    print(run.results[run.results["fold"] == "mean"].round(4).to_string(index=False))


def _left_out(run: CVRun) -> int:
    """List the samples the run had to leave out on stderr; 1 if there were any, else 0."""
    if not run.left_out:
        return 0
    print(
        f"{len(run.left_out)} samples left out of training and scoring (fix them and rerun; finished "
        "folds that did not use them are kept):",
        file=sys.stderr,
    )
    for reason in run.left_out.values():
        print(f"  {reason}", file=sys.stderr)
    return 1


def cmd_cv(args: argparse.Namespace) -> int:
    """Cross-validate and write the report (under DDP only the first process prints and reports)."""
    cfg = config_from(args)
    # Under DDP every process runs this same fold loop (each writes the same files atomically); only the
    # first prints, so the terminal shows one progress bar and one table.
    lead = _rank_zero()
    run = run_cv(
        args.data,
        args.features,
        args.out,
        cfg,
        args.models,
        args.folds,
        args.resume,
        progress=not (args.quiet or not lead),
    )
    if not lead:
        return 1 if run.left_out else 0
    report = write_report(args.out, run.results, run.notes, run.streams)
    _print_results(run)
    print(f"report: {report}")
    return _left_out(run)


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthesise, extract and cross-validate; print the results table."""
    cfg = config_from(args)
    demo = run_demo(
        args.out,
        cfg,
        args.videos or cfg.synth.videos,
        args.seconds or cfg.synth.seconds,
        args.seed,
        args.resume,
        progress=not args.quiet,
        complain=lambda line: print(line, file=sys.stderr),
    )
    _print_results(demo.cv)
    print(f"demo finished in {demo.timings['total']:.1f} s — report: {demo.report}")
    return _left_out(demo.cv)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved configuration, or the names of the shipped configs."""
    if args.list:
        print("\n".join(config_names()))
        return 0
    print(to_yaml(config_from(args)), end="")
    return 0


def cmd_finetune_face(args: argparse.Namespace) -> int:
    """Run the fine-tuning and print a short summary."""
    prepare_file(args.out, "--out")
    cfg = FinetuneConfig(
        arch=args.arch,
        labels=args.labels,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        head_lr_scale=args.head_lr_scale,
        weight_decay=args.weight_decay,
        workers=args.workers,
        seed=args.seed,
        accelerator=args.accelerator,
        precision=args.precision,
    )
    summary = finetune_face(
        args.data, args.weights, args.out, cfg, resume=args.resume, progress=not args.quiet
    )
    if summary.get("already_finished"):
        print(
            f"vafusion: note: {args.out} is a finished run with these settings; nothing to do",
            file=sys.stderr,
        )
    for split, counts in summary["counts"].items():
        print(
            f"{split:5s} {sum(counts.values()):6d} faces  " + "  ".join(f"{c} {n}" for c, n in counts.items())
        )
    unseen = [c for c, n in summary["counts"]["train"].items() if n == 0]
    if unseen:
        print(
            f"vafusion: note: no training faces of {', '.join(unseen)}: the head keeps "
            f"{'its output' if len(unseen) == 1 else 'their outputs'} but never learns "
            f"{'it' if len(unseen) == 1 else 'them'}",
            file=sys.stderr,
        )
    for h in summary["history"]:
        print(
            f"epoch {h['epoch']:3d}  train loss {h['train_loss']:.4f}  val loss {h['val_loss']:.4f}  "
            f"val acc {h['val_acc']:.4f}"
        )
    test = f", test accuracy {summary['test_acc']:.4f}" if "test_acc" in summary else ""
    print(
        f"best epoch {summary['best_epoch']}: validation accuracy {summary['best_val_acc']:.4f}{test} "
        f"({summary['train_seconds']:.0f} s)"
    )
    paths = output_paths(args.out)
    print(
        f"backbone: {paths['backbone']}  (vafusion extract --iresnet-weights {paths['backbone']} "
        f"--iresnet-arch {summary['arch']})"
    )
    print(f"head: {paths['head']}  summary: {paths['summary']}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """``vafusion demo``."""
    p = sub.add_parser(
        "demo",
        help="synth data -> features -> 6-fold CV -> report, in one go",
        epilog=EPILOG,
        description="Generate the built-in synthetic corpus, extract features, run 6-fold "
        "cross-validation of the fusion model and each single-modality model, and write "
        "OUT/results.csv and OUT/report.md with plots. Reruns skip finished steps.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    p.add_argument(
        "--videos",
        type=positive(int),
        default=None,
        help="number of synthetic videos (default synth.videos, 24)",
    )
    p.add_argument(
        "--seconds",
        type=positive(float),
        default=None,
        help="length of each video (default synth.seconds, 15)",
    )
    p.add_argument("--seed", type=non_negative(int), default=0, help="corpus seed (default 0)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted training from its last checkpoint"
    )
    add_weights(p)
    add_common(p)
    p.set_defaults(func=cmd_demo)


def _add_cv(sub: argparse._SubParsersAction) -> None:
    """``vafusion cv``."""
    p = sub.add_parser(
        "cv",
        help="6-fold cross-validation (paper Table 2)",
        epilog=EPILOG,
        description="Fold 0 = Validation_Set; folds 1-5 = Train_Set split video-level into 5 parts "
        "(written to RUN/folds.csv). Each model is trained on the other folds and "
        "scored on its fold. Finished (model, fold) pairs are skipped on rerun.",
    )
    p.add_argument("--data", type=Path, required=True, help="Aff-Wild2 root")
    p.add_argument("--features", type=Path, required=True, help="feature store written by `vafusion extract`")
    p.add_argument("--out", type=Path, required=True, help="run directory (created)")
    p.add_argument(
        "--models", default=None, help=f"comma list of models (default cv.models: all four): {models_help()}"
    )
    p.add_argument(
        "--folds", type=Path, default=None, metavar="FILE", help="reuse a fold assignment (folds.csv)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue interrupted training from its last checkpoint"
    )
    g = p.add_argument_group("devices (Lightning; see docs/scaling.md for multi-GPU and SLURM launches)")
    g.add_argument(
        "--devices",
        default=None,
        help="devices per node: a count (2), a list (0,1) or auto (train.devices, default 1)",
    )
    g.add_argument(
        "--num-nodes", type=positive(int), default=None, help="number of nodes (train.num_nodes, default 1)"
    )
    g.add_argument(
        "--strategy",
        default=None,
        help="Lightning strategy, e.g. ddp for several devices or nodes (train.strategy, default auto); "
        "on CPU set --set train.accelerator=cpu",
    )
    add_weights(p)
    add_common(p)
    p.set_defaults(func=cmd_cv)


def _add_config(sub: argparse._SubParsersAction) -> None:
    """``vafusion config``."""
    p = sub.add_parser(
        "config",
        help="print the resolved configuration",
        description="Print every configuration key with its value after --config and --set.",
    )
    p.add_argument("--show", action="store_true", help="(default) print the configuration")
    p.add_argument(
        "--list", action="store_true", help="list the configs shipped with vafusion (for --config NAME)"
    )
    add_common(p)
    p.set_defaults(func=cmd_config)


def _add_finetune_face(sub: argparse._SubParsersAction) -> None:  # long: argparse table, one flag each
    """``vafusion finetune-face``."""
    p = sub.add_parser(
        "finetune-face",
        help="stage 1: fine-tune the IResNet face backbone on FER+",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder with fer2013.csv + fer2013new.csv, or with train/<class>/ and val/<class>/ images",
    )
    p.add_argument(
        "--weights",
        type=Path,
        required=True,
        help="arcface_torch backbone.pth to start from (MS1M-trained, e.g. ms1mv3_arcface_r50_fp16)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="fine-tuned backbone to write (e.g. weights/fer_r50.pth); head, summary and work "
        "folder go beside it",
    )
    p.add_argument(
        "--arch",
        default="iresnet50",
        choices=sorted(ARCH_LAYERS),
        help="architecture of --weights (default iresnet50, the paper's)",
    )
    p.add_argument(
        "--labels",
        default="majority",
        choices=["majority", "soft"],
        help="FER+ targets: majority = one class when it has more than half of the votes (else the "
        "image is dropped); soft = FERPlus's cross-entropy distribution over the top voted "
        "emotions. Images won by unknown/NF are dropped either way (default majority)",
    )
    p.add_argument("--epochs", type=positive(int), default=10, help="training epochs (default 10)")
    p.add_argument("--batch", type=positive(int), default=64, help="faces per batch (default 64)")
    p.add_argument(
        "--lr",
        type=positive(float),
        default=1e-4,
        help="AdamW learning rate of the backbone after warm-up (default 1e-4)",
    )
    p.add_argument(
        "--head-lr-scale",
        type=positive(float),
        default=10.0,
        help="the new head's learning rate as a multiple of --lr (default 10)",
    )
    p.add_argument(
        "--weight-decay", type=non_negative(float), default=5e-4, help="AdamW weight decay (default 5e-4)"
    )
    p.add_argument(
        "--workers",
        type=non_negative(int),
        default=0,
        help="DataLoader worker processes (default 0: in process)",
    )
    p.add_argument("--seed", type=non_negative(int), default=0, help="random seed (default 0)")
    p.add_argument(
        "--accelerator",
        default="auto",
        choices=ACCELERATORS,
        help="Lightning accelerator (default auto: a GPU if there is one)",
    )
    p.add_argument(
        "--precision",
        default="32-true",
        choices=PRECISIONS,
        help="Lightning precision, e.g. 32-true, 16-mixed, bf16-mixed (default 32-true)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run after its last finished epoch (OUT.work/last.ckpt); a finished "
        "run with the same settings is left as it is",
    )
    add_output(p)
    p.set_defaults(func=cmd_finetune_face)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``demo``, ``cv``, ``config`` and ``finetune-face``."""
    _add_demo(sub)
    _add_cv(sub)
    _add_config(sub)
    _add_finetune_face(sub)
