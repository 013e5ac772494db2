"""Train one model on a set of sequences with Lightning."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from vafusion.config import Config, TrainConfig
from vafusion.data.sequence import EpochSampler, Sequence, WindowDataset
from vafusion.errors import VafusionError
from vafusion.io.atomic import atomic_path, clean_stale_temps
from vafusion.models.fusion import FusionNet
from vafusion.models.normaliser import Normaliser
from vafusion.models.registry import create_model, model_entry
from vafusion.train.module import VATask


def _collate(items: list[dict]) -> dict:
    return {
        "feats": {r: torch.stack([it["feats"][r] for it in items]) for r in items[0]["feats"]},
        "valid": {r: torch.stack([it["valid"][r] for it in items]) for r in items[0]["valid"]},
        "labels": torch.stack([it["labels"] for it in items]),
        "label_valid": torch.stack([it["label_valid"] for it in items]),
    }


def quiet_lightning() -> None:
    """Keep Lightning's info banners and known-harmless warnings off the user's terminal."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*")
    warnings.filterwarnings("ignore", ".*LitLogger.*")
    warnings.filterwarnings("ignore", ".*litlogger.*")
    warnings.filterwarnings("ignore", ".*treespec.*")
    # a rerun (or --resume) finds its own earlier logs and checkpoints in RUN/work/...: expected
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")
    # DDP: the CCC metric all-reduces its sums itself (torchmetrics), so the logged values are already global.
    warnings.filterwarnings("ignore", ".*sync_dist=True.*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written beside their final name and renamed into place.

    A kill during the write leaves the previous ``last.ckpt`` whole (Lightning's own writer stages the file
    in the system temp folder, which may be another disk, and leaves it there when killed).
    """

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: object = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _readable(ckpt: Path) -> bool:
    """True if ``ckpt`` exists and loads; a damaged one (e.g. from an older version) restarts the fold."""
    if not ckpt.is_file():
        return False
    try:
        torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception:
        print(f"vafusion: note: {ckpt} is damaged; training this fold from the start", file=sys.stderr)
        return False
    return True


def check_strategy(strategy: str) -> None:
    """Refuse Lightning strategies that spawn or fork workers from this process.

    Those launchers pickle the model into each worker (weight-norm layers cannot be pickled) and hand back
    only the weights, not the trainer state this module reports (epochs, best score). ``ddp`` runs every
    process from the command line instead, as torchrun and SLURM do.
    """
    if any(word in str(strategy) for word in ("spawn", "fork", "notebook")):
        raise VafusionError(
            None,
            f"train.strategy={strategy} is not supported",
            "use --strategy ddp (every process runs the command; see docs/scaling.md)",
        )


def _loaders(
    train: list[Sequence], val: list[Sequence], t: TrainConfig, seed: int, norm: Normaliser
) -> tuple[WindowDataset, EpochSampler, DataLoader, DataLoader]:
    """Training windows (augmented, in a seeded order per epoch) and validation windows, each normalised
    by ``norm`` as it is cut (the sequences may be memory-mapped: no normalised copy is held)."""
    ds_train = WindowDataset(
        train,
        t.window,
        t.hop,
        train=True,
        branch_dropout=t.branch_dropout,
        frame_dropout=t.frame_dropout,
        seed=seed,
        norm=norm,
    )
    ds_val = WindowDataset(val, t.window, t.window, norm=norm)
    order = EpochSampler(len(ds_train), seed)
    dl_train = DataLoader(
        ds_train, batch_size=t.batch_size, sampler=order, collate_fn=_collate, num_workers=t.num_workers
    )
    dl_val = DataLoader(
        ds_val, batch_size=t.batch_size, shuffle=False, collate_fn=_collate, num_workers=t.num_workers
    )
    return ds_train, order, dl_train, dl_val


def checkpoints(work: Path, monitor: str) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``best.ckpt`` (highest ``monitor``) and ``last.ckpt`` written after every epoch, in ``work``.

    ``last.ckpt`` has a callback of its own: Lightning's ``save_last`` writes it only in epochs where the
    score improved, so ``--resume`` redid the epochs since.
    """
    best = ModelCheckpoint(
        dirpath=work, filename="best", monitor=monitor, mode="max", enable_version_counter=False
    )
    return best, ModelCheckpoint(dirpath=work, filename="last", enable_version_counter=False)


def fit_or_interrupt(trainer: L.Trainer, *args: object, **kwargs: object) -> None:
    """``trainer.fit``; Ctrl-C ends it as ``KeyboardInterrupt`` (the CLI says how to resume). Lightning turns
    Ctrl-C into a silent ``exit(1)`` and leaves SIGINT ignored; the handler is put back."""
    on_sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            signal.signal(signal.SIGINT, on_sigint)
            raise KeyboardInterrupt from None
        raise


def _trainer(
    t: TrainConfig, work: Path, progress: bool, extra: list[L.Callback]
) -> tuple[L.Trainer, ModelCheckpoint]:
    """A deterministic Lightning trainer that keeps the best epoch by validation P, writes ``last.ckpt``
    after every epoch (:func:`checkpoints`) and stops early."""
    ckpt, last = checkpoints(work, "val_P")
    stop = EarlyStopping(monitor="val_P", mode="max", patience=t.patience)
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        callbacks=[ckpt, last, stop, *extra],
        logger=CSVLogger(work, name="", version=""),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    return trainer, ckpt


def fit(
    train: list[Sequence],
    val: list[Sequence],
    model: str,
    cfg: Config,
    work: Path,
    seed: int,
    init: dict[str, torch.Tensor] | None = None,
    lr_scale: float = 1.0,
    resume: bool = False,
    progress: bool = False,
    callbacks: list[L.Callback] | None = None,
) -> tuple[FusionNet, Normaliser, dict]:
    """Fit the registered ``model`` (widths from ``cfg.model``) on normalised windows of ``train``;
    early-stop on CCC of ``val``.

    Returns the best network (by validation P), the normaliser fitted on ``train`` and training facts.
    ``resume`` continues from ``work/last.ckpt`` when a previous run was interrupted; ``callbacks`` are
    added to Lightning's (timers in ``benchmarks/scale.py``).
    """
    check_strategy(cfg.train.strategy)
    quiet_lightning()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(seed, workers=True, verbose=False)
    norm = Normaliser.fit(train)
    dims = {r: train[0].feats[r].shape[1] for r in model_entry(model).roles}
    net = create_model(model, dims=dims, **dataclasses.asdict(cfg.model))
    if init:
        net.load_state_dict(init, strict=False)
    t = cfg.train
    ds_train, order, dl_train, dl_val = _loaders(train, val, t, seed, norm)
    task = VATask(net, t, lr_scale, seed=seed)
    work.mkdir(parents=True, exist_ok=True)
    trainer, ckpt = _trainer(t, work, progress, callbacks or [])
    order.epoch_of = lambda: trainer.current_epoch
    clean_stale_temps(work)
    last = work / "last.ckpt"
    fit_or_interrupt(
        trainer, task, dl_train, dl_val, ckpt_path=str(last) if resume and _readable(last) else None
    )
    if ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
    facts = {
        "epochs": trainer.current_epoch,
        "best_val_P": float(ckpt.best_model_score or float("nan")),
        "train_windows": len(ds_train),
        "train_frames": int(sum(s.label_valid.sum() for s in train)),
        "params": sum(p.numel() for p in net.parameters()),
    }
    return task.net.eval(), norm, facts
