"""vafusion: valence/arousal from face and voice."""

from typing import Any

__all__ = ["Predictor"]


def __getattr__(name: str) -> Any:
    """``vafusion.Predictor`` is imported on first use, so ``import vafusion`` stays cheap."""
    if name == "Predictor":
        from vafusion.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'vafusion' has no attribute {name!r}")
