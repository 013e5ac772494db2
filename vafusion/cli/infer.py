"""Inference commands: ``predict`` (any video -> per-frame VA files) and ``submit`` (ABAW test submission)."""

from __future__ import annotations

import argparse
import errno
import sys
import time
import traceback
import warnings
from pathlib import Path

from vafusion.cli.common import add_output, models_help, non_negative, positive
from vafusion.errors import OutputError, VafusionError
from vafusion.inference.hooks import ProgressHook
from vafusion.inference.predictor import PredictionWarning, Predictor
from vafusion.inference.submit import check_submission, frame_counts, read_video_list, write_submission
from vafusion.inference.writers import output_files, output_names, refuse_inputs_as_outputs, write_outputs
from vafusion.io.atomic import prepare_dir, prepare_file
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
    _add_audio_option(p)
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
        type=non_negative(int),
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
        type=non_negative(float),
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


def _add_audio_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audio-stream",
        type=non_negative(int),
        default=0,
        metavar="N",
        help="which audio stream of a file to use when it has several, counted from 0 (default 0; predict "
        "says which streams a file has)",
    )


def _add_face_group(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("face detection and tracking (dlib)")
    f.add_argument(
        "--detect-every",
        type=positive(int),
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
        type=positive(int),
        default=640,
        metavar="PX",
        help="the detector's coarse pass sees frames shrunk to this longer side (default 640: fast on "
        "HD video); where it finds no face, a fine pass looks for faces down to 48 px tall in the original "
        "frame, and tracked faces are re-detected in a small region around them (docs/predict.md)",
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
        audio_stream=args.audio_stream,
    )


def _plan(args: argparse.Namespace) -> dict[Path, dict[str, Path]]:
    """Each video's output files; checked before any work: the destination takes files, no two inputs write
    the same file, and no earlier result is replaced without ``--overwrite``."""
    prepare_dir(args.out, "--out")
    names = output_names(list(args.videos))
    plan = {v: output_files(names[v], args.out, args.overlay, not args.no_plot) for v in args.videos}
    renamed = [f"{v} -> {names[v]}" for v in args.videos if names[v] != Path(v).stem]
    if renamed:
        print(
            "note: inputs share a file name, so their outputs keep their folders (or extensions): "
            + "; ".join(renamed)
        )
    refuse_inputs_as_outputs(plan)
    existing = [f for files in plan.values() for f in files.values() if f.exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 1} more output files" if len(existing) > 1 else ""
        them = "them" if len(existing) > 1 else "it"
        raise OutputError(
            existing[0],
            f"exists (from an earlier run){more}",
            f"pass --overwrite to replace {them}, or choose another --out",
        )
    return plan


def _predict_one(predictor: Predictor, video: Path, files: dict[str, Path], args: argparse.Namespace) -> None:
    """Predict one video, write its files and print one line; the prediction's warnings go to stderr."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PredictionWarning)  # printed below, once each
        prediction = predictor.predict_file(video, faces=args.faces)
        write_outputs(prediction, files, progress=not args.quiet, audio_stream=predictor.audio_stream)
    for message in prediction.warnings:
        print(f"vafusion: warning: {message}", file=sys.stderr)
    table, vf = prediction.table, prediction.features
    secs = time.perf_counter() - t0
    media = float(vf.times[-1]) + 1.0 / max(vf.fps, 1e-6) if vf.length else 0.0
    audio = "none" if not vf.audio_seconds else f"{vf.audio_seconds:.1f} s"
    found = f"face in {100 * table['face'].mean():.0f} %"
    if "person" in table:
        shares = table.groupby("person")["face"].mean()
        found = f"{len(shares)} people, face in " + ", ".join(f"{100 * s:.0f}" for s in shares) + " %"
    print(
        f"{video}: {vf.length} frames, {found}, audio {audio}; "
        f"{secs:.1f} s ({secs / media if media else 0:.2f} x real time) -> "
        f"{', '.join(str(p) for p in files.values())}"
    )


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""Errors that every later video would hit too (a library writing on a full disk): they stop the batch."""


def _failure(video: Path, exc: Exception, verbose: bool) -> str:
    """Print one line on why ``video`` failed (after its traceback with ``--verbose``) and return it.

    Called inside the ``except`` block, so ``--verbose`` can show where an unexpected error came from.
    """
    if verbose:
        traceback.print_exc()
    if isinstance(exc, VafusionError):
        line = exc.one_line()
    else:
        detail = (str(exc).strip().splitlines() or [""])[0]
        line = (
            f"{video}: failed with {type(exc).__name__}{f' ({detail})' if detail else ''}; "
            "rerun with --verbose for details, and report it if the file plays elsewhere"
        )
    print(f"vafusion: error: {line}", file=sys.stderr)
    return line


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict every video; a video that fails is reported and the others go on (exit 2 if any failed)."""
    plan = _plan(args)
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
            _predict_one(predictor, video, plan[video], args)
        except OutputError:
            raise  # a full or read-only disk fails every later video too
        except Exception as exc:  # one video's failure, expected or not, never costs the others
            if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
                raise
            failed.append(_failure(video, exc, args.verbose))
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
    prepare_file(args.out, "--out")
    if args.out.exists() and not args.overwrite:
        raise OutputError(
            args.out, "exists (from an earlier run)", "pass --overwrite to replace it, or another --out"
        )
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


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """``vafusion predict``."""
    p = sub.add_parser(
        "predict",
        help="per-frame valence/arousal for any video file(s)",
        description="For each VIDEO write OUT/<stem>.csv (frame,time,valence,arousal,face,box_x,box_y,"
        "box_w,box_h,valence_sd,arousal_sd: one row per decoded frame, frame numbered from 1, time in "
        "seconds from the stream's timestamps, face=1 where the subject's face was found and aligned, its "
        "box in pixels of the upright frame, *_sd the spread of the fold models; with --faces all one row "
        "per person and frame, a person column after face) and OUT/<stem>.png (VA over time, one panel per "
        "person, frames without a face shaded). "
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
        help="also write OUT/<stem>_overlay.mp4: the video with the face box (with --faces all each "
        "person's box, number and live values), the VA trace of the last 10 s and a valence-arousal dot "
        "drawn on it (audio kept)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files left by an earlier run (without it, predict refuses before any work). "
        "Inputs that share a file name (a/clip.mp4, b/clip.mp4) never overwrite each other: their outputs "
        "keep the folders that tell them apart (OUT/a/clip.csv, OUT/b/clip.csv), or their extensions in one "
        "folder (a/clip.mp4, a/clip.mkv -> OUT/clip.mp4.csv, OUT/clip.mkv.csv). An output that would replace "
        "one of the inputs is refused",
    )
    p.add_argument(
        "--faces",
        default="one",
        choices=["one", "all"],
        help="one (default): follow one subject (--subject), one row per frame; all: follow every person "
        "(identity kept across misses, crossings and short occlusions by dlib's face descriptor plus "
        "position), one row per person and frame with a person column (0, 1, ... left to right as they "
        "first appear); the audio is fused with each person's face",
    )
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_model_options(p, required=False)
    p.set_defaults(func=cmd_submit)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``predict`` and ``submit``."""
    _add_predict(sub)
    _add_submit(sub)
