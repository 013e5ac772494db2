"""How the fusion model copes with missing inputs, and whether temporal smoothing helps (docs/predict.md).

On a finished run (default ``runs/demo``, made by ``vafusion demo``), each fold's fusion model predicts its
own held-out fold from the stored features, as ``vafusion cv`` scored it, and again with

* the audio removed (both audio streams masked on every frame, as for a video without sound),
* 20 % of the face frames removed, at random frames and as 1 s gaps (as when detection fails),

and the held-out predictions of ``RUN/predictions/fusion`` are smoothed with Gaussian kernels of several
widths (the ``--smooth`` option of ``vafusion predict``). CCC is over all labelled frames of a fold, then
averaged over the folds, like RUN/results.csv.

With ``--raw``, each fold's held-out *videos* also go through the whole raw-video path of ``vafusion
predict`` (faces detected, tracked and aligned in the video instead of the corpus' crops; audio streamed),
with that fold's model, and are scored against the labels: once with ``predict``'s defaults (the run's
``features.face_stride``, detector every 5th frame) and once doing all the work (every face encoded,
detector on every frame), which gives the CCC cost of the defaults' shortcuts.

``--video-features OUT`` writes a feature store whose face rows come from that same raw-video path
(audio rows copied), to train a run whose face features match what ``vafusion predict`` computes:

    python benchmarks/predict_robustness.py [--run runs/demo] [--seed 0] [--raw [--raw-also 1/5 ...]]
    python benchmarks/predict_robustness.py --video-features /tmp/videofeat
    vafusion cv --data runs/demo/data --features /tmp/videofeat --out /tmp/run_video \\
        --folds runs/demo/folds.csv

``--boxes N`` compares, on the first N videos, the boxes of the tracker with the detector every 5th frame
and every frame on the frames where both ran it, and the landmark features aligned from them (where the
raw-video gap between the two comes from; about 6 s a video).

``--score-on FEATS`` scores the run's fusion and visual fold models on another feature store (each on its
held-out fold, clipped), e.g. crop-trained models on video features and the other way round.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vafusion.data.affwild2 import scan
from vafusion.data.sequence import Sequence, load_sequence
from vafusion.face.align import CROP_SIZE, FaceAligner
from vafusion.face.detect import FaceDetector
from vafusion.face.track import FaceTrack
from vafusion.features.landmarks import LandmarkExtractor
from vafusion.features.store import build_manifest, feature_path, read_features, write_features
from vafusion.inference.bundle import run_config
from vafusion.inference.ensemble import smooth_series
from vafusion.inference.predictor import Predictor
from vafusion.inference.submit import side_subject
from vafusion.io.video import iter_frames
from vafusion.metrics import ccc
from vafusion.models.windows import sliding_predict
from vafusion.weights import load_checkpoint


def fold_ccc(preds: list[np.ndarray], seqs: list[Sequence]) -> tuple[float, float]:
    """CCC of valence and arousal over the labelled frames of all sequences concatenated."""
    p = np.concatenate([x[s.label_valid] for x, s in zip(preds, seqs, strict=True)])
    y = np.concatenate([s.labels[s.label_valid] for s in seqs])
    return ccc(p[:, 0], y[:, 0]), ccc(p[:, 1], y[:, 1])


def masked(seq: Sequence, how: str, rng: np.random.Generator, fps: float) -> Sequence:
    """A copy of ``seq`` with inputs removed: ``audio``, ``face20`` (random frames) or ``gaps20`` (1 s
    gaps)."""
    valid = {r: v.copy() for r, v in seq.valid.items()}
    n = seq.length
    if how == "audio":
        for r, v in valid.items():
            if r != "visual":
                v[:] = False
    elif how == "face20":
        valid["visual"][rng.permutation(n)[: round(0.2 * n)]] = False
    elif how == "gaps20":
        gap = max(1, round(fps))
        blocks = np.arange(0, n, gap)
        chosen = rng.permutation(len(blocks))[: round(0.2 * n / gap)]
        for b in blocks[chosen]:
            valid["visual"][b : b + gap] = False
    return Sequence(seq.name, seq.video_id, seq.feats, valid, seq.labels, seq.label_valid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--data", type=Path, default=None, help="dataset root (default RUN/data)")
    ap.add_argument("--features", type=Path, default=None, help="feature store (default RUN/features)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smooth", default="0.1,0.2,0.4,0.8,1.6", help="smoothing widths to try (s, comma list)")
    ap.add_argument(
        "--raw", action="store_true", help="also score the raw-video path (slow: every frame decoded)"
    )
    ap.add_argument(
        "--raw-also",
        action="append",
        default=[],
        metavar="K/D",
        help="with --raw: also encode every K-th face with the detector every D-th frame (repeatable), "
        "to separate the costs of the two strides",
    )
    ap.add_argument(
        "--boxes",
        type=int,
        default=0,
        metavar="N",
        help="only compare, on the first N videos, the boxes and aligned landmark features of the tracker "
        "with the detector every 5th frame and every frame, then stop",
    )
    ap.add_argument(
        "--video-features",
        type=Path,
        default=None,
        metavar="OUT",
        help="only write a feature store with face rows from the raw-video path, then stop",
    )
    ap.add_argument(
        "--score-on",
        type=Path,
        default=None,
        metavar="FEATS",
        help="only score the run's fusion and visual models on the feature store FEATS, then stop",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    run = args.run
    data, feats = args.data or run / "data", args.features or run / "features"
    cfg = run_config(run / "config.yaml", None, [])
    folds = pd.read_csv(run / "folds.csv")
    by_name = scan(data).by_name()
    if args.boxes:
        box_agreement([by_name[n].video for n in sorted(by_name)[: args.boxes]])
        return 0
    if args.video_features is not None:
        video_features(run, by_name, feats, args.video_features)
        return 0
    if args.score_on is not None:
        score_on(run, by_name, folds, args.score_on, cfg)
        return 0
    rng = np.random.default_rng(args.seed)
    rows = []
    for fold in sorted(folds["fold"].unique()):
        ckpt = load_checkpoint(run / "models/fusion" / f"fold{fold}.pt")
        net, norm, streams = ckpt.net, ckpt.normaliser, ckpt.streams
        names = folds.loc[folds["fold"] == fold, "name"].tolist()
        seqs = [load_sequence(by_name[n], feats, streams, list(net.names)) for n in names]
        fps = {
            n: float(read_features(feature_path(feats, streams["visual"], n)).meta.get("fps") or 30)
            for n in names
        }
        for how in ("none", "audio", "face20", "gaps20"):
            test = [masked(s, how, rng, fps[s.name]) for s in seqs]
            preds = [
                sliding_predict(
                    net, norm.apply(s.feats, s.valid), s.valid, cfg.cv.eval_window, cfg.cv.eval_hop
                )
                for s in test
            ]
            v, a = fold_ccc(preds, seqs)
            rows.append({"fold": fold, "inputs": how, "valence": v, "arousal": a, "mean": (v + a) / 2})
    table = pd.DataFrame(rows)
    summary = table.groupby("inputs", sort=False)[["valence", "arousal", "mean"]].mean()
    base = summary.loc["none"]
    print("CCC of each fold's fusion model on its held-out fold, mean over folds")
    print(summary.assign(**{"drop (mean)": base["mean"] - summary["mean"]}).round(4).to_string())
    per_fold = table.pivot(index="fold", columns="inputs", values="mean").round(4)
    print("\nper fold (mean of valence and arousal CCC):")
    print(per_fold.to_string())

    print("\nsmoothing the held-out predictions (RUN/predictions/fusion), Gaussian sigma in seconds:")
    widths = [0.0] + [float(w) for w in args.smooth.split(",") if w.strip()]
    res = []
    for fold in sorted(folds["fold"].unique()):
        pred = pd.read_parquet(run / "predictions/fusion" / f"fold{fold}.parquet")
        for w in widths:
            out = []
            for name, part in pred.groupby("name", sort=False):
                times = read_features(feature_path(feats, "logmel", name)).times[: len(part)]
                va = part[["valence", "arousal"]].to_numpy(np.float64)
                out.append(np.clip(smooth_series(va, times, w), -1, 1) if w > 0 else np.clip(va, -1, 1))
            p = np.concatenate(out)
            ok = pred["valid"].to_numpy()
            v = ccc(p[ok, 0], pred["label_valence"].to_numpy()[ok])
            a = ccc(p[ok, 1], pred["label_arousal"].to_numpy()[ok])
            res.append({"fold": fold, "sigma_s": w, "valence": v, "arousal": a, "mean": (v + a) / 2})
    sm = pd.DataFrame(res)
    agg = sm.groupby("sigma_s")[["valence", "arousal", "mean"]].mean()
    gain = sm.pivot(index="fold", columns="sigma_s", values="mean")
    agg["folds improved"] = [(gain[w] > gain[0.0]).sum() for w in agg.index]
    print(agg.round(4).to_string())
    if args.raw:
        raw_video(run, by_name, folds, feats, {**RAW_SETTINGS, **dict(map(raw_variant, args.raw_also))})
    return 0


def score_on(run: Path, by_name: dict, folds: pd.DataFrame, feats: Path, cfg) -> None:
    """CCC of the run's fusion and visual fold models on held-out folds read from ``feats``."""
    rows = []
    for model in ("fusion", "visual"):
        res = []
        for fold in sorted(folds["fold"].unique()):
            ckpt = load_checkpoint(run / "models" / model / f"fold{fold}.pt")
            net, norm, streams = ckpt.net, ckpt.normaliser, ckpt.streams
            names = folds.loc[folds["fold"] == fold, "name"]
            seqs = [load_sequence(by_name[n], feats, streams, list(net.names)) for n in names]
            preds = [
                np.clip(
                    sliding_predict(
                        net, norm.apply(q.feats, q.valid), q.valid, cfg.cv.eval_window, cfg.cv.eval_hop
                    ),
                    -1,
                    1,
                )
                for q in seqs
            ]
            res.append(fold_ccc(preds, seqs))
        v, a = np.mean(res, axis=0)
        rows.append({"model": model, "valence": v, "arousal": a, "mean": (v + a) / 2})
    print(f"{run} scored on {feats} (held-out folds, clipped, mean over folds):")
    print(pd.DataFrame(rows).round(4).to_string(index=False))


