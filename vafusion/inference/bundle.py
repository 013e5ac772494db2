"""A trained run as inference sees it: fold models, the streams they read, front-end settings, frame rate.

:class:`RunBundle` loads a run directory written by ``vafusion cv`` / ``vafusion demo``, a
``RUN/models/<model>`` folder, a single ``fold<k>.pt``, or a registered model name (``vafusion_tiny``:
untrained, for smoke runs). ``vafusion predict``, ``vafusion submit`` and ``vafusion export`` all read runs
through it, so they agree on which checkpoints a run has and which settings made its features.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from vafusion.config import Config, load_config
from vafusion.data.synth import MANIFEST as SYNTH_MANIFEST
from vafusion.errors import VafusionError, WeightsError
from vafusion.features.extractors import configured_extractor, resolve_streams
from vafusion.features.face_int8 import CALIBRATION_FILE, OFF, calibration_mode
from vafusion.models.checkpoint import Checkpoint
from vafusion.models.normaliser import Normaliser
from vafusion.models.registry import create_model, model_entry, model_names
from vafusion.weights import load_checkpoint

PREDICT_SECTIONS = ("features", "cv")
"""The parts of a run's configuration that inference uses: front ends and evaluation windows."""

LEGACY_DEFAULTS = {"features": {"audio_hop": 0.0, "face_stride": 1}}
"""Settings whose default changed: a run whose config.yaml predates a key was made with these values."""

PRECISION_KEYS = ("precision", "int8")
"""Extractor params that say which numeric path made the features (chosen per CPU, not a setting)."""


@dataclass
class FoldModel:
    """One trained network of a run with its feature normaliser (``net`` may be an ONNX runner)."""

    fold: int
    net: Any
    normaliser: Normaliser
    path: Path | None
    checkpoint: Checkpoint | None = None


def find_checkpoints(
    source: str | Path, which: str = "fusion", folds: list[int] | None = None
) -> list[tuple[str, int, Path]]:
    """(model, fold, path) of the checkpoints of a run directory, a ``RUN/models/<model>`` folder or one file.

    ``which`` picks the model of a run directory; ``folds`` restricts the folds (``None``: all found).
    """
    source = Path(source)
    if source.is_file():
        ckpt = load_checkpoint(source)
        name = ckpt.model or ckpt.extra.get("model") or source.parent.name
        fold = ckpt.fold if ckpt.fold is not None else int(source.stem.removeprefix("fold") or 0)
        return [(name, fold, source)]
    if not source.is_dir():
        raise VafusionError(
            source,
            "run directory not found",
            "pass the directory written by `vafusion cv` or "
            "`vafusion demo` (it holds models/ and config.yaml), a RUN/models/<model> folder or "
            "a fold<k>.pt file",
        )
    folder = source / "models" / which if (source / "models").is_dir() else source
    found = sorted((int(p.stem[4:]), p) for p in folder.glob("fold*.pt") if p.stem[4:].isdigit())
    if not found:
        _no_models(source, folder, which)
    if folds is not None:
        chosen = [(k, p) for k, p in found if k in folds]
        if not chosen:
            raise WeightsError(
                folder / f"fold{folds[0]}.pt",
                f"no {which} model for fold {', '.join(map(str, folds))}",
                f"choose among folds {', '.join(str(k) for k, _ in found)} (predict --fold, export --folds), "
                "or leave the option out to use them all",
            )
        found = chosen
    return [(folder.name, k, p) for k, p in found]


def _no_models(run: Path, folder: Path, which: str) -> None:
    """Raise the error for a run without checkpoints of ``which``, naming the models it does have."""
    models = run / "models"
    present = sorted(d.name for d in models.glob("*") if d.is_dir() and any(d.glob("fold*.pt")))
    if present:
        raise WeightsError(
            folder,
            f"the run has no {which} models (it has: {', '.join(present)})",
            f"use {present[0]} (predict --which, export --models) or train: vafusion cv --models {which}",
        )
    raise WeightsError(
        run,
        "the run has no trained models (no models/<model>/fold<k>.pt)",
        "pass the run directory written by `vafusion cv` or `vafusion demo`, or train one first",
    )


