"""Flags every command shares, and turning them into a configuration."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

from vafusion.config import Config, load_config
from vafusion.errors import VafusionError
from vafusion.models.iresnet import ARCH_LAYERS
from vafusion.models.registry import model_entry, model_names

WEIGHT_FLAGS = {
    "iresnet_weights": "features.iresnet_weights",
    "iresnet_arch": "features.iresnet_arch",
    "vggish_weights": "features.vggish_weights",
    "vggish_pca": "features.vggish_pca",
    "logmel_weights": "features.logmel_weights",
    "devices": "train.devices",
    "num_nodes": "train.num_nodes",
    "strategy": "train.strategy",
}
"""Flags that are shorthands for config keys."""


def add_output(p: argparse.ArgumentParser, title: str = "common options") -> argparse._ArgumentGroup:
    """``--quiet`` and ``--verbose``."""
    g = p.add_argument_group(title)
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    return g


def add_common(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--set``, ``--quiet``, ``--verbose``."""
    g = add_output(p)
    g.add_argument(
        "--config",
        metavar="NAME|FILE",
        help="experiment config merged over the defaults: a name shipped with vafusion (demo, paper, "
        "debug/fast; `vafusion config --list`) or a YAML file",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.max_epochs=50 (repeatable)",
    )


def add_weights(p: argparse.ArgumentParser) -> None:
    """The front-end weight files (shorthands for ``features.*``)."""
    g = p.add_argument_group("front-end weights (published files, taken by path; nothing is downloaded)")
    g.add_argument(
        "--iresnet-weights",
        metavar="PTH",
        help="insightface arcface_torch backbone.pth (e.g. ms1mv3_arcface_r50), or a FER+ fine-tuned one "
        "from `vafusion finetune-face`; without it the visual stream uses dlib landmarks",
    )
    g.add_argument(
        "--iresnet-arch",
        default=None,
        choices=sorted(ARCH_LAYERS),
        help="architecture of --iresnet-weights (default iresnet50, the paper's)",
    )
    g.add_argument(
        "--vggish-weights",
        metavar="PTH",
        help="torchvggish vggish-10086976.pth; without it the vggish stream uses openSMILE eGeMAPS",
    )
    g.add_argument(
        "--vggish-pca",
        metavar="PTH",
        help="torchvggish vggish_pca_params-970ea276.pth (optional "
        "post-processing: PCA, clip, 8-bit quantisation)",
    )
    g.add_argument(
        "--logmel-weights",
        metavar="PTH",
        help="VGG-style log-mel encoder weights (VGGish layout); without it the logmel stream uses "
        "per-band mean/std of the 0.96 s log-mel patch",
    )


def config_from(args: argparse.Namespace) -> Config:
    """The configuration of a command: defaults <- ``--config`` <- flags <- ``--set``."""
    over = list(getattr(args, "overrides", []))
    for flag, key in WEIGHT_FLAGS.items():
        val = getattr(args, flag, None)
        if val is not None:
            over.append(f"{key}={val}")
    return load_config(getattr(args, "config", None), over)


def int_list(text: str | None, flag: str) -> list[int] | None:
    """``"0,3"`` -> ``[0, 3]`` (``None`` for no text)."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VafusionError(
            None, f"bad {flag} {text!r}", f"write {flag} as a comma list of integers, e.g. 0,3"
        ) from None


def number(kind: type, minimum: float, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number of ``kind`` at least (``strict``: above) ``minimum`` (``inf`` would
    pass the bound and overflow later)."""
    bound = f"> {minimum}" if strict else f">= {minimum}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` greater than 0."""
    return number(kind, 0, strict=True)


def non_negative(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` of at least 0."""
    return number(kind, 0)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, like every other vafusion error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Print ``vafusion COMMAND: error: MESSAGE; see --help`` and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def models_help() -> str:
    """The trainable registered models, one phrase each, for ``--help`` texts."""
    return "; ".join(f"{n}: {model_entry(n).summary.rstrip('.')}" for n in model_names(trainable=True))
