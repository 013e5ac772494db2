"""Run a benchmark as on an AVX2-only CPU (or an AVX-512-VNNI one without bf16/AMX), on an AVX-512 machine.

    .venv/bin/python benchmarks/avx2.py benchmarks/face_encoding.py --quick
    .venv/bin/python benchmarks/avx2.py --isa avx512_vnni benchmarks/face_encoding.py --quick

torch and oneDNN take environment variables (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA``); ONNX
Runtime has none: MLAS picks its kernels from the CPUID instruction alone (``onnxruntime/core/mlas/lib/
platform.cpp``, no variable or session option caps it). So the command also runs with ``avx2_cpuid.c``
preloaded, which makes CPUID fault (Linux ``arch_prctl(ARCH_SET_CPUID)``, CPUs with ``cpuid_fault``)
and answers it without the AVX-512 / VNNI / bf16 / AMX bits: every library then dispatches as on such a
CPU. Kernels stay the same instructions on the same cores, so clock and cache sizes are this machine's:
ratios between paths carry over, absolute figures do not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).with_name("avx2_cpuid.c")
LIBRARY = REPO / "runs" / "bench_carry" / "avx2_cpuid.so"
ONEDNN = {"avx2": "AVX2", "avx512_vnni": "AVX512_CORE_VNNI"}


def build() -> Path:
    """Compile the CPUID shim (once, or when its source changed)."""
    if not LIBRARY.exists() or LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime:
        LIBRARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(LIBRARY), str(SOURCE)], check=True)
    return LIBRARY


def environment(isa: str) -> dict[str, str]:
    """The environment of a process that should see only ``isa`` (``avx2`` or ``avx512_vnni``)."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(build()), env.get("LD_PRELOAD", "")]))
    env["VAFUSION_CPUID"] = isa
    env["ONEDNN_MAX_CPU_ISA"] = ONEDNN[isa]
    if isa == "avx2":
        env["ATEN_CPU_CAPABILITY"] = "avx2"
        env["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", choices=sorted(ONEDNN), default="avx2")
    parser.add_argument("script", help="a Python script (run with this interpreter)")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text():
        sys.exit("this CPU or kernel cannot make CPUID fault (no cpuid_fault flag): cannot emulate")
    cmd = [sys.executable, args.script, *args.args]
    sys.exit(subprocess.run(cmd, env=environment(args.isa), check=False).returncode)


if __name__ == "__main__":
    main()
