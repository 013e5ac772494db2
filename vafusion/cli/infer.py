"""Inference commands: ``predict`` (any video -> per-frame VA files), ``submit`` (ABAW test submission) and
``export`` (ONNX)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from vafusion.cli.common import add_output, add_weights, int_list, models_help
from vafusion.errors import VafusionError
from vafusion.inference.export import export_run
from vafusion.inference.hooks import ProgressHook
from vafusion.inference.predictor import PredictionWarning, Predictor
from vafusion.inference.submit import check_submission, frame_counts, read_video_list, write_submission
from vafusion.inference.writers import write_outputs
from vafusion.models.registry import model_names


def _subject(text: str):
    """``largest`` | ``first`` | a face index from the left."""
    if text in ("largest", "first"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected largest, first or a face index (0, 1, ...), got {text!r}")


def add_model_options(p: argparse.ArgumentParser, required: bool) -> None:
    """The run, model and face-tracking flags of ``predict`` and ``submit``."""
    _add_model_group(p, required)
    _add_face_group(p)
    add_output(p)


def _add_model_group(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        type=Path,
        metavar="RUN",
        required=required,
        help="run directory written by `vafusion cv` or `vafusion demo` (models/, config.yaml, "
        "streams.json), a RUN/models/<model> folder or one fold<k>.pt; its front ends and features settings "
        "are used, so inference matches training. `vafusion_tiny` runs an untrained miniature model (a smoke "
        "test of the pipeline; its values mean nothing)",
    )
    g.add_argument(
        "--which",
        default="fusion",
        choices=model_names(trainable=True),
        help=f"which model of the run (default fusion): {models_help()}",
    )
    g.add_argument(
        "--fold",
        type=int,
        default=None,
        metavar="K",
        help="use only the model of fold K (default: average the predictions of every fold model)",
    )
    g.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx"],
        help="run the fold networks in PyTorch (default) or ONNX Runtime; onnx uses "
        "RUN/onnx/<model>/fold<k>.onnx and exports it there first (checked against PyTorch) when missing "
        "or made from another checkpoint",
    )
    g.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="Gaussian smoothing of the output over time, standard deviation in seconds (default 0: off; "
        "see docs/predict.md for what it does to CCC)",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="features.KEY=VALUE",
        help="repoint a front-end weight file that moved since training, e.g. "
        "--set features.iresnet_weights=/new/place/backbone.pth (only features.* keys; repeatable)",
    )


def _add_face_group(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("face detection and tracking (dlib)")
    f.add_argument(
        "--detect-every",
        type=int,
        default=5,
        metavar="K",
        help="run the face detector every K-th frame and track the face in between "
        "(default 5; 1: every frame)",
    )
    f.add_argument(
        "--subject",
        type=_subject,
        default="largest",
        metavar="WHO",
        help="whose face to follow when several are visible: largest (default; re-picked after the face "
        "is lost), first (the first face found, followed by position), or N (the N-th face from the "
        "left, 0-based)",
    )
    f.add_argument(
        "--detector",
        default="hog",
        choices=["hog", "cnn"],
        help="hog (default, fast) or cnn (dlib MMOD: more robust to pose, ~100x slower on CPU)",
    )
    f.add_argument(
        "--detect-size",
        type=int,
        default=640,
        metavar="PX",
        help="the detector sees frames shrunk to this longer side (default 640); raise it for small faces",
    )


def _predictor(args: argparse.Namespace) -> Predictor:
    """The predictor the flags describe; its notes on the run are printed once, here."""
    if args.model is None:
        raise VafusionError(
            None, "no model given", "pass --model RUN (a run directory from `vafusion cv` or `vafusion demo`)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PredictionWarning)
        predictor = _load(args)
    for note in predictor.notes:
        print(f"vafusion: warning: {note}", file=sys.stderr)
    return predictor


def _load(args: argparse.Namespace) -> Predictor:
    return Predictor.from_run(
        args.model,
        which=args.which,
        fold=args.fold,
        feature_overrides=args.overrides,
        backend=args.backend,
        smooth=args.smooth,
        detect_every=args.detect_every,
        subject=args.subject,
        detector=args.detector,
        detect_size=args.detect_size,
        hook=None if args.quiet else ProgressHook(),
    )


def _predict_one(predictor: Predictor, video: Path, args: argparse.Namespace) -> None:
    """Predict one video, write its files and print one line; the prediction's warnings go to stderr."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PredictionWarning)  # printed below, once each
        prediction = predictor.predict_file(video)
        files = write_outputs(
            prediction, args.out, overlay=args.overlay, plot=not args.no_plot, progress=not args.quiet
        )
    for message in prediction.warnings:
        print(f"vafusion: warning: {message}", file=sys.stderr)
    table, vf = prediction.table, prediction.features
    secs = time.perf_counter() - t0
    media = float(vf.times[-1]) + 1.0 / max(vf.fps, 1e-6) if vf.length else 0.0
    audio = "none" if not vf.audio_seconds else f"{vf.audio_seconds:.1f} s"
    print(
        f"{video}: {len(table)} frames, face in {100 * table['face'].mean():.0f} %, audio {audio}; "
        f"{secs:.1f} s ({secs / media if media else 0:.2f} x real time) -> "
        f"{', '.join(str(p) for p in files.values())}"
    )


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict every video; a video that fails is reported and the others go on (exit 2 if any failed)."""
    predictor = _predictor(args)
    if not args.quiet:
        folds = ", ".join(str(m.fold) for m in predictor.bundle.folds)
        print(
            f"model: {args.model} ({args.which}, fold {folds}; streams "
            f"{', '.join(f'{r}={e}' for r, e in predictor.streams.items())})"
        )
    failed: list[str] = []
    for video in args.videos:
        try:
            _predict_one(predictor, video, args)
        except VafusionError as exc:
            failed.append(exc.one_line())
            if args.verbose:
                raise
            print(f"vafusion: error: {exc.one_line()}", file=sys.stderr)
    if failed and len(args.videos) > 1:
        print(f"{len(failed)} of {len(args.videos)} videos failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
    return 2 if failed else 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Write and check a submission file, or only check one (``--check``)."""
    if args.data is None or args.videos is None:
        raise VafusionError(
            None, "--data and --videos are required", "pass the Aff-Wild2 root and the test-set list"
        )
    names = read_video_list(args.videos)
    if args.check is not None:
        result = check_submission(args.check, frame_counts(args.data, names))
        print(f"{args.check}: valid ({result['videos']} videos, {result['rows']} rows)")
        return 0
    if args.out is None:
        raise VafusionError(None, "no output file given", "pass --out FILE (or --check FILE to validate one)")
    predictor = _predictor(args)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PredictionWarning)
        summary = write_submission(predictor, args.data, names, args.out, progress=not args.quiet)
    for key, items in summary.notes.items():
        print(f"  {key}: {len(items)} — {', '.join(items[:4])}{' …' if len(items) > 4 else ''}")
    print(
        f"wrote {summary.path}: {summary.videos} videos, {summary.rows} rows (faces from crops: "
        f"{len(summary.from_crops)}, detected in the video: {len(summary.from_video)}, reused: "
        f"{len(summary.reused)}) in {time.perf_counter() - t0:.1f} s; checked against the frame counts"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the run's models and front ends and print where each went."""
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
    )
    for m in summary["models"]:
        print(f"{m['model']} fold {m['fold']}: {m['onnx']} (max |onnx - torch| {m['max_abs_diff']:.2g})")
    for name, fe in summary["frontends"]["exported"].items():
        print(f"front end {name}: {fe['onnx']} (max |onnx - torch| {fe['max_abs_diff']:.2g})")
    for name, why in summary["frontends"]["skipped"].items():
        print(f"skipped front end {name}: {why}")
    print(
        f"exported {len(summary['models'])} models in {summary['seconds']:.1f} s; "
        f"summary: {args.out / 'export.json'}"
    )
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """``vafusion predict``."""
    p = sub.add_parser(
        "predict",
        help="per-frame valence/arousal for any video file(s)",
        description="For each VIDEO write OUT/<stem>.csv (frame,time,valence,arousal,face: one row per "
        "decoded frame, frame numbered from 1, time in seconds from the stream's timestamps, face=1 where "
        "the subject's face was found) and OUT/<stem>.png (VA over time, frames without a face shaded). "
        "Any container/codec FFmpeg reads, any frame rate (variable too), rotation metadata applied, "
        "any audio rate/channels or no audio. Frames and audio are streamed, so long videos need "
        "little memory (docs/predict.md).",
    )
    p.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="video file(s)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("predictions"),
        metavar="DIR",
        help="output folder, created (default: predictions)",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="also write OUT/<stem>_overlay.mp4: the video with the face box, the VA trace of the last "
        "10 s and a valence-arousal dot drawn on it (audio kept)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    add_model_options(p, required=True)
    p.set_defaults(func=cmd_predict)


