"""ABAW VA test-set submission: write the predictions file and check a finished one.

Format (one file for the whole test set)::

    image_location,valence,arousal
    <name>/00001.jpg,0.123456,-0.045678
    ...

one row per frame of every listed video (``<video>_left`` / ``<video>_right`` for two-person videos),
frames numbered from 1 with five digits like the ``cropped_aligned`` images, values clipped to [-1, 1],
frames without a face included (the model predicts them from the voice and the temporal context).

Features follow ``vafusion extract`` exactly where the dataset allows: the ``cropped_aligned/<name>``
crops feed the face extractor (frames without a crop are masked, as in training) and the whole audio track
feeds the audio extractors at the frames' times. When a name has no crop folder, faces are detected and
aligned in the video instead (``Predictor``'s video pass); for ``_left`` / ``_right`` names the tracked
subject is the leftmost / second-from-left face.

Per-video predictions are kept in ``FILE.parts/`` until the file is complete, so an interrupted run
continues where it stopped (parts made with other models or settings are discarded).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vafusion.data.affwild2 import Sample, scan
from vafusion.data.extract import ExtractorStats, audio_features, face_features, probe_video, sample_frames
from vafusion.errors import VafusionError
from vafusion.inference.predictor import Predictor
from vafusion.io.atomic import atomic_path, write_json
from vafusion.io.video import VIDEO_EXTENSIONS, row_times

HEADER = "image_location,valence,arousal"
_ROW = re.compile(r"^(?P<name>[^,/]+)/(?P<frame>\d{5})\.jpg$")
MAX_LISTED = 8


@dataclass
class SubmissionSummary:
    """What ``write_submission`` did."""

    path: Path
    videos: int = 0
    rows: int = 0
    from_crops: list[str] = field(default_factory=list)
    from_video: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)


def read_video_list(path: str | Path) -> list[str]:
    """Names from the challenge's test-set list, one per line (blank lines and a video extension ignored)."""
    path = Path(path)
    if not path.is_file():
        raise VafusionError(
            path,
            "video list not found",
            "pass the challenge's Valence_Arousal_Estimation_Challenge_test_set_release.txt",
        )
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VafusionError(
            path,
            f"video list cannot be read ({exc.__class__.__name__})",
            "it should be a text file with one video name per line",
        ) from None
    names: list[str] = []
    for i, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        for ext in VIDEO_EXTENSIONS:
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
        if "/" in name or "," in name:
            raise VafusionError(
                path,
                f"line {i} is not a video name: {line.strip()!r}",
                "write one name per line, e.g. 2-30-640x360 or 10-60-1280x720_right",
            )
        names.append(name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise VafusionError(
            path, f"{len(dupes)} names are listed twice, e.g. {dupes[0]}", "list each video once"
        )
    if not names:
        raise VafusionError(path, "the video list is empty", "write one video name per line")
    return names


def _samples(root: str | Path, names: list[str]) -> dict[str, Sample]:
    """The test samples of ``names`` (video and crop folder under ``root``); a missing video is an error."""
    corpus = scan(root, names=names)
    found = {s.name: s for s in corpus.samples if s.split == "Test"}
    missing = [n for n in names if found.get(n) is None or found[n].video is None]
    if missing:
        raise VafusionError(
            Path(root) / "videos",
            f"no video for {len(missing)} listed names, e.g. {missing[0]}",
            f"put {found[missing[0]].video_id if missing[0] in found else missing[0]}.mp4 (or .avi) "
            "under videos/, or check --data",
        )
    return {n: found[n] for n in names}


def frame_counts(root: str | Path, names: list[str]) -> dict[str, int]:
    """Frames of each listed video (packets counted, as ``vafusion extract`` does)."""
    return {n: sample_frames(s)[0] for n, s in _samples(root, names).items()}


def side_subject(sample: Sample, default):
    """The face to track: leftmost for ``_left``, second from the left for ``_right``, else ``default``."""
    return {"left": 0, "right": 1}.get(sample.side or "", default)


def _from_crops(
    predictor: Predictor, sample: Sample, n: int, stats: ExtractorStats
) -> tuple[dict, dict, np.ndarray]:
    """Feature rows of every stream as ``vafusion extract`` makes them: faces from the crop folder."""
    times = row_times(probe_video(sample.video), n)
    settings = predictor.features_config
    feats, valid = {}, {}
    for role in predictor.roles:
        ext = predictor.extractor(role)
        if ext.modality == "face":
            feats[role], valid[role] = face_features(
                ext, sample, n, int(settings.face_batch), stats, stride=int(settings.face_stride)
            )
        else:
            feats[role], valid[role] = audio_features(ext, sample, times, stats)
    return feats, valid, times


def _from_video(
    predictor: Predictor, sample: Sample, n: int, stats: ExtractorStats
) -> tuple[dict, dict, np.ndarray]:
    """Feature rows of every stream with faces detected in the video, padded or cut to ``n`` rows."""
    vf = predictor.extract(sample.video, subject=side_subject(sample, predictor.subject))
    m = min(n, vf.length)
    times = np.empty(n)
    times[:m] = vf.times[:m]
    if n > m:
        step = 1.0 / vf.fps if vf.fps > 0 else 1.0 / 30
        times[m:] = (vf.times[m - 1] if m else -step) + step * np.arange(1, n - m + 1)
    feats, valid = {}, {}
    for role in predictor.roles:
        f = np.zeros((n, vf.feats[role].shape[1]), np.float32)
        v = np.zeros(n, bool)
        f[:m], v[:m] = vf.feats[role][:m], vf.valid[role][:m]
        feats[role], valid[role] = f, v
    stats.notes["faces detected in the video (no crop folder)"].append(sample.name)
    if vf.length != n:
        stats.notes["decoded frames differ from the frame count"].append(
            f"{sample.name} ({vf.length} vs {n})"
        )
    return feats, valid, times


def predict_sample(
    predictor: Predictor, sample: Sample, notes: dict[str, list[str]] | None = None
) -> tuple[np.ndarray, str]:
    """(n, 2) predictions for every frame of ``sample``'s video, and where the faces came from."""
    n, _, _ = sample_frames(sample)
    stats = ExtractorStats()
    has_crops = sample.crops is not None and sample.crops.is_dir() and any(sample.crops.iterdir())
    if has_crops or not predictor.roles_with("face"):
        feats, valid, times = _from_crops(predictor, sample, n, stats)
        source = "crops"
    else:
        feats, valid, times = _from_video(predictor, sample, n, stats)
        source = "video"
    if notes is not None:
        for k, v in stats.notes.items():
            notes.setdefault(k, []).extend(v)
    return predictor.predict_arrays(feats, valid, times), source


def _open_parts(parts: Path, key: str) -> None:
    """The resume cache for ``key`` (the models and settings): kept if it is theirs, else started afresh."""
    stamp = parts / "parts.json"
    if parts.is_dir():
        try:
            same = json.loads(stamp.read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    write_json(stamp, {"key": key})


def _predict_parts(
    predictor: Predictor,
    samples: dict[str, Sample],
    counts: dict[str, int],
    parts: Path,
    summary: SubmissionSummary,
    progress: bool,
) -> None:
    """One ``parts/<name>.npy`` per listed video; finished ones (from an interrupted run) are reused."""
    order = sorted(samples, key=lambda n: (samples[n].video_id, n))  # two sides of one video share its audio
    for name in tqdm(order, desc="submit", unit="video", disable=not progress, dynamic_ncols=True):
        part = parts / f"{name}.npy"
        if part.is_file():
            try:
                if np.load(part, allow_pickle=False).shape == (counts[name], 2):
                    summary.reused.append(name)
                    continue
            except (OSError, ValueError):
                pass
        pred, source = predict_sample(predictor, samples[name], summary.notes)
        (summary.from_crops if source == "crops" else summary.from_video).append(name)
        with atomic_path(part) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.clip(pred.astype(np.float32), -1.0, 1.0))


def write_submission(
    predictor: Predictor, root: str | Path, names: list[str], out: str | Path, progress: bool = False
) -> SubmissionSummary:
    """Predict every listed video and write the submission file ``out`` atomically; then check it.

    Each finished video is kept in ``OUT.parts/`` until the file is written: when a run fails or is
    stopped, the error says so, and the same command continues from them.
    """
    out = Path(out)
    samples = _samples(root, names)
    counts = frame_counts(root, names)
    parts = out.parent / f"{out.name}.parts"
    _open_parts(parts, predictor.fingerprint())
    summary = SubmissionSummary(out)
    try:
        _predict_parts(predictor, samples, counts, parts, summary, progress)
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(HEADER + "\n")
            for name in names:
                pred = np.load(parts / f"{name}.npy", allow_pickle=False)
                fh.writelines(f"{name}/{i:05d}.jpg,{v:.6f},{a:.6f}\n" for i, (v, a) in enumerate(pred, 1))
                summary.rows += len(pred)
    except VafusionError as exc:
        done = len(list(parts.glob("*.npy")))
        keep = (
            f"{parts} keeps the {done} videos finished so far: rerun the same command to continue from "
            "them (or delete it)"
        )
        raise type(exc)(exc.path, exc.problem, f"{exc.fix}; {keep}" if exc.fix else keep) from None
    summary.videos = len(names)
    for key, items in summary.notes.items():
        summary.notes[key] = list(
            dict.fromkeys(items)
        )  # a video without audio is one video, not one per stream
    check_submission(out, counts)
    shutil.rmtree(parts, ignore_errors=True)
    return summary


def _listed(items: Iterable[str], total: int) -> str:
    items = list(items)[:MAX_LISTED]
    return ", ".join(items) + (" …" if total > len(items) else "")


def _row_problems(lineno: int, line: str, seen: dict[str, np.ndarray], unknown: dict[str, int]) -> list[str]:
    """Check one ``<name>/<frame>.jpg,v,a`` row and mark its frame in ``seen``; its problems."""
    parts = line.split(",")
    m = _ROW.match(parts[0]) if len(parts) == 3 else None
    if m is None:
        return [f"line {lineno} {line[:50]!r} is not <video>/<00001>.jpg,valence,arousal"]
    try:
        v, a = float(parts[1]), float(parts[2])
    except ValueError:
        return [f"line {lineno} has a non-numeric value"]
    problems = []
    if not (math.isfinite(v) and math.isfinite(a)):
        problems.append(f"line {lineno} has a NaN or infinite value")
    elif not (-1 <= v <= 1 and -1 <= a <= 1):
        problems.append(f"line {lineno} has a value outside [-1, 1]")
    name, frame = m.group("name"), int(m.group("frame"))
    marks = seen.get(name)
    if marks is None:
        unknown[name] = unknown.get(name, 0) + 1
    elif 1 <= frame < len(marks):
        marks[frame] += 1
    else:
        problems.append(f"line {lineno}: frame {frame} of {name}, which has {len(marks) - 1} frames")
    return problems


def _coverage_problems(seen: dict[str, np.ndarray], counts: dict[str, int]) -> list[str]:
    """Listed videos without rows, with missing frames, or with repeated frames."""
    problems = []
    missing = {n: int((s[1:] == 0).sum()) for n, s in seen.items() if (s[1:] == 0).any()}
    absent = [n for n, k in missing.items() if k == counts[n]]
    partial = [f"{n} ({k} of {counts[n]})" for n, k in missing.items() if k < counts[n]]
    if absent:
        problems.append(f"{len(absent)} listed videos have no rows ({_listed(absent, len(absent))})")
    if partial:
        problems.append(f"{len(partial)} videos miss frames ({_listed(partial, len(partial))})")
    repeated = [f"{n} ({int((s > 1).sum())})" for n, s in seen.items() if (s > 1).any()]
    if repeated:
        problems.append(f"{len(repeated)} videos have repeated frames ({_listed(repeated, len(repeated))})")
    return problems


def check_submission(path: str | Path, counts: dict[str, int]) -> dict:
    """Validate a submission file against the videos' frame counts; one ``VafusionError`` lists the problems.

    Checks: the header, ``<name>/<5-digit frame>.jpg`` locations, numeric values in [-1, 1], only listed
    names, no repeated row, and frames 1..n present for every listed name (n = its video's frame count).
    Returns ``{"videos": ..., "rows": ...}`` when the file is valid.
    """
    path = Path(path)
    if not path.is_file():
        raise VafusionError(path, "submission file not found", "write it with `vafusion submit`")
    seen: dict[str, np.ndarray] = {name: np.zeros(n + 1, np.int32) for name, n in counts.items()}
    unknown: dict[str, int] = {}
    bad_rows: list[str] = []
    rows = 0
    with open(path, encoding="utf-8-sig") as fh:
        header = fh.readline().strip()
        if header.replace(" ", "") != HEADER:
            raise VafusionError(
                path,
                f"first line is {header[:60]!r}, not the header {HEADER!r}",
                "write the header line first (or rewrite the file with `vafusion submit`)",
            )
        for lineno, line in enumerate(fh, 2):
            line = line.strip()
            if line:
                rows += 1
                bad_rows += _row_problems(lineno, line, seen, unknown)
    problems = [f"{len(bad_rows)} bad rows ({'; '.join(bad_rows[:3])})"] if bad_rows else []
    if unknown:
        problems.append(f"{len(unknown)} videos not in the list ({_listed(unknown, len(unknown))})")
    problems += _coverage_problems(seen, counts)
    if problems:
        raise VafusionError(
            path,
            "invalid submission: " + "; ".join(problems),
            "rewrite it with `vafusion submit` (the rows must cover frames 1..n of every listed video once)",
        )
    return {"videos": len(counts), "rows": rows}
