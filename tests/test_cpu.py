"""CPU facts detected at run time (simulated here from /proc/cpuinfo texts) and thread control."""

from __future__ import annotations

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
