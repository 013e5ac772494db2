"""Stage 1 of the paper's multi-stage training: fine-tune the ArcFace IResNet on FER+ before Aff-Wild2.

The network is the IResNet backbone (its 512-d embedding) plus a linear head over the emotion classes,
trained with cross-entropy (soft targets for FER+ ``soft`` labels) and AdamW in a Lightning loop; the best
epoch by validation accuracy is kept. Outputs, beside ``out`` (e.g. ``fer_r50.pth``):

* ``out``: the backbone ``state_dict`` with arcface_torch keys (``conv1.weight`` ... ``features.*``), the
  same format as the model zoo's ``backbone.pth``, so ``vafusion extract --iresnet-weights out`` (and
  insightface's own code) load it directly;
* ``<stem>.head.pt``: the classifier ``{"weight": (C, 512), "bias": (C,)}``;
* ``<stem>.json``: classes, label mode, data counts, per-epoch history, validation/test accuracy;
* ``<out>.work/``: Lightning checkpoints (``last.ckpt``, written after every epoch, for ``--resume``;
  ``best.ckpt``) and ``metrics.csv``.

A run is reproducible: the head is initialised after seeding, and the training order and augmentation are
drawn from (seed, epoch, face), so a run resumed after epoch k ends with the uninterrupted run's weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vafusion.data.ferplus import FaceDataset, FaceSet, load_face_data
from vafusion.data.sequence import EpochSampler, epoch_seed
from vafusion.errors import VafusionError
from vafusion.io.atomic import atomic_path, write_json
from vafusion.models.iresnet import EMBEDDING_SIZE, canonical_arch, preprocess
from vafusion.train.fit import checkpoints, fit_or_interrupt
from vafusion.train.module import FOREACH
from vafusion.weights import load_iresnet, sha256

FORMAT = "vafusion-ferplus/1"


@dataclass
class FinetuneConfig:
    """Optimisation settings (the paper gives none; these are common FER+ fine-tuning values)."""

    arch: str = "iresnet50"
    labels: str = "majority"
    epochs: int = 10
    batch: int = 64
    lr: float = 1e-4
    head_lr_scale: float = 10.0
    weight_decay: float = 5e-4
    warmup: float = 0.05
    min_crop: float = 0.875
    workers: int = 0
    seed: int = 0
    accelerator: str = "auto"
    precision: str = "32-true"


class FaceClassifier(nn.Module):
    """``backbone`` (faces ``(N, 3, 112, 112)`` -> ``(N, 512)``), then a linear head over the classes."""

    def __init__(self, backbone: nn.Module, n_classes: int, dim: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised faces -> class logits ``(N, C)``."""
        return self.head(self.backbone(x))


