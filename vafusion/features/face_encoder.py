"""The face-encoding compute path: IResNet embeddings as fast as this CPU allows, chosen robustly.

:func:`select_face_path` lists the candidates: the best float precision by rule
(:func:`vafusion.cpu.choose_precision`: bf16 only with native bf16 dot products) on torch (fused oneDNN
convolutions, :mod:`face_fused`) and, for fp32, ONNX Runtime; plus int8 on ONNX Runtime
(:mod:`face_int8`) when calibration crops are given and a bare int8 convolution is fast enough for it to
pay (else it is not even built: that costs tens of seconds). It times them in interleaved rounds and
keeps torch unless another path wins by a margin, int8 only at 1.3x the float path (:mod:`face_choice`);
the choice is remembered per machine, library versions, threads, settings, network and torch engine in
the user cache, so it is made once. ``precision`` and ``backend`` override it. :class:`FaceEncoder` runs
the chosen path; ``IResNetExtractor`` uses it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from vafusion.cpu import (
    cache_dir,
    choose_precision,
    cpu_info,
    keep_freed_memory,
    library_versions,
    machine_key,
)
from vafusion.features import face_int8
from vafusion.features.face_choice import (
    INT8_GAIN,
    MARGIN,
    ROUNDS,
    ChoiceCache,
    decide,
    race,
    ratio,
    write_atomic,
)
from vafusion.features.face_fused import ENGINE, FusedIResNet, fold_batchnorms
from vafusion.io.onnx import onnxruntime_available, session
from vafusion.models.iresnet import EMBEDDING_SIZE, preprocess

PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime")
BACKENDS_OF = {"fp32": ("torch", "onnxruntime"), "bf16": ("torch",), "int8": ("onnxruntime",)}
RACE_BATCH = 32


class _TorchPath:
    """The IResNet as fused oneDNN calls (:class:`FusedIResNet`): body in ``fp32`` or ``bf16``, head fp32."""

    def __init__(self, net: nn.Module, precision: str) -> None:
        keep_freed_memory()
        self.net = FusedIResNet(net, torch.bfloat16 if precision == "bf16" else torch.float32)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.net(x).numpy()


class _OnnxPath:
    """An ONNX model (the float32 IResNet, or its int8 version) run by ONNX Runtime without idle spinning."""

    def __init__(self, model: bytes, threads: int) -> None:
        self.session = session(model, max(1, threads), spin=False)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"faces": x.numpy()})[0]


def network_digest(net: nn.Module) -> str:
    """A hash of the network's parameters and buffers (what its outputs depend on)."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def calibration_id(crops: np.ndarray) -> str:
    """A hash of the calibration crops (part of an int8 path's identity)."""
    return hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest()[:16]


def int8_model(net: nn.Module, calibration: np.ndarray) -> bytes:
    """The int8 ONNX model of ``net`` calibrated on ``calibration``, from the user cache when it was built
    before (quantising IResNet-50 takes tens of seconds on two cores)."""
    parts = (
        network_digest(net),
        calibration_id(calibration),
        face_int8.RECIPE,
        library_versions()["onnxruntime"],
    )
    path = cache_dir() / "int8" / f"{hashlib.sha256(repr(parts).encode()).hexdigest()[:24]}.onnx"
    if path.is_file():
        return path.read_bytes()
    model = face_int8.build_int8(fold_batchnorms(net), calibration, torch.get_num_threads())
    write_atomic(path, model)
    return model


def _build_path(
    net: nn.Module, precision: str, backend: str, calibration: np.ndarray | None = None
) -> Callable[[torch.Tensor], np.ndarray]:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in BACKENDS_OF[precision]:
        raise ValueError(f"the {precision} face path runs on {' or '.join(BACKENDS_OF[precision])} only")
    if backend == "torch":
        return _TorchPath(net, precision)
    if precision == "fp32":
        return _OnnxPath(face_int8.export_onnx(fold_batchnorms(net)), torch.get_num_threads())
    if calibration is None or len(calibration) == 0:
        raise ValueError("the int8 face path needs calibration crops (real aligned faces)")
    return _OnnxPath(int8_model(net, calibration), torch.get_num_threads())


@dataclass(frozen=True)
class FacePath:
    """The chosen way to encode faces, and why."""

    precision: str
    backend: str
    faces_per_s: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    rounds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.precision}/{self.backend}"


_CHOSEN: dict[str, FacePath] = {}


