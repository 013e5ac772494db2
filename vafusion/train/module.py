"""The Lightning task: owns loss (1 - CCC), metric (CCC per dimension) and optimiser; the net stays pure."""

from __future__ import annotations

import lightning as L
import torch

from vafusion.config import TrainConfig
from vafusion.data.sequence import epoch_seed
from vafusion.metrics import CCC, ccc_loss
from vafusion.models.fusion import FusionNet

FOREACH = True
"""AdamW's multi-tensor implementation, also on CPU (where torch defaults to a loop over parameters): the
same arithmetic, bit for bit (``tests/train/test_optimiser.py``), in 5.7 instead of 9.0 ms per step of the
default fusion network (0.61 M parameters in 255 tensors), about 2.5 % of a CPU training run."""


class VATask(L.LightningModule):
    """Train a ``FusionNet`` on windows; validation reports CCC of valence, arousal and the mean ``val_P``."""

    def __init__(self, net: FusionNet, cfg: TrainConfig, lr_scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.lr = cfg.lr * lr_scale
        self.seed = seed
        self.val_ccc = CCC(num_outputs=2)
        self._plateau_state: dict | None = None

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch["feats"], batch["valid"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred = self(batch)
        loss = ccc_loss(pred, batch["labels"], batch["label_valid"])
        self.log("train_loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self(batch)
        self.val_ccc.update(pred, batch["labels"], batch["label_valid"])

    def on_validation_epoch_end(self) -> None:
        c = self.val_ccc.compute()
        self.log_dict(
            {"val_valence": c[0].float(), "val_arousal": c[1].float(), "val_P": c.mean().float()},
            prog_bar=True,
        )
        self.val_ccc.reset()

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        ds = getattr(loader, "dataset", None)
        if ds is not None and hasattr(ds, "epoch"):
            ds.epoch = self.current_epoch

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Seed dropout by (seed, epoch, batch): a resumed run draws what the uninterrupted run drew.

        Lightning checkpoints hold no random-generator state, so without this a run resumed at epoch k
        would continue from a fresh generator and end with different weights.
        """
        torch.manual_seed(epoch_seed(self.seed, self.current_epoch, batch_idx))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW; its ReduceLROnPlateau is stepped by :meth:`on_train_epoch_end`, not by Lightning.

        Lightning steps plateau schedulers after the epoch's ``last.ckpt`` is written, so a run resumed from
        it would miss that step and lower the learning rate at another epoch than the uninterrupted run.
        """
        opt = torch.optim.AdamW(
            self.net.parameters(), lr=self.lr, weight_decay=self.cfg.weight_decay, foreach=FOREACH
        )
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=self.cfg.plateau_factor, patience=self.cfg.plateau_patience
        )
        if self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        return opt

    def on_train_epoch_end(self) -> None:
        """Step the plateau scheduler on this epoch's ``val_P``, before the checkpoint callbacks save it."""
        score = self.trainer.callback_metrics.get("val_P")
        if score is not None:
            self.plateau.step(float(score))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Keep the scheduler's state until :meth:`configure_optimizers` (Lightning restores first)."""
        self._plateau_state = checkpoint.get("plateau")
