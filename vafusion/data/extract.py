"""Batched, resumable feature extraction over an Aff-Wild2-layout dataset (``vafusion extract``).

Each (sample, extractor) pair becomes one file of the feature store, written atomically; a finished file
whose fingerprint matches is skipped, so a killed run is simply run again. One bad video fails alone and
is listed in the summary; the others go on. Face rows come from the dataset's ``cropped_aligned`` crops,
audio rows from the video's track at the annotation frames' times.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vafusion.data.affwild2 import Corpus, Sample, crop_index, read_annotation
from vafusion.data.calibration import plan_calibration
from vafusion.errors import OutputError, VafusionError
from vafusion.face.align import read_crop
from vafusion.features.audio_stream import stream_audio_features
from vafusion.features.extractors import FeaturesConfig, configured_extractor
from vafusion.features.store import build_manifest, feature_path, read_meta, shard_manifest, write_features
from vafusion.features.timing import StrideAnchors, fill_between_anchors
from vafusion.io.atomic import clean_stale_temps, prepare_dir, write_json
from vafusion.io.video import VideoInfo, probe, row_times


@dataclass
class ExtractorStats:
    """What one extractor did over the dataset."""

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    valid_frames: int = 0
    seconds: float = 0.0
    media_seconds: float = 0.0
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def as_dict(self) -> dict:
        rate = self.frames / self.seconds if self.seconds > 0 else None
        return {
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "frames": self.frames,
            "valid_frames": self.valid_frames,
            "seconds": round(self.seconds, 3),
            "frames_per_s": round(rate, 1) if rate else None,
            "media_s_per_s": round(self.media_seconds / self.seconds, 1) if self.seconds > 0 else None,
            "notes": {k: sorted(v) for k, v in self.notes.items()},
        }


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise VafusionError(None, f"bad --shard {text!r}", "write it as I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise VafusionError(None, f"bad --shard {text!r}", "need 0 <= I < N")
    return i, n


def shard_samples(samples: list[Sample], shard: tuple[int, int] | None) -> list[Sample]:
    """A deterministic 1/N of the videos (all samples of one video stay together)."""
    if shard is None:
        return samples
    i, n = shard
    videos = sorted({s.video_id for s in samples})
    mine = {v for k, v in enumerate(videos) if k % n == i}
    return [s for s in samples if s.video_id in mine]


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime, size) of a file, so a cached decode is never reused for a file that changed since."""
    try:
        st = path.stat()
    except OSError:
        return 0, 0
    return st.st_mtime_ns, st.st_size


@lru_cache(maxsize=64)
def _probe_cached(path: Path, stamp: tuple[int, int]) -> VideoInfo:
    return probe(path, count_frames=True)


def probe_video(path: Path) -> VideoInfo:
    """``probe(path, count_frames=True)``, cached while the file is unchanged (one demux per video)."""
    return _probe_cached(path, _stamp(path))


def sample_frames(sample: Sample) -> tuple[int, float, list[str]]:
    """Number of rows to produce, fps, and notes (annotation length vs video frame count)."""
    notes = []
    if sample.video is None:
        raise VafusionError(
            sample.annotation,
            f"no video for {sample.name}",
            f"put {sample.video_id}.mp4 (or .avi) under videos/",
        )
    info = probe_video(sample.video)
    n = info.n_frames
    if sample.annotation is not None:
        labels, _ = read_annotation(sample.annotation)
        if len(labels) > info.n_frames:
            notes.append(
                f"{sample.name}: annotation has {len(labels)} rows, video {info.n_frames} frames "
                "(the rows past the video's end have no input: left out of training and scoring)"
            )
        elif len(labels) < info.n_frames:
            notes.append(
                f"{sample.name}: annotation has {len(labels)} rows, video {info.n_frames} frames "
                "(the frames past the annotation's end are not used)"
            )
        n = len(labels)
    return n, info.fps, notes