def video_features(run: Path, by_name: dict, feats: Path, out: Path) -> None:
    """A copy of the feature store whose face rows come from ``Predictor.extract`` on the videos."""
    predictor = Predictor.from_run(run, fold=0)
    face = predictor.streams["visual"]
    for name in {predictor.streams[r] for r in predictor.roles_with("audio")}:
        shutil.copytree(feats / name, out / name, dirs_exist_ok=True)
    for name, sample in sorted(by_name.items()):
        ref = read_features(feature_path(feats, face, name))
        vf = predictor.extract(sample.video, subject=side_subject(sample, "largest"))
        n, m = len(ref.features), min(len(ref.features), vf.length)
        rows, valid = np.zeros_like(ref.features), np.zeros(n, bool)
        rows[:m], valid[:m] = vf.feats["visual"][:m], vf.valid["visual"][:m]
        write_features(feature_path(out, face, name), rows, valid, ref.times, dict(ref.meta, faces="video"))
        print(f"{name}: face found in {100 * vf.face.mean():.0f} % of {vf.length} frames", flush=True)
    build_manifest(out)


RAW_SETTINGS = {
    "defaults": ([], 5),
    "every face, detector on every frame": (["features.face_stride=1"], 1),
}
"""Raw-video variants compared by ``--raw``: feature overrides and ``detect_every``."""


