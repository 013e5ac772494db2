"""Fusion-model training and evaluation throughput (frames/s), and the ``vafusion demo`` wall time.

    .venv/bin/python benchmarks/training.py          # throughput; demo time quoted from runs/demo/report.md
    .venv/bin/python benchmarks/training.py --demo      # also time a fresh `vafusion demo` (about 3 min idle)

Training: the default fusion network (``create_model("fusion")`` with the default ``Config``'s ``model``
settings) on the demo's normalised sequences in 300-frame windows, batch 8, one AdamW step per batch of
``1 - CCC``, the loss the Lightning task uses; 1 and 2 torch threads side by side. Evaluation:
``sliding_predict`` over the same sequences. The demo's wall time is measured by ``vafusion demo`` itself
and written to its report.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import DEMO, REPO, DemoEval, Section, demo_ready, load_text, race, table

from vafusion.config import load_config
from vafusion.cpu import torch_threads
from vafusion.data.sequence import WindowDataset
from vafusion.metrics import ccc_loss
from vafusion.models.normaliser import Normaliser
from vafusion.models.registry import create_model
from vafusion.models.windows import sliding_predict

STEPS = 2


def _setup():
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
    for k in range(STEPS):
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


def throughput(rounds: int) -> tuple[list[str], dict]:
    """Training and evaluation frames/s with 1 and 2 torch threads."""
    net, opt, batches, normed, cfg = _setup()
    frames_train = sum(int(b["labels"].shape[0] * b["labels"].shape[1]) for b in batches)
    frames_eval = sum(s.length for s in normed)

    def train(threads: int) -> None:
        with torch_threads(threads):
            net.train()
            for b in batches:
                opt.zero_grad(set_to_none=True)
                loss = ccc_loss(net(b["feats"], b["valid"]), b["labels"], b["label_valid"])
                loss.backward()
                opt.step()

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
        f"{STEPS} AdamW steps of batch {cfg.train.batch_size} × {cfg.train.window} frames, evaluation = "
        f"`sliding_predict` over all {len(normed)} demo sequences; medians of {rounds} interleaved rounds "
        f"({res.load_range()}):",
        "",
        table(["what", "frames/s", "× 1 thread"], rows),
    ]
    return md, {"rates": res.rates, "loads": res.loads, "params": n_params}


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


def run(rounds: int = 3, demo: bool = False) -> Section:
    why = demo_ready()
    md: list[str] = []
    data: dict = {}
    if why:
        md.append(f"Throughput skipped: {why}.")
    else:
        md, data = throughput(rounds)
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
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 3")
    parser.add_argument(
        "--demo", action="store_true", help="also time a fresh `vafusion demo` into runs/bench_demo"
    )
    args = parser.parse_args()
    print(run(2 if args.quick else 3, args.demo).markdown)


if __name__ == "__main__":
    main()
