"""vafusion's own model files (``RUN/models/<model>/fold<k>.pt``), read as safely as the published ones."""

from __future__ import annotations

from pathlib import Path

import torch

from vafusion.errors import WeightsError
from vafusion.io.atomic import atomic_path
from vafusion.models.checkpoint import Checkpoint

WRITTEN_BY = "pass a fold<k>.pt file written by `vafusion cv`"


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically (tensors and plain types only, so loading runs no code). ``torch.save``
    gets an open file: given a path, it names its archive after the random temporary name, and equal
    checkpoints would differ in their bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(checkpoint.to_payload(), fh)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild a model saved by :func:`save_checkpoint` (or an earlier vafusion), network in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            path, "model checkpoint not found", "train one with `vafusion cv` (RUN/models/...)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            path, f"not a readable vafusion checkpoint ({exc.__class__.__name__})", WRITTEN_BY
        ) from None
    try:
        return Checkpoint.from_payload(payload)
    except ValueError as exc:
        fix = WRITTEN_BY if "not a vafusion" in str(exc) else "retrain with `vafusion cv`"
        raise WeightsError(path, str(exc), fix) from None
    except (KeyError, TypeError) as exc:
        raise WeightsError(
            path,
            f"damaged vafusion checkpoint ({exc.__class__.__name__}: {exc})",
            "retrain with `vafusion cv`",
        ) from None