def run_config(path: Path | None, stored: dict | None, overrides: list[str]) -> Config:
    """The run's ``features`` and ``cv`` settings from ``RUN/config.yaml`` (else the checkpoint's copy).

    Only the sections inference uses are read, key by key, so a run made by an older or newer version
    (with training keys this one does not know) still loads; a key the run predates takes its old default
    (:data:`LEGACY_DEFAULTS`); ``overrides`` (``features.*=...``) go on top.
    """
    raw: dict | None = None
    if path is not None and path.is_file():
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise VafusionError(
                path,
                f"unreadable run configuration ({exc.__class__.__name__})",
                "restore config.yaml from the run, or delete it to use the checkpoints' copy",
            ) from None
    if not isinstance(raw, dict):
        raw = stored if isinstance(stored, dict) else {}
    defaults = Config()
    dotlist = []
    for section in PREDICT_SECTIONS:
        known = {f.name for f in dataclasses.fields(getattr(defaults, section))}
        stored_section = raw.get(section) or {}
        for key, value in {**LEGACY_DEFAULTS.get(section, {}), **stored_section}.items():
            if key in known:
                dotlist.append(f"{section}.{key}={'null' if value is None else _yaml_value(value)}")
    return load_config(None, dotlist + list(overrides))


def _yaml_value(value: Any) -> str:
    """A config value written so that ``OmegaConf.from_dotlist`` reads it back unchanged."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def training_fps(run: Path, checkpoints: list[Checkpoint]) -> float | None:
    """The training data's frame rate: from the checkpoints, else ``streams.json`` or the feature manifest."""
    for ckpt in checkpoints:
        if isinstance(ckpt.fps, (int, float)) and ckpt.fps > 0:
            return float(ckpt.fps)
    streams_file = run / "streams.json"
    if streams_file.is_file():
        try:
            meta = json.loads(streams_file.read_text())
        except (OSError, ValueError):
            meta = {}
        for key in ("fps", "train_fps"):
            if isinstance(meta.get(key), (int, float)) and meta[key] > 0:
                return float(meta[key])
    manifest = run / "features" / "manifest.parquet"
    if manifest.is_file():
        try:
            fps = pd.read_parquet(manifest, columns=["fps"])["fps"].dropna()
        except (OSError, ValueError, KeyError):
            return None
        if len(fps):
            return float(fps.median())
    return None


SYNTHETIC_NOTE = (
    "this model was trained on vafusion's built-in synthetic corpus: on real faces and voices its "
    "values demonstrate the pipeline, they are not a measurement of emotion"
)


SYNTHETIC_CAPTION = "demo model trained on synthetic data: on real faces a demonstration, not a measurement"


def trained_on_synthetic(run: Path, checkpoints: list[Checkpoint]) -> bool:
    """Whether the run learnt from the built-in synthetic corpus, as its checkpoints or ``streams.json``
    record (runs from before that record: a ``vafusion demo`` folder holding the synthetic corpus)."""
    recorded = [
        c.extra["data"].get("synthetic") for c in checkpoints if isinstance(c.extra.get("data"), dict)
    ]
    if recorded:
        return any(recorded)
    for folder in (run, *run.parents[:2]):
        meta = folder / "streams.json"
        if meta.is_file():
            try:
                data = json.loads(meta.read_text()).get("data")
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and "synthetic" in data:
                return bool(data["synthetic"])
    return any((folder / "data" / SYNTH_MANIFEST).is_file() for folder in (run, *run.parents[:2]))


