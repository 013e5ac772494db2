"""What a trained model's file holds: class + constructor arguments + weights, and what it was trained on.

A checkpoint rebuilds its network without the training configuration (``FusionNet(cfg, branches)`` from
the stored arguments, then the weights), and carries what inference needs to use it as trained: the
feature normaliser, which extractor fills each stream and that extractor's settings fingerprint, the
training data's frame rate, and the evaluation window and hop. Reading and writing the file is
:mod:`vafusion.weights`' job; this module only converts between a :class:`Checkpoint` and the plain
payload (tensors, numbers, strings, lists and dicts: nothing that needs code to unpickle).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vafusion.models.fusion import OUTPUTS, BranchSpec, FusionConfig, FusionNet
from vafusion.models.normaliser import Normaliser

FORMAT = "vafusion-model/2"
LEGACY_FORMATS = ("vafusion-model/1",)
"""Version 1 (before the model registry) stored the arguments under ``net``; it still loads."""


@dataclass
class Checkpoint:
    """A trained network and everything needed to feed it as it was trained.

    Attributes:
        net: the network (eval mode after loading).
        normaliser: per-stream standardisation fitted on the training frames.
        streams: role -> extractor name (``visual -> landmarks``, ...).
        model: the registered model name (``fusion``, ``visual``, ...), ``None`` if unknown.
        fps: frame rate of the training videos (median), ``None`` if unknown.
        window, hop: evaluation windows (frames) the model was scored with.
        features: role -> ``{"extractor", "fingerprint", "params"}`` of the training features, so inference
            can say when its front ends differ (empty for version-1 files).
        config: the whole experiment configuration of the run (plain dicts).
        extra: anything else the trainer recorded (fold, training samples, facts).
    """

    net: FusionNet
    normaliser: Normaliser
    streams: dict[str, str]
    model: str | None = None
    fps: float | None = None
    window: int = 300
    hop: int = 150
    features: dict[str, dict] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        """The plain dict written to disk."""
        return {
            "format": FORMAT,
            "class": type(self.net).__name__,
            "args": {
                "cfg": dataclasses.asdict(self.net.cfg),
                "branches": [[b.name, int(b.dim)] for b in self.net.specs],
            },
            "state_dict": self.net.state_dict(),
            "norm": self.normaliser.state(),
            "streams": {r: self.streams[r] for r in self.net.names},
            "model": self.model,
            "fps": self.fps,
            "window": int(self.window),
            "hop": int(self.hop),
            "features": self.features,
            "config": self.config,
            "extra": self.extra,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Checkpoint:
        """Rebuild from :meth:`to_payload`'s dict (or a version-1 one); ``ValueError`` says what is wrong."""
        fmt = payload.get("format") if isinstance(payload, dict) else None
        if fmt not in (FORMAT, *LEGACY_FORMATS):
            raise ValueError("not a vafusion model checkpoint")
        if fmt == FORMAT:
            cfg_args, branches = payload["args"]["cfg"], payload["args"]["branches"]
            meta = payload
        else:
            cfg_args, branches, meta = _legacy_args(payload)
        known = {f.name for f in dataclasses.fields(FusionConfig)}
        cfg = FusionConfig(**{k: v for k, v in cfg_args.items() if k in known})
        net = FusionNet(cfg, [BranchSpec(str(a), int(b)) for a, b in branches])
        result = net.load_state_dict(payload["state_dict"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"checkpoint does not match its network: missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}"
            )
        return cls(
            net.eval(),
            Normaliser.from_state(payload["norm"]),
            dict(payload["streams"]),
            meta.get("model"),
            meta.get("fps"),
            int(meta.get("window", 300)),
            int(meta.get("hop", 150)),
            dict(meta.get("features") or {}),
            dict(payload.get("config") or {}),
            dict(payload.get("extra") or {}),
        )

    @property
    def fold(self) -> int | None:
        """The cross-validation fold the model was scored on (``None`` outside ``vafusion cv``)."""
        fold = self.extra.get("fold")
        return int(fold) if fold is not None else None


def _legacy_args(payload: dict[str, Any]) -> tuple[dict, list, dict]:
    """Constructor arguments and inference facts of a version-1 payload."""
    n = payload["net"]
    if int(n.get("outputs", OUTPUTS)) != OUTPUTS:
        raise ValueError(f"checkpoint predicts {n['outputs']} values, not valence and arousal")
    cfg = {k: v for k, v in n.items() if k not in ("branches", "outputs")}
    cfg.setdefault("attn_span", 0)  # version 1 before attention spans existed: full-window attention
    cv = (payload.get("config") or {}).get("cv") or {}
    extra = payload.get("extra") or {}
    meta = {
        "model": extra.get("model"),
        "fps": extra.get("fps"),
        "window": cv.get("eval_window", 300),
        "hop": cv.get("eval_hop", 150),
    }
    return cfg, n["branches"], meta
