"""Typed configuration: defaults live in dataclasses, experiments in YAML files.

The schemas are those of the stages (``features``: :class:`~vafusion.features.extractors.FeaturesConfig`,
``model``: :class:`~vafusion.models.fusion.FusionConfig`) plus training, cross-validation and the demo
corpus here. OmegaConf merges ``defaults <- --config NAME|FILE <- --set key=value`` and rejects unknown keys
and wrong types, so a typo in a config fails loudly instead of being ignored. Experiment configs ship
inside the package (``vafusion/configs/``: ``demo``, ``paper``, ``debug/fast``), so ``--config paper``
works from an installed wheel; any YAML file works too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vafusion.errors import VafusionError
from vafusion.features.extractors import FeaturesConfig
from vafusion.models.fusion import FusionConfig


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
    model: FusionConfig = field(default_factory=FusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fusion_stage: FusionStageConfig = field(default_factory=FusionStageConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)


def configs_dir() -> Path:
    """The experiment configs shipped with vafusion."""
    return Path(str(resources.files("vafusion") / "configs"))


def config_names() -> list[str]:
    """Names ``--config`` accepts besides a file path (``demo``, ``paper``, ``debug/fast``, ...)."""
    root = configs_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def config_file(name_or_path: str | Path) -> Path:
    """The YAML file of a shipped config name, or ``name_or_path`` itself when it is an existing file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = configs_dir() / f"{Path(name_or_path).as_posix().removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise VafusionError(
        path,
        "config file not found",
        f"pass a YAML file or one of the shipped configs: {', '.join(config_names())}",
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, merged with a YAML file (or a shipped config's name) and ``key=value`` overrides."""
    base = OmegaConf.structured(Config)
    try:
        if path is not None:
            path = config_file(path)
            base = OmegaConf.merge(base, OmegaConf.load(path))
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise VafusionError(
            path,
            f"invalid configuration: {str(exc).splitlines()[0]}",
            "check the key names and types against `vafusion config --show`",
        ) from None
    return OmegaConf.to_object(base)


def to_yaml(cfg: Config) -> str:
    """The full resolved configuration as YAML (written into every run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    """The configuration as plain containers (stored inside checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))
