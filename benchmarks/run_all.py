"""Run every benchmark and write benchmarks/RESULTS.md (and RESULTS.json) with this machine's details.

    make bench                                   # = .venv/bin/python benchmarks/run_all.py (<= 10 min)
    make bench-long                              # = run_all.py --long: the long cases too (23 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --rounds 3
    .venv/bin/python benchmarks/run_all.py --only face_encoding memory
    .venv/bin/python benchmarks/run_all.py --demo --int8   # also time a fresh demo / try int8 (minutes more)

Sections: face encoding (naive vs vafusion's way vs peak, accuracy), doing less on the face side (CCC per
encoding stride, FaceTrack per detection stride), audio front ends (speed, CCC per hop), `predict`'s
real-time factor by stage (demo run; IResNet-50 at face stride 1 and the default), training
throughput and demo wall time, peak memory vs video length (1 and 10 min), Aff-Wild2 scale (the epoch
timed on 100 steps). ``--long`` (``make bench-long``) adds the 60-minute memory case, the whole Aff-Wild2
epoch and the face-finding and every-person benchmarks in full, and writes ``RESULTS-long.md`` /
``RESULTS-long.json`` instead. Parts that need the demo run say so and are skipped when ``runs/demo`` is
missing (``make demo`` first). A failing section is reported, the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from _common import REPO, Section, load_text, machine, machine_markdown, timed

NAMES = ("face_encoding", "face_stride", "audio", "predict_rtf", "training", "memory", "scale")
LONG_NAMES = (*NAMES, "face_finding", "people")


def section(name: str, args: argparse.Namespace, done: dict[str, Section]) -> Section:
    """Run one benchmark module's ``run`` (``done``: the sections already measured in this run)."""
    if name == "face_encoding":
        import face_encoding

        return face_encoding.run(args.rounds, args.int8)
    if name == "face_stride":
        import face_stride

        return face_stride.run(quick=args.rounds < 3)
    if name == "audio":
        import audio

        return audio.run(args.rounds)
    if name == "predict_rtf":
        import predict_rtf

        stride = done.get("face_stride")
        return predict_rtf.run(args.rounds, stride.data if stride else None)
    if name == "training":
        import training

        return training.run(args.rounds, args.demo, quick=not args.long)
    if name == "memory":
        import memory

        minutes = (1, 10, 60) if args.long else (1, 10)
        return memory.run(minutes, minutes)
    if name == "scale":
        import scale

        return scale.run(quick=not args.long)
    if name == "face_finding":
        import face_finding

        return face_finding.run(quick=False, rounds=args.rounds)
    if name == "people":
        import people

        return people.run(quick=False, rounds=args.rounds)
    raise ValueError(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved timing rounds per benchmark (default 2)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=LONG_NAMES, help="these sections only (default: all of the mode)"
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="the long cases too (60-min memory, whole Aff-Wild2 epoch, face finding, people); "
        "writes RESULTS-long.md",
    )
    parser.add_argument(
        "--demo", action="store_true", help="time a fresh `vafusion demo` (about 3 min on 2 idle cores)"
    )
    parser.add_argument(
        "--int8", action="store_true", help="also try ONNX Runtime static int8 for faces (about 2 min)"
    )
    args = parser.parse_args()
    default = list(LONG_NAMES if args.long else NAMES)
    args.only = args.only or default
    out_md = Path(__file__).with_name("RESULTS-long.md" if args.long else "RESULTS.md")
    out_json = out_md.with_suffix(".json")
    t0 = time.perf_counter()
    m = machine()
    sections, failed, done = [], [], {}
    for name in args.only:
        print(f"[bench] {name} ... ({load_text()})", file=sys.stderr, flush=True)
        try:
            sec = timed(lambda name=name: section(name, args, done))
        except Exception:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            sec = Section(name, "Failed:\n\n```\n" + traceback.format_exc(limit=4) + "```")
        print(f"[bench] {name} done in {sec.seconds:.0f} s", file=sys.stderr, flush=True)
        sections.append(sec)
        done[name] = sec
    total = time.perf_counter() - t0
    plain = args.only == default and args.rounds == 2 and not (args.demo or args.int8)
    cmd = (
        ("make bench-long" if args.long else "make bench")
        if plain
        else "benchmarks/run_all.py " + " ".join(sys.argv[1:])
    )
    if os.environ.get("VAFUSION_CPUID"):  # run by benchmarks/avx2.py: every library saw a smaller CPU
        args_text = " ".join(["benchmarks/run_all.py", *sys.argv[1:]])
        cmd = f"benchmarks/avx2.py --isa {os.environ['VAFUSION_CPUID']} {args_text}"
    md = [
        "# vafusion benchmark results",
        "",
        f"Written by `{cmd}` in {total:.0f} s; every figure below was measured in that run on this machine.",
        "Timings interleave their candidates round by round in one process; ratios are medians of "
        "within-round ratios. The load average is printed next to the figures: on a shared CPU the "
        "absolute numbers move with it, the ratios much less.",
        "",
        "## Machine",
        "",
        machine_markdown(m),
        "",
    ]
    for sec in sections:
        md += [f"## {sec.title}", "", f"_{sec.seconds:.0f} s_", "", sec.markdown, ""]
    md += [f"Load average at the end: {load_text()}.", ""]
    out_md.write_text("\n".join(md))
    out_json.write_text(
        json.dumps(
            {
                "machine": m,
                "seconds": total,
                "command": cmd,
                "sections": {s.title: {"seconds": s.seconds, **s.data} for s in sections},
            },
            indent=1,
            default=str,
        )
    )
    print(f"[bench] wrote {out_md.relative_to(REPO)} in {total:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
