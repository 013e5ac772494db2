"""Whole jobs built from the stages: extract a dataset's features, cross-validate, and the demo.

The CLI's ``extract``, ``cv`` and ``demo`` commands call these and only print what they return.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vafusion.config import Config
from vafusion.data.affwild2 import scan
from vafusion.data.extract import extract, parse_shard
from vafusion.data.folds import assign_folds, read_folds, write_folds
from vafusion.data.synth import make_corpus
from vafusion.errors import VafusionError
from vafusion.evaluation.report import write_report, write_results
from vafusion.features.extractors import resolve_streams
from vafusion.io.atomic import prepare_dir
from vafusion.train.cv import MODELS, CrossValidation


def extractor_names(text: str | None, cfg: Config) -> tuple[list[str], dict[str, str], list[str]]:
    """Extractors to run (``text``: a comma list, default the three streams the config resolves), the
    streams and the notes on stand-ins."""
    streams, notes = resolve_streams(cfg.features)
    if text:
        names = [t.strip() for t in text.split(",") if t.strip()]
    else:
        names = list(dict.fromkeys(streams.values()))
    return names, streams, notes


def run_extract(
    data: Path,
    feats: Path,
    cfg: Config,
    extractors: str | None = None,
    shard: str | None = None,
    progress: bool = True,
) -> tuple[dict, list[str]]:
    """Extract the features of every annotated video of ``data`` into ``feats``; (summary, notes)."""
    names, _, notes = extractor_names(extractors, cfg)
    summary = extract(scan(data), feats, cfg.features, names, shard=parse_shard(shard), progress=progress)
    return summary, notes


def parse_models(text: str | None, cfg: Config) -> list[str]:
    """Models to cross-validate: a comma list (default ``cv.models``), each one ``vafusion cv`` trains."""
    chosen = [m.strip() for m in text.split(",") if m.strip()] if text else list(cfg.cv.models)
    for m in chosen:
        if m not in MODELS:
            raise VafusionError(
                None, f"unknown model {m!r}", f"--models takes a comma list of {', '.join(MODELS)}"
            )
    if len(set(chosen)) < len(chosen):
        raise VafusionError(None, f"--models {text!r} names a model twice", "name each model once")
    return chosen


@dataclass
class CVRun:
    """What a cross-validation produced."""

    results: pd.DataFrame
    streams: dict[str, str]
    notes: list[str]
    left_out: dict[str, str] = field(default_factory=dict)


def run_cv(
    data: Path,
    feats: Path,
    out: Path,
    cfg: Config,
    models: str | None = None,
    folds_file: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> CVRun:
    """Run the folds and write ``results.csv``.

    Folds come from ``folds_file``, else an earlier ``OUT/folds.csv`` (so a rerun keeps its split), else
    they are assigned from the corpus (:func:`vafusion.data.folds.assign_folds`).
    """
    prepare_dir(out, "--out")
    corpus = scan(data)
    chosen = parse_models(models, cfg)
    streams, notes = resolve_streams(cfg.features)
    n = cfg.cv.n_train_folds
    if folds_file is not None:
        folds = read_folds(folds_file, corpus.samples, n)
    elif (out / "folds.csv").exists():
        folds = read_folds(out / "folds.csv", corpus.samples, n)
    else:
        folds = assign_folds(corpus.samples, seed=cfg.cv.seed, n_train_folds=n)
    out.mkdir(parents=True, exist_ok=True)
    write_folds(folds, out / "folds.csv")
    cv = CrossValidation(corpus, feats, out, cfg, folds, streams, notes, progress=progress, resume=resume)
    results = cv.run_all(chosen, _folds_to_run(cfg.cv.folds, folds, folds_file or out / "folds.csv", notes))
    write_results(results, out / "results.csv")
    return CVRun(results, streams, notes, {name: exc.one_line() for name, exc in cv.failed.items()})


def _folds_to_run(wanted: list[int], folds: pd.DataFrame, source: Path, notes: list[str]) -> list[int]:
    """``cv.folds`` that have samples. Fold 0 is left out with a note when the corpus has no
    Validation_Set; any other requested fold without samples is an error naming the fold table."""
    present = set(folds["fold"])
    if 0 in wanted and 0 not in present and not (folds["split"] == "Validation_Set").any():
        notes.append("fold 0 (the Validation_Set) skipped: the corpus has no Validation_Set annotations")
        wanted = [f for f in wanted if f != 0]
    empty = [f for f in wanted if f not in present]
    if empty:
        raise VafusionError(
            source,
            f"fold{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))} of cv.folds "
            f"{'have' if len(empty) > 1 else 'has'} no samples",
            "give every fold samples in the fold table, or leave those folds out with --set cv.folds=[...]",
        )
    return wanted


@dataclass
class DemoRun:
    """What ``vafusion demo`` produced: the CV run, its report and the wall time of each step."""

    cv: CVRun
    report: Path
    timings: dict[str, float]


def run_demo(
    out: Path,
    cfg: Config,
    videos: int,
    seconds: float,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
    complain: Callable[[str], None] = print,
) -> DemoRun:
    """The built-in corpus, its features, and 6-fold CV of every model; the report records the timings.

    ``say`` gets the progress lines, ``complain`` the lines about videos that failed.
    """
    prepare_dir(out, "--out")
    data, feats = out / "data", out / "features"
    timings = {}
    t0 = time.perf_counter()
    if not (data / "synth_manifest.json").exists():
        say(f"[1/3] synthesising {videos} videos × {seconds:g} s into {data}")
        make_corpus(data, videos=videos, seconds=seconds, seed=seed, progress=progress)
    else:
        say(f"[1/3] corpus already in {data} (delete it to regenerate)")
    timings["synth"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    say(f"[2/3] extracting features into {feats}")
    summary, notes = run_extract(data, feats, cfg, progress=progress)
    lines, failures = extract_lines(summary, notes)
    for line in lines:
        say(line)
    for line in failures:
        complain(line)
    timings["extract"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    say(f"[3/3] 6-fold cross-validation of {', '.join(cfg.cv.models)} into {out}")
    cv = run_cv(data, feats, out, cfg, resume=resume, progress=progress)
    timings["cv"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    lines = ["## Wall time of this demo", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    report = write_report(out, cv.results, cv.notes, cv.streams, lines)
    return DemoRun(cv, report, timings)


def extract_lines(summary: dict, notes: list[str]) -> tuple[list[str], list[str]]:
    """What an extraction did, as lines for stdout and (failures) for stderr."""
    out = [f"note: {n}" for n in notes]
    if summary.get("face_calibration"):
        out.append(f"note: {summary['face_calibration']}")
    for name, st in summary["extractors"].items():
        rate = f"{st['frames_per_s']} frames/s" if st["frames_per_s"] else "-"
        out.append(
            f"{name:10s} done {st['done']:4d}  skipped {st['skipped']:4d}  failed {len(st['failed']):3d}  "
            f"frames {st['frames']:7d} (valid {st['valid_frames']})  {rate}"
        )
        out += [
            f"  {k}: {len(v)} — {', '.join(v[:4])}{' …' if len(v) > 4 else ''}"
            for k, v in st["notes"].items()
        ]
    out += [f"  length mismatch: {m}" for m in summary["length_mismatch"]]
    out += [f"  dataset: {p}" for p in summary["problems"]]
    err = []
    if summary["failed"]:
        err = [f"{len(summary['failed'])} failed:"] + [f"  {f}" for f in summary["failed"]]
    return out, err
