"""Batched, resumable feature extraction over an Aff-Wild2-layout dataset.

Each (sample, extractor) pair becomes one file, written atomically; a finished file whose fingerprint
matches is skipped, so a killed run is simply run again. One bad video fails alone and is listed in
the summary; the others go on.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vafusion.config import FeaturesConfig
from vafusion.data.affwild2 import Corpus, Sample, crop_index, read_annotation
from vafusion.errors import VafusionError
from vafusion.features.extractors import build_extractor
from vafusion.features.store import build_manifest, feature_path, read_meta, write_features
from vafusion.io.atomic import clean_stale_temps, write_json
from vafusion.io.video import VideoInfo, frame_times, probe, read_audio

CROP_SIZE = 112


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
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed, "frames": self.frames,
                "valid_frames": self.valid_frames, "seconds": round(self.seconds, 3),
                "frames_per_s": round(rate, 1) if rate else None,
                "media_s_per_s": round(self.media_seconds / self.seconds, 1) if self.seconds > 0 else None,
                "notes": {k: sorted(v) for k, v in self.notes.items()}}


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


@lru_cache(maxsize=64)
def _probe(path: Path) -> VideoInfo:
    return probe(path, count_frames=True)


@lru_cache(maxsize=1)
def _audio(path: Path) -> tuple[np.ndarray, int] | None:
    return read_audio(path, sample_rate=None)


def sample_frames(sample: Sample) -> tuple[int, float, list[str]]:
    """Number of rows to produce, fps, and notes (annotation length vs video frame count)."""
    notes = []
    if sample.video is None:
        raise VafusionError(sample.annotation, f"no video for {sample.name}",
                            f"put {sample.video_id}.mp4 (or .avi) under videos/")
    info = _probe(sample.video)
    n = info.n_frames
    if sample.annotation is not None:
        labels, _ = read_annotation(sample.annotation)
        if len(labels) != info.n_frames:
            notes.append(f"{sample.name}: annotation has {len(labels)} rows, video {info.n_frames} frames "
                         f"(rows past the video's end are marked invalid)")
        n = len(labels)
    return n, info.fps, notes


def _read_crop(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    if img.shape[:2] != (CROP_SIZE, CROP_SIZE):
        img = cv2.resize(img, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def face_features(extractor, sample: Sample, n: int, batch: int, stats: ExtractorStats) -> tuple[np.ndarray, np.ndarray]:
    """Encode the crops of frames 1..n; frames without a (readable) crop are invalid."""
    index = crop_index(sample.crops)
    if sample.crops is None or not index:
        stats.notes["no crop folder"].append(sample.name)
    feats = np.zeros((n, extractor.dim), np.float32)
    valid = np.zeros(n, bool)
    frames = [i for i in range(1, n + 1) if i in index]
    missing = n - len(frames)
    corrupt = []
    for k in range(0, len(frames), batch):
        chunk = frames[k:k + batch]
        imgs, keep = [], []
        for i in chunk:
            img = _read_crop(index[i])
            if img is None:
                corrupt.append(index[i].name)
            else:
                imgs.append(img)
                keep.append(i - 1)
        if imgs:
            feats[keep] = extractor.encode(np.stack(imgs))
            valid[keep] = True
    if missing and index:
        stats.notes["frames without crop"].append(f"{sample.name} ({missing})")
    if corrupt:
        stats.notes["unreadable crops"].append(f"{sample.name} ({len(corrupt)}, e.g. {corrupt[0]})")
    return feats, valid


def audio_features(extractor, sample: Sample, times: np.ndarray, stats: ExtractorStats) -> tuple[np.ndarray, np.ndarray]:
    """Audio features at the frame times; a video without audio gives all-invalid rows."""
    audio = _audio(sample.video)
    if audio is None or audio[0].size == 0:
        stats.notes["no audio track"].append(sample.name)
        return np.zeros((len(times), extractor.dim), np.float32), np.zeros(len(times), bool)
    wave, sr = audio
    feats, valid = extractor.at_times(wave, sr, times)
    if len(times) and len(wave) / sr < times[-1]:
        stats.notes["audio shorter than video"].append(sample.name)
    stats.media_seconds += len(wave) / sr
    return feats, valid


def extract(corpus: Corpus, out: str | Path, cfg: FeaturesConfig, extractor_names: list[str],
            shard: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """Extract every (sample, extractor) pair not yet done; write ``extract_summary.json`` and the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    samples = shard_samples(sorted(corpus.samples, key=lambda s: s.name), shard)
    summary: dict = {"dataset": str(corpus.root), "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
                     "samples": len(samples), "problems": list(corpus.problems), "extractors": {}}
    length_notes: set[str] = set()
    for name in extractor_names:
        stats = ExtractorStats()
        ext = build_extractor(name, cfg)
        bar = tqdm(samples, desc=f"extract {name}", unit="video", disable=not progress, dynamic_ncols=True)
        for sample in bar:
            path = feature_path(out, name, sample.name)
            meta = read_meta(path) if path.exists() else None
            if meta is not None and meta.get("fingerprint") == ext.fingerprint:
                stats.skipped += 1
                continue
            t0 = time.perf_counter()
            try:
                n, fps, notes = sample_frames(sample)
                length_notes.update(notes)
                times = frame_times(n, fps)
                if ext.modality == "face":
                    feats, valid = face_features(ext, sample, n, cfg.face_batch, stats)
                else:
                    feats, valid = audio_features(ext, sample, times, stats)
                info = _probe(sample.video)
                if n > info.n_frames:
                    valid[info.n_frames:] = False
                meta = {"extractor": name, "fingerprint": ext.fingerprint, "params": ext.params, "dim": ext.dim,
                        "frames": n, "fps": fps, "video": str(sample.video), "valid_frac": float(valid.mean())}
                fixed = write_features(path, feats, valid, times, meta)
                if fixed["nonfinite_rows"]:
                    stats.notes["NaN/Inf rows zeroed and masked"].append(f"{sample.name} ({fixed['nonfinite_rows']})")
            except VafusionError as exc:
                stats.failed[sample.name] = exc.one_line()
                continue
            stats.seconds += time.perf_counter() - t0
            stats.done += 1
            stats.frames += n
            stats.valid_frames += int(valid.sum())
        summary["extractors"][name] = stats.as_dict()
    summary["length_mismatch"] = sorted(length_notes)
    summary["failed"] = sorted({f"{k}: {v}" for s in summary["extractors"].values() for k, v in s["failed"].items()})
    write_json(out / ("extract_summary.json" if shard is None else f"extract_summary.shard{shard[0]}of{shard[1]}.json"),
               summary)
    build_manifest(out)
    return summary
