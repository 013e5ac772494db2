"""Scale-out commands: ``merge-features`` (after sharded extraction) and ``export`` (ONNX)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vafusion.cli import _add_common, _add_weights, _cfg, _extractor_names
from vafusion.errors import VafusionError


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VafusionError(None, f"bad {flag} {text!r}", f"write {flag} as a comma list of integers, e.g. 0,3") from None


def cmd_merge_features(args: argparse.Namespace) -> int:
    from vafusion.data.affwild2 import scan
    from vafusion.features.extract import merge_shards

    cfg = _cfg(args)
    names, _, _ = _extractor_names(args.extractors, cfg)
    if args.shards is not None and args.shards < 1:
        raise VafusionError(None, f"bad --shards {args.shards}", "pass the N of the --shard I/N runs (N >= 1)")
    report = merge_shards(scan(args.data), args.features, cfg.features, names, args.shards)
    for note in report["notes"]:
        print(f"note: {note}")
    for f in report["recorded_failures"]:
        print(f"recorded failure: {f}")
    if report["complete"]:
        print(f"complete: {report['ok']}/{report['expected']} (sample x extractor) files for "
              f"{', '.join(report['extractors'])}; wrote {args.features / 'manifest.parquet'} "
              f"({report['manifest_rows']} rows)")
        return 0
    print(f"incomplete: {report['ok']}/{report['expected']} files are present, current and full length; "
          f"{len(report['problems'])} problems:", file=sys.stderr)
    shown = report["problems"][:args.show]
    for p in shown:
        shard = f" [shard {p['shard']}]" if p["shard"] else ""
        print(f"  {p['extractor']}/{p['sample']}{shard}: {p['kind']}: {p['problem']}", file=sys.stderr)
    if len(report["problems"]) > len(shown):
        print(f"  … {len(report['problems']) - len(shown)} more in {args.features / 'merge_report.json'}",
              file=sys.stderr)
    print("to finish, run:", file=sys.stderr)
    for c in report["commands"]:
        print(f"  {c}", file=sys.stderr)
    return 1


def cmd_export(args: argparse.Namespace) -> int:
    from vafusion.export import export_run

    weights = {"iresnet_weights": args.iresnet_weights, "iresnet_arch": args.iresnet_arch,
               "vggish_weights": args.vggish_weights, "vggish_pca": args.vggish_pca,
               "logmel_weights": args.logmel_weights}
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    summary = export_run(args.model, args.out, models=models, folds=_int_list(args.folds, "--folds"),
                         opset=args.opset, atol=args.atol, with_frontends=not args.no_frontends, weights=weights,
                         progress=not args.quiet)
    for m in summary["models"]:
        print(f"{m['model']} fold {m['fold']}: {m['onnx']} (max |onnx - torch| {m['max_abs_diff']:.2g})")
    for name, fe in summary["frontends"]["exported"].items():
        print(f"front end {name}: {fe['onnx']} (max |onnx - torch| {fe['max_abs_diff']:.2g})")
    for name, why in summary["frontends"]["skipped"].items():
        print(f"skipped front end {name}: {why}")
    print(f"exported {len(summary['models'])} models in {summary['seconds']:.1f} s; summary: {args.out / 'export.json'}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``merge-features`` and ``export``."""
    p = sub.add_parser("merge-features", help="check a sharded feature store and write its manifest.parquet",
                       description="After `vafusion extract --shard I/N` jobs (in any order, on any nodes sharing "
                                   "FEATS), check that every (sample x extractor) file exists, was made with the "
                                   "current settings (fingerprint) and has one row per annotation line. If so, "
                                   "write FEATS/manifest.parquet and exit 0; otherwise list the problems and the "
                                   "exact `vafusion extract --shard I/N` commands that fix them, and exit 1. "
                                   "FEATS/merge_report.json holds the full report either way.")
    p.add_argument("--data", type=Path, required=True, help="Aff-Wild2 root the shards extracted")
    p.add_argument("--features", type=Path, required=True, help="feature store the shards wrote into")
    p.add_argument("--extractors", default=None,
                   help="comma list of extractors to check (default: the three streams the config resolves, as "
                        "`extract` does); pass the same list the shards used")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="N of the --shard I/N runs, used to name which shard to rerun (default: read from the "
                        "manifest parts the shards left)")
    p.add_argument("--show", type=int, default=20, metavar="K", help="print at most K problems (default 20)")
    _add_weights(p)
    _add_common(p)
    p.set_defaults(func=cmd_merge_features)

    p = sub.add_parser("export", help="write trained models (and front ends) as ONNX, checked with ONNX Runtime",
                       description="Export each fold model to OUT/<model>/fold<k>.onnx with a JSON sidecar "
                                   "(fold<k>.json: streams, normaliser mean/std, window/hop, input names) so an "
                                   "ONNX-only consumer can run it; inputs feats_<role> (batch, time, D) float32 and "
                                   "valid_<role> (batch, time) bool, output va (batch, time, 2), batch and time "
                                   "dynamic. Front ends (IResNet, VGGish, VGG log-mel encoder) whose weights the "
                                   "run's config records, or the flags give, go to OUT/frontends/; the others are "
                                   "listed as skipped. Every graph is run with ONNX Runtime on random inputs "
                                   "(masked frames, several lengths) and must match PyTorch within --atol.")
    p.add_argument("--model", type=Path, required=True, metavar="RUN",
                   help="run directory of `vafusion cv`, a RUN/models/<model> folder, or one fold<k>.pt")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--models", default=None,
                   help="with a run directory: comma list of fusion,visual,vggish,logmel (default fusion)")
    p.add_argument("--folds", default=None, help="comma list of folds to export (default: every fold<k>.pt found)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or later (default 17)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest |ONNX Runtime - PyTorch| accepted (default 1e-4; front ends: times max(1, |output|))")
    p.add_argument("--no-frontends", action="store_true", help="export only the fusion/single-stream models")
    _add_weights(p)
    g = p.add_argument_group("output")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=cmd_export)