def face_calibration(run: Path, cfg: Config, overrides: list[str]) -> tuple[Config, list[str]]:
    """The settings with ``features.face_calibration`` pointing at the int8 calibration set stored with the
    run, and notes.

    ``vafusion cv`` copies the set its features were calibrated on into ``RUN/face_calibration.npz`` (a demo
    run also keeps it in ``RUN/features``); with it, the face path is raced as in ``vafusion extract`` and
    an int8 choice is the very model the features were made with. Without it (runs made before the set was
    stored, runs without IResNet, ``none``) faces run on the float path. A value given in ``overrides`` is
    kept as given.
    """
    key = "features.face_calibration"
    mode = calibration_mode(cfg.features.face_calibration)
    if mode == OFF or any(o.split("=", 1)[0].strip() == key for o in overrides):
        return cfg, []
    top = [run, run.parent.parent] if run.parent.name == "models" else [run]
    found = [
        d / CALIBRATION_FILE for t in top for d in (t, t / "features") if (d / CALIBRATION_FILE).is_file()
    ]
    value, notes = cfg.features.face_calibration, []
    if found:
        value = str(found[0])
    elif mode == "path" and not Path(str(value)).exists():
        value = OFF
        notes.append(
            f"{key} {cfg.features.face_calibration} is not here and the run stores no calibration set: "
            "faces are encoded on the float path (cosine to int8 features >= 0.99)"
        )
    features = dataclasses.replace(cfg.features, face_calibration=value)
    return dataclasses.replace(cfg, features=features), notes


def _check_streams(run: Path, streams: dict[str, str]) -> None:
    """``RUN/streams.json`` must agree with the checkpoints on which extractor fills each stream."""
    streams_file = run / "streams.json"
    if not streams_file.is_file():
        return
    try:
        recorded = json.loads(streams_file.read_text()).get("streams", {})
    except (OSError, ValueError):
        raise VafusionError(
            streams_file, "unreadable streams file", "rewrite it by rerunning `vafusion cv`"
        ) from None
    clash = {r: (e, recorded[r]) for r, e in streams.items() if r in recorded and recorded[r] != e}
    if clash:
        raise WeightsError(
            streams_file,
            f"models and streams.json disagree: {clash}",
            "the models were trained with other features; rerun `vafusion cv`",
        )