def _add_submit(sub: argparse._SubParsersAction) -> None:
    """``vafusion submit``."""
    p = sub.add_parser(
        "submit",
        help="ABAW VA test-set predictions in the challenge's submission format",
        description="Predict every video named in the challenge's test-set list and write one file: header "
        "image_location,valence,arousal, then <name>/00001.jpg,v,a for every frame of every listed "
        "video (_left/_right names included, frames without a face included, values clipped to "
        "[-1, 1]). Faces come from cropped_aligned/<name> like `vafusion extract`, or are detected in "
        "the video where the crop folder is missing. The finished file is checked against the videos' "
        "frame counts; --check FILE checks an existing file only.",
    )
    p.add_argument("--data", type=Path, metavar="ROOT", help="Aff-Wild2 root (videos/, cropped_aligned/)")
    p.add_argument(
        "--videos",
        type=Path,
        metavar="LIST",
        help="Valence_Arousal_Estimation_Challenge_test_set_release.txt (one name per line)",
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="submission file to write")
    p.add_argument(
        "--check",
        type=Path,
        metavar="FILE",
        default=None,
        help="only validate FILE against the listed videos' frame counts (needs --data and --videos)",
    )
    add_model_options(p, required=False)
    p.set_defaults(func=cmd_submit)


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
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or later (default 17)")
    p.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest |ONNX Runtime - PyTorch| accepted (default 1e-4; front ends: times max(1, |output|))",
    )
    p.add_argument("--no-frontends", action="store_true", help="export only the fusion/single-stream models")
    add_weights(p)
    add_output(p, "output")
    p.set_defaults(func=cmd_export)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``predict``, ``submit`` and ``export``."""
    _add_predict(sub)
    _add_submit(sub)
    _add_export(sub)