def box_agreement(videos: list[Path], every: int = 5) -> None:
    """How far the boxes of ``FaceTrack`` with the detector every ``every``-th frame and every frame are
    apart on the frames where both ran the detector, and the landmark features of the faces aligned from
    them (what the raw-video gap between the two comes from)."""
    aligner, landmarks = FaceAligner(), LandmarkExtractor()
    box_gap, feat_gap = [], []
    for video in videos:
        frames = [f.image for f in iter_frames(video)]
        found = {}
        for d in (every, 1):
            track = FaceTrack(FaceDetector(), aligner, detect_every=d)
            found[d] = [track.step(f, align=False).box for f in frames]
        for i in range(0, len(frames), every):
            a, b = found[every][i], found[1][i]
            if a is None or b is None:
                continue
            box_gap.append(np.abs(np.subtract(a, b)).mean() / b.width)
            fa, fb = landmarks(np.stack([aligner.align(frames[i], a)[0], aligner.align(frames[i], b)[0]]))
            feat_gap.append(np.abs(fa - fb).mean() * CROP_SIZE)
    print(
        f"{len(videos)} videos, {len(box_gap)} frames with the detector run in both: box corners "
        f"{100 * np.mean(box_gap):.1f} % of the face width apart (mean), landmark features "
        f"{np.mean(feat_gap):.2f} px apart in the {CROP_SIZE} px crop, identical on "
        f"{100 * np.mean(np.asarray(feat_gap) == 0):.0f} % of the frames"
    )


