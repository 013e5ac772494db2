"""Fast on any CPU: run-time CPU feature detection, the face-encoding compute path, and "doing less".

Machines differ more than one default can serve: on an AVX2-only CPU bfloat16 is emulated and runs about
100x slower than float32, while on a CPU with AVX512-BF16 or AMX it doubles IResNet-50 throughput. So
nothing here assumes an instruction set:

* :func:`cpu_info` reads the flags the kernel reports (``/proc/cpuinfo``) and torch's own view
  (``torch.backends.cpu.get_cpu_capability``);
* :func:`choose_precision` is the rule: bfloat16 only where the CPU has native bf16 dot products
  (``avx512_bf16`` / ``amx_bf16``) and oneDNN can use them, else float32. int8 is never chosen on its own:
  static int8 of IResNet-50 moved embeddings too far (cosine 0.93 to fp32, ``docs/performance.md``);
* :func:`select_face_path` times the backends that give that precision (torch channels-last with
  BatchNorm folded, ONNX Runtime) on a few faces and keeps the faster one, once per process;
* :class:`FaceEncoder` runs the chosen path; ``IResNetExtractor`` uses it for every face.

"Doing less": :func:`anchor_rows` / :func:`fill_between_anchors` encode every k-th face of each run of
frames with a face and interpolate the rest (``features.face_stride``); :func:`resample_rows` maps
features computed at coarse times onto frame times (audio hop).
"""

from __future__ import annotations

import copy
import io
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import nn

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SHOWN_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "asimd",
    "sve",
    "bf16",
)
PRECISIONS = ("fp32", "bf16")
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class CPUInfo:
    """What this CPU can run natively, as detected at run time."""

    model: str
    flags: frozenset[str]
    torch_capability: str
    threads: int
    logical_cpus: int

    @property
    def bf16(self) -> bool:
        """Native bfloat16 dot products (AVX512-BF16 or AMX-BF16)."""
        return bool(self.flags & set(BF16_FLAGS))

    @property
    def vnni(self) -> bool:
        """Native int8 dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
        return bool(self.flags & set(VNNI_FLAGS))

    def shown_flags(self) -> list[str]:
        """The flags that matter for these kernels, in a fixed order."""
        return [f for f in SHOWN_FLAGS if f in self.flags]

    def summary(self) -> str:
        """One line: model, relevant flags, torch's SIMD level and threads."""
        return (
            f"{self.model}; flags: {' '.join(self.shown_flags()) or 'none detected'}; "
            f"torch {torch.__version__} capability {self.torch_capability}; "
            f"{self.threads} torch threads of {self.logical_cpus} logical CPUs"
        )


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """CPU model name and flag set from the text of ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


@lru_cache(maxsize=1)
def _proc_cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return parse_cpuinfo(fh.read())
    except OSError:
        return "", frozenset()


def cpu_info() -> CPUInfo:
    """Detect this machine's CPU (flags are read once per process; threads are read on every call)."""
    model, flags = _proc_cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability()
    return CPUInfo(
        model or platform.processor() or platform.machine(),
        flags,
        capability,
        torch.get_num_threads(),
        os.cpu_count() or 1,
    )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block on ``n`` torch threads (``n <= 0``: leave the count alone), then restore the count.

    Small networks (the fusion model) lose from a second thread: OpenMP workers hand over at every small
    operation, and on a busy machine they wait for descheduled peers (7-34x slower measured on 2 cores).
    """
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bf16_kernels_available() -> bool:
    """Whether this torch build's oneDNN runs bfloat16 convolutions on this CPU at all."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and (check() if check is not None else False))


def choose_precision(info: CPUInfo, bf16_kernels: bool | None = None) -> str:
    """``"bf16"`` where the CPU has native bf16 dot products and oneDNN has bf16 kernels, else ``"fp32"``.

    Args:
        info: the detected CPU (tests pass a simulated one).
        bf16_kernels: whether torch can run bf16 convolutions; detected when ``None``.
    """
    if bf16_kernels is None:
        bf16_kernels = bf16_kernels_available()
    return "bf16" if info.bf16 and bf16_kernels else "fp32"