def candidates(precision: str, backend: str, int8_ready: bool) -> tuple[list[str], str | None]:
    """``precision/backend`` names to consider, the stable default (torch, best float) first, and the int8
    one when ``auto`` may pick it."""
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"unknown precision {precision!r}; choose auto or one of {', '.join(PRECISIONS)}")
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    if precision == "int8" and not int8_ready:
        raise ValueError("the int8 face path needs calibration crops (real aligned faces)")
    rule = choose_precision(cpu_info())
    if backend != "auto" and backend not in BACKENDS_OF[rule]:
        rule = "fp32"
    precisions = [rule] if precision == "auto" else [precision]
    if precision == "auto" and int8_ready:
        precisions.append("int8")
    ort = onnxruntime_available()
    names = [
        f"{p}/{b}"
        for p in precisions
        for b in BACKENDS_OF[p]
        if backend in ("auto", b) and (b == "torch" or ort)
    ]
    if not names:
        raise ValueError(f"no face path runs precision {precision} on backend {backend} here")
    int8 = "int8/onnxruntime" if precision == "auto" and "int8/onnxruntime" in names[1:] else None
    return names, int8


def _precision_note(precision: str) -> str:
    rule = choose_precision(cpu_info())
    if precision != "auto":
        return f"precision {precision}: forced (this CPU's rule gives {rule})"
    return f"precision rule {rule}: " + (
        "CPU has native bf16" if rule == "bf16" else "no native bf16 on this CPU"
    )


def _measure(
    net: nn.Module,
    names: list[str],
    int8: str | None,
    calibration: np.ndarray | None,
    batch: int,
    rounds: int,
    timer: Callable[[], float],
) -> tuple[FacePath, dict[str, Callable[[torch.Tensor], np.ndarray]]]:
    """Build every candidate (one that fails is left out when others remain), race them, decide."""
    paths, notes = {}, []
    left_out = _int8_left_out(net, names[0], int8, batch, rounds, timer) if int8 in names else None
    if left_out:
        names, notes = [n for n in names if n != int8], [left_out]
    for name in names:
        try:
            paths[name] = _build_path(net, *name.split("/"), calibration)
        except Exception as exc:
            if len(names) == 1:
                raise
            notes.append(f"{name} unavailable ({type(exc).__name__}: {str(exc)[:80]})")
    if not paths:
        raise RuntimeError("no face path could be built: " + "; ".join(notes))
    default = names[0] if names[0] in paths else next(iter(paths))
    if len(paths) == 1:
        return FacePath(*default.split("/"), reason="; ".join(["only candidate", *notes])), paths
    x = race_input(calibration, batch)
    rates = race({n: (lambda f=f: f(x)) for n, f in paths.items()}, batch, rounds, timer)
    best, why = decide(rates, default, int8 if int8 in paths else None)
    speeds = {n: round(float(np.median(r)), 2) for n, r in rates.items()}
    timed = ", ".join(f"{n} {v:.1f}" for n, v in speeds.items())
    reason = f"timed {timed} faces/s (median of {rounds} interleaved rounds, batch {batch}); {why}"
    per_round = {n: [round(v, 2) for v in r] for n, r in rates.items()}
    return FacePath(*best.split("/"), speeds, "; ".join([reason, *notes]), per_round), paths


def race_input(crops: np.ndarray | None, batch: int) -> torch.Tensor:
    """What the candidates are timed on: ``batch`` real face crops (evenly spaced over the calibration
    set, which runs folder by folder; repeated when it holds fewer) where there are any, else fixed-seed
    noise. ONNX Runtime's int8 path runs slower on noise than on faces: on AVX-512-VNNI it is 1.41-1.46x
    fp32 torch on faces and 1.23x on noise, under the 1.3x bar (``benchmarks/face_race_input.py``)."""
    if crops is None or len(crops) == 0:
        return torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    return preprocess(crops[np.linspace(0, len(crops) - 1, batch).round().astype(int)])


def _int8_left_out(
    net: nn.Module, default: str, int8: str, batch: int, rounds: int, timer: Callable[[], float]
) -> str | None:
    """Why the int8 path is not even built (its calibration and race cost tens of seconds), or ``None``.

    A bare int8 convolution is raced against the default path's; int8 is left out where it runs slower
    than the quantised share of the network needs for ``INT8_GAIN`` (:func:`face_int8.needed_conv_gain`),
    by more than ``MARGIN``, so a path that might still win is always built and raced.
    """
    try:
        share = face_int8.quantised_share(net)
        probes = {n: face_int8.conv_probe(n, torch.get_num_threads(), batch) for n in (default, int8)}
    except Exception:  # no probe, no shortcut: the full build and race decide
        return None
    needed = face_int8.needed_conv_gain(share, INT8_GAIN)
    gain = ratio(race(probes, batch, rounds, timer), int8, default)
    if gain * MARGIN >= needed:
        return None
    return (
        f"{int8} not built: a bare int8 convolution runs {gain:.2f}x {default}'s here; with {share:.0%} of "
        f"the multiply-adds quantised the network needs {needed:.2f}x for {INT8_GAIN}x"
    )


