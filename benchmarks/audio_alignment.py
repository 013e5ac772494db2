"""Audio features per video frame: a window centred at every frame, or a coarser hop interpolated to frames?

    .venv/bin/python benchmarks/audio_alignment.py                # runs/demo data, all 3 variants
    .venv/bin/python benchmarks/audio_alignment.py --seeds 0,1    # and a second training seed per variant
    .venv/bin/python benchmarks/audio_alignment.py --set train.max_epochs=10   # same for every variant

VGGish gives one vector per 0.96 s example; vafusion encodes one example centred at each frame time
(``CentredExamples``): 30 network passes per second of 30 fps video. The alternative computes examples at
a coarser hop and interpolates the vectors linearly to the frame times. With no VGGish weights here the
comparison uses the ``logmel`` stream's offline encoder (per-band mean/std of the same 0.96 s log-mel
examples), in three variants:

* ``centred``: the production extractor (``LogMelExtractor.at_times``), one example centred at each frame;
* ``native``: the reference VGGish framing, non-overlapping examples starting at log-mel frames 0, 96, ...
  (hop 0.96 s), each vector placed at its example's centre and interpolated to the frame times;
* ``half``: the same at a 0.48 s hop (examples overlapping by half).

Only the ``logmel`` files differ: every variant's feature store is a copy of ``--features`` (landmarks,
egemaps, ...) whose ``logmel`` folder is rewritten, with the source file's frame times and validity mask kept,
so the masks are identical and only the alignment changes. Then ``vafusion cv --models logmel,fusion`` runs
on each store (same folds, seeds and settings) and the 6-fold CCCs are tabulated side by side in
``OUT/audio_alignment.md`` and ``.csv``. ``--seeds`` repeats each variant with other ``cv.seed`` values on
the first seed's folds, so the spread between seeds shows how much of a difference is training noise.
Training uses one torch thread by default (``--threads``). Finished stores and (model, fold) pairs are
reused on rerun. Run it from the repository root (feature files name their videos relative to it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import add_study_arguments, cv_over_seeds

from vafusion.errors import VafusionError
from vafusion.features.extractors import LogMelExtractor
from vafusion.features.logmel import HOP_LENGTH, SAMPLE_RATE, WINDOW_LENGTH, log_mel_spectrogram
from vafusion.features.store import build_manifest, read_features, write_features
from vafusion.io.atomic import atomic_path, write_text
from vafusion.io.video import read_audio
from vafusion.models.vggish import EXAMPLE_FRAMES

VARIANTS = {"centred": None, "native": 96, "half": 48}  # hop in 10 ms log-mel frames (None: one per frame)


def hop_examples(wave: np.ndarray, sr: int, hop_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole 0.96 s examples starting every ``hop_frames`` log-mel frames: ``(n, 96, 64)`` and centres (s)."""
    log_mel = log_mel_spectrogram(wave, sr)
    starts = np.arange(0, log_mel.shape[0] - EXAMPLE_FRAMES + 1, hop_frames)
    examples = (
        np.stack([log_mel[s : s + EXAMPLE_FRAMES] for s in starts])
        if len(starts)
        else np.zeros((0, EXAMPLE_FRAMES, log_mel.shape[1]), np.float32)
    )
    span = (EXAMPLE_FRAMES - 1) * HOP_LENGTH + WINDOW_LENGTH
    return examples, (starts * HOP_LENGTH + span / 2) / SAMPLE_RATE


def interpolated(
    encoder: LogMelExtractor, wave: np.ndarray, sr: int, times: np.ndarray, hop_frames: int
) -> np.ndarray | None:
    """Encode examples at a ``hop_frames`` hop and interpolate linearly to ``times`` (ends held constant)."""
    examples, centres = hop_examples(wave, sr, hop_frames)
    if len(examples) == 0:
        return None
    coarse = encoder.encode_patches(examples)
    return np.stack([np.interp(times, centres, coarse[:, j]) for j in range(coarse.shape[1])], axis=1)