class FaceTask(L.LightningModule):
    """Cross-entropy on (soft) targets, accuracy against the winning class; warm-up then cosine decay."""

    def __init__(self, model: FaceClassifier, cfg: FinetuneConfig, steps: int) -> None:
        super().__init__()
        self.model, self.cfg, self.steps = model, cfg, max(1, steps)
        self.history: list[dict] = []
        self._train: list[float] = []
        self._val = torch.zeros(3, dtype=torch.float64)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        faces, target = batch
        loss = F.cross_entropy(self.model(preprocess(faces)), target)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(faces))
        self._train.append(float(loss.detach()))
        return loss

    def on_train_batch_start(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Seed dropout by (seed, epoch, batch): checkpoints hold no generator state (as ``VATask``)."""
        torch.manual_seed(epoch_seed(self.cfg.seed, self.current_epoch, batch_idx))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        faces, target = batch
        logits = self.model(preprocess(faces))
        loss = F.cross_entropy(logits, target, reduction="sum")
        correct = (logits.argmax(1) == target.argmax(1)).sum()
        self._val += torch.tensor([float(loss), float(correct), len(faces)], dtype=torch.float64)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._val.zero_()

    def on_test_epoch_start(self) -> None:
        self._val.zero_()

    def on_test_epoch_end(self) -> None:
        n = max(float(self._val[2]), 1.0)
        self.log_dict({"test_acc": float(self._val[1]) / n, "test_loss": float(self._val[0]) / n})

    def on_validation_epoch_end(self) -> None:
        n = max(float(self._val[2]), 1.0)
        acc, loss = float(self._val[1]) / n, float(self._val[0]) / n
        self.log_dict({"val_acc": acc, "val_loss": loss}, prog_bar=True)
        if not self.trainer.sanity_checking:
            train = sum(self._train) / len(self._train) if self._train else float("nan")
            self.history.append(
                {"epoch": self.current_epoch + 1, "train_loss": train, "val_loss": loss, "val_acc": acc}
            )
        self._train = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ferplus_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("ferplus_history", []))

    def configure_optimizers(self):
        c = self.cfg
        groups = [
            {"params": [p for p in self.model.backbone.parameters() if p.requires_grad], "lr": c.lr},
            {"params": list(self.model.head.parameters()), "lr": c.lr * c.head_lr_scale},
        ]
        opt = torch.optim.AdamW(groups, weight_decay=c.weight_decay, foreach=FOREACH)
        warm = max(1, round(c.warmup * self.steps))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, self.steps - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _quiet_lightning() -> None:
    """Lightning's banners and the warnings that are expected here (small loaders, reused work folder).

    Kept local rather than importing ``vafusion.train.fit`` so stage 1 does not load the VA training stack.
    """
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (
        ".*does not have many workers.*",
        ".*number of training batches.*",
        ".*exists and is not empty.*",
        ".*LitLogger.*",
        ".*litlogger.*",
        ".*treespec.*",
    ):
        warnings.filterwarnings("ignore", pattern)


class _SeededFaces(Dataset):
    """Training faces keyed ``(epoch, index)`` by :class:`EpochSampler`; each face's augmentation is drawn
    from a generator seeded by (seed, epoch, index), in this process or in a loader worker alike."""

    def __init__(self, faces: FaceDataset, seed: int) -> None:
        self.faces, self.seed = faces, seed

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = key
        torch.manual_seed(epoch_seed(self.seed, epoch, i))
        return self.faces[i]


def _loader(faces: FaceSet, cfg: FinetuneConfig, train: bool) -> DataLoader:
    """Training: faces in a (seed, epoch) order, seeded augmentation; else in file order, unaugmented."""
    ds = FaceDataset(faces, augment=train, min_crop=cfg.min_crop)
    if not train:
        return DataLoader(ds, batch_size=cfg.batch, num_workers=cfg.workers)
    return DataLoader(
        _SeededFaces(ds, cfg.seed),
        batch_size=cfg.batch,
        sampler=EpochSampler(len(ds), cfg.seed),
        drop_last=len(ds) > cfg.batch,
        num_workers=cfg.workers,
    )


@torch.inference_mode()
def accuracy(model: nn.Module, faces: FaceSet, batch: int = 64) -> float:
    """Share of ``faces`` whose top logit is the winning class of its target (no augmentation)."""
    model.eval()
    device = next(model.parameters()).device
    ds = FaceDataset(faces)
    correct = 0
    for x, t in DataLoader(ds, batch_size=batch):
        correct += int((model(preprocess(x.to(device))).argmax(1).cpu() == t.argmax(1)).sum())
    return correct / max(len(ds), 1)


def _trainer(cfg: FinetuneConfig, work: Path, progress: bool) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Lightning trainer that keeps the best epoch by validation accuracy and writes ``last.ckpt`` after
    every epoch (:func:`~vafusion.train.fit.checkpoints`)."""
    ckpt, last = checkpoints(work, "val_acc")
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=1,
        precision=cfg.precision,
        callbacks=[ckpt, last],
        logger=CSVLogger(work, name="", version=""),
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    return trainer, ckpt


def train_classifier(
    model: FaceClassifier,
    train: FaceSet,
    val: FaceSet,
    cfg: FinetuneConfig,
    work: Path,
    resume: bool = False,
    progress: bool = False,
    test: FaceSet | None = None,
) -> tuple[FaceClassifier, dict]:
    """Fit ``model`` on ``train`` with Lightning, keep the epoch with the best ``val`` accuracy.

    ``resume`` continues from ``work/last.ckpt``. With ``test``, the best model is also scored on it (on
    the training device). Returns the best model (CPU, eval mode) and training facts.
    """
    if len(train) == 0 or len(val) == 0:
        raise VafusionError(
            work,
            f"{len(train)} training and {len(val)} validation faces after labelling",
            "check the data: FER+ rows won by unknown/NF votes are dropped",
        )
    _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model.train()
    dl_train, dl_val = _loader(train, cfg, True), _loader(val, cfg, False)
    task = FaceTask(model, cfg, steps=len(dl_train) * cfg.epochs)
    work.mkdir(parents=True, exist_ok=True)
    trainer, ckpt = _trainer(cfg, work, progress)
    dl_train.sampler.epoch_of = lambda: trainer.current_epoch
    last = work / "last.ckpt"
    t0 = time.perf_counter()
    resumed = resume and last.exists()
    fit_or_interrupt(trainer, task, dl_train, dl_val, ckpt_path=str(last) if resumed else None)
    seconds = time.perf_counter() - t0
    if ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
    best = max(task.history, key=lambda h: h["val_acc"]) if task.history else {}
    facts = {
        "epochs": trainer.current_epoch,
        "history": task.history,
        "best_epoch": best.get("epoch"),
        "best_val_acc": best.get("val_acc"),
        "train_seconds": round(seconds, 2),
        "train_faces": len(train),
        "val_faces": len(val),
        "resumed": resumed,
    }
    if test is not None and len(test):
        scores = trainer.test(task, _loader(test, cfg, False), verbose=False)
        facts.update(test_acc=float(scores[0]["test_acc"]), test_faces=len(test))
    return task.model.cpu().eval(), facts


def output_paths(out: str | Path) -> dict[str, Path]:
    """Where :func:`finetune_face` writes: backbone, head, summary JSON and the Lightning work folder."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {
        "backbone": out,
        "head": out.with_name(f"{stem}.head.pt"),
        "summary": out.with_name(f"{stem}.json"),
        "work": out.with_name(f"{out.name}.work"),
    }


def export(model: FaceClassifier, out: str | Path, summary: dict) -> dict[str, Path]:
    """Write the backbone (arcface_torch keys), the head and the summary, each atomically. ``torch.save``
    gets an open file: given a path, it names its archive after the random temp name (other bytes)."""
    paths = output_paths(out)
    backbone = {
        k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
        for k, v in model.backbone.state_dict().items()
    }
    head = {k: v.detach().cpu().float() for k, v in model.head.state_dict().items()}
    for key, tensors in (("backbone", backbone), ("head", head)):
        with atomic_path(paths[key]) as tmp, open(tmp, "wb") as fh:
            torch.save(tensors, fh)
    write_json(paths["summary"], summary)
    return paths


def _earlier_run(out: str | Path, cfg: FinetuneConfig) -> tuple[Path | None, dict | None]:
    """The first file an earlier run left at ``out`` (an output, or an interrupted run's ``last.ckpt``),
    and that run's summary if it finished with the settings of ``cfg`` (``workers`` aside)."""
    paths = output_paths(out)
    files = [paths["backbone"], paths["head"], paths["summary"]]
    found = next((p for p in [*files, paths["work"] / "last.ckpt"] if p.exists()), None)
    if not all(p.is_file() for p in files):
        return found, None
    try:
        summary = json.loads(paths["summary"].read_text())
    except (OSError, ValueError):
        return found, None
    same = {**asdict(cfg), "workers": None} == {**summary.get("config", {}), "workers": None}
    return found, summary if same and summary.get("format") == FORMAT else None


def finetune_face(
    data: str | Path,
    weights: str | Path,
    out: str | Path,
    cfg: FinetuneConfig,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune an IResNet (from arcface_torch ``weights``) on FER+ or an image folder; write ``out``.

    Returns the summary also written to ``<stem>.json``. An earlier run's files at ``out`` are an error
    without ``resume``; with it, an interrupted run continues after its last finished epoch and a finished
    one is returned as it is, with ``already_finished`` set.
    """
    arch = canonical_arch(cfg.arch)
    found, finished = _earlier_run(out, cfg)
    if found is not None and not resume:
        raise VafusionError(
            found,
            "already exists (an earlier finetune-face run)",
            "pass --resume to continue that run, or choose another --out (or delete it)",
        )
    if finished is not None:
        return {**finished, "already_finished": True}
    sets = load_face_data(data, cfg.labels)
    backbone = load_iresnet(arch, weights)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the head's initialisation
    model = FaceClassifier(backbone.train(), len(sets["train"].classes))
    model, facts = train_classifier(
        model,
        sets["train"],
        sets["val"],
        cfg,
        output_paths(out)["work"],
        resume,
        progress,
        test=sets.get("test"),
    )
    summary = {
        "format": FORMAT,
        "arch": arch,
        "classes": list(sets["train"].classes),
        "labels": cfg.labels,
        "data": str(data),
        "init_weights": str(weights),
        "init_sha256": sha256(weights),
        "counts": {split: s.counts() for split, s in sets.items()},
        "config": asdict(cfg),
        **facts,
    }
    export(model, out, summary)
    return summary
