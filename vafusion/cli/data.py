"""Data commands: ``synth`` (built-in corpus), ``extract`` (feature store), ``merge-features``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vafusion.cli.common import add_common, add_output, add_weights, config_from, non_negative, positive
from vafusion.data.affwild2 import scan
from vafusion.data.shards import merge_shards
from vafusion.data.synth import make_corpus
from vafusion.errors import VafusionError
from vafusion.features.extractors import AUDIO_EXTRACTORS, FACE_EXTRACTORS
from vafusion.io.atomic import prepare_dir
from vafusion.pipeline import extract_lines, extractor_names, run_extract


def cmd_synth(args: argparse.Namespace) -> int:
    """Write the synthetic corpus."""
    prepare_dir(args.out, "OUT")
    t0 = time.perf_counter()
    manifest = make_corpus(
        Path(args.out), videos=args.videos, seconds=args.seconds, seed=args.seed, progress=not args.quiet
    )
    n = len(manifest.get("videos", manifest)) if isinstance(manifest, dict) else args.videos
    print(f"wrote {n} synthetic videos to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Extract features and print what was done; 1 if any video failed."""
    summary, notes = run_extract(
        args.data, args.features, config_from(args), args.extractors, args.shard, progress=not args.quiet
    )
    out, err = extract_lines(summary, notes)
    print("\n".join(out))
    if err:
        print("\n".join(err), file=sys.stderr)
    return 1 if summary["failed"] else 0


def cmd_merge_features(args: argparse.Namespace) -> int:
    """Check a sharded store; write its manifest when complete, else list what to rerun (exit 1)."""
    cfg = config_from(args)
    names, _, _ = extractor_names(args.extractors, cfg)
    if args.shards is not None and args.shards < 1:
        raise VafusionError(
            None, f"bad --shards {args.shards}", "pass the N of the --shard I/N runs (N >= 1)"
        )
    report = merge_shards(scan(args.data), args.features, cfg.features, names, args.shards)
    for note in report["notes"]:
        print(f"note: {note}")
    for f in report["recorded_failures"]:
        print(f"recorded failure: {f}")
    if report["complete"]:
        print(
            f"complete: {report['ok']}/{report['expected']} (sample x extractor) files for "
            f"{', '.join(report['extractors'])}; wrote {args.features / 'manifest.parquet'} "
            f"({report['manifest_rows']} rows)"
        )
        return 0
    print(
        f"incomplete: {report['ok']}/{report['expected']} files are present, current and full length; "
        f"{len(report['problems'])} problems:",
        file=sys.stderr,
    )
    shown = report["problems"][: args.show]
    for p in shown:
        shard = f" [shard {p['shard']}]" if p["shard"] else ""
        print(f"  {p['extractor']}/{p['sample']}{shard}: {p['kind']}: {p['problem']}", file=sys.stderr)
    if len(report["problems"]) > len(shown):
        print(
            f"  … {len(report['problems']) - len(shown)} more in {args.features / 'merge_report.json'}",
            file=sys.stderr,
        )
    print("to finish, run:", file=sys.stderr)
    for c in report["commands"]:
        print(f"  {c}", file=sys.stderr)
    return 1


def _add_synth(sub: argparse._SubParsersAction) -> None:
    """``vafusion synth``."""
    p = sub.add_parser(
        "synth",
        help="write a synthetic corpus in the Aff-Wild2 layout",
        description="Write OUT/videos/batch1/*.mp4 (H.264 + AAC), OUT/cropped_aligned/<name>/00001.jpg "
        "(112x112) and OUT/annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/"
        "<name>.txt. Ground-truth VA drives both the face and the voice.",
    )
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--videos", type=positive(int), default=24, help="number of videos (default 24)")
    p.add_argument("--seconds", type=positive(float), default=15.0, help="seconds per video (default 15)")
    p.add_argument(
        "--seed", type=non_negative(int), default=0, help="random seed; same seed, same corpus (default 0)"
    )
    add_output(p)
    p.set_defaults(func=cmd_synth)


def _add_extract(sub: argparse._SubParsersAction) -> None:
    """``vafusion extract``."""
    extractors = ",".join(FACE_EXTRACTORS + AUDIO_EXTRACTORS)
    p = sub.add_parser(
        "extract",
        help="extract frame-aligned features for every annotated video",
        description="One feature file per video and extractor under FEATS/<extractor>/<name>.npz, "
        "row i = annotation line i = frame i at time (i-1)/fps. Finished files are "
        "skipped, so rerunning an interrupted extraction resumes it.",
    )
    p.add_argument(
        "--data", type=Path, required=True, help="Aff-Wild2 root (videos/, cropped_aligned/, annotations/)"
    )
    p.add_argument("--features", type=Path, required=True, help="feature store folder (created)")
    p.add_argument(
        "--extractors",
        default=None,
        help=f"comma list of {extractors} (default: the three streams the config resolves, using offline "
        "stand-ins where weights are missing)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="process only the I-th of N deterministic parts of the videos (for parallel jobs sharing "
        "FEATS; each writes its own manifest part: run `vafusion merge-features` after the last)",
    )
    add_weights(p)
    add_common(p)
    p.set_defaults(func=cmd_extract)


def _add_merge_features(sub: argparse._SubParsersAction) -> None:
    """``vafusion merge-features``."""
    p = sub.add_parser(
        "merge-features",
        help="check a sharded feature store and write its manifest.parquet",
        description="After `vafusion extract --shard I/N` jobs (in any order, on any nodes sharing "
        "FEATS), check that every (sample x extractor) file exists, was made with the "
        "current settings (fingerprint) and has one row per annotation line. If so, "
        "write FEATS/manifest.parquet and exit 0; otherwise list the problems and the "
        "exact `vafusion extract --shard I/N` commands that fix them, and exit 1. "
        "FEATS/merge_report.json holds the full report either way.",
    )
    p.add_argument("--data", type=Path, required=True, help="Aff-Wild2 root the shards extracted")
    p.add_argument("--features", type=Path, required=True, help="feature store the shards wrote into")
    p.add_argument(
        "--extractors",
        default=None,
        help="comma list of extractors to check (default: the three streams the config resolves, as "
        "`extract` does); pass the same list the shards used",
    )
    p.add_argument(
        "--shards",
        type=positive(int),
        default=None,
        metavar="N",
        help="N of the --shard I/N runs, used to name which shard to rerun (default: read from the "
        "manifest parts the shards left)",
    )
    p.add_argument(
        "--show", type=positive(int), default=20, metavar="K", help="print at most K problems (default 20)"
    )
    add_weights(p)
    add_common(p)
    p.set_defaults(func=cmd_merge_features)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``synth``, ``extract`` and ``merge-features``."""
    _add_synth(sub)
    _add_extract(sub)
    _add_merge_features(sub)