def _up_to_date(path: Path, ext, sample: Sample) -> bool:
    """Whether ``path`` holds ``ext``'s features of ``sample`` as extracting it now would: the same
    extractor fingerprint and, for an annotated sample, one row per current annotation row."""
    meta = read_meta(path) if path.exists() else None
    if meta is None or meta.get("fingerprint") != ext.fingerprint:
        return False
    if sample.annotation is None:
        return True
    try:
        return meta.get("frames") == _annotation_rows(sample.annotation, _stamp(sample.annotation))
    except VafusionError:
        return False  # extracting it reports the broken annotation


@lru_cache(maxsize=4096)
def _annotation_rows(path: Path, stamp: tuple[int, int]) -> int:
    """Rows of an annotation file, read once per extract run for all extractors while it is unchanged."""
    return len(read_annotation(path)[0])


def face_features(
    extractor, sample: Sample, n: int, batch: int, stats: ExtractorStats, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Encode the crops of frames 1..n; frames without a (readable) crop are invalid.

    With ``stride`` k > 1 every crop is still read (an unreadable one stays invalid) but only every k-th
    of each run of readable crops, and the run's last, is encoded; the others are interpolated. Each crop
    is read once: the anchors are picked as the crops arrive (:class:`StrideAnchors`).
    """
    index = crop_index(sample.crops)
    if sample.crops is None or not index:
        stats.notes["no crop folder"].append(sample.name)
    feats = np.zeros((n, extractor.dim), np.float32)
    readable, encoded = np.zeros(n, bool), np.zeros(n, bool)
    corrupt: list[str] = []
    select: StrideAnchors[tuple[int, np.ndarray | None]] = StrideAnchors(max(1, stride))
    todo: list[tuple[int, np.ndarray | None]] = []

    def encode(items: list[tuple[int, np.ndarray | None]], last: bool = False) -> None:
        todo.extend(items)
        while len(todo) >= batch or (last and todo):
            rows = [r for r, _ in todo[:batch]]
            feats[rows] = extractor.encode(np.stack([img for _, img in todo[:batch]]))
            encoded[rows] = True
            del todo[:batch]

    missing = 0
    for i in range(1, n + 1):
        path = index.get(i)
        img = None if path is None else read_crop(path)
        if path is None:
            missing += 1
        elif img is None:
            corrupt.append(path.name)
        readable[i - 1] = img is not None
        encode(select.push((i - 1, img), img is not None))
    encode(select.finish(), last=True)
    valid = encoded
    if stride > 1:
        feats, valid = fill_between_anchors(feats, encoded, readable)
    if missing and index:
        stats.notes["frames without crop"].append(f"{sample.name} ({missing})")
    if corrupt:
        stats.notes["unreadable crops"].append(f"{sample.name} ({len(corrupt)}, e.g. {corrupt[0]})")
    return feats, valid


def audio_features(
    extractor, sample: Sample, times: np.ndarray, stats: ExtractorStats, video_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Audio features at the frame times, read in chunks so memory does not grow with the video's length
    (:func:`stream_audio_features`, as ``vafusion predict``); a video without audio gives all-invalid rows.
    The audio counts as shorter than the video when it ends before the last of the ``video_frames`` rows
    that have a frame."""
    got = stream_audio_features(sample.video, [extractor], times)
    feats, valid = got.feats[0], got.valid[0]
    if not got.seconds:
        stats.notes["no audio track"].append(sample.name)
        return feats, valid
    if got.nonfinite[0]:
        stats.notes["NaN/Inf rows zeroed and masked"].append(f"{sample.name} ({got.nonfinite[0]})")
    last = min(len(times), video_frames or len(times)) - 1
    if last >= 0 and got.seconds < times[last]:
        stats.notes["audio shorter than video"].append(sample.name)
    stats.media_seconds += got.seconds
    return feats, valid


def _extract_one(
    ext, sample: Sample, path: Path, cfg: FeaturesConfig, stats: ExtractorStats, length_notes: set[str]
) -> tuple[int, np.ndarray]:
    """Write ``ext``'s feature file of ``sample``; return its rows and validity."""
    n, fps, notes = sample_frames(sample)
    length_notes.update(notes)
    info = probe_video(sample.video)
    times = row_times(info, n)
    if ext.modality == "face":
        feats, valid = face_features(ext, sample, n, cfg.face_batch, stats, cfg.face_stride)
    else:
        feats, valid = audio_features(ext, sample, times, stats, info.n_frames)
    if n > info.n_frames:
        valid[info.n_frames :] = False
    meta = {
        "extractor": ext.name,
        "fingerprint": ext.fingerprint,
        "params": ext.params,
        "dim": ext.dim,
        "frames": n,
        "video_frames": info.n_frames,
        "fps": fps,
        "video": str(sample.video),
        "valid_frac": float(valid.mean()),
    }
    fixed = write_features(path, feats, valid, times, meta)
    if fixed["nonfinite_rows"]:
        stats.notes["NaN/Inf rows zeroed and masked"].append(f"{sample.name} ({fixed['nonfinite_rows']})")
    return n, valid


def _run_extractor(
    ext, samples: list[Sample], out: Path, cfg: FeaturesConfig, length_notes: set[str], progress: bool
) -> ExtractorStats:
    """One extractor over the samples; finished files are skipped, a failing video is recorded."""
    stats = ExtractorStats()
    bar = tqdm(samples, desc=f"extract {ext.name}", unit="video", disable=not progress, dynamic_ncols=True)
    for sample in bar:
        path = feature_path(out, ext.name, sample.name)
        if _up_to_date(path, ext, sample):
            stats.skipped += 1
            continue
        t0 = time.perf_counter()
        try:
            n, valid = _extract_one(ext, sample, path, cfg, stats, length_notes)
        except OutputError:
            raise  # a full or read-only disk fails every later file too: stop, keeping the finished ones
        except VafusionError as exc:
            stats.failed[sample.name] = exc.one_line()
            continue
        stats.seconds += time.perf_counter() - t0
        stats.done += 1
        stats.frames += n
        stats.valid_frames += int(valid.sum())
    return stats


def extract(
    corpus: Corpus,
    out: str | Path,
    cfg: FeaturesConfig,
    extractor_names: list[str],
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict:
    """Extract every (sample, extractor) pair not yet done; write ``extract_summary.json``, the manifest.

    The IResNet extractor calibrates int8 on the set :func:`plan_calibration` picks from the whole
    corpus (not the shard), so every shard makes the same features.
    """
    out = prepare_dir(out, "--features")
    samples = shard_samples(sorted(corpus.samples, key=lambda s: s.name), shard)
    if shard is None:
        clean_stale_temps(out)
    else:
        clean_own_temps(out, extractor_names, {s.name for s in samples})
    summary: dict = {
        "dataset": str(corpus.root),
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "samples": len(samples),
        "problems": list(corpus.problems),
        "extractors": {},
    }
    calibration = plan_calibration(cfg, corpus, out, extractor_names)
    summary["face_calibration"] = calibration.note
    length_notes: set[str] = set()
    for name in extractor_names:
        ext = configured_extractor(name, calibration.cfg, calibration.crops)
        if name == "iresnet":
            calibration.keep()
        summary["extractors"][name] = _run_extractor(ext, samples, out, cfg, length_notes, progress).as_dict()
    summary["length_mismatch"] = sorted(length_notes)
    summary["failed"] = sorted(
        {f"{k}: {v}" for s in summary["extractors"].values() for k, v in s["failed"].items()}
    )
    part = "" if shard is None else f".shard{shard[0]}of{shard[1]}"
    write_json(out / f"extract_summary{part}.json", summary)
    if shard is None:
        build_manifest(out)
    else:
        build_manifest(out, {s.name for s in samples}, extractor_names, shard_manifest(*shard))
    return summary


def clean_own_temps(out: Path, extractor_names: list[str], names: set[str]) -> int:
    """Remove temp files a killed run left for ``names`` only: other shards may be writing theirs now."""
    n = 0
    for ext in extractor_names:
        folder = out / ext
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and ".tmp" in p.name and p.name[1:].split(".npz.")[0] in names:
                p.unlink(missing_ok=True)
                n += 1
    return n
