"""CPU facts detected at run time, and thread control.

Machines differ more than one default can serve: on an AVX2-only CPU bfloat16 is emulated and runs about
100x slower than float32, while on a CPU with AVX512-BF16 or AMX it doubles IResNet-50 throughput. So
nothing assumes an instruction set: :func:`cpu_info` reads the flags the kernel reports
(``/proc/cpuinfo``) and torch's own view (``torch.backends.cpu.get_cpu_capability``), and
:func:`choose_precision` is the rule: bfloat16 only where the CPU has native bf16 dot products
(``avx512_bf16`` / ``amx_bf16``) and oneDNN can use them, else float32.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

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
