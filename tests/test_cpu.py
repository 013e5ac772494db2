"""CPU facts detected at run time (simulated here from /proc/cpuinfo texts) and thread control."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from vafusion import cpu

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_2 avx f16c fma avx2\n"


AVX512_BF16 = (
    "model name\t: AMD EPYC 9B14\n"
    "flags\t\t: sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16\n"
)


def _simulated(text: str) -> cpu.CPUInfo:
    model, flags = cpu.parse_cpuinfo(text)
    return cpu.CPUInfo(model, flags, "AVX2", 2, 2)


def test_parse_cpuinfo_reads_model_and_flags() -> None:
    model, flags = cpu.parse_cpuinfo(AVX512_BF16)
    assert model == "AMD EPYC 9B14" and {"avx512_bf16", "avx512_vnni", "avx2"} <= flags
    model, flags = cpu.parse_cpuinfo("Features\t: fp asimd bf16 sve\nCPU part\t: 0xd40\n")
    assert model == "" and {"asimd", "bf16"} <= flags
    assert cpu.parse_cpuinfo("") == ("", frozenset())


@pytest.mark.parametrize(
    "text, kernels, want",
    [
        (AVX2_ONLY, True, "fp32"),  # emulated bf16 is ~100x slower there
        (AVX512_BF16, True, "bf16"),
        (AVX512_BF16, False, "fp32"),  # flags say yes but this torch build has no bf16 kernels
        ("flags\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n", True, "bf16"),
        ("flags\t: avx2 avx512f avx512_vnni\n", True, "fp32"),  # int8 dot products alone do not pick bf16
    ],
)
def test_precision_follows_detected_flags(text: str, kernels: bool, want: str) -> None:
    info = _simulated(text)
    assert cpu.choose_precision(info, bf16_kernels=kernels) == want
    assert info.vnni == bool(info.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def test_torch_threads_sets_and_always_restores_the_count() -> None:
    before = torch.get_num_threads()
    with cpu.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu.torch_threads(1):
        raise RuntimeError("a failing block")
    assert torch.get_num_threads() == before
    with cpu.torch_threads(0):  # 0: leave the count as it is (Predictor(fuse_threads=0))
        assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "env, kind",
    [
        ({}, "amx"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "avx2"),
        ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, "avx2"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI"}, "avx2_vnni"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "avx512_vnni"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "avx512_bf16"),
        ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "amx"),
    ],
)
def test_isa_caps_in_the_environment_cap_the_flags(env: dict, kind: str) -> None:
    _, flags = cpu.parse_cpuinfo(
        "flags\t: avx2 avx_vnni avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
    )
    capped, cap = cpu.capped_flags(flags, env)
    info = cpu.CPUInfo("Xeon", capped, "AVX512", 2, 2, cap)
    assert cpu.cpu_kind(info) == kind and (cap != "") == bool(env)
    assert cpu.choose_precision(info, bf16_kernels=True) == (
        "bf16" if kind in ("amx", "avx512_bf16") else "fp32"
    )


def test_machine_key_and_cache_dir(monkeypatch, tmp_path) -> None:
    info = _simulated(AVX2_ONLY)
    key, described = cpu.machine_key(info, precision="auto", network=["iresnet50", "abc"])
    assert described["kind"] == "avx2" and described["cpu"] == "AMD EPYC 7B12" and described["threads"] == 2
    assert {"torch", "onnxruntime", "torch_capability"} <= set(described)
    assert cpu.machine_key(info, precision="auto", network=["iresnet50", "abc"])[0] == key
    assert cpu.machine_key(info, precision="fp32", network=["iresnet50", "abc"])[0] != key
    assert (
        cpu.machine_key(
            cpu.CPUInfo(info.model, info.flags, "AVX2", 1, 2), precision="auto", network=["iresnet50", "abc"]
        )[0]
        != key
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cpu.cache_dir() == tmp_path / "vafusion"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cpu.cache_dir() == tmp_path / "home" / ".cache" / "vafusion"


_FAULTS = """
import ctypes, resource
from vafusion.cpu import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def layer():  # a 20 MB activation: allocated, written, freed
    p = libc.malloc(20 << 20)
    ctypes.memset(p, 1, 20 << 20)
    libc.free(p)
layer()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    layer()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
@pytest.mark.parametrize("setting", ["kept", "default"])
def test_freed_memory_is_reused_instead_of_faulted_in_again(setting: str) -> None:
    """Each face-path layer allocates tens of MB; with the default glibc settings every such block comes back
    from the kernel page by page (5,120 faults per 20 MB), kept memory is reused without a fault."""
    env = {k: v for k, v in os.environ.items() if k != "VAFUSION_MALLOC"}
    if setting == "default":
        env["VAFUSION_MALLOC"] = "default"
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    if setting == "kept":
        assert applied == "True" and int(faults) < 100, out.stdout
    else:
        assert applied == "False" and int(faults) > 1000, out.stdout


def test_the_torch_face_path_keeps_freed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from vafusion.features import face_encoder
    from vafusion.models.iresnet import iresnet

    calls = []
    monkeypatch.setattr(face_encoder, "keep_freed_memory", lambda: calls.append(1) or True)
    face_encoder.FaceEncoder(iresnet("iresnet18").eval(), 4, "fp32", "torch")
    assert calls