def raw_variant(spec: str) -> tuple[str, tuple[list[str], int]]:
    """``--raw-also K/D``: a raw-video variant encoding every K-th face with the detector every D-th frame."""
    k, d = (int(x) for x in spec.split("/"))
    return f"face_stride {k}, detector every {d}", ([f"features.face_stride={k}"], d)


def raw_video(
    run: Path, by_name: dict, folds: pd.DataFrame, feats: Path, settings: dict = RAW_SETTINGS
) -> None:
    """CCC of each fold model on its held-out videos through the raw-video path, with ``predict``'s default
    settings and with every face encoded and detected (and any other ``settings``), against the stored
    (crop-based) features."""
    rows = []
    seconds = dict.fromkeys(settings, 0.0)
    frames = 0
    for fold in sorted(folds["fold"].unique()):
        names = folds.loc[folds["fold"] == fold, "name"].tolist()
        row: dict = {"fold": fold}
        for label, (overrides, detect_every) in settings.items():
            predictor = Predictor.from_run(
                run, fold=int(fold), feature_overrides=overrides, detect_every=detect_every
            )
            seqs, raw, stored, face = [], [], [], []
            t0 = time.perf_counter()
            for name in names:
                sample = by_name[name]
                seq = load_sequence(sample, feats, predictor.streams, predictor.roles)
                vf = predictor.extract(sample.video, subject=side_subject(sample, "largest"))
                n, m = seq.length, min(seq.length, vf.length)
                f = {r: np.zeros((n, x.shape[1]), np.float32) for r, x in vf.feats.items()}
                v = {r: np.zeros(n, bool) for r in vf.valid}
                for r, part in f.items():
                    part[:m], v[r][:m] = vf.feats[r][:m], vf.valid[r][:m]
                raw.append(predictor.predict_arrays(f, v, vf.times[:m] if m == n else None))
                stored.append(predictor.predict_arrays(seq.feats, seq.valid))
                face.append(vf.face.mean())
                seqs.append(seq)
                frames += vf.length if label == "defaults" else 0
            seconds[label] += time.perf_counter() - t0
            (rv, ra), (sv, sa) = fold_ccc(raw, seqs), fold_ccc(stored, seqs)
            row[f"P {label}"] = (rv + ra) / 2
            row["P crops"] = (sv + sa) / 2
            row[f"face found {label}"] = float(np.mean(face))
        rows.append(row)
    table = pd.DataFrame(rows)
    labels = list(settings)
    for label in labels[:1] + labels[2:]:
        table[f"Δ {label}"] = table[f"P {label}"] - table[f"P {labels[1]}"]
    print(
        f"\nraw-video path ({frames} frames per variant; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + ") vs corpus crops, each fold's model on its held-out videos (clipped, no smoothing):"
    )
    print(table.round(4).to_string(index=False))
    print(table.drop(columns="fold").mean().round(4).to_string())


if __name__ == "__main__":
    sys.exit(main())
