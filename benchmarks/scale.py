"""Training at Aff-Wild2 scale: peak memory, data-loading share of the step time, epoch time.

    .venv/bin/python benchmarks/scale.py                                   # 2.7 M frames (8.3 GB, built once)
    .venv/bin/python benchmarks/scale.py --steps 100                       # the epoch timed on 100 steps
    .venv/bin/python benchmarks/scale.py --frames 60000 --root /tmp/scale  # the same in seconds

Builds (once; reused while ``--frames`` and ``--sequences`` match) a synthetic feature store the size of
Aff-Wild2's VA set under ``--root``: annotations in the Aff-Wild2 layout (``scan()`` reads them; 82 % of the
sequences in Train_Set, the rest in Validation_Set, 3 % of rows ``-5``) and ``.npz`` feature files of the
paper's widths (visual 512, vggish 128, logmel 128; uniform random rows of unit variance, 10 % of face
frames and 3 % of audio frames invalid; two sequences written at a time). Then, in a fresh process, trains
fold 0 of ``--model`` (fusion from scratch) for one epoch exactly as ``vafusion cv`` does (memory-mapped
store, chunked normaliser, windows normalised as they are cut) and scores it on the fold, sampling resident
memory every 0.2 s. "Data loading" is the time the training loop waits between the end of one step and the
start of the next (fetching, cutting, normalising and collating a batch, plus Lightning's own bookkeeping:
an upper bound).
``--steps N`` stops the epoch after N training steps and scales its time to the full epoch (validation
runs in full; scoring the test fold is skipped): the store is still mapped whole and the normaliser still
reads every row, so the memory figures are those of the full epoch; ``make bench`` runs it so, ``make
bench-long`` in full.

It also times one training step of each model (plain loop, batch 8 x 300 frames, one thread) on windows of
the store, to extrapolate a whole 6-fold x 4-model ``cv`` from the measured epoch, and prints the line::

    **Aff-Wild2 scale: N frames, peak RSS X GB, data loading Y % of step time, epoch Z s**
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from _common import REPO, Section, load_text, table

from vafusion.config import load_config
from vafusion.data.affwild2 import scan
from vafusion.data.folds import assign_folds
from vafusion.data.sequence import WindowDataset, load_sequence
from vafusion.features.store import feature_path, write_features
from vafusion.metrics import ccc_loss
from vafusion.models.normaliser import Normaliser
from vafusion.models.registry import create_model
from vafusion.train.cv import CrossValidation, evaluate, inner_split, roles_of
from vafusion.train.fit import _collate, fit

STREAMS = {"visual": "iresnet", "vggish": "vggish", "logmel": "logmel"}
DIMS = {"visual": 512, "vggish": 128, "logmel": 128}
ANN = "annotations/VA_Estimation_Challenge"
GPU_FRAMES_PER_S = {"visual": 26_300, "vggish": 50_700, "logmel": 43_300, "fusion": 14_900}
"""H200 training frames/s incl. Lightning overhead (docs/scaling.md, "GPU check")."""


def _lengths(rng: np.random.Generator, frames: int, sequences: int) -> np.ndarray:
    """Sequence lengths (log-normal like Aff-Wild2's: a few long videos, many short) summing to ``frames``."""
    raw = rng.lognormal(0.0, 0.6, sequences)
    n = np.maximum(1, np.floor(raw / raw.sum() * frames)).astype(int)
    n[np.argmax(n)] += frames - n.sum()
    return n


def _sequence(root: Path, i: int, n: int, seed: np.random.SeedSequence) -> None:
    """Sequence ``i`` of the store: its annotation file and one feature file per stream, ``n`` rows.

    Rows are uniform with unit variance (5x faster to draw than normal ones), plus a little of the labels.
    """
    rng = np.random.default_rng(seed)
    name = f"{i:03d}-{int(rng.integers(10**6)):06d}"
    split = "Validation_Set" if i % 100 < 18 else "Train_Set"
    t = np.arange(n)
    va = 0.7 * np.sin(2 * np.pi * t[:, None] / rng.uniform(200, 900, 2) + rng.uniform(0, 6, 2))
    rows = [f"{v:.3f},{a:.3f}" for v, a in va]
    for k in np.flatnonzero(rng.random(n) < 0.03):
        rows[k] = "-5,-5"
    ann = root / "data" / ANN / split / f"{name}.txt"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text("valence,arousal\n" + "\n".join(rows) + "\n")
    for role, ext in STREAMS.items():
        x = rng.random((n, DIMS[role]), dtype=np.float32)
        x -= np.float32(0.5)
        x *= np.float32(12**0.5)
        x[:, :2] += va.astype(np.float32)  # a little signal, so training is not pure noise
        valid = rng.random(n) > (0.10 if role == "visual" else 0.03)
        meta = {"extractor": ext, "dim": DIMS[role], "frames": int(n), "fps": 30.0, "fingerprint": "scale"}
        write_features(feature_path(root / "feats", ext, name), x, valid, t / 30.0, meta)


def build_store(root: Path, frames: int, sequences: int, seed: int = 0, threads: int = 2) -> dict:
    """Annotations and feature files of ``frames`` rows in ``sequences`` sequences (skipped when built; the
    files of a store this script built to another spec, or cut short, are removed first; a ``root`` holding
    other ``data/`` or ``feats/`` is refused).

    Each sequence draws from its own generator (spawned from ``seed``), so ``threads`` sequences are made at
    once (numpy's generators and the file writes release the GIL) and the store is the same for any count.
    """
    stamp = root / "store.json"
    spec = {"frames": frames, "sequences": sequences, "seed": seed, "dims": DIMS, "version": 2}
    if stamp.is_file() and json.loads(stamp.read_text()).get("spec") == spec:
        return json.loads(stamp.read_text())
    if stamp.is_file():  # a store of another spec, or a build cut short: this script's files, remade
        for made in (root / "data" / ANN, root / "feats"):
            shutil.rmtree(made, ignore_errors=True)
    elif (root / "data").exists() or (root / "feats").exists():
        raise SystemExit(f"{root} holds data/ or feats/ this script did not make; pass an empty --root")
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"spec": None}))  # marks the folder as this script's while it builds
    t0 = time.perf_counter()
    lengths = _lengths(np.random.default_rng(seed), frames, sequences)
    seeds = np.random.SeedSequence(seed).spawn(len(lengths))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(partial(_sequence, root), range(len(lengths)), lengths, seeds))
    info = {"spec": spec, "build_seconds": round(time.perf_counter() - t0, 1)}
    stamp.write_text(json.dumps(info))
    return info


