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
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vafusion.config import Config, to_dict, to_yaml
from vafusion.data.affwild2 import Corpus
from vafusion.errors import VafusionError
from vafusion.features.store import feature_path
from vafusion.inference import sliding_predict
from vafusion.io.atomic import atomic_path, write_json, write_text
from vafusion.metrics import ccc
from vafusion.train.data import Sequence, load_sequence
from vafusion.train.fit import fit, save_model
from vafusion.weights import load_model

SINGLE = ("visual", "vggish", "logmel")
MODELS = ("fusion",) + SINGLE
# Settings that change where and how fast training runs, not what it computes: left out of the job key.
RUNTIME_KEYS = ("num_workers", "accelerator", "devices", "num_nodes", "strategy", "threads")


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
        self.failed: dict[str, VafusionError] = {}

    def sequences(self, names: list[str]) -> list[Sequence]:
        """Load (once) the sequences of ``names`` with every stream."""
        by_name = self.corpus.by_name()
        out = []
        for n in names:
            if n not in self._cache:
                self._cache[n] = load_sequence(by_name[n], self.feats, self.streams, list(SINGLE))
            out.append(self._cache[n])
        return out

    def check(self, names: list[str]) -> dict[str, VafusionError]:
        """Load every sample once; return the ones that cannot be used, each with its one-line reason.

        A broken annotation, a missing or unreadable feature file, or a feature file whose width differs
        from the other files of its extractor leaves that sample out instead of stopping the whole run.
        """
        failed: dict[str, VafusionError] = {}
        not_extracted = self._extract_failures()
        for n in names:
            try:
                self.sequences([n])
            except VafusionError as exc:
                missing = exc.path is not None and not exc.path.exists() and n in not_extracted
                failed[n] = VafusionError(None, f"not extracted: {not_extracted[n]}") if missing else exc
        ok = [n for n in names if n not in failed]
        for role in SINGLE:
            dims = Counter(self._cache[n].feats[role].shape[1] for n in ok)
            if len(dims) < 2:
                continue
            usual, count = dims.most_common(1)[0]
            for n in ok:
                d = self._cache[n].feats[role].shape[1]
                if d != usual and n not in failed:
                    failed[n] = VafusionError(
                        feature_path(self.feats, self.streams[role], n),
                        f"holds {d}-d {self.streams[role]} features, the other {count} files hold {usual}-d",
                        "it was made by another extractor version; delete it and rerun `vafusion extract`")
        return failed

    def _extract_failures(self) -> dict[str, str]:
        """name -> why `vafusion extract` made no features for it, from the summaries it left in the store."""
        out: dict[str, str] = {}
        for summary in sorted(self.feats.glob("extract_summary*.json")):
            try:
                extractors = json.loads(summary.read_text()).get("extractors", {})
            except (OSError, ValueError):
                continue
            for stats in extractors.values():
                for name, reason in stats.get("failed", {}).items():
                    out.setdefault(name, reason)
        return out

    def job_key(self, model: str, fold: int, roles: list[str], train_names: list[str],
                test_names: list[str]) -> str:
        """Digest of everything a (model, fold) result depends on: a finished result is reused only
        while its key is unchanged, so a fixed input, new features or a new setting retrain it."""
        cfg = to_dict(self.cfg)
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k not in RUNTIME_KEYS}
        cfg["cv"] = {k: cfg["cv"][k] for k in ("seed", "eval_window", "eval_hop")}
        for section in ("features", "synth") + (("fusion_stage",) if model != "fusion" else ()):
            cfg.pop(section, None)
        seqs = self.sequences(sorted(train_names) + sorted(test_names))
        spec = {"model": model, "fold": fold, "streams": {r: self.streams[r] for r in roles},
                "dims": {r: int(seqs[0].feats[r].shape[1]) for r in roles},
                "fingerprints": {r: sorted({s.fingerprints.get(r, "") for s in seqs}) for r in roles},
                "config": cfg, "train": sorted(train_names), "test": sorted(test_names)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

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
        roles = roles_of(model)
        usable = self.folds[~self.folds["name"].isin(list(self.failed))]
        test_names = usable.loc[usable["fold"] == fold, "name"].tolist()
        train_names = usable.loc[usable["fold"] != fold, "name"].tolist()
        if not test_names or not train_names:
            raise VafusionError(self.run / "folds.csv", f"fold {fold} has {len(test_names)} usable test and "
                                f"{len(train_names)} training samples", "check the fold assignment and the "
                                "samples left out")
        job = self.job_key(model, fold, roles, train_names, test_names)
        if p["metrics"].exists() and p["model"].exists():
            try:
                done = json.loads(p["metrics"].read_text())
            except ValueError:
                done = {}
            if done.get("job") == job:
                return done
        marker = p["work"] / "job.txt"
        resume = self.resume and marker.is_file() and marker.read_text().strip() == job
        write_text(marker, job + "\n")
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
                self.run_one(r, fold, report=False)  # returns at once when the branch is done and current
                net_r, _, _, _ = load_model(branch_path)
                init.update({k: v for k, v in net_r.state_dict().items() if k.startswith("branches.")})
        t0 = time.perf_counter()
        seed = self.cfg.cv.seed * 1000 + fold * 10 + MODELS.index(model)
        net, norm, facts = fit(train, val, roles, cfg, p["work"], seed, init=init, lr_scale=lr_scale,
                               resume=resume, progress=False)
        facts["train_seconds"] = round(time.perf_counter() - t0, 2)
        save_model(p["model"], net, norm, self.streams, self.cfg,
                   {"model": model, "fold": fold, "train": sorted(train_names), "facts": facts})
        result, table = evaluate(net, norm, self._subset(self.sequences(test_names), roles),
                                 self.cfg.cv.eval_window, self.cfg.cv.eval_hop)
        fold_names = set(self.folds["name"])
        result.update(model=model, fold=fold, reported=report, job=job,
                      left_out=sorted(n for n in self.failed if n in fold_names), **facts)
        with atomic_path(p["pred"]) as tmp:
            table.to_parquet(tmp, index=False)
        write_json(p["metrics"], result)
        return result

    def run_all(self, models: list[str], folds: list[int]) -> pd.DataFrame:
        """All requested (model, fold) pairs, single-modality models first (they initialise fusion)."""
        self.run.mkdir(parents=True, exist_ok=True)
        write_text(self.run / "config.yaml", to_yaml(self.cfg))
        write_json(self.run / "streams.json", {"streams": self.streams, "notes": self.notes})
        names = self.folds["name"].tolist()
        self.failed = self.check(names)
        if names and len(self.failed) == len(names):
            raise next(iter(self.failed.values()))
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
