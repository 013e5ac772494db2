"""Command line: parses flags, calls the library, prints. No logic of its own.

Bad input (``VafusionError``) prints one line on stderr and exits with code 2; ``--verbose`` adds the
traceback. Every command accepts ``--config FILE`` and ``--set key=value`` for experiment settings.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from vafusion.errors import VafusionError

EPILOG = "Configuration keys: `vafusion config --show` prints every key with its default."

# Modules that add more subcommands; each has ``add_parser(sub)`` and may reuse this module's helpers.
COMMAND_MODULES: tuple[str, ...] = ("vafusion.cli_finetune", "vafusion.cli_scale", "vafusion.cli_predict")


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="YAML experiment config merged over the defaults (see configs/)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.max_epochs=50 (repeatable)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")


def _add_weights(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("front-end weights (published files, taken by path; nothing is downloaded)")
    g.add_argument("--iresnet-weights", metavar="PTH",
                   help="insightface arcface_torch backbone.pth (e.g. ms1mv3_arcface_r50), or a FER+ fine-tuned one "
                        "from `vafusion finetune-face`; without it the visual stream uses dlib landmarks")
    g.add_argument("--iresnet-arch", default=None, choices=["iresnet18", "iresnet34", "iresnet50", "iresnet100"],
                   help="architecture of --iresnet-weights (default iresnet50, the paper's)")
    g.add_argument("--vggish-weights", metavar="PTH",
                   help="torchvggish vggish-10086976.pth; without it the vggish stream uses openSMILE eGeMAPS")
    g.add_argument("--vggish-pca", metavar="PTH", help="torchvggish vggish_pca_params-970ea276.pth (optional "
                                                       "post-processing: PCA, clip, 8-bit quantisation)")
    g.add_argument("--logmel-weights", metavar="PTH",
                   help="VGG-style log-mel encoder weights (VGGish layout); without it the logmel stream uses "
                        "per-band mean/std of the 0.96 s log-mel patch")


def _cfg(args: argparse.Namespace):
    from vafusion.config import load_config

    over = list(args.overrides)
    for flag, key in (("iresnet_weights", "features.iresnet_weights"), ("iresnet_arch", "features.iresnet_arch"),
                      ("vggish_weights", "features.vggish_weights"), ("vggish_pca", "features.vggish_pca"),
                      ("logmel_weights", "features.logmel_weights"), ("devices", "train.devices"),
                      ("num_nodes", "train.num_nodes"), ("strategy", "train.strategy")):
        val = getattr(args, flag, None)
        if val is not None:
            over.append(f"{key}={val}")
    return load_config(args.config, over)


def cmd_synth(args: argparse.Namespace) -> int:
    from vafusion.data.synth import make_corpus

    t0 = time.perf_counter()
    manifest = make_corpus(Path(args.out), videos=args.videos, seconds=args.seconds, seed=args.seed,
                           progress=not args.quiet)
    n = len(manifest.get("videos", manifest)) if isinstance(manifest, dict) else args.videos
    print(f"wrote {n} synthetic videos to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _extractor_names(text: str | None, cfg) -> tuple[list[str], dict[str, str], list[str]]:
    from vafusion.features.extractors import resolve_streams

    streams, notes = resolve_streams(cfg.features)
    if text:
        names = [t.strip() for t in text.split(",") if t.strip()]
    else:
        names = list(dict.fromkeys(streams.values()))
    return names, streams, notes


def run_extract(data: Path, feats: Path, cfg, extractors: str | None, shard: str | None, quiet: bool) -> dict:
    from vafusion.data.affwild2 import scan
    from vafusion.features.extract import extract, parse_shard

    names, _, notes = _extractor_names(extractors, cfg)
    corpus = scan(data)
    summary = extract(corpus, feats, cfg.features, names, shard=parse_shard(shard), progress=not quiet)
    for n in notes:
        print(f"note: {n}")
    for name, st in summary["extractors"].items():
        rate = f"{st['frames_per_s']} frames/s" if st["frames_per_s"] else "-"
        print(f"{name:10s} done {st['done']:4d}  skipped {st['skipped']:4d}  failed {len(st['failed']):3d}  "
              f"frames {st['frames']:7d} (valid {st['valid_frames']})  {rate}")
        for k, v in st["notes"].items():
            print(f"  {k}: {len(v)} — {', '.join(v[:4])}{' …' if len(v) > 4 else ''}")
    for m in summary["length_mismatch"]:
        print(f"  length mismatch: {m}")
    for p in summary["problems"]:
        print(f"  dataset: {p}")
    if summary["failed"]:
        print(f"{len(summary['failed'])} failed:", file=sys.stderr)
        for f in summary["failed"]:
            print(f"  {f}", file=sys.stderr)
    return summary


def cmd_extract(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    summary = run_extract(args.data, args.features, cfg, args.extractors, args.shard, args.quiet)
    return 1 if summary["failed"] else 0


def run_cv(data: Path, feats: Path, out: Path, cfg, models: str | None, folds_file: Path | None, resume: bool,
           quiet: bool):
    """Run the folds and write ``results.csv``; returns (results, streams, notes) for the report."""
    from vafusion.data.affwild2 import scan
    from vafusion.data.folds import assign_folds, read_folds, write_folds
    from vafusion.evaluation.report import write_results
    from vafusion.features.extractors import resolve_streams
    from vafusion.train.cv import MODELS, CrossValidation

    corpus = scan(data)
    chosen = [m.strip() for m in models.split(",")] if models else list(cfg.cv.models)
    for m in chosen:
        if m not in MODELS:
            raise VafusionError(None, f"unknown model {m!r}", f"--models takes a comma list of {', '.join(MODELS)}")
    streams, notes = resolve_streams(cfg.features)
    if folds_file is not None:
        folds = read_folds(folds_file, corpus.samples)
    elif (out / "folds.csv").exists():
        folds = read_folds(out / "folds.csv", corpus.samples)
    else:
        folds = assign_folds(corpus.samples, seed=cfg.cv.seed, n_train_folds=cfg.cv.n_train_folds)
    out.mkdir(parents=True, exist_ok=True)
    write_folds(folds, out / "folds.csv")
    cv = CrossValidation(corpus, feats, out, cfg, folds, streams, notes, progress=not quiet, resume=resume)
    results = cv.run_all(chosen, [f for f in cfg.cv.folds if f in set(folds["fold"])])
    results.attrs["left_out"] = {name: exc.one_line() for name, exc in cv.failed.items()}
    write_results(results, out / "results.csv")
    return results, streams, notes


def _report_left_out(results) -> int:
    """List the samples a cv run had to leave out on stderr; 1 if there were any, else 0."""
    left_out = results.attrs.get("left_out", {})
    if not left_out:
        return 0
    print(f"{len(left_out)} samples left out of training and scoring (fix them and rerun; finished "
          "folds that did not use them are kept):", file=sys.stderr)
    for reason in left_out.values():
        print(f"  {reason}", file=sys.stderr)
    return 1


def _print_results(results) -> None:
    print(results[results["fold"] == "mean"].round(4).to_string(index=False))


def _rank_zero() -> bool:
    """False in the extra processes of a multi-device run (Lightning, torchrun and SLURM set these)."""
    import os

    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "0").strip() not in ("", "0"):
            return False
    return True


def cmd_cv(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    # Under DDP every process runs this same fold loop (each writes the same files atomically); only the
    # first prints, so the terminal shows one progress bar and one table.
    lead = _rank_zero()
    results, streams, notes = run_cv(args.data, args.features, args.out, cfg, args.models, args.folds, args.resume,
                                     args.quiet or not lead)
    if lead:
        from vafusion.evaluation.report import write_report

        report = write_report(args.out, results, notes, streams)
        _print_results(results)
        print(f"report: {report}")
        return _report_left_out(results)
    return 1 if results.attrs.get("left_out") else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vafusion.data.synth import make_corpus

    cfg = _cfg(args)
    out: Path = args.out
    data, feats = out / "data", out / "features"
    videos = args.videos or cfg.synth.videos
    seconds = args.seconds or cfg.synth.seconds
    timings = {}
    t0 = time.perf_counter()
    if not (data / "synth_manifest.json").exists():
        print(f"[1/3] synthesising {videos} videos × {seconds:g} s into {data}")
        make_corpus(data, videos=videos, seconds=seconds, seed=args.seed, progress=not args.quiet)
    else:
        print(f"[1/3] corpus already in {data} (delete it to regenerate)")
    timings["synth"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    print(f"[2/3] extracting features into {feats}")
    run_extract(data, feats, cfg, None, None, args.quiet)
    timings["extract"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    print(f"[3/3] 6-fold cross-validation of {', '.join(cfg.cv.models)} into {out}")
    results, streams, notes = run_cv(data, feats, out, cfg, None, None, args.resume, args.quiet)
    timings["cv"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    timing_lines = ["## Wall time of this demo", "", "| step | seconds |", "|---|---|"]
    timing_lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    from vafusion.evaluation.report import write_report

    report = write_report(out, results, notes, streams, timing_lines)
    _print_results(results)
    print(f"demo finished in {timings['total']:.1f} s — report: {report}")
    return _report_left_out(results)


def cmd_config(args: argparse.Namespace) -> int:
    from vafusion.config import to_yaml

    print(to_yaml(_cfg(args)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``vafusion`` argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="vafusion",
        description="Per-frame valence/arousal from video: face + voice fusion (multi-scale TCNs, cross-modal "
                    "attention), Aff-Wild2 / ABAW VA protocol.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="synth data -> features -> 6-fold CV -> report, in one go",
                       description="Generate the built-in synthetic corpus, extract features, run 6-fold "
                                   "cross-validation of the fusion model and each single-modality model, and write "
                                   "OUT/results.csv and OUT/report.md with plots. Reruns skip finished steps.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    p.add_argument("--videos", type=int, default=None, help="number of synthetic videos (default synth.videos, 24)")
    p.add_argument("--seconds", type=float, default=None, help="length of each video (default synth.seconds, 15)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training from its last checkpoint")
    _add_weights(p)
    _add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic corpus in the Aff-Wild2 layout",
                       description="Write OUT/videos/batch1/*.mp4 (H.264 + AAC), OUT/cropped_aligned/<name>/00001.jpg "
                                   "(112x112) and OUT/annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/"
                                   "<name>.txt. Ground-truth VA drives both the face and the voice.")
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--videos", type=int, default=24, help="number of videos (default 24)")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per video (default 15)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("extract", help="extract frame-aligned features for every annotated video",
                       description="One feature file per video and extractor under FEATS/<extractor>/<name>.npz, "
                                   "row i = annotation line i = frame i at time (i-1)/fps. Finished files are "
                                   "skipped, so rerunning an interrupted extraction resumes it.")
    p.add_argument("--data", type=Path, required=True, help="Aff-Wild2 root (videos/, cropped_aligned/, annotations/)")
    p.add_argument("--features", type=Path, required=True, help="feature store folder (created)")
    p.add_argument("--extractors", default=None,
                   help="comma list of iresnet,landmarks,vggish,egemaps,logmel (default: the three streams the "
                        "config resolves, using offline stand-ins where weights are missing)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="process only the I-th of N deterministic parts of the videos (for parallel jobs sharing "
                        "FEATS; each writes its own manifest part: run `vafusion merge-features` after the last)")
    _add_weights(p)
    _add_common(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("cv", help="6-fold cross-validation (paper Table 2)",
                       description="Fold 0 = Validation_Set; folds 1-5 = Train_Set split video-level into 5 parts "
                                   "(written to RUN/folds.csv). Each model is trained on the other folds and "
                                   "scored on its fold. Finished (model, fold) pairs are skipped on rerun.")
    p.add_argument("--data", type=Path, required=True, help="Aff-Wild2 root")
    p.add_argument("--features", type=Path, required=True, help="feature store written by `vafusion extract`")
    p.add_argument("--out", type=Path, required=True, help="run directory (created)")
    p.add_argument("--models", default=None, help="comma list of fusion,visual,vggish,logmel (default: all four)")
    p.add_argument("--folds", type=Path, default=None, metavar="FILE", help="reuse a fold assignment (folds.csv)")
    p.add_argument("--resume", action="store_true", help="continue interrupted training from its last checkpoint")
    g = p.add_argument_group("devices (Lightning; see docs/scaling.md for multi-GPU and SLURM launches)")
    g.add_argument("--devices", default=None,
                   help="devices per node: a count (2), a list (0,1) or auto (train.devices, default 1)")
    g.add_argument("--num-nodes", type=int, default=None, help="number of nodes (train.num_nodes, default 1)")
    g.add_argument("--strategy", default=None,
                   help="Lightning strategy, e.g. ddp for several devices or nodes (train.strategy, default auto); "
                        "on CPU set --set train.accelerator=cpu")
    _add_weights(p)
    _add_common(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("config", help="print the resolved configuration",
                       description="Print every configuration key with its value after --config and --set.")
    p.add_argument("--show", action="store_true", help="(default) print the configuration")
    _add_common(p)
    p.set_defaults(func=cmd_config)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vafusion`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VafusionError as exc:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"vafusion: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " with --resume" if getattr(args, "resume", None) is False else ""
        print(f"vafusion: interrupted; rerun the same command{hint} to continue (finished work is kept)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