def select_face_path(
    net: nn.Module,
    key: Iterable = (),
    precision: str = "auto",
    backend: str = "auto",
    calibration: np.ndarray | None = None,
    batch: int = RACE_BATCH,
    rounds: int = ROUNDS,
    cache: ChoiceCache | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> tuple[FacePath, Callable[[torch.Tensor], np.ndarray]]:
    """The face path to run and the ready callable ``(N, 3, 112, 112) float32 -> (N, 512)``.

    Args:
        net: an eval-mode IResNet.
        key: identifies the network (architecture, weights hash); default: a hash of its parameters.
        precision: ``auto`` (float by :func:`choose_precision`, int8 where it pays), ``fp32``, ``bf16``,
            ``int8``.
        backend: ``auto``, ``torch`` or ``onnxruntime``.
        calibration: aligned RGB crops ``(N, 112, 112, 3) uint8`` that make int8 possible.
        batch, rounds: faces per timed call (at most ``RACE_BATCH``) and interleaved rounds.
        cache: where choices are remembered (default: ``face_paths.json`` in the user cache).
        timer: the clock (tests pass a simulated one).
    """
    int8_ready = calibration is not None and len(calibration) > 0
    names, int8 = candidates(precision, backend, int8_ready)
    batch = max(1, min(batch, RACE_BATCH))
    calib = calibration_id(calibration) if int8_ready and any(n.startswith("int8") for n in names) else None
    cache_key, described = machine_key(
        cpu_info(),
        precision=precision,
        backend=backend,
        network=[str(k) for k in key] or [network_digest(net)],
        calibration=calib,
        batch=batch,
        torch_engine=ENGINE,
    )
    cache = cache if cache is not None else ChoiceCache()
    chosen = _CHOSEN.get(cache_key) or (_remembered(cache, cache_key, names) if len(names) > 1 else None)
    if chosen is not None:
        _CHOSEN[cache_key] = chosen
        return chosen, _build_path(net, chosen.precision, chosen.backend, calibration)
    measured, paths = _measure(net, names, int8, calibration, batch, rounds, timer)
    chosen = replace(measured, reason=f"{_precision_note(precision)}; {measured.reason}")
    if len(paths) > 1:
        cache.put(cache_key, _entry(chosen, measured.reason, described))
        _CHOSEN[cache_key] = chosen
    return chosen, paths[chosen.name]


def _remembered(cache: ChoiceCache, key: str, names: list[str]) -> FacePath | None:
    entry = cache.get(key)
    if entry is None or f"{entry['precision']}/{entry['backend']}" not in names:
        return None
    reason = f"remembered from {entry.get('measured', '?')}: {entry.get('reason', '')}"
    return FacePath(entry["precision"], entry["backend"], entry.get("faces_per_s", {}), reason)


def _entry(chosen: FacePath, reason: str, described: dict) -> dict:
    try:
        load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "precision": chosen.precision,
        "backend": chosen.backend,
        "faces_per_s": chosen.faces_per_s,
        "rounds": chosen.rounds,
        "reason": reason,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load": load,
        "key": described,
    }


class FaceEncoder:
    """Aligned RGB crops ``(N, 112, 112, 3) uint8`` -> embeddings ``(N, 512) float32`` on one compute path.

    Batched and ``inference_mode``; the path is the one :func:`select_face_path` picks for ``precision``
    and ``backend`` (``auto`` each), with int8 possible when ``calibration`` crops are given, remembered
    in ``cache`` (default: the user cache).
    """

    def __init__(
        self,
        net: nn.Module,
        batch: int = 64,
        precision: str = "auto",
        backend: str = "auto",
        key: Iterable = (),
        calibration: np.ndarray | None = None,
        cache: ChoiceCache | None = None,
    ) -> None:
        self.path, self._run = select_face_path(
            net.eval(), key, precision, backend, calibration, batch=min(batch, RACE_BATCH), cache=cache
        )
        self.batch = batch

    @property
    def precision(self) -> str:
        return self.path.precision

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        out = [
            np.asarray(self._run(preprocess(crops[i : i + self.batch])), np.float32)
            for i in range(0, len(crops), self.batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, EMBEDDING_SIZE), np.float32)
