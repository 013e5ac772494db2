"""The paper's protocol: six folds, each model trained on the other folds and scored on this one.

Run layout (everything later commands read)::

    RUN/config.yaml  RUN/folds.csv  RUN/streams.json
    RUN/face_calibration.npz                the int8 calibration crops of IResNet features (if any)
    RUN/models/<model>/fold<k>.pt           trained network + normaliser + streams
    RUN/predictions/<model>/fold<k>.parquet per-frame predictions and labels
    RUN/metrics/<model>/fold<k>.json        fold CCC and per-video CCC
    RUN/work/<model>/fold<k>/               Lightning checkpoints (last.ckpt for --resume) and logs
    RUN/results.csv  RUN/report.md  RUN/*.png

A finished (model, fold) is skipped on rerun, so an interrupted ``cv`` continues where it stopped.
Pairs run ``cv.processes`` at a time, each in its own process (:mod:`vafusion.train.parallel`), with the
results a single process gives. Features are memory-mapped from the store: every process and fold reads
the same pages, and no process holds the whole corpus in memory.
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
import torch
from tqdm import tqdm

from vafusion.config import Config, to_dict, to_yaml
from vafusion.data.affwild2 import Corpus
from vafusion.data.calibration import keep_calibration
from vafusion.data.sequence import Sequence, load_sequence
from vafusion.data.synth import MANIFEST as SYNTH_MANIFEST
from vafusion.errors import VafusionError
from vafusion.features.store import feature_path
from vafusion.io.atomic import atomic_path, write_json, write_text
from vafusion.models.checkpoint import Checkpoint
from vafusion.models.registry import ROLES, model_entry, model_names
from vafusion.train.fit import fit
from vafusion.train.parallel import Job, portable, process_count, rebuilt, run_parallel
from vafusion.train.scoring import evaluate, results_table
from vafusion.weights import load_checkpoint, save_checkpoint

MODELS = tuple(model_names(trainable=True))
"""What ``vafusion cv`` trains: the paper's fusion model and its three single-stream models."""
# Settings that change where and how fast training runs, not what it computes: left out of the job key.
RUNTIME_KEYS = ("num_workers", "accelerator", "devices", "num_nodes", "strategy", "threads")
__all__ = ["MODELS", "CrossValidation", "evaluate", "inner_split", "results_table", "roles_of"]


def roles_of(model: str) -> list[str]:
    """Streams a trainable model uses (fusion: all three, visual first as the query)."""
    if model not in MODELS:
        raise VafusionError(None, f"unknown model {model!r}", f"choose from {', '.join(MODELS)}")
    return list(model_entry(model).roles)


def inner_split(seqs: list[Sequence], fraction: float, seed: int) -> tuple[list[Sequence], list[Sequence]]:
    """Hold out whole videos of the training folds for early stopping (never the evaluated fold)."""
    videos = sorted(
        {s.video_id for s in seqs}, key=lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest()
    )
    n_val = max(1, int(round(fraction * len(videos)))) if len(videos) > 1 else 0
    held = set(videos[:n_val])
    return [s for s in seqs if s.video_id not in held], [s for s in seqs if s.video_id in held] or seqs


