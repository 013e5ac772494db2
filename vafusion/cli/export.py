"""``vafusion export``: a run's models and front ends as ONNX graphs, each checked against PyTorch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vafusion.cli.common import add_output, add_weights, int_list, positive
from vafusion.errors import VafusionError
from vafusion.inference.bundle import run_config
from vafusion.inference.export import export_run
from vafusion.io.atomic import prepare_dir
from vafusion.models.registry import model_names


def cmd_export(args: argparse.Namespace) -> int:
    """Export the run's models and front ends and print where each went."""
    prepare_dir(args.out, "--out")
    weights = {
        "iresnet_weights": args.iresnet_weights,
        "iresnet_arch": args.iresnet_arch,
        "vggish_weights": args.vggish_weights,
        "vggish_pca": args.vggish_pca,
        "logmel_weights": args.logmel_weights,
    }
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    summary = export_run(
        args.model,
        args.out,
        models=models,
        folds=int_list(args.folds, "--folds"),
        opset=args.opset,
        atol=args.atol,
        with_frontends=not args.no_frontends,
        weights=weights,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    for m in summary["models"]:
        print(f"{m['model']} fold {m['fold']}: {m['onnx']} (max |onnx - torch| {m['max_abs_diff']:.2g})")
    if args.folds is None:
        _note_missing_folds(args.model, summary["models"])
    for name, fe in summary["frontends"]["exported"].items():
        print(f"front end {name}: {fe['onnx']} (max |onnx - torch| {fe['max_abs_diff']:.2g})")
    for name, why in summary["frontends"]["skipped"].items():
        print(f"skipped front end {name}: {why}")
    print(
        f"exported {len(summary['models'])} models in {summary['seconds']:.1f} s; "
        f"summary: {args.out / 'export.json'}"
    )
    return 0


def _note_missing_folds(run: Path, exported: list[dict]) -> None:
    """Say which of the run's ``cv.folds`` had no checkpoint (``export`` takes every fold it finds)."""
    if not (run / "config.yaml").is_file():
        return
    try:
        wanted = run_config(run / "config.yaml", None, []).cv.folds  # read as predict reads a run's config
    except VafusionError:
        return
    for which in dict.fromkeys(m["model"] for m in exported):
        missing = sorted(set(wanted) - {m["fold"] for m in exported if m["model"] == which})
        if missing:
            print(
                f"vafusion: note: {which}: no checkpoint for fold {', '.join(map(str, missing))} of the "
                "run's cv.folds; the other folds were exported",
                file=sys.stderr,
            )


def _add_export(sub: argparse._SubParsersAction) -> None:
    """``vafusion export``."""
    p = sub.add_parser(
        "export",
        help="write trained models (and front ends) as ONNX, checked with ONNX Runtime",
        description="Export each fold model to OUT/<model>/fold<k>.onnx with a JSON sidecar "
        "(fold<k>.json: streams, normaliser mean/std, window/hop, input names) so an "
        "ONNX-only consumer can run it; inputs feats_<role> (batch, time, D) float32 and "
        "valid_<role> (batch, time) bool, output va (batch, time, 2), batch and time "
        "dynamic. Front ends (IResNet, VGGish, VGG log-mel encoder) whose weights the "
        "run's config records, or the flags give, go to OUT/frontends/; the others are "
        "listed as skipped. Every graph is run with ONNX Runtime on random inputs "
        "(masked frames, several lengths) and must match PyTorch within --atol.",
    )
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="RUN",
        help="run directory of `vafusion cv`, a RUN/models/<model> folder, or one fold<k>.pt",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument(
        "--models",
        default=None,
        help=f"with a run directory: comma list of {','.join(model_names(trainable=True))} (default fusion)",
    )
    p.add_argument(
        "--folds", default=None, help="comma list of folds to export (default: every fold<k>.pt found)"
    )
    p.add_argument("--opset", type=positive(int), default=17, help="ONNX opset, 17 or later (default 17)")
    p.add_argument(
        "--atol",
        type=positive(float),
        default=1e-4,
        help="largest |ONNX Runtime - PyTorch| accepted (default 1e-4; front ends: times max(1, |output|))",
    )
    p.add_argument("--no-frontends", action="store_true", help="export only the fusion/single-stream models")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in OUT (its export.json and the files it lists); without it, export "
        "refuses an OUT that holds one",
    )
    add_weights(p)
    add_output(p, "output")
    p.set_defaults(func=cmd_export)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``export``."""
    _add_export(sub)
