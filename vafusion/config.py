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

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vafusion.errors import VafusionError
from vafusion.features.extractors import FeaturesConfig
from vafusion.models.fusion import FusionConfig
from vafusion.models.registry import model_names
from vafusion.schema import (
    AT_LEAST_0,
    AT_LEAST_1,
    DROPOUT,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Rule,
    check,
    one_of,
    optional,
    setting,
)

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
"""What Lightning's ``Trainer(accelerator=...)`` accepts by name."""
PRECISIONS = (
    *("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"),
    *("64", "32", "16", "bf16"),
)
"""What Lightning's ``Trainer(precision=...)`` accepts."""


@dataclass
class TrainConfig:
    """Optimisation (paper: silent; values follow the strongest open ABAW VA code, see docs/model.md)."""

    window: int = setting(300, AT_LEAST_1)
    hop: int = setting(200, AT_LEAST_1)
    batch_size: int = setting(8, AT_LEAST_1)
    lr: float = setting(1e-3, POSITIVE)
    weight_decay: float = setting(1e-4, NON_NEGATIVE)
    max_epochs: int = setting(30, AT_LEAST_1)
    patience: int = setting(5, AT_LEAST_0)
    plateau_patience: int = setting(2, AT_LEAST_0)
    plateau_factor: float = setting(0.5, FRACTION)
    inner_val_fraction: float = setting(0.15, FRACTION)
    branch_dropout: float = setting(0.1, DROPOUT)
    frame_dropout: float = setting(0.05, DROPOUT)
    num_workers: int = setting(0, AT_LEAST_0)
    accelerator: str = setting("auto", one_of(*ACCELERATORS))
    devices: Any = 1
    num_nodes: int = setting(1, AT_LEAST_1)
    strategy: str = "auto"
    precision: str = setting("32-true", one_of(*PRECISIONS))
    threads: int = setting(1, AT_LEAST_0)

    def relations(self) -> list[tuple[str, bool, str]]:
        """Windows overlap or touch: the hop is at most the window."""
        return [("hop", self.hop <= self.window, f"an integer 1 <= hop <= train.window ({self.window})")]


@dataclass
class FusionStageConfig:
    """Stage 3 of the paper's training: the whole fusion model end to end.

    Stage 1 is the front ends (published weights, `vafusion finetune-face`); stage 2 trains each branch's
    TCN alone (the single-stream models, under ``train``); stage 3 starts from those branches
    (``init: branches``, or ``scratch``) and trains everything with ``train`` settings except the ones
    set here.
    """

    init: str = setting("branches", one_of("branches", "scratch"))
    lr_scale: float = setting(0.5, POSITIVE)
    max_epochs: int | None = setting(None, optional(AT_LEAST_1))
    patience: int | None = setting(None, optional(AT_LEAST_0))


TRAINABLE = Rule(
    f"a non-empty list of distinct models from {', '.join(model_names(trainable=True))}",
    lambda v: len(v) > 0 and len(set(v)) == len(v) and all(m in model_names(trainable=True) for m in v),
)
SEED = Rule("an integer 0 <= seed < 2**32", lambda v: type(v) is int and 0 <= v < 2**32)


@dataclass
class CVConfig:
    """Cross-validation: the paper's six folds and which models to run."""

    seed: int = setting(0, SEED)
    n_train_folds: int = setting(5, AT_LEAST_1)
    models: list[str] = setting(["fusion", "visual", "vggish", "logmel"], TRAINABLE)
    folds: list[int] = setting(
        [0, 1, 2, 3, 4, 5],
        Rule("a non-empty list of distinct fold numbers", lambda v: len(v) > 0 and len(set(v)) == len(v)),
    )
    eval_window: int = setting(300, AT_LEAST_1)
    eval_hop: int = setting(150, AT_LEAST_1)
    # (model, fold) pairs trained at once, each in its own process with train.threads threads; results do
    # not depend on it. 0 = one per CPU core (divided by train.threads; 1 on a GPU or under DDP); 1 = all
    # in the calling process.
    processes: int = setting(0, AT_LEAST_0)

    def relations(self) -> list[tuple[str, bool, str]]:
        """Evaluation windows overlap or touch; folds exist (0 = validation, 1..n_train_folds)."""
        last = self.n_train_folds
        return [
            (
                "eval_hop",
                self.eval_hop <= self.eval_window,
                f"an integer 1 <= eval_hop <= cv.eval_window ({self.eval_window})",
            ),
            (
                "folds",
                all(isinstance(f, int) and 0 <= f <= last for f in self.folds),
                f"fold numbers 0..{last} (0 = Validation_Set, 1..cv.n_train_folds = Train_Set parts)",
            ),
        ]


@dataclass
class SynthConfig:
    """Built-in corpus size for ``vafusion demo``."""

    videos: int = setting(24, AT_LEAST_1)
    seconds: float = setting(15.0, POSITIVE)
    seed: int = setting(0, AT_LEAST_0)


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
    for item in overrides or []:
        if "=" not in item:
            raise VafusionError(
                None, f"--set {item!r} has no value", "write --set KEY=VALUE, e.g. --set train.lr=0.001"
            )
    try:
        if path is not None:
            path = config_file(path)
            base = OmegaConf.merge(base, _load_yaml(path))
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise VafusionError(
            path,
            f"invalid configuration{f' for {key}' if key else ''}: {str(exc).splitlines()[0]}",
            "check the key names and types against `vafusion config --show` (lists are written [a,b])",
        ) from None
    cfg = OmegaConf.to_object(base)
    check(cfg)
    return cfg


def _load_yaml(path: Path) -> Any:
    """The YAML file ``path``; a file YAML cannot parse names its line and column."""
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise VafusionError(path, f"is not valid YAML{where} ({problem})", "fix the file's syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VafusionError(path, f"cannot be read ({exc.__class__.__name__})", "check the file") from None


def to_yaml(cfg: Config) -> str:
    """The full resolved configuration as YAML (written into every run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    """The configuration as plain containers (stored inside checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))
