"""vafusion: per-frame valence and arousal from video, fusing the face and the voice.

The public API, imported on first use so that ``import vafusion`` stays cheap:

* :func:`vggish_examples` - the AudioSet VGGish log-mel front end (``(N, 96, 64)`` examples);
* :func:`load_vggish` - VGGish from ``vggish-10086976.pth`` (``pca=``: AudioSet post-processing in forward);
* :func:`load_iresnet` - an ArcFace IResNet from an arcface_torch ``backbone.pth``;
* :func:`ccc` - Lin's Concordance Correlation Coefficient, the ABAW metric;
* :class:`Predictor` - any video in, per-frame valence/arousal out, with a trained run;
* :func:`create_model` - any registered network (``fusion``, ``visual``, ..., ``vafusion_tiny``).
"""

from importlib import import_module
from typing import Any

_API = {
    "vggish_examples": "vafusion.features.logmel",
    "load_vggish": "vafusion.weights.frontends",
    "load_iresnet": "vafusion.weights.frontends",
    "ccc": "vafusion.metrics",
    "Predictor": "vafusion.inference.predictor",
    "create_model": "vafusion.models.registry",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'vafusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
