"""CPU facts detected at run time, and thread control.

Machines differ more than one default can serve: on an AVX2-only CPU bfloat16 is emulated and runs about
100x slower than float32, while on a CPU with AVX512-BF16 or AMX it doubles IResNet-50 throughput. So
nothing assumes an instruction set: :func:`cpu_info` reads the flags the kernel reports
(``/proc/cpuinfo``) and torch's own view (``torch.backends.cpu.get_cpu_capability``), and
:func:`choose_precision` is the rule: bfloat16 only where the CPU has native bf16 dot products
(``avx512_bf16`` / ``amx_bf16``) and oneDNN can use them, else float32. :func:`cpu_kind` names the class of
machine (what the face-path choice is cached under, with :func:`machine_key`), and :func:`cache_dir` is
where per-machine choices are kept. :func:`keep_freed_memory` tunes glibc's allocator for the face path.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

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


@dataclass(frozen=True)
class CPUInfo:
    """What this CPU can run natively, as detected at run time."""

    model: str
    flags: frozenset[str]
    torch_capability: str
    threads: int
    logical_cpus: int
    cap: str = ""

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
        capped = f" (capped by {self.cap})" if self.cap else ""
        return (
            f"{self.model}; flags{capped}: {' '.join(self.shown_flags()) or 'none detected'}; "
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
    """Detect this machine's CPU (flags are read once per process; threads are read on every call).

    The flags are those the kernels may use: ``ATEN_CPU_CAPABILITY=avx2`` or ``ONEDNN_MAX_CPU_ISA`` (e.g.
    ``AVX2``, ``AVX512_CORE_VNNI``) remove what they forbid, so a run capped to AVX2 kernels on an AVX-512
    machine chooses as an AVX2 machine would."""
    model, flags = _proc_cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability()
    flags, cap = capped_flags(flags, os.environ)
    return CPUInfo(
        model or platform.processor() or platform.machine(),
        flags,
        capability,
        torch.get_num_threads(),
        os.cpu_count() or 1,
        cap,
    )


_ONEDNN_DROPS = (  # ONEDNN_MAX_CPU_ISA prefix -> flag prefixes its kernels may not use (first match wins)
    ("AVX512_CORE_AMX", ()),
    ("AVX10_1_512_AMX", ()),
    ("AVX512_CORE_FP16", ("amx",)),
    ("AVX10_1_512", ("amx",)),
    ("AVX512_CORE_BF16", ("amx", "avx512_fp16")),
    ("AVX512_CORE_VNNI", ("amx", "avx512_bf16", "avx512_fp16")),
    ("AVX512_CORE", ("amx", "avx512_bf16", "avx512_fp16", "avx512_vnni")),
    ("AVX2_VNNI", ("amx", "avx512")),
    ("", ("amx", "avx512", "avx_vnni")),  # AVX2, AVX, SSE41
)


def capped_flags(flags: frozenset[str], env: Mapping[str, str]) -> tuple[frozenset[str], str]:
    """``flags`` less what ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` in ``env`` forbid, and the cap."""
    onednn = env.get("ONEDNN_MAX_CPU_ISA", "").upper()
    aten = env.get("ATEN_CPU_CAPABILITY", "").lower()
    drops: tuple[str, ...] = ()
    if onednn and onednn not in ("ALL", "DEFAULT"):
        drops = next(d for prefix, d in _ONEDNN_DROPS if onednn.startswith(prefix))
    if aten in ("avx2", "default"):
        drops = tuple(sorted({*drops, "amx", "avx512"}))
    cap = ", ".join(f"{k}={env[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if env.get(k))
    return frozenset(f for f in flags if not f.startswith(drops)) if drops else flags, cap


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


_MALLOPT = ((-3, 32 << 20), (-2, 256 << 20), (-1, (1 << 31) - 1))
"""glibc ``mallopt`` settings: ``M_MMAP_THRESHOLD`` 32 MB (its maximum), ``M_TOP_PAD`` 256 MB,
``M_TRIM_THRESHOLD`` 2 GB."""


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    A batch of faces through IResNet-50 allocates tens of megabytes per layer. By default glibc maps large
    blocks fresh from the kernel and trims freed heap memory back to it, so every layer's output is
    page-faulted and zeroed again: with AMX the convolutions are so fast that this costs a quarter of the
    face path (bf16, batch 32: 169,289 page faults per 64 faces; kept, 12 and 1.34x the faces/s,
    ``benchmarks/face_malloc.py``). The price: the process keeps its peak heap until it exits. Applies only
    on Linux with glibc; ``VAFUSION_MALLOC=default`` turns it off. Returns whether the settings were applied.
    """
    if os.environ.get("VAFUSION_MALLOC") == "default" or platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return all(mallopt(option, value) == 1 for option, value in _MALLOPT)


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


def cpu_kind(info: CPUInfo) -> str:
    """The class of CPU for the face kernels, from its usable flags: ``amx``, ``avx512_bf16``,
    ``avx512_vnni``, ``avx512``, ``avx2_vnni``, ``avx2`` or ``other``."""
    flags = info.flags
    if "amx_bf16" in flags or "amx_int8" in flags:
        return "amx"
    for kind in ("avx512_bf16", "avx512_vnni"):
        if kind in flags:
            return kind
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2_vnni" if "avx_vnni" in flags else "avx2"
    return "other"


def library_versions() -> dict[str, str]:
    """torch's and (when installed) ONNX Runtime's versions: the kernels a timing was made with."""
    versions = {"torch": torch.__version__}
    try:
        versions["onnxruntime"] = version("onnxruntime")
    except PackageNotFoundError:
        versions["onnxruntime"] = "absent"
    return versions


def machine_key(info: CPUInfo, **parts: object) -> tuple[str, dict]:
    """A short stable key (and what it was made from) for a measurement on this machine: CPU model,
    kind, torch SIMD level, ISA caps from the environment, library versions, threads, plus ``parts``."""
    described = {
        "cpu": info.model,
        "kind": cpu_kind(info),
        "torch_capability": info.torch_capability,
        "cap": info.cap,
        **library_versions(),
        "threads": info.threads,
        **parts,
    }
    blob = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], described


def cache_dir() -> Path:
    """vafusion's per-user cache: ``$XDG_CACHE_HOME/vafusion``, else ``~/.cache/vafusion`` (not created)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "vafusion"
