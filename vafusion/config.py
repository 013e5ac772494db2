"""Typed configuration: defaults live in these dataclasses, experiments in YAML files under ``configs/``.

OmegaConf merges ``defaults <- --config FILE <- --set key=value`` and rejects unknown keys and wrong
types, so a typo in a config fails loudly instead of being ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vafusion.errors import VafusionError


@dataclass
class FeaturesConfig:
    """Which extractor fills each of the paper's three streams, and the front-end weight files.

    ``auto`` picks the paper's front end when its weights are given and the offline stand-in otherwise
    (visual: iresnet | landmarks; vggish: vggish | egemaps; logmel: VGG encoder | log-mel statistics).
    """

    visual: str = "auto"
    vggish: str = "auto"
    logmel: str = "logmel"
    iresnet_arch: str = "iresnet50"
    iresnet_weights: str | None = None
    vggish_weights: str | None = None
    vggish_pca: str | None = None
    logmel_weights: str | None = None
    face_batch: int = 64
    face_stride: int = 2  # encode every k-th face, interpolate the rest (CCC cost: docs/performance.md)
    audio_hop: float = 0.48  # s between encoded 0.96 s log-mel patches; 0: one per frame (docs: performance)


@dataclass
class ModelConfig:
    """Network widths (paper: silent). Defaults sized for Aff-Wild2-scale data; see docs/model.md."""

    tcn_channels: int = 32
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 5, 7])
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    tcn_dropout: float = 0.1
    attn_dim: int = 128
    attn_dropout: float = 0.1
    attn_span: int = 15
    head_hidden: int = 128
    head_dropout: float = 0.3


@dataclass
class TrainConfig:
    """Optimisation (paper: silent; values follow the strongest open ABAW VA code, see docs/model.md)."""

    window: int = 300
    hop: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 30
    patience: int = 5
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    inner_val_fraction: float = 0.15
    branch_dropout: float = 0.1
    frame_dropout: float = 0.05
    num_workers: int = 0
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    threads: int = 1


@dataclass
class FusionStageConfig:
    """Stage 3 of the paper's training: the whole fusion model end to end.

    Stage 1 is the front ends (published weights, `vafusion finetune-face`); stage 2 trains each branch's
    TCN alone (the single-stream models, under ``train``); stage 3 starts from those branches
    (``init: branches``, or ``scratch``) and trains everything with ``train`` settings except the ones
    set here.
    """

    init: str = "branches"
    lr_scale: float = 0.5
    max_epochs: int | None = None
    patience: int | None = None


@dataclass
class CVConfig:
    """Cross-validation: the paper's six folds and which models to run."""

    seed: int = 0
    n_train_folds: int = 5
    models: list[str] = field(default_factory=lambda: ["fusion", "visual", "vggish", "logmel"])
    folds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    eval_window: int = 300
    eval_hop: int = 150


@dataclass
class SynthConfig:
    """Built-in corpus size for ``vafusion demo``."""

    videos: int = 24
    seconds: float = 15.0
    seed: int = 0


@dataclass
class Config:
    """Everything one experiment needs."""

    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fusion_stage: FusionStageConfig = field(default_factory=FusionStageConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, merged with a YAML file and ``key=value`` overrides; returns a typed ``Config``."""
    base = OmegaConf.structured(Config)
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise VafusionError(path, "config file not found", "pass an existing YAML file (see configs/)")
            base = OmegaConf.merge(base, OmegaConf.load(path))
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        where = path if path is not None else None
        raise VafusionError(where, f"invalid configuration: {str(exc).splitlines()[0]}",
                            "check the key names and types against `vafusion config --show`") from None
    return OmegaConf.to_object(base)


def to_yaml(cfg: Config) -> str:
    """The full resolved configuration as YAML (written into every run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    """The configuration as plain containers (stored inside checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))
