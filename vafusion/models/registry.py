"""Named models: ``vafusion.create_model(name, **overrides)`` builds any of them.

Each entry is a builder registered with :func:`register_model`, which records the streams (roles) the
model reads, the first being the attention query. The paper's models (``fusion`` and the three
single-stream models) are what ``vafusion cv`` trains and ``vafusion predict --which`` picks from;
``vafusion_tiny`` is an untrained miniature of ``fusion`` for tests and smoke runs, which needs no data
and no download.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vafusion.errors import VafusionError
from vafusion.models.fusion import BranchSpec, FusionConfig, FusionNet

PAPER_DIMS: dict[str, int] = {"visual": 512, "vggish": 128, "logmel": 128}
"""Input widths of the paper's front ends: IResNet-50 (512), VGGish (128), VGG log-mel encoder (128)."""

ROLES = ("visual", "vggish", "logmel")
"""The paper's three streams, the visual one first (it is the attention query)."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, the streams it reads and whether ``vafusion cv`` trains it."""

    name: str
    roles: tuple[str, ...]
    build: Callable[..., FusionNet]
    trainable: bool
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    roles: tuple[str, ...], trainable: bool = True
) -> Callable[[Callable[..., FusionNet]], Callable[..., FusionNet]]:
    """Decorator: register a builder ``f(dims, **overrides) -> FusionNet`` under its function name."""

    def add(fn: Callable[..., FusionNet]) -> Callable[..., FusionNet]:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else fn.__name__
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, tuple(roles), fn, trainable, summary)
        return fn

    return add


def model_names(trainable: bool | None = None) -> list[str]:
    """Registered names in registration order (``trainable=True``: only those ``vafusion cv`` trains)."""
    return [n for n, e in _REGISTRY.items() if trainable is None or e.trainable == trainable]


def model_entry(name: str) -> ModelEntry:
    """The entry of ``name``; an unknown name is an error listing the known ones."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise VafusionError(None, f"unknown model {name!r}", f"choose one of {', '.join(_REGISTRY)}")
    return entry


def create_model(name: str, dims: Mapping[str, int] | None = None, **overrides: Any) -> FusionNet:
    """Build the registered model ``name`` with fresh (untrained) weights.

    Args:
        name: a registered name (:func:`model_names`): ``fusion``, ``visual``, ``vggish``, ``logmel``,
            ``vafusion_tiny``.
        dims: input width per role (default: the paper's front ends, :data:`PAPER_DIMS`).
        overrides: :class:`FusionConfig` fields, e.g. ``tcn_channels=64``.
    """
    entry = model_entry(name)
    known = {f.name for f in dataclasses.fields(FusionConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise VafusionError(
            None, f"unknown model setting {unknown[0]!r}", f"choose from {', '.join(sorted(known))}"
        )
    return entry.build({**PAPER_DIMS, **(dims or {})}, **overrides)


def build_net(roles: tuple[str, ...], dims: Mapping[str, int], cfg: FusionConfig) -> FusionNet:
    """A ``FusionNet`` over ``roles`` (first = query) with the widths in ``dims``."""
    missing = [r for r in roles if r not in dims]
    if missing:
        raise VafusionError(None, f"no input width for stream {missing[0]}", "pass dims={role: width, ...}")
    return FusionNet(cfg, [BranchSpec(r, int(dims[r])) for r in roles])


@register_model(ROLES)
def fusion(dims: Mapping[str, int], **overrides: Any) -> FusionNet:
    """The paper's model: visual, VGGish and log-mel streams, visual-query cross-modal attention."""
    return build_net(ROLES, dims, FusionConfig(**overrides))


@register_model(("visual",))
def visual(dims: Mapping[str, int], **overrides: Any) -> FusionNet:
    """Face only: the visual stream's multi-scale TCN and the head."""
    return build_net(("visual",), dims, FusionConfig(**overrides))


@register_model(("vggish",))
def vggish(dims: Mapping[str, int], **overrides: Any) -> FusionNet:
    """Voice only: the VGGish stream's multi-scale TCN and the head."""
    return build_net(("vggish",), dims, FusionConfig(**overrides))


@register_model(("logmel",))
def logmel(dims: Mapping[str, int], **overrides: Any) -> FusionNet:
    """Voice only: the log-mel stream's multi-scale TCN and the head."""
    return build_net(("logmel",), dims, FusionConfig(**overrides))


TINY = {"tcn_channels": 4, "dilations": [1, 2], "attn_dim": 8, "head_hidden": 8}
"""``vafusion_tiny``'s widths: 1/15 of ``fusion``'s parameters (most in the input convolutions)."""


@register_model(ROLES, trainable=False)
def vafusion_tiny(dims: Mapping[str, int], **overrides: Any) -> FusionNet:
    """Untrained miniature of ``fusion`` (same streams and layers, tiny widths) for tests and smoke runs."""
    return build_net(ROLES, dims, FusionConfig(**{**TINY, **overrides}))
