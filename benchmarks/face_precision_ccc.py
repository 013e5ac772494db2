"""Does the fast face path cost CCC? IResNet-50 embeddings in fp32 vs vafusion's precision, through training.

Three steps, so the expensive encoding can run on another (bigger) machine:

    .venv/bin/python benchmarks/face_precision_ccc.py pack --stride 3     # crops -> runs/bench_carry/crops
    python benchmarks/face_precision_ccc.py encode --crops runs/bench_carry/crops --out DIR [--precision int8]
    .venv/bin/python benchmarks/face_precision_ccc.py score --embeddings DIR     # needs runs/demo

* pack: copies the crops that ``face_stride=k`` extraction would encode (``anchor_rows``) from the demo;
* encode: a fixed-seed IResNet-50 (He-initialised, BatchNorm statistics fitted on 128 of those crops, as in
  ``face_encoding.py``) encodes every crop twice: the fp32 reference (the torch fp32 path, checked against
  the plain network on one batch) and ``FaceEncoder``'s automatic path, or the ``--precision`` asked for
  (int8 is calibrated on 256 other demo crops, as a user calibrates on crops of their own data); writes
  ``embeddings_fp32.npz``, ``embeddings_fast.npz`` and the faces/s of both over the whole set;
* score: fills the other frames by interpolation (``fill_between_anchors``), trains the visual-only model
  on fold 0 of the demo (the project's ``fit``) with the fp32 features, and reports its CCC on the held-out
  fold with fp32 and with fast features (same model: the precision's effect alone), then trains on the
  fast features too (precision + training noise).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import DEMO, REPO, DemoEval, Section, load_text, table
from face_encoding import demo_crops, reference_net

from vafusion.config import load_config
from vafusion.cpu import cpu_info, torch_threads
from vafusion.data.affwild2 import crop_index
from vafusion.features.face_encoder import FaceEncoder
from vafusion.features.timing import anchor_rows, fill_between_anchors
from vafusion.models.iresnet import preprocess
from vafusion.train.cv import evaluate, inner_split
from vafusion.train.fit import fit

CARRY = REPO / "runs" / "bench_carry" / "crops"


def pack(stride: int, out: Path) -> int:
    """Copy the demo crops a ``face_stride`` extraction would encode into ``out/<video>/<frame>.jpg``."""
    n = 0
    for folder in sorted((DEMO / "data" / "cropped_aligned").iterdir()):
        index = crop_index(folder)
        if not index:
            continue
        present = np.zeros(max(index), bool)
        present[np.asarray(sorted(index)) - 1] = True
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        for row in anchor_rows(present, stride):
            shutil.copy2(index[int(row) + 1], out / folder.name / index[int(row) + 1].name)
            n += 1
    return n


def encode(crops_dir: Path, out: Path, batch: int = 32, precision: str = "auto") -> dict:
    """Embeddings of every crop under ``crops_dir`` by the fp32 reference and by the automatic path (or
    ``precision``)."""
    files = sorted(crops_dir.glob("*/*.jpg"))
    names = np.array([f"{f.parent.name}/{f.stem}" for f in files])
    crops = np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files])
    calib, _ = demo_crops(128, folder=crops_dir)
    net = reference_net(calib)
    int8_calib = demo_crops(256, seed=1)[0] if precision in ("auto", "int8") else None
    fast = FaceEncoder(net, batch, precision, key=("precision-ccc",), calibration=int8_calib)
    fp32 = FaceEncoder(net, batch, "fp32", "torch")
    with torch.no_grad():
        plain = net(preprocess(crops[:batch])).numpy()
    t0 = time.perf_counter()
    ref = fp32(crops)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = fast(crops)
    t_fast = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "embeddings_fp32.npz", names=names, emb=ref)
    np.savez(out / "embeddings_fast.npz", names=names, emb=emb)
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    info = {
        "cpu": cpu_info().summary(),
        "faces": len(files),
        "path": fast.path.reason,
        "precision": fast.path.precision,
        "backend": fast.path.backend,
        "fp32_reference_faces_per_s": len(files) / t_ref,
        "fast_faces_per_s": len(files) / t_fast,
        "fp32_vs_plain_max_abs": float(np.abs(ref[:batch] - plain).max()),
        "max_abs": float(np.abs(emb - ref).max()),
        "max_rel": float(np.abs(emb - ref).max() / np.abs(ref).max()),
        "cos_min": float(cos.min()),
        "cos_mean": float(cos.mean()),
        "load": load_text(),
    }
    (out / "encode.json").write_text(json.dumps(info, indent=1))
    return info


def _features(
    emb_file: Path, ev, stride_present: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per sequence: (T, 512) features with the non-anchor frames interpolated, and validity."""
    z = np.load(emb_file)
    rows: dict[str, dict[int, np.ndarray]] = {}
    for name, e in zip(z["names"], z["emb"], strict=True):
        video, frame = str(name).split("/")
        rows.setdefault(video, {})[int(frame)] = e
    out = {}
    for name, seq in ev.seqs.items():
        present = stride_present[name]
        feats = np.zeros((seq.length, z["emb"].shape[1]), np.float32)
        encoded = np.zeros(seq.length, bool)
        for frame, e in rows.get(name, {}).items():
            if frame <= seq.length:
                feats[frame - 1] = e
                encoded[frame - 1] = True
        out[name] = fill_between_anchors(feats, encoded, present)
    return out