class _Memory(threading.Thread):
    """Samples VmRSS / RssAnon / RssFile of this process every ``period`` s; keeps the peak."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period, self.peak, self.stop = period, {"VmRSS": 0}, False

    @staticmethod
    def now() -> dict:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
        return out

    def run(self) -> None:
        while not self.stop:
            now = self.now()
            if now.get("VmRSS", 0) > self.peak["VmRSS"]:
                self.peak = now
            time.sleep(self.period)


class _Timer(L.Callback):
    """Training epoch time, validation time, and the gaps between steps (waiting for data); with
    ``max_steps`` the fit stops after that many steps (the epoch's length is then ``total_steps``)."""

    def __init__(self, max_steps: int = 0) -> None:
        self.t = {"fit_start": 0.0, "train": 0.0, "val": 0.0, "wait": 0.0}
        self.steps, self._mark, self.max_steps, self.total_steps = 0, 0.0, max_steps, 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.t["fit_start"] = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.total_steps = int(trainer.num_training_batches)
        self._epoch = self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.t["wait"] += time.perf_counter() - self._mark
        self.steps += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._mark = time.perf_counter()
        if self.max_steps and self.steps >= self.max_steps:
            self.t["train"] = self._mark - self._epoch
            trainer.should_stop = True  # Lightning still validates (early stopping needs val_P)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val = time.perf_counter()
        if not self.t["train"]:  # Lightning validates inside the training epoch, after its last step
            self.t["train"] = self._val - self._epoch

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.t["val"] += time.perf_counter() - self._val


def measure(root: Path, model: str, overrides: list[str], max_steps: int = 0) -> dict:
    """One epoch of ``model`` on fold 0 as ``vafusion cv`` trains it, in this process; figures as a dict.
    ``max_steps`` > 0: stop after that many steps (then validate) and skip scoring the test fold."""
    mem = _Memory()
    mem.start()
    cfg = load_config(
        None, ["train.max_epochs=1", "fusion_stage.init=scratch", "train.threads=1", *overrides]
    )
    t0 = time.perf_counter()
    corpus = scan(root / "data")
    folds = assign_folds(corpus.samples, seed=cfg.cv.seed, n_train_folds=cfg.cv.n_train_folds)
    cv = CrossValidation(corpus, root / "feats", root / "run", cfg, folds, STREAMS, [], progress=False)
    cv.failed = cv.check(folds["name"].tolist())
    t_load = time.perf_counter() - t0
    train_names, test_names = cv.split(0)
    roles = roles_of(model)
    train, val = inner_split([s.subset(roles) for s in cv.sequences(train_names)], 0.15, cfg.cv.seed)
    timer = _Timer(max_steps)
    t1 = time.perf_counter()
    net, norm, _ = fit(train, val, model, cfg, root / "run" / "work", 0, callbacks=[timer])
    t_fit = time.perf_counter() - t1
    t2 = time.perf_counter()
    result = {"mean": float("nan")}
    if not max_steps:
        result, _ = evaluate(net, norm, [s.subset(roles) for s in cv.sequences(test_names)], 300, 150)
    t_eval = time.perf_counter() - t2
    mem.stop = True
    mem.join()
    return {
        "model": model,
        "frames": int(sum(s.length for s in cv.sequences(folds["name"].tolist()))),
        "train_frames": int(sum(s.length for s in train)),
        "val_frames": int(sum(s.length for s in val)),
        "test_frames": int(sum(s.length for s in cv.sequences(test_names))),
        "fold_frames": {
            int(f): int(sum(s.length for s in cv.sequences(g["name"].tolist())))
            for f, g in folds.groupby("fold")
        },
        "steps": timer.steps,
        "epoch_steps": timer.total_steps,
        "seconds": {
            "map_store": t_load,
            "normaliser_and_setup": timer.t["fit_start"] - t1,
            "train_epoch": timer.t["train"],
            "data_wait": timer.t["wait"],
            "validation": timer.t["val"],
            "fit_total": t_fit,
            "score_test_fold": t_eval,
        },
        "peak": mem.peak,
        "peak_hwm": _Memory.now().get("VmHWM", 0),
        "test_P": result["mean"],
        "load": load_text(),
    }


def step_times(root: Path, rounds: int = 5, steps: int = 4) -> dict[str, float]:
    """Seconds per training step (batch 8 x 300 frames, forward + backward + AdamW, one thread) of each
    model, and of fusion at the paper's widths, on windows of the store; interleaved rounds, median."""
    seqs = [
        load_sequence(s, root / "feats", STREAMS, list(STREAMS), mmap=True)
        for s in scan(root / "data").samples[:40]
    ]
    norm = Normaliser.fit(seqs)
    ds = WindowDataset(seqs, 300, 200, norm=norm)
    batches = [_collate([ds[(k * 8 + j) % len(ds)] for j in range(8)]) for k in range(steps)]
    paper = load_config("paper", [])
    variants = {m: (m, load_config(None, [])) for m in ("visual", "vggish", "logmel", "fusion")}
    variants["fusion (paper widths)"] = ("fusion", paper)
    nets = {}
    for key, (m, cfg) in variants.items():
        torch.manual_seed(0)
        net = create_model(m, dims=DIMS, **dataclasses.asdict(cfg.model))
        nets[key] = (net, torch.optim.AdamW(net.parameters(), lr=1e-3), roles_of(m))
    times: dict[str, list[float]] = {k: [] for k in nets}
    torch.set_num_threads(1)
    for _ in range(rounds):
        for key, (net, opt, roles) in nets.items():
            t = time.perf_counter()
            for b in batches:
                opt.zero_grad(set_to_none=True)
                pred = net({r: b["feats"][r] for r in roles}, {r: b["valid"][r] for r in roles})
                ccc_loss(pred, b["labels"], b["label_valid"]).backward()
                opt.step()
            times[key].append((time.perf_counter() - t) / steps)
    return {k: float(np.median(v)) for k, v in times.items()}


def extrapolate(m: dict, steps: dict[str, float], epochs: int, processes: int) -> dict[str, float]:
    """Hours for 6 folds x 4 models x ``epochs`` epochs on this CPU (``processes`` at once) and on the H200.

    Fold f trains on the other folds' frames less the inner validation share measured on fold 0; an epoch
    of each model costs the measured fusion seconds per training frame (training + validation) times that
    model's step-time ratio; scoring the fold and fitting the normaliser scale with their frames."""
    s, total, folds = m["seconds"], m["frames"], {int(k): v for k, v in m["fold_frames"].items()}
    kept = m["train_frames"] / (total - folds[0])
    per_frame = (s["train_epoch"] + s["validation"]) / m["train_frames"]
    setup_per_frame = s["normaliser_and_setup"] / m["train_frames"]
    score_per_frame = s["score_test_fold"] / m["test_frames"]
    cpu = gpu = 0.0
    for model in ("visual", "vggish", "logmel", "fusion"):
        ratio = steps[model] / steps[m["model"]]
        for test in folds.values():
            train = (total - test) * kept
            cpu += (epochs * train * per_frame + test * score_per_frame) * ratio + train * setup_per_frame
            gpu += epochs * train / GPU_FRAMES_PER_S[model]
    return {"cpu_hours": cpu / processes / 3600, "gpu_hours": gpu / 3600}


def _child(args: argparse.Namespace) -> None:
    print(json.dumps(measure(args.root, args.model, args.set, args.steps)))


def scale(root: Path, frames: int, sequences: int, model: str, overrides: list[str], steps: int) -> dict:
    """Build (or reuse) the store, measure the epoch in a fresh process, time each model's step, and
    extrapolate; everything as one dict with the bold ``line``."""
    info = build_store(root, frames, max(2, min(sequences, frames // 400)))
    cmd = [sys.executable, __file__, "--measure", "--root", str(root), "--model", model]
    cmd += [a for s in overrides for a in ("--set", s)] + ["--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    m = json.loads(out.stdout.strip().splitlines()[-1])
    s = m["seconds"]
    if steps and m["steps"] < m["epoch_steps"]:  # scale the partial epoch; validation as in the full run
        s["train_epoch"] *= m["epoch_steps"] / m["steps"]
        s["data_wait"] *= m["epoch_steps"] / m["steps"]
    if steps:  # scoring was skipped: it costs what validating as many frames costs
        s["score_test_fold"] = s["validation"] * m["test_frames"] / max(m["val_frames"], 1)
    step_s = step_times(root, rounds=3 if steps else 5)
    epoch = s["train_epoch"] + s["validation"]
    peak = m["peak"]
    partial = f", epoch from {m['steps']} of {m['epoch_steps']} steps" if steps else ""
    line = (
        f"**Aff-Wild2 scale: {m['frames']:,} frames, peak RSS {peak['VmRSS'] / 1e9:.1f} GB, data loading "
        f"{100 * s['data_wait'] / s['train_epoch']:.1f} % of step time, epoch {epoch:.0f} s** (at the peak "
        f"RssAnon {peak.get('RssAnon', 0) / 1e9:.1f} GB + RssFile {peak.get('RssFile', 0) / 1e9:.1f} GB"
        f"{partial}; {m['load']})"
    )
    hours = {(e, p): extrapolate(m, step_s, e, p) for e in (15, 30) for p in (1, 2)}
    return {"store": info, "measured": m, "step_seconds": step_s, "hours": hours, "line": line}


def run(quick: bool = True, root: Path | None = None) -> Section:
    """``make bench`` section (``quick``: the epoch timed on 100 steps, step times over 3 rounds) or ``make
    bench-long`` (full)."""
    root = root or REPO / "runs" / "bench" / "scale"
    r = scale(root, 2_700_000, 560, "fusion", [], 100 if quick else 0)
    merged = {}
    for (e, p), h in r["hours"].items():
        merged.setdefault(e, [f"{e} per model", "", "", f"{h['gpu_hours']:.1f}"])[p] = f"{h['cpu_hours']:.1f}"
    rows = list(merged.values())
    s = r["measured"]["seconds"]
    shown = root.relative_to(REPO) if root.is_relative_to(REPO) else root
    md = [
        r["line"],
        "",
        f"A synthetic store the size of Aff-Wild2's VA set ({r['measured']['frames']:,} annotated frames in "
        f"560 sequences, widths 512/128/128, float32 `.npz`, memory-mapped; built once in "
        f"{r['store']['build_seconds']} s under `{shown}`); "
        f"fusion (default widths) trained on fold 0 exactly as `vafusion cv` does, one thread: map the store "
        f"{s['map_store']:.1f} s, chunked normaliser and setup {s['normaliser_and_setup']:.1f} s, validation "
        f"{s['validation']:.1f} s. Whole 6-fold x 4-model `cv`, extrapolated from this epoch and each "
        "model's step time (hours):",
        "",
        table(["epochs", "this CPU, 1 process", "this CPU, 2 processes", "H200"], rows),
    ]
    return Section("Aff-Wild2 scale", "\n".join(md), {k: v for k, v in r.items() if k != "hours"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO / "runs" / "bench" / "scale",
        help="where the store is built (8.3 GB)",
    )
    parser.add_argument("--frames", type=int, default=2_700_000, help="annotated frames (Aff-Wild2: ~2.7 M)")
    parser.add_argument("--sequences", type=int, default=560, help="sequences (Aff-Wild2: ~560)")
    parser.add_argument("--model", default="fusion", help="the model trained for one epoch")
    parser.add_argument("--set", action="append", default=[], help="config override for the epoch")
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="stop after N training steps and scale to the epoch (0: whole epoch)",
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return _child(args)
    r = scale(args.root, args.frames, args.sequences, args.model, args.set, args.steps)
    store = r["store"]
    print(f"store: {args.root} ({store['spec']['frames']} frames; built in {store['build_seconds']} s)")
    print(json.dumps({"measured": r["measured"], "step_seconds": r["step_seconds"]}, indent=1))
    for (epochs, procs), e in r["hours"].items():
        print(
            f"6 folds x 4 models x {epochs} epochs: this CPU, {procs} process(es) "
            f"{e['cpu_hours']:.1f} h; H200 {e['gpu_hours']:.1f} h"
        )
    print(r["line"])


if __name__ == "__main__":
    main()