class CrossValidation:
    """Runs models x folds into a run directory; see the module docstring for the layout."""

    def __init__(
        self,
        corpus: Corpus,
        feats_root: Path,
        run: Path,
        cfg: Config,
        folds: pd.DataFrame,
        streams: dict[str, str],
        notes: list[str],
        progress: bool = True,
        resume: bool = False,
    ) -> None:
        self.corpus, self.feats, self.run, self.cfg = corpus, Path(feats_root), Path(run), cfg
        self.folds, self.streams, self.notes = folds, streams, notes
        self.progress, self.resume = progress, resume
        self._cache: dict[str, Sequence] = {}
        self.synthetic = (self.corpus.root / SYNTH_MANIFEST).is_file()
        self.failed: dict[str, VafusionError] = {}

    def __getstate__(self) -> dict:
        """What a worker process gets: everything but the loaded sequences (it maps its own), with the
        left-out samples' errors as plain values."""
        state = dict(self.__dict__, _cache={}, progress=False)
        state["failed"] = {n: portable(e) for n, e in self.failed.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, failed={n: rebuilt(*e) for n, e in state["failed"].items()})

    def sequences(self, names: list[str]) -> list[Sequence]:
        """Load (once) the sequences of ``names`` with every stream."""
        by_name = self.corpus.by_name()
        out = []
        for n in names:
            if n not in self._cache:
                self._cache[n] = load_sequence(by_name[n], self.feats, self.streams, list(ROLES), mmap=True)
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
        for role in ROLES:
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
                        "it was made by another extractor version; delete it and rerun `vafusion extract`",
                    )
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

    def job_key(
        self, model: str, fold: int, roles: list[str], train_names: list[str], test_names: list[str]
    ) -> str:
        """Digest of everything a (model, fold) result depends on: a finished result is reused only
        while its key is unchanged, so a fixed input, an edited annotation, a rewritten feature file (size
        or modification time) or a new setting retrains it."""
        cfg = to_dict(self.cfg)
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k not in RUNTIME_KEYS}
        cfg["cv"] = {k: cfg["cv"][k] for k in ("seed", "eval_window", "eval_hop")}
        for section in ("features", "synth") + (("fusion_stage",) if model != "fusion" else ()):
            cfg.pop(section, None)
        seqs = self.sequences(sorted(train_names) + sorted(test_names))
        spec = {
            "model": model,
            "fold": fold,
            "streams": {r: self.streams[r] for r in roles},
            "dims": {r: int(seqs[0].feats[r].shape[1]) for r in roles},
            "fingerprints": {r: sorted({s.fingerprints.get(r, "") for s in seqs}) for r in roles},
            "sources": {s.name: [s.sources.get(k, "") for k in ("labels", *roles)] for s in seqs},
            "config": cfg,
            "train": sorted(train_names),
            "test": sorted(test_names),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def paths(self, model: str, fold: int) -> dict[str, Path]:
        return {
            "model": self.run / "models" / model / f"fold{fold}.pt",
            "pred": self.run / "predictions" / model / f"fold{fold}.parquet",
            "metrics": self.run / "metrics" / model / f"fold{fold}.json",
            "work": self.run / "work" / model / f"fold{fold}",
        }

    def split(self, fold: int) -> tuple[list[str], list[str]]:
        """(training, test) sample names of ``fold``, leaving out the samples that cannot be used."""
        usable = self.folds[~self.folds["name"].isin(list(self.failed))]
        test_names = usable.loc[usable["fold"] == fold, "name"].tolist()
        train_names = usable.loc[usable["fold"] != fold, "name"].tolist()
        if not test_names or not train_names:
            in_fold = set(self.folds.loc[self.folds["fold"] == fold, "name"])
            lost = [exc.one_line() for n, exc in self.failed.items() if (n in in_fold) == (not test_names)]
            shown = "; ".join(lost[:3]) + (f"; ... {len(lost) - 3} more" if len(lost) > 3 else "")
            raise VafusionError(
                self.run / "folds.csv",
                f"fold {fold} has {len(test_names)} usable test and {len(train_names)} training samples"
                + (f" ({len(lost)} left out: {shown})" if lost else ""),
                "fix the samples left out, or check the fold assignment",
            )
        return train_names, test_names

    @staticmethod
    def _finished(p: dict[str, Path], job: str) -> dict | None:
        """The stored result of a (model, fold) whose job key is ``job``, if it finished."""
        if not (p["metrics"].exists() and p["model"].exists()):
            return None
        try:
            done = json.loads(p["metrics"].read_text())
        except ValueError:
            return None
        return done if done.get("job") == job else None

    def _stage(self, model: str, fold: int) -> tuple[Config, float, dict[str, torch.Tensor] | None]:
        """Settings, learning-rate scale and initial weights of ``model``: the fusion model is stage 3,
        started from the trained single-stream branches of the same fold (``fusion_stage.init``)."""
        stage = self.cfg.fusion_stage
        if model != "fusion":
            return self.cfg, 1.0, None
        if stage.init not in ("branches", "scratch"):
            raise VafusionError(
                None, f"fusion_stage.init must be branches or scratch, got {stage.init!r}", "fix the config"
            )
        t = self.cfg.train
        cfg = dataclasses.replace(
            self.cfg,
            train=dataclasses.replace(
                t, max_epochs=stage.max_epochs or t.max_epochs, patience=stage.patience or t.patience
            ),
        )
        if stage.init != "branches":
            return cfg, stage.lr_scale, None
        init = {}
        for r in roles_of(model):
            self.run_one(r, fold, report=False)  # returns at once when the branch is done and current
            net_r = load_checkpoint(self.paths(r, fold)["model"]).net
            init.update({k: v for k, v in net_r.state_dict().items() if k.startswith("branches.")})
        return cfg, stage.lr_scale, init

    def finished(self, model: str, fold: int) -> dict | None:
        """The stored result of ``model`` on ``fold`` if it is finished and still current, else ``None``."""
        train_names, test_names = self.split(fold)
        job = self.job_key(model, fold, roles_of(model), train_names, test_names)
        return self._finished(self.paths(model, fold), job)

    def run_one(self, model: str, fold: int, report: bool) -> dict:
        """Train ``model`` on every fold but ``fold`` and score it on ``fold`` (skipped if already done)."""
        p = self.paths(model, fold)
        roles = roles_of(model)
        train_names, test_names = self.split(fold)
        job = self.job_key(model, fold, roles, train_names, test_names)
        done = self._finished(p, job)
        if done is not None:
            return done
        marker = p["work"] / "job.txt"
        resume = self.resume and marker.is_file() and marker.read_text().strip() == job
        write_text(marker, job + "\n")
        train_all = [s.subset(roles) for s in self.sequences(train_names)]
        train, val = inner_split(train_all, self.cfg.train.inner_val_fraction, self.cfg.cv.seed + fold)
        cfg, lr_scale, init = self._stage(model, fold)
        t0 = time.perf_counter()
        seed = (self.cfg.cv.seed * 1000 + fold * 10 + MODELS.index(model)) % 2**32  # numpy's range
        net, norm, facts = fit(
            train,
            val,
            model,
            cfg,
            p["work"],
            seed,
            init=init,
            lr_scale=lr_scale,
            resume=resume,
            progress=False,
        )
        facts["train_seconds"] = round(time.perf_counter() - t0, 2)
        extra = {"model": model, "fold": fold, "train": sorted(train_names), "facts": facts}
        save_checkpoint(p["model"], self.checkpoint(net, norm, model, train_all, extra))
        result, table = evaluate(
            net,
            norm,
            [s.subset(roles) for s in self.sequences(test_names)],
            self.cfg.cv.eval_window,
            self.cfg.cv.eval_hop,
        )
        fold_names = set(self.folds["name"])
        result.update(
            model=model,
            fold=fold,
            reported=report,
            job=job,
            left_out=sorted(n for n in self.failed if n in fold_names),
            **facts,
        )
        with atomic_path(p["pred"]) as tmp:
            table.to_parquet(tmp, index=False)
        write_json(p["metrics"], result)
        return result

    def checkpoint(self, net, norm, model: str, train: list[Sequence], extra: dict) -> Checkpoint:
        """What to save of a trained model: with the training features' fingerprints and frame rate."""
        first = train[0]
        features = {
            r: {
                "extractor": self.streams[r],
                "fingerprint": first.fingerprints.get(r, ""),
                "params": first.params.get(r, {}),
            }
            for r in net.names
        }
        extra = {**extra, "data": {"root": str(self.corpus.root), "synthetic": self.synthetic}}
        rates = [s.fps for s in train if s.fps]
        fps = float(np.median(rates)) if rates else None
        return Checkpoint(
            net,
            norm,
            {r: self.streams[r] for r in net.names},
            model,
            fps,
            self.cfg.cv.eval_window,
            self.cfg.cv.eval_hop,
            features,
            to_dict(self.cfg),
            extra,
        )

    def run_all(self, models: list[str], folds: list[int]) -> pd.DataFrame:
        """All requested (model, fold) pairs, single-modality models first (they initialise fusion)."""
        self.run.mkdir(parents=True, exist_ok=True)
        write_text(self.run / "config.yaml", to_yaml(self.cfg))
        data = {"root": str(self.corpus.root), "synthetic": self.synthetic}
        write_json(self.run / "streams.json", {"streams": self.streams, "notes": self.notes, "data": data})
        if "iresnet" in self.streams.values():  # predict builds the int8 model the features were made with
            keep_calibration(self.feats, self.run)
        names = self.folds["name"].tolist()
        self.failed = self.check(names)
        if names and len(self.failed) == len(names):
            raise next(iter(self.failed.values()))
        for fold in folds:
            self.split(fold)  # an empty fold stops the run here, before any training
        order = sorted(models, key=lambda m: (m == "fusion", MODELS.index(m)))
        jobs = [(m, f) for f in folds for m in order]
        results = self._run_jobs(jobs)
        rows = [
            {"model": m, "fold": str(f), **{k: results[m, f][k] for k in ("valence", "arousal", "mean")}}
            for m, f in jobs
        ]
        return results_table(rows, models)

    def _run_jobs(self, jobs: list[Job]) -> dict[Job, dict]:
        """Every job's result: finished ones read back, the others trained here or on worker processes."""
        bar = tqdm(total=len(jobs), desc="cv", unit="model", disable=not self.progress, dynamic_ncols=True)
        results = {j: r for j in jobs if (r := self.finished(*j)) is not None}
        todo = [j for j in jobs if j not in results]
        bar.update(len(results))
        processes = process_count(self.cfg, len(todo))
        with bar:
            if processes == 1:
                for m, f in todo:
                    bar.set_postfix_str(f"{m} fold {f}")
                    results[m, f] = self.run_one(m, f, report=True)
                    bar.update()
                return results

            def done(job: Job, running: list[Job]) -> None:
                bar.set_postfix_str(", ".join(f"{m} fold {f}" for m, f in running))
                bar.update()

            needs = {j: self._needs(j, todo) for j in todo}
            results.update(run_parallel(self, todo, needs, processes, done))
        return results

    def _needs(self, job: Job, todo: list[Job]) -> set[Job]:
        """The jobs of ``todo`` that ``job`` starts from: a fusion model's branches of the same fold."""
        model, fold = job
        if model != "fusion" or self.cfg.fusion_stage.init != "branches":
            return set()
        return {(r, fold) for r in roles_of(model)} & set(todo)
