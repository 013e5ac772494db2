"""The face-encoding compute path: IResNet embeddings as fast as this CPU allows.

:func:`select_face_path` picks the precision by rule (:func:`vafusion.cpu.choose_precision`: bf16 only
with native bf16 dot products) and the backend by a short timing race between torch (channels-last,
BatchNorms folded) and ONNX Runtime, once per process; :class:`FaceEncoder` runs the chosen path, and
``IResNetExtractor`` uses it for every face. int8 is never chosen on its own: static int8 of IResNet-50
moved embeddings too far (cosine 0.93 to fp32, ``docs/performance.md``).
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vafusion.cpu import choose_precision, cpu_info
from vafusion.io.onnx import onnxruntime_available, session
from vafusion.models.iresnet import EMBEDDING_SIZE, preprocess

PRECISIONS = ("fp32", "bf16")
BACKENDS = ("torch", "onnxruntime")


def fold_batchnorms(net: nn.Module) -> nn.Module:
    """A copy of an eval-mode IResNet with every BatchNorm that follows a convolution folded into it.

    ``conv1 -> bn2``, ``conv2 -> bn3`` and the ``downsample`` pair fold exactly; ``bn1`` precedes its
    convolution (whose zero padding would see the BatchNorm shift) and stays.
    """
    out = copy.deepcopy(net).eval()
    for block in out.modules():
        if hasattr(block, "conv1") and hasattr(block, "bn2") and hasattr(block, "bn3"):
            block.conv1 = fuse_conv_bn_eval(block.conv1, block.bn2)
            block.bn2 = nn.Identity()
            block.conv2 = fuse_conv_bn_eval(block.conv2, block.bn3)
            block.bn3 = nn.Identity()
            ds = getattr(block, "downsample", None)
            if isinstance(ds, nn.Sequential) and len(ds) == 2:
                block.downsample = nn.Sequential(fuse_conv_bn_eval(ds[0], ds[1]))
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class _TorchPath:
    """IResNet body in channels-last ``fp32`` or ``bf16`` (BatchNorms folded), head always in fp32."""

    def __init__(self, net: nn.Module, precision: str) -> None:
        body = fold_batchnorms(net).to(memory_format=torch.channels_last)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.net = body.to(self.dtype) if self.dtype != torch.float32 else body
        self.fp32_head = _Head(net)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        fmap = self.net.forward_features(x).float()
        return self.fp32_head(fmap).numpy()


class _Head(nn.Module):
    """The IResNet embedding head (flatten, ``fc``, ``features`` BatchNorm1d) kept in float32."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.fc = copy.deepcopy(net.fc).eval()
        self.features = copy.deepcopy(net.features).eval()

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(torch.flatten(fmap.contiguous(), 1)))


class _OnnxPath:
    """The whole IResNet exported to ONNX and run by ONNX Runtime (float32, all graph optimisations)."""

    def __init__(self, net: nn.Module, threads: int) -> None:
        blob = io.BytesIO()
        model = copy.deepcopy(net).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(2, 3, 112, 112),),
                blob,
                input_names=["faces"],
                output_names=["embeddings"],
                dynamic_axes={"faces": {0: "n"}, "embeddings": {0: "n"}},
                opset_version=17,
                dynamo=False,
            )
        self.session = session(blob.getvalue(), max(1, threads), spin=False)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"faces": x.numpy()})[0]


def _build_path(net: nn.Module, precision: str, backend: str) -> Callable[[torch.Tensor], np.ndarray]:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if backend == "torch":
        return _TorchPath(net, precision)
    if backend == "onnxruntime":
        if precision != "fp32":
            raise ValueError("the onnxruntime face path runs fp32 only")
        return _OnnxPath(net, torch.get_num_threads())
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class FacePath:
    """The chosen way to encode faces, and why."""

    precision: str
    backend: str
    faces_per_s: dict[str, float] = field(default_factory=dict)
    reason: str = ""


_CHOSEN: dict[tuple, FacePath] = {}


def _faces_per_s(fn: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, repeats: int) -> float:
    fn(x)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def select_face_path(
    net: nn.Module, key: Iterable, precision: str = "auto", calibration_faces: int = 8, repeats: int = 2
) -> tuple[FacePath, Callable[[torch.Tensor], np.ndarray]]:
    """Pick precision by rule and backend by a short timing race; the choice is cached per process.

    Args:
        net: an eval-mode IResNet.
        key: identifies the network (architecture, weights hash) in the per-process cache.
        precision: ``"auto"`` (the rule of :func:`choose_precision`), or ``"fp32"``/``"bf16"`` to force one.
        calibration_faces: batch size of the race (random inputs: speed does not depend on values).
        repeats: timed runs per candidate after one warm-up; the fastest counts.

    Returns:
        The choice and the ready-to-use path (a callable ``(N, 3, 112, 112) float32 -> (N, 512)``).
    """
    info = cpu_info()
    rule = choose_precision(info)
    wanted = rule if precision == "auto" else precision
    cache_key = (tuple(key), wanted, info.threads)
    if cache_key in _CHOSEN:
        chosen = _CHOSEN[cache_key]
        return chosen, _build_path(net, chosen.precision, chosen.backend)
    candidates = ["torch"]
    if wanted == "fp32" and onnxruntime_available():
        candidates.append("onnxruntime")
    if wanted != rule:
        why = f"precision {wanted}: forced (this CPU's rule gives {rule})"
    else:
        why = f"precision {wanted}: " + (
            "CPU has native bf16" if wanted == "bf16" else "no native bf16 on this CPU"
        )
    paths: dict[str, Callable[[torch.Tensor], np.ndarray]] = {}
    speeds: dict[str, float] = {}
    x = torch.randn(calibration_faces, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    for backend in candidates:
        try:
            paths[backend] = _build_path(net, wanted, backend)
        except Exception as exc:
            why += f"; {backend} unavailable ({type(exc).__name__})"
            continue
        if len(candidates) > 1:
            speeds[backend] = round(_faces_per_s(paths[backend], x, repeats), 2)
    best = max(paths, key=lambda b: speeds.get(b, 0.0))
    if speeds:
        why += "; timed " + ", ".join(f"{b} {s:.1f} faces/s" for b, s in speeds.items())
    chosen = FacePath(wanted, best, speeds, why)
    _CHOSEN[cache_key] = chosen
    return chosen, paths[best]


class FaceEncoder:
    """Aligned RGB crops ``(N, 112, 112, 3) uint8`` -> embeddings ``(N, 512) float32`` on one compute path.

    Batched and ``inference_mode``; the path is the one :func:`select_face_path` picks unless ``precision``
    and ``backend`` are both given.
    """

    def __init__(
        self,
        net: nn.Module,
        batch: int = 64,
        precision: str = "auto",
        backend: str = "auto",
        key: Iterable = (),
    ) -> None:
        net = net.eval()
        if precision != "auto" and backend != "auto":
            self.path = FacePath(precision, backend, reason="forced")
            self._run = _build_path(net, precision, backend)
        else:
            self.path, self._run = select_face_path(net, key, precision)
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