def build_store(src: Path, dst: Path, variant: str) -> dict:
    """Copy ``src`` to ``dst`` and rewrite its ``logmel`` files for ``variant``; return timing facts."""
    done = dst / "alignment.json"
    if done.exists():
        return json.loads(done.read_text())
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logmel", "manifest*.parquet", ".*"))
    encoder = LogMelExtractor()
    hop = VARIANTS[variant]
    seconds, audio_s, examples, max_diff = 0.0, 0.0, 0, 0.0
    files = sorted((src / "logmel").glob("*.npz"))
    if not files:
        raise VafusionError(
            src / "logmel", "no logmel feature files", "run `vafusion extract --extractors logmel`"
        )
    for f in files:
        ff = read_features(f)
        video = Path(ff.meta["video"])
        if not video.exists():
            raise VafusionError(
                video, "video named by the feature file not found", "run from the repository root"
            )
        audio = read_audio(video, sample_rate=None)
        feats = np.zeros_like(ff.features)
        t0 = time.perf_counter()
        if audio is not None and audio[0].size:
            wave, sr = audio
            audio_s += len(wave) / sr
            if hop is None:
                feats, _ = encoder.at_times(wave, sr, ff.times)
                examples += len(ff.times)
                max_diff = max(max_diff, float(np.abs(feats - ff.features)[ff.valid].max(initial=0.0)))
            else:
                out = interpolated(encoder, wave, sr, ff.times, hop)
                if out is not None:
                    feats = out.astype(np.float32)
                    examples += len(hop_examples(wave, sr, hop)[1])
        seconds += time.perf_counter() - t0
        feats[~ff.valid] = 0.0
        params = {
            **encoder.params,
            "centre": "frame" if hop is None else f"interpolated from a {hop / 100:.2f} s hop",
        }
        meta = {**ff.meta, "params": params, "fingerprint": f"{ff.meta['fingerprint']}-{variant}"}
        write_features(dst / "logmel" / f.name, feats, ff.valid, ff.times, meta)
    build_manifest(dst)
    facts = {
        "variant": variant,
        "files": len(files),
        "audio_seconds": round(audio_s, 1),
        "examples_encoded": examples,
        "examples_per_audio_second": round(examples / max(audio_s, 1e-9), 2),
        "seconds": round(seconds, 2),
        "max_abs_diff_vs_source": max_diff if hop is None else None,
    }
    done.write_text(json.dumps(facts, indent=1))
    return facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(
        ap,
        "runs/bench_audio_alignment",
        "source feature store with logmel (default runs/demo/features; never modified)",
        VARIANTS,
    )
    ap.add_argument(
        "--models", default="logmel,fusion", help="models to cross-validate (default logmel,fusion)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(x) for x in args.seeds.split(",")]
    rows, facts, commands = [], [], []
    for v in variants:
        store = args.out / f"features_{v}"
        facts.append(build_store(args.features, store, v))
        t0 = time.perf_counter()
        for seed, run in cv_over_seeds(
            args.data, store, args.out / f"cv_{v}", args.models, seeds, args.overrides, args.quiet, commands
        ):
            res = pd.read_csv(run / "results.csv", dtype={"fold": str})
            res.insert(0, "seed", seed)
            res.insert(0, "variant", v)
            rows.append(res)
        facts[-1]["cv_seconds"] = round(time.perf_counter() - t0, 1)
    table = pd.concat(rows, ignore_index=True)
    with atomic_path(args.out / "audio_alignment.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    write_text(args.out / "audio_alignment.md", "\n".join(report(table, variants, seeds, facts, commands)))
    print("\n".join(report(table, variants, seeds, facts, commands)))


def report(
    table: pd.DataFrame, variants: list[str], seeds: list[int], facts: list[dict], commands: list[str]
) -> list[str]:
    """Markdown: mean over folds per (model, variant), averaged over seeds with the seeds' range."""
    means = table[table["fold"] == "mean"]
    lines = [
        "# Audio alignment: centred windows vs coarser hop + interpolation",
        "",
        (
            "6-fold CCC (mean over folds), averaged over training seeds "
            f"{', '.join(map(str, seeds))} (same folds); range = lowest..highest seed."
        ),
        "",
        "| model | variant | valence | arousal | mean | mean, range over seeds "
        "| per-fold mean CCC (first seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in table["model"].unique():
        for v in variants:
            part = means[(means["model"] == m) & (means["variant"] == v)]
            first = table[
                (table["model"] == m)
                & (table["variant"] == v)
                & (table["seed"] == seeds[0])
                & (table["fold"] != "mean")
            ]["mean"]
            lines.append(
                f"| {m} | {v} | {part['valence'].mean():.4f} | {part['arousal'].mean():.4f} | "
                f"{part['mean'].mean():.4f} | {part['mean'].min():.4f}..{part['mean'].max():.4f} | "
                f"{' '.join(f'{x:.3f}' for x in first)} |"
            )
    lines += [
        "",
        "| variant | examples encoded per s of audio | store build s | cv s (this invocation) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {f['variant']} | {f['examples_per_audio_second']} | {f['seconds']} | {f.get('cv_seconds')} |"
        for f in facts
    ]
    lines += ["", "Commands:", "", "```"] + commands + ["```", ""]
    return lines


if __name__ == "__main__":
    main()
