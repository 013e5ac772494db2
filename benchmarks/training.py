"""Fusion-model training and evaluation throughput (frames/s), its % of peak, and the demo wall time.

    .venv/bin/python benchmarks/training.py --quick  # throughput and % of peak; demo time quoted
    .venv/bin/python benchmarks/training.py --demo      # also time a fresh `vafusion demo` (about 3 min idle)

Training: the default fusion network (``create_model("fusion")`` with the default ``Config``'s ``model``
settings) on the demo's normalised sequences in 300-frame windows, batch 8, one AdamW step per batch of
``1 - CCC``, the loss the Lightning task uses; 1 and 2 torch threads side by side, and two single-thread
processes at once (what ``cv.processes=2`` does). Evaluation: ``sliding_predict`` over the same
sequences.

% of peak: the FLOPs of one training step (forward + backward) are counted per op call with torch's own
formulas (``torch.utils.flop_counter``: matmuls, convolutions); the peak is the FLOP/s of the largest of
those op shapes run alone in a loop (1 thread; 2 threads or two processes for 2 cores). The demo's wall
time is measured by ``vafusion demo`` itself and written to its report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import DEMO, REPO, DemoEval, Section, demo_ready, load_text, race, table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from vafusion.config import load_config
from vafusion.cpu import torch_threads
from vafusion.data.sequence import WindowDataset
from vafusion.metrics import ccc_loss
from vafusion.models.normaliser import Normaliser
from vafusion.models.registry import create_model
from vafusion.models.windows import sliding_predict

STEPS = 2
PAPER_DIMS = {"visual": 512, "vggish": 128, "logmel": 128}


def _sig(a: object) -> object:
    """JSON-able description of an aten argument: tensors by shape, strides and dtype."""
    if isinstance(a, torch.Tensor):
        return {"T": list(a.shape), "s": list(a.stride()), "d": str(a.dtype).removeprefix("torch.")}
    if isinstance(a, (list, tuple)):
        return [_sig(x) for x in a]
    return a


def _unsig(a: object) -> object:
    """Random arguments matching a :func:`_sig` description."""
    if isinstance(a, dict):
        t = torch.empty_strided(a["T"], a["s"], dtype=getattr(torch, a["d"]))
        return t.fill_(True) if t.dtype == torch.bool else t.normal_()
    if isinstance(a, list):
        return [_unsig(x) for x in a]
    return a


class _Census(TorchDispatchMode):
    """FLOPs of every matmul/convolution call (torch's own counting formulas), by op and argument shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, dict] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket in flop_registry:
            flops = flop_registry[func._overloadpacket](*args, **(kwargs or {}), out_val=out)
            key = json.dumps([str(func), _sig(list(args))])
            entry = self.calls.setdefault(
                key, {"op": str(func), "args": _sig(list(args)), "flops": 0, "n": 0}
            )
            entry["flops"] += flops
            entry["n"] += 1
        return out


def census(net, batch: dict) -> tuple[float, list[dict]]:
    """FLOPs per frame of one training step (forward + backward) and every op shape, largest first."""
    mode = _Census()
    with mode:
        ccc_loss(net(batch["feats"], batch["valid"]), batch["labels"], batch["label_valid"]).backward()
    net.zero_grad(set_to_none=True)
    frames = batch["labels"].shape[0] * batch["labels"].shape[1]
    calls = sorted(mode.calls.values(), key=lambda c: -c["flops"])
    return sum(c["flops"] for c in calls) / frames, calls


def op_rate(call: dict, threads: int, seconds: float = 0.5, ready: Callable[[], None] | None = None) -> float:
    """FLOP/s of one op shape run alone in a loop on ``threads`` threads (``ready()`` once warm)."""
    op = torch.ops.aten
    for part in call["op"].removeprefix("aten.").split("."):
        op = getattr(op, part)
    args = _unsig(call["args"])
    flops = call["flops"] / call["n"]
    with torch_threads(threads), torch.no_grad():
        for _ in range(3):
            op(*args)
        if ready is not None:
            ready()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            op(*args)
            n += 1
        return flops * n / (time.perf_counter() - t0)


def _ready() -> None:
    """A child says it is warm, then waits for the go of :func:`in_two_processes`."""
    print("ready", flush=True)
    sys.stdin.readline()


def in_two_processes(mode: str, payload: str) -> float:
    """Sum of the rates two single-thread copies of this script measure at the same time (``--child``):
    both warm up, say so, and start timing on one go."""
    cmd = [sys.executable, __file__, "--child", mode, payload]
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def _setup(steps: int = STEPS):
    """Network, optimiser, a fixed list of training batches and the normalised sequences."""
    ev = DemoEval()
    roles = ["visual", "vggish", "logmel"]
    cfg = load_config()
    seqs = list(ev.seqs.values())
    norm = Normaliser.fit(seqs)
    normed = [s.normalised(norm) for s in seqs]
    dims = {r: normed[0].feats[r].shape[1] for r in roles}
    torch.manual_seed(0)
    net = create_model("fusion", dims=dims, **dataclasses.asdict(cfg.model))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    ds = WindowDataset(normed, cfg.train.window, cfg.train.hop, train=True, seed=0)
    b = cfg.train.batch_size
    batches = []
    for k in range(steps):
        items = [ds[(k * b + j) % len(ds)] for j in range(b)]
        batches.append(
            {
                "feats": {r: torch.stack([it["feats"][r] for it in items]) for r in roles},
                "valid": {r: torch.stack([it["valid"][r] for it in items]) for r in roles},
                "labels": torch.stack([it["labels"] for it in items]),
                "label_valid": torch.stack([it["label_valid"] for it in items]),
            }
        )
    return net, opt, batches, normed, cfg


def _train(net, opt, batches: list[dict]) -> None:
    """One AdamW step per batch on the loss the Lightning task uses."""
    net.train()
    for b in batches:
        opt.zero_grad(set_to_none=True)
        loss = ccc_loss(net(b["feats"], b["valid"]), b["labels"], b["label_valid"])
        loss.backward()
        opt.step()


def throughput(rounds: int, quick: bool = False) -> tuple[list[str], dict]:
    """Training and evaluation frames/s with 1 and 2 torch threads, and training as % of peak (``quick``:
    one step per round, 8 sequences evaluated: two threads on a busy machine can be 50x slower)."""
    net, opt, batches, normed, cfg = _setup(1 if quick else STEPS)
    normed = normed[:8] if quick else normed
    frames_train = sum(int(b["labels"].shape[0] * b["labels"].shape[1]) for b in batches)
    frames_eval = sum(s.length for s in normed)

    def train(threads: int) -> None:
        with torch_threads(threads):
            _train(net, opt, batches)

    def evaluate(threads: int) -> None:
        with torch_threads(threads):
            for s in normed:
                sliding_predict(net, s.feats, s.valid, cfg.cv.eval_window, cfg.cv.eval_hop)

    cands = {
        "train, 1 thread": (lambda: train(1), frames_train),
        "train, 2 threads": (lambda: train(2), frames_train),
        "evaluate, 1 thread": (lambda: evaluate(1), frames_eval),
        "evaluate, 2 threads": (lambda: evaluate(2), frames_eval),
    }
    res = race(cands, rounds)
    rows = [
        [k, f"{res.median(k):.0f}", f"{res.ratio(k, k.split(',')[0] + ', 1 thread'):.2f}x"] for k in cands
    ]
    n_params = sum(p.numel() for p in net.parameters())
    md = [
        f"Fusion network ({n_params / 1e6:.2f} M parameters, default config), demo features; training = "
        f"{len(batches)} AdamW steps of batch {cfg.train.batch_size} × {cfg.train.window} frames, "
        f"evaluation = `sliding_predict` over {len(normed)} demo sequences; medians of {rounds} interleaved "
        f"rounds ({res.load_range()}):",
        "",
        table(["what", "frames/s", "× 1 thread"], rows),
    ]
    peak_md, peak = percent_of_peak(
        net, batches, res.median("train, 1 thread"), res.median("train, 2 threads")
    )
    return md + ["", *peak_md], {"rates": res.rates, "loads": res.loads, "params": n_params, "peak": peak}


def percent_of_peak(net, batches: list[dict], one: float, two_threads: float) -> tuple[list[str], dict]:
    """Training FLOP/s against the FLOP/s of the network's largest op shape run alone (1 and 2 cores)."""
    flops, calls = census(net, batches[0])
    top, total = calls[0], sum(c["flops"] for c in calls)
    peak = {"1 thread": op_rate(top, 1), "2 threads": op_rate(top, 2)}
    peak["2 processes"] = in_two_processes("op", json.dumps(top))
    two = max(peak["2 threads"], peak["2 processes"])
    procs = in_two_processes("train", "")
    alone = sum(c["flops"] / op_rate(c, 1, 0.05) for c in calls)  # seconds per step, each op at its speed
    step = total / (one * flops)
    widths = {}
    for name, cfg, (b, t) in (
        ("paper widths", load_config(), (2, 300)),
        ("paper", load_config("paper"), (2, 300)),
    ):
        widths[name] = census(
            create_model("fusion", dims=PAPER_DIMS, **dataclasses.asdict(cfg.model)),
            _random_batch(PAPER_DIMS, b, t),
        )[0]
    rows = [
        [what, f"{rate:.0f}", f"{rate * flops / 1e9:.1f}", f"{100 * rate * flops / ref:.0f} %"]
        for what, rate, ref in (
            ("train, 1 thread", one, peak["1 thread"]),
            ("train, 2 threads", two_threads, two),
            ("train, 2 processes × 1 thread (`cv.processes=2`)", procs, two),
        )
    ]
    shape = ", ".join("x".join(map(str, a["T"])) for a in top["args"] if isinstance(a, dict))
    md = [
        f"FLOPs per training frame (forward + backward; matmuls and convolutions, by torch's formulas): "
        f"**{flops / 1e6:.2f} M** (demo widths); {widths['paper widths'] / 1e6:.2f} M with the paper's input "
        f"widths (512/128/128) and {widths['paper'] / 1e6:.2f} M with `--config paper` (128 channels). "
        f"Peak = "
        f"the largest op shape of a step (`{top['op']}` {shape}, {100 * top['flops'] / total:.1f} % of the "
        f"FLOPs) run alone: {peak['1 thread'] / 1e9:.1f} GFLOP/s on 1 core, {peak['2 threads'] / 1e9:.1f} "
        f"with 2 threads, {peak['2 processes'] / 1e9:.1f} in 2 processes (2-core peak = the larger). Each "
        f"matmul and convolution of a step run alone at its own 1-thread speed would take "
        f"{100 * alone / step:.0f} % of the measured 1-thread step ({load_text()}):",
        "",
        table(["training", "frames/s", "GFLOP/s", "% of peak"], rows),
    ]
    data = {"flops_per_frame": flops, "widths": widths, "peak": peak, "two_processes": procs}
    return md, {**data, "ops_alone_share": alone / step}


def _random_batch(dims: dict[str, int], b: int, t: int) -> dict:
    """A random batch of ``b`` windows of ``t`` frames (FLOPs do not depend on the values)."""
    return {
        "feats": {r: torch.randn(b, t, d) for r, d in dims.items()},
        "valid": {r: torch.rand(b, t) > 0.1 for r in dims},
        "labels": torch.rand(b, t, 2),
        "label_valid": torch.ones(b, t, dtype=torch.bool),
    }


def child(mode: str, payload: str) -> float:
    """One side of :func:`in_two_processes`: an op's FLOP/s or training frames/s on one thread."""
    torch.set_num_threads(1)
    if mode == "op":
        return op_rate(json.loads(payload), 1, 1.0, _ready)
    net, opt, batches, _, _ = _setup()
    frames = sum(int(b["labels"].shape[0] * b["labels"].shape[1]) for b in batches)
    _train(net, opt, batches)
    _ready()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        _train(net, opt, batches)
        n += 1
    return frames * n / (time.perf_counter() - t0)


def quoted_demo_time(report: Path = DEMO / "report.md") -> dict | None:
    """The step timings ``vafusion demo`` wrote into its report, if present."""
    if not report.is_file():
        return None
    text = report.read_text()
    part = text.split("## Wall time of this demo", 1)
    if len(part) < 2:
        return None
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\w+) \| ([\d.]+) \|$", part[1], re.M)}


