"""The paper's protocol: six folds, each model trained on the other folds and scored on this one.

Run layout (everything later commands read)::

    RUN/config.yaml  RUN/folds.csv  RUN/streams.json
    RUN/models/<model>/fold<k>.pt           trained network + normaliser + streams
    RUN/predictions/<model>/fold<k>.parquet per-frame predictions and labels
    RUN/metrics/<model>/fold<k>.json        fold CCC and per-video CCC
    RUN/work/<model>/fold<k>/               Lightning checkpoints (last.ckpt for --resume) and logs
    RUN/results.csv  RUN/report.md  RUN/*.png

A finished (model, fold) is skipped on rerun, so an interrupted ``cv`` continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vafusion.config import Config, to_yaml
from vafusion.data.affwild2 import Corpus
from vafusion.errors import VafusionError
from vafusion.inference import sliding_predict
from vafusion.io.atomic import atomic_path, write_json, write_text
from vafusion.metrics import ccc
from vafusion.train.data import Sequence, load_sequence
from vafusion.train.fit import fit, save_model
from vafusion.weights import load_model

SINGLE = ("visual", "vggish", "logmel")
MODELS = ("fusion",) + SINGLE


def roles_of(model: str) -> list[str]:
    """Streams a model uses: fusion uses all three (visual first, as the query)."""
    if model == "fusion":
        return list(SINGLE)
    if model in SINGLE:
        return [model]
    raise VafusionError(None, f"unknown model {model!r}", f"choose from {', '.join(MODELS)}")


def inner_split(seqs: list[Sequence], fraction: float, seed: int) -> tuple[list[Sequence], list[Sequence]]:
    """Hold out whole videos of the training folds for early stopping (never the evaluated fold)."""
    videos = sorted({s.video_id for s in seqs}, key=lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest())
    n_val = max(1, int(round(fraction * len(videos)))) if len(videos) > 1 else 0
    held = set(videos[:n_val])
    return [s for s in seqs if s.video_id not in held], [s for s in seqs if s.video_id in held] or seqs


def evaluate(net, norm, seqs: list[Sequence], window: int, hop: int) -> tuple[dict, pd.DataFrame]:
    """CCC over all valid frames of ``seqs`` concatenated, per-video CCC, and the per-frame table."""
    frames, per_video = [], []
    for s in seqs:
        pred = sliding_predict(net, norm.apply(s), window, hop)
        frames.append(pd.DataFrame({"name": s.name, "frame": np.arange(1, s.length + 1),
                                    "valence": pred[:, 0], "arousal": pred[:, 1],
                                    "label_valence": s.labels[:, 0], "label_arousal": s.labels[:, 1],
                                    "valid": s.label_valid}))
        m = s.label_valid
        if m.sum() > 1:
            v, a = ccc(pred[m, 0], s.labels[m, 0]), ccc(pred[m, 1], s.labels[m, 1])
            per_video.append({"name": s.name, "frames": int(m.sum()), "valence": v, "arousal": a, "mean": (v + a) / 2})
    table = pd.concat(frames, ignore_index=True)
    ok = table["valid"].to_numpy()
    v = ccc(table["valence"].to_numpy()[ok], table["label_valence"].to_numpy()[ok])
    a = ccc(table["arousal"].to_numpy()[ok], table["label_arousal"].to_numpy()[ok])
    return {"valence": v, "arousal": a, "mean": (v + a) / 2, "frames": int(ok.sum()), "per_video": per_video}, table


class CrossValidation:
    """Runs models x folds into a run directory; see the module docstring for the layout."""

    def __init__(self, corpus: Corpus, feats_root: Path, run: Path, cfg: Config, folds: pd.DataFrame,
                 streams: dict[str, str], notes: list[str], progress: bool = True, resume: bool = False) -> None:
        self.corpus, self.feats, self.run, self.cfg = corpus, Path(feats_root), Path(run), cfg
        self.folds, self.streams, self.notes = folds, streams, notes
        self.progress, self.resume = progress, resume
        self._cache: dict[str, Sequence] = {}

    def sequences(self, names: list[str]) -> list[Sequence]:
        """Load (once) the sequences of ``names`` with every stream."""
        by_name = self.corpus.by_name()
        out = []
        for n in names:
            if n not in self._cache:
                self._cache[n] = load_sequence(by_name[n], self.feats, self.streams, list(SINGLE))
            out.append(self._cache[n])
        return out

    @staticmethod
    def _subset(seqs: list[Sequence], roles: list[str]) -> list[Sequence]:
        return [Sequence(s.name, s.video_id, {r: s.feats[r] for r in roles}, {r: s.valid[r] for r in roles},
                         s.labels, s.label_valid) for s in seqs]

    def paths(self, model: str, fold: int) -> dict[str, Path]:
        return {"model": self.run / "models" / model / f"fold{fold}.pt",
                "pred": self.run / "predictions" / model / f"fold{fold}.parquet",
                "metrics": self.run / "metrics" / model / f"fold{fold}.json",
                "work": self.run / "work" / model / f"fold{fold}"}

    def run_one(self, model: str, fold: int, report: bool) -> dict:
        """Train ``model`` on every fold but ``fold`` and score it on ``fold`` (skipped if already done)."""
        p = self.paths(model, fold)
        if p["metrics"].exists() and p["model"].exists():
            return json.loads(p["metrics"].read_text())
        roles = roles_of(model)
        test_names = self.folds.loc[self.folds["fold"] == fold, "name"].tolist()
        train_names = self.folds.loc[self.folds["fold"] != fold, "name"].tolist()
        if not test_names or not train_names:
            raise VafusionError(self.run / "folds.csv", f"fold {fold} has {len(test_names)} test and "
                                f"{len(train_names)} training samples", "check the fold assignment")
        t = self.cfg.train
        train_all = self._subset(self.sequences(train_names), roles)
        train, val = inner_split(train_all, t.inner_val_fraction, self.cfg.cv.seed + fold)
        init, lr_scale, cfg = None, 1.0, self.cfg
        stage = self.cfg.fusion_stage
        if model == "fusion" and stage.init not in ("branches", "scratch"):
            raise VafusionError(None, f"fusion_stage.init must be branches or scratch, got {stage.init!r}",
                                "fix the config")
        if model == "fusion":
            cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(
                t, max_epochs=stage.max_epochs or t.max_epochs, patience=stage.patience or t.patience))
            lr_scale = stage.lr_scale
        if model == "fusion" and stage.init == "branches":
            init = {}
            for r in roles:
                branch_path = self.paths(r, fold)["model"]
                if not branch_path.exists():
                    self.run_one(r, fold, report=False)
                net_r, _, _, _ = load_model(branch_path)
                init.update({k: v for k, v in net_r.state_dict().items() if k.startswith("branches.")})
        t0 = time.perf_counter()
        seed = self.cfg.cv.seed * 1000 + fold * 10 + MODELS.index(model)
        net, norm, facts = fit(train, val, roles, cfg, p["work"], seed, init=init, lr_scale=lr_scale,
                               resume=self.resume, progress=False)
        facts["train_seconds"] = round(time.perf_counter() - t0, 2)
        save_model(p["model"], net, norm, self.streams, self.cfg,
                   {"model": model, "fold": fold, "train": sorted(train_names), "facts": facts})
        result, table = evaluate(net, norm, self._subset(self.sequences(test_names), roles),
                                 self.cfg.cv.eval_window, self.cfg.cv.eval_hop)
        result.update(model=model, fold=fold, reported=report, **facts)
        with atomic_path(p["pred"]) as tmp:
            table.to_parquet(tmp, index=False)
        write_json(p["metrics"], result)
        return result

    def run_all(self, models: list[str], folds: list[int]) -> pd.DataFrame:
        """All requested (model, fold) pairs, single-modality models first (they initialise fusion)."""
        self.run.mkdir(parents=True, exist_ok=True)
        write_text(self.run / "config.yaml", to_yaml(self.cfg))
        write_json(self.run / "streams.json", {"streams": self.streams, "notes": self.notes})
        order = sorted(models, key=lambda m: (m == "fusion", MODELS.index(m)))
        jobs = [(m, f) for f in folds for m in order]
        bar = tqdm(jobs, desc="cv", unit="model", disable=not self.progress, dynamic_ncols=True)
        rows = []
        for m, f in bar:
            bar.set_postfix_str(f"{m} fold {f}")
            r = self.run_one(m, f, report=True)
            rows.append({"model": m, "fold": str(f), "valence": r["valence"], "arousal": r["arousal"],
                         "mean": r["mean"]})
        return results_table(rows, models)


def results_table(rows: list[dict], models: list[str]) -> pd.DataFrame:
    """``model,fold,valence,arousal,mean`` with folds 0-5 and a ``mean`` row per model."""
    df = pd.DataFrame(rows, columns=["model", "fold", "valence", "arousal", "mean"])
    out = []
    for m in models:
        part = df[df["model"] == m]
        out.append(part)
        out.append(pd.DataFrame([{"model": m, "fold": "mean", "valence": part["valence"].mean(),
                                  "arousal": part["arousal"].mean(), "mean": part["mean"].mean()}]))
    return pd.concat(out, ignore_index=True)
