"""Writing the corpus: preparing the folder, rendering the planned videos in worker processes, the manifest.

``make_corpus`` is the entry point (also ``vafusion synth`` and ``python -m vafusion.data.synth``).
The face template is built once in the parent and handed to every worker, which then only renders.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2

from vafusion.data.synth.face import FaceTemplate, face_template
from vafusion.data.synth.plan import (
    ANNOTATION_DIR,
    CROP_DIR,
    GENERATOR,
    MANIFEST,
    SAMPLE_RATE,
    VIDEO_DIR,
    VideoSpec,
    plan_videos,
)
from vafusion.data.synth.video import render_video
from vafusion.errors import VafusionError
from vafusion.io.atomic import write_text

_WORKER_TEMPLATE: FaceTemplate | None = None


def _init_worker(tmpl: FaceTemplate) -> None:
    """Give a worker process the parent's face template and keep OpenCV to one thread per worker."""
    global _WORKER_TEMPLATE
    _WORKER_TEMPLATE = tmpl
    cv2.setNumThreads(1)


def _worker(spec: VideoSpec, out: str) -> dict[str, Any]:
    """Render one video in a worker process (top level, so that it pickles)."""
    assert _WORKER_TEMPLATE is not None
    return render_video(spec, Path(out), _WORKER_TEMPLATE)


def _prepare_out(out: Path) -> None:
    """Create ``out``; replace an earlier synthetic corpus there, refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise VafusionError(out, "exists and is not a folder", "pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            ours = json.loads((out / MANIFEST).read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise VafusionError(
                out,
                f"folder is not empty and holds no synthetic corpus (no {MANIFEST} of {GENERATOR})",
                "pass a new or empty folder, so that no data of yours is overwritten",
            )
        for sub in (VIDEO_DIR, CROP_DIR, ANNOTATION_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    # Written first, so that a run cut short still marks the folder as ours and may be re-run over.
    write_text(out / MANIFEST, json.dumps({"generator": GENERATOR, "complete": False}) + "\n")


def _worker_count(workers: int | None, videos: int) -> int:
    """Processes to render with: ``workers``, else one per available CPU (at most 4); 1 inside a daemon."""
    if workers is None:
        workers = min(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4
        )
    workers = max(1, min(workers, videos))
    if mp.current_process().daemon:
        workers = 1
    return workers


def _render_all(
    specs: list[VideoSpec],
    out: Path,
    tmpl: FaceTemplate,
    workers: int,
    report: Callable[[dict[str, Any]], None],
) -> None:
    """Render every video, in this process or in a pool of ``workers``; ``report`` each entry when done."""
    if workers == 1:
        for spec in specs:
            report(render_video(spec, out, tmpl))
        return
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(tmpl,),
    ) as pool:
        futures = [pool.submit(_worker, spec, str(out)) for spec in specs]
        for fut in as_completed(futures):
            report(fut.result())


def _manifest(entries: list[dict[str, Any]], seed: int, seconds: float) -> dict[str, Any]:
    """The complete corpus manifest for the per-video ``entries`` (in plan order)."""

    def first(case: str) -> str | None:
        return next((e["name"] for e in entries if case in e["cases"]), None)

    return {
        "generator": GENERATOR,
        "format_version": 1,
        "complete": True,
        "seed": seed,
        "seconds": seconds,
        "sample_rate": SAMPLE_RATE,
        "frame_index": "0-based [start, stop) spans; crop files are 1-based (frame i -> %05d.jpg of i + 1)",
        "label_lag": "all videos: face and voice at frame t show the label of frame t + label_lag_frames",
        "splits": {
            s: [sub for e in entries if e["split"] == s for sub in e["subjects"]]
            for s in ("Train_Set", "Validation_Set")
        },
        "cases": {
            "two_person": first("two_person"),
            "fps_25": first("fps_25"),
            "no_audio": first("no_audio"),
            "stereo_audio": first("stereo_audio"),
            "invalid_spans": [e["name"] for e in entries if "invalid_spans" in e["cases"]],
            "no_face_spans": [e["name"] for e in entries if "no_face_spans" in e["cases"]],
        },
        "videos": entries,
    }


def make_corpus(
    out: Path,
    videos: int = 24,
    seconds: float = 15.0,
    seed: int = 0,
    progress: bool = True,
    *,
    workers: int | None = None,
) -> dict:
    """Write the synthetic corpus under ``out`` in the Aff-Wild2 layout; return (and save) its manifest.

    Deterministic for a given ``(videos, seconds, seed)``: same files, byte for byte, whatever
    ``workers`` is. About 1/4 of the videos go to Validation_Set. ``workers`` processes render videos
    in parallel (default: one per available CPU, at most 4). An earlier synthetic corpus in ``out`` is
    replaced; any other non-empty folder is refused. The manifest says ``"complete": true`` only once
    every file is written.
    """
    out = Path(out)
    if videos < 1:
        raise VafusionError(None, f"videos must be at least 1, got {videos}", "pass --videos 1 or more")
    if not seconds > 0:
        raise VafusionError(None, f"seconds must be positive, got {seconds}", "pass --seconds > 0")
    _prepare_out(out)
    specs = plan_videos(videos, seconds, seed)
    tmpl = face_template()
    entries: list[dict[str, Any]] = []

    def report(entry: dict[str, Any]) -> None:
        entries.append(entry)
        if progress:
            print(
                f"synth: [{len(entries)}/{len(specs)}] {entry['name']} ({entry['frames']} frames)",
                file=sys.stderr,
                flush=True,
            )

    _render_all(specs, out, tmpl, _worker_count(workers, len(specs)), report)
    order = {s.name: s.index for s in specs}
    entries.sort(key=lambda e: order[e["name"]])
    manifest = _manifest(entries, seed, seconds)
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m vafusion.data.synth OUT [--videos N] [--seconds S] [--seed K] [--workers W]``."""
    parser = argparse.ArgumentParser(prog="python -m vafusion.data.synth", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = make_corpus(args.out, args.videos, args.seconds, args.seed, workers=args.workers)
    except VafusionError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    frames = sum(e["frames"] for e in manifest["videos"])
    print(
        f"wrote {len(manifest['videos'])} videos, {frames} frames to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0