def demo_wall_time(out: Path) -> dict:
    """Run ``vafusion demo --out OUT`` afresh and time it."""
    exe = Path(sys.executable).with_name("vafusion")
    t0 = time.perf_counter()
    subprocess.run(
        [str(exe), "demo", "--out", str(out), "--quiet"],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    steps = quoted_demo_time(out / "report.md") or {}
    return {**steps, "wall": time.perf_counter() - t0}


def run(rounds: int = 3, demo: bool = False, quick: bool = False) -> Section:
    why = demo_ready()
    md: list[str] = []
    data: dict = {}
    if why:
        md.append(f"Throughput skipped: {why}.")
    else:
        md, data = throughput(rounds, quick)
    if demo:
        before = load_text()
        got = demo_wall_time(REPO / "runs" / "bench_demo")
        md += [
            "",
            f"`vafusion demo --out runs/bench_demo`, timed now: **{got['wall']:.0f} s** wall "
            f"(goal ≤ 300 s; {before} at start, {load_text()} at end); steps: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in got.items() if k != "wall"),
        ]
        data["demo"] = got
    else:
        q = quoted_demo_time()
        if q:
            md += [
                "",
                f"`vafusion demo` wall time, quoted from `runs/demo/report.md` (measured by the demo itself, "
                f"not rerun here): **{q.get('total', float('nan')):.0f} s** (goal ≤ 300 s); steps: "
                + ", ".join(f"{k} {v:.0f} s" for k, v in q.items() if k != "total")
                + ". Rerun with `benchmarks/training.py --demo` on a quiet machine.",
            ]
            data["demo_quoted"] = q
    return Section("Training throughput and demo wall time", "\n".join(md), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds instead of 3, one step, 8 sequences evaluated"
    )
    parser.add_argument(
        "--demo", action="store_true", help="also time a fresh `vafusion demo` into runs/bench_demo"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.child[0], args.child[1]))
        return
    print(run(2 if args.quick else 3, args.demo, args.quick).markdown)


if __name__ == "__main__":
    main()