@dataclass
class RunBundle:
    """The fold models of one model of a run, with what inference needs to feed them as in training.

    Attributes:
        source: what was loaded (run directory, folder, file or registered name).
        which: the model (``fusion``, ``visual``, ...).
        folds: the fold networks to average (at least one), all reading the same streams.
        streams: role -> extractor name.
        config: the run's ``features`` and ``cv`` settings (legacy defaults applied, overrides on top).
        train_fps: frame rate of the training videos, ``None`` if unknown.
        trained: ``False`` for an untrained registered model (its outputs mean nothing).
    """

    source: str | Path
    which: str
    folds: list[FoldModel]
    streams: dict[str, str]
    config: Config
    train_fps: float | None = None
    trained: bool = True
    notes: list[str] = field(default_factory=list)
    caption: str = ""
    """A line shown with every output of this run (plot, overlay) when its values are not measurements."""

    @property
    def roles(self) -> list[str]:
        """The model's streams, the attention query first."""
        return list(self.folds[0].net.names)

    @classmethod
    def load(
        cls,
        source: str | Path,
        which: str = "fusion",
        fold: int | None = None,
        feature_overrides: list[str] | None = None,
    ) -> RunBundle:
        """Load ``source`` (see the module docstring); ``fold=None`` keeps every fold model.

        ``feature_overrides`` (``["features.iresnet_weights=PATH", ...]``) repoint front-end weight files
        that moved since training; other sections cannot change, the model's settings come from the run.
        """
        overrides = list(feature_overrides or [])
        bad = [o for o in overrides if not o.startswith("features.")]
        if bad:
            raise VafusionError(
                None,
                f"only features.* keys can be changed for prediction, got {bad[0]!r}",
                "the model's settings come from the run; repoint weight files with features.*",
            )
        if str(source) in model_names() and not Path(source).exists():
            return cls.untrained(str(source), overrides, which=which)
        source = Path(source)
        if which not in model_names(trainable=True):
            raise VafusionError(
                None, f"unknown model {which!r}", f"choose one of {', '.join(model_names(True))}"
            )
        models, ckpts, streams = [], [], None
        for _, k, path in find_checkpoints(source, which, None if fold is None else [fold]):
            ckpt = load_checkpoint(path)
            if streams is None:
                streams = dict(ckpt.streams)
            elif any(streams.get(r) != e for r, e in ckpt.streams.items()):
                raise WeightsError(
                    path,
                    f"fold models disagree on their extractors ({ckpt.streams} vs {streams})",
                    "retrain the run, or pick one model with --fold",
                )
            models.append(FoldModel(k, ckpt.net, ckpt.normaliser, path, ckpt))
            ckpts.append(ckpt)
        assert streams is not None
        run = source if source.is_dir() else source.parent
        _check_streams(run, streams)
        cfg = run_config(source / "config.yaml" if source.is_dir() else None, ckpts[0].config, overrides)
        cfg, notes = face_calibration(run, cfg, overrides)
        synthetic = trained_on_synthetic(run, ckpts)
        return cls(
            source,
            which,
            models,
            streams,
            cfg,
            training_fps(run, ckpts),
            notes=([SYNTHETIC_NOTE] if synthetic else []) + notes,
            caption=SYNTHETIC_CAPTION if synthetic else "",
        )

    @classmethod
    def untrained(
        cls, name: str, feature_overrides: list[str] | None = None, seed: int = 0, which: str | None = None
    ) -> RunBundle:
        """A registered model with fresh weights (seeded) on the configured front ends, for smoke runs;
        ``which`` (``--which``) other than ``name`` or the default is refused, not ignored."""
        if which not in (None, "fusion", name):
            raise VafusionError(
                None,
                f"--which {which} picks a model of a run directory, but {name} is a registered network "
                "(untrained), not a run",
                f"pass --model {which} for an untrained {which}, or --model RUN for a trained one",
            )
        cfg = run_config(None, {}, list(feature_overrides or []))
        resolved, _ = resolve_streams(cfg.features)
        roles = model_entry(name).roles
        streams = {r: resolved[r] for r in roles}
        dims = {r: configured_extractor(streams[r], cfg.features).dim for r in roles}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = create_model(name, dims=dims).eval()
        fold = FoldModel(0, net, Normaliser.identity(dims), None)
        note = f"{name} is an untrained model: its values are random and only show that the pipeline runs"
        return cls(
            name,
            name,
            [fold],
            streams,
            cfg,
            None,
            trained=False,
            notes=[note],
            caption=f"untrained model ({name}): random values, a smoke test of the pipeline",
        )


def feature_mismatches(bundle: RunBundle, extractors: dict[str, Any]) -> list[str]:
    """Notes for streams whose front-end settings differ from those that made the training features.

    Compared are the extractor settings the checkpoints recorded (version-2 checkpoints), except the
    numeric precision (and the int8 recipe that comes with it), which differs between CPUs by design (bf16
    where it is native, int8 where it pays) and moves the features by far less than the settings this
    catches (weights files, strides, hops).
    """
    ckpt = bundle.folds[0].checkpoint
    if ckpt is None or not ckpt.features:
        return []
    notes = []
    for role, trained in ckpt.features.items():
        ext = extractors.get(bundle.streams.get(role, ""))
        if ext is None:
            continue
        now = {k: v for k, v in ext.params.items() if k not in PRECISION_KEYS}
        then = {k: v for k, v in (trained.get("params") or {}).items() if k not in PRECISION_KEYS}
        differ = sorted(
            k
            for k in set(now) | set(then)
            if json.dumps(now.get(k), default=str) != json.dumps(then.get(k), default=str)
        )
        if differ:
            verb = "differs" if len(differ) == 1 else "differ"
            notes.append(
                f"stream {role} ({ext.name}): {', '.join(differ)} {verb} from the training features; "
                "predictions may be less accurate (check features.* against the run's config.yaml)"
            )
    return notes