def fold_batchnorms(net: nn.Module) -> nn.Module:
    """A copy of an eval-mode IResNet with every BatchNorm that follows a convolution folded into it.

    ``conv1 -> bn2``, ``conv2 -> bn3`` and the ``downsample`` pair fold exactly; ``bn1`` precedes its
    convolution (whose zero padding would see the BatchNorm shift) and stays.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

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
        import onnxruntime as ort

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
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # idle ORT workers otherwise spin after each batch, taking the cores torch needs next
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(blob.getvalue(), opts, providers=["CPUExecutionProvider"])

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


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime (the ``onnx`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


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
        except Exception as exc:  # noqa: BLE001 - an exporter/runtime failure only removes a candidate
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
        from vafusion.features.iresnet import EMBEDDING_SIZE, preprocess

        out = [
            np.asarray(self._run(preprocess(crops[i : i + self.batch])), np.float32)
            for i in range(0, len(crops), self.batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, EMBEDDING_SIZE), np.float32)


def anchor_rows(present: np.ndarray, stride: int) -> np.ndarray:
    """Rows to encode when only every ``stride``-th face is: per run of consecutive present rows, its
    first row, every ``stride``-th after it, and its last row (so no row is extrapolated).

    Args:
        present: ``(T,)`` bool, rows that have a face.
        stride: k >= 1; 1 returns every present row.

    Returns:
        Sorted row indices ``(A,)`` int64.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    rows = np.flatnonzero(np.asarray(present, bool))
    if stride == 1 or len(rows) == 0:
        return rows
    breaks = np.flatnonzero(np.diff(rows) > 1) + 1
    keep = []
    for run in np.split(rows, breaks):
        keep.append(run[::stride])
        keep.append(run[-1:])
    return np.unique(np.concatenate(keep))


def fill_between_anchors(
    feats: np.ndarray, encoded: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate rows of ``feats`` that are ``present`` but not ``encoded``, within each run.

    Args:
        feats: ``(T, D)`` with the encoded rows filled.
        encoded: ``(T,)`` bool, rows that hold encoder output.
        present: ``(T,)`` bool, rows that should end up with features (encoded is a subset).

    Returns:
        ``(T, D)`` features and ``(T,)`` validity: a present row is valid when its run has an encoded row.
    """
    out = np.array(feats, dtype=np.float32, copy=True)
    present = np.asarray(present, bool)
    encoded = np.asarray(encoded, bool) & present
    valid = encoded.copy()
    rows = np.flatnonzero(present)
    if len(rows) == 0:
        return out, valid
    breaks = np.flatnonzero(np.diff(rows) > 1) + 1
    for run in np.split(rows, breaks):
        have = run[encoded[run]]
        if len(have) == 0:
            continue
        todo = run[~encoded[run]]
        if len(todo):
            out[todo] = resample_rows(have.astype(np.float64), out[have], todo.astype(np.float64))
            valid[todo] = True
    return out, valid


def resample_rows(src_times: np.ndarray, feats: np.ndarray, dst_times: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``(S, D)`` rows known at ``src_times`` (increasing) onto ``dst_times``;
    times outside the known range take the nearest end row."""
    src = np.asarray(src_times, np.float64)
    dst = np.asarray(dst_times, np.float64)
    feats = np.asarray(feats)
    if len(src) == 1:
        return np.repeat(feats.astype(np.float32), len(dst), axis=0)
    idx = np.clip(np.searchsorted(src, dst, side="right") - 1, 0, len(src) - 2)
    w = np.clip((dst - src[idx]) / (src[idx + 1] - src[idx]), 0.0, 1.0)[:, None]
    return ((1.0 - w) * feats[idx] + w * feats[idx + 1]).astype(np.float32)