def score(emb_dir: Path, fold: int = 0, model: str = "visual") -> Section:
    """Train and score ``model`` (``visual``, or ``fusion`` with the demo's audio streams) on fold ``fold``
    with fp32 and fast embeddings as the visual stream."""
    ev = DemoEval()
    present = {n: s.valid["visual"] for n, s in ev.seqs.items()}
    sets = {k: _features(emb_dir / f"embeddings_{k}.npz", ev, present) for k in ("fp32", "fast")}

    def seqs(kind: str, names: list[str]):
        keep = {} if model == "visual" else ev.seqs
        return [
            replace(
                ev.seqs[n],
                feats={**(keep[n].feats if keep else {}), "visual": sets[kind][n][0]},
                valid={**(keep[n].valid if keep else {}), "visual": sets[kind][n][1]},
            )
            for n in names
        ]

    cfg = load_config(overrides=["train.accelerator=cpu"])
    test = ev.folds.loc[ev.folds["fold"] == fold, "name"].tolist()
    train_names = ev.folds.loc[ev.folds["fold"] != fold, "name"].tolist()
    results, nets = {}, {}
    work = REPO / "runs" / "bench_face_precision" / model
    for kind in ("fp32", "fast"):
        tr, va = inner_split(seqs(kind, train_names), cfg.train.inner_val_fraction, cfg.cv.seed + fold)
        t0 = time.perf_counter()
        with torch_threads(1):
            net, norm, _ = fit(tr, va, model, cfg, work / kind, seed=fold * 10 + 1)
        nets[kind] = (net, norm, time.perf_counter() - t0)
    with torch_threads(1):
        for trained in ("fp32", "fast"):
            for feats in ("fp32", "fast"):
                r, _ = evaluate(nets[trained][0], nets[trained][1], seqs(feats, test), ev.window, ev.hop)
                results[(trained, feats)] = r
    enc = json.loads((emb_dir / "encode.json").read_text())
    rows = [
        [
            f"trained on {a}",
            f"scored on {b}",
            f"{r['valence']:.4f}",
            f"{r['arousal']:.4f}",
            f"{r['mean']:.4f}",
        ]
        for (a, b), r in results.items()
    ]
    same = results[("fp32", "fast")]["mean"] - results[("fp32", "fp32")]["mean"]
    retrained = results[("fast", "fast")]["mean"] - results[("fp32", "fp32")]["mean"]
    md = [
        f"Embeddings: {enc['faces']} anchor crops, fixed-seed IResNet-50, encoded on {enc['cpu']} "
        f"({enc['load']}): fp32 reference {enc['fp32_reference_faces_per_s']:.1f} faces/s, vafusion "
        f"({enc['precision']}, {enc['backend']}) {enc['fast_faces_per_s']:.1f} faces/s; max |diff| "
        f"{enc['max_abs']:.3f} ({100 * enc['max_rel']:.1f} % of max |embedding|), "
        f"cosine min {enc['cos_min']:.5f} "
        f"mean {enc['cos_mean']:.5f}.",
        "",
        f"{model} model, fold {fold} of `runs/demo` (trained with the project's `fit`, 1 thread):",
        "",
        table(["model", "features", "CCC valence", "CCC arousal", "P"], rows),
        "",
        f"Same model, fast instead of fp32 features: **ΔP = {same:+.4f}** (the precision's own effect; goal "
        f"|ΔP| ≤ 0.002 for bf16, ≤ 0.005 for int8). Retrained on fast features: ΔP = {retrained:+.4f} "
        "(includes training noise). "
        f"{load_text()} when done.",
    ]
    data = {
        "encode": enc,
        "results": {f"{a}->{b}": r["mean"] for (a, b), r in results.items()},
        "delta_same_model": same,
        "delta_retrained": retrained,
    }
    return Section("Face precision: CCC effect", "\n".join(md), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--out", type=Path, default=CARRY)
    p = sub.add_parser("encode")
    p.add_argument("--crops", type=Path, default=CARRY)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    p = sub.add_parser("score")
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--model", default="visual", choices=["visual", "fusion"])
    args = parser.parse_args()
    if args.cmd == "pack":
        print(f"{pack(args.stride, args.out)} crops -> {args.out}")
    elif args.cmd == "encode":
        print(json.dumps(encode(args.crops, args.out, precision=args.precision), indent=1))
    else:
        sec = score(args.embeddings, args.fold, args.model)
        print(sec.markdown)
        (args.embeddings / f"score_{args.model}.md").write_text(sec.markdown + "\n")


if __name__ == "__main__":
    main()
