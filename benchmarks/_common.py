"""Shared by the benchmark scripts: machine description, side-by-side timing, markdown, demo-run access.

Timing rule: the CPU is often shared, so absolute figures drift with other work. Candidates are therefore
timed in interleaved rounds (A, B, C, A, B, C, ...) inside one process; ratios are taken within a round
and the median over rounds is reported, next to the load average seen while measuring.
"""

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vafusion.cpu import cpu_info, torch_threads  # noqa: E402

DEMO = REPO / "runs" / "demo"


@dataclass
class Section:
    """One benchmark's outcome: markdown for RESULTS.md and the raw figures for RESULTS.json."""

    title: str
    markdown: str
    data: dict = field(default_factory=dict)
    seconds: float = 0.0


def load_text() -> str:
    """The 1/5/15-minute load averages, e.g. ``load 1.02/0.87/0.50``."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load n/a"
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f}"


def machine() -> dict:
    """CPU model and detected flags, library versions, threads and load: the header of every result."""
    info = cpu_info()
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        versions["onnxruntime"] = "not installed"
    mem_gib = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            mem_gib = round(int(fh.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": info.model,
        "flags": info.shown_flags(),
        "bf16_native": info.bf16,
        "vnni": info.vnni,
        "torch_capability": info.torch_capability,
        "torch_threads": info.threads,
        "logical_cpus": info.logical_cpus,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "versions": versions,
        "load": load_text(),
    }


def machine_markdown(m: dict) -> str:
    """The machine as a small markdown table."""
    rows = [
        ("CPU", m["cpu"]),
        ("flags detected", " ".join(m["flags"]) or "none"),
        (
            "native bf16 / int8 dot products",
            f"{'yes' if m['bf16_native'] else 'no'} / {'yes' if m['vnni'] else 'no'}",
        ),
        ("torch CPU capability", m["torch_capability"]),
        ("threads", f"{m['torch_threads']} torch threads, {m['logical_cpus']} logical CPUs"),
        ("memory", f"{m['memory_gib']} GiB"),
        ("platform", m["platform"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())),
        ("load average at start (1/5/15 min)", m["load"]),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


@dataclass
class Race:
    """Rates of several candidates timed in interleaved rounds; ``rates[name][r]`` is round ``r``."""

    rates: dict[str, list[float]]
    loads: list[str]

    def median(self, name: str) -> float:
        return float(np.median(self.rates[name]))

    def best(self, name: str) -> float:
        return float(np.max(self.rates[name]))

    def ratio(self, name: str, base: str) -> float:
        """Median over rounds of the within-round ratio ``name / base``."""
        return float(np.median(np.asarray(self.rates[name]) / np.asarray(self.rates[base])))

    def load_range(self) -> str:
        ones = [float(x.split()[1].split("/")[0]) for x in self.loads if x != "load n/a"]
        return f"load {min(ones):.2f}-{max(ones):.2f}" if ones else "load n/a"


def race(candidates: dict[str, tuple[Callable[[], object], float]], rounds: int, warmup: bool = True) -> Race:
    """Time ``{name: (fn, work)}`` in ``rounds`` interleaved rounds; rate = work / seconds of one call."""
    if warmup:
        for fn, _ in candidates.values():
            fn()
    rates: dict[str, list[float]] = {k: [] for k in candidates}
    loads = []
    for _ in range(rounds):
        for name, (fn, work) in candidates.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(work / (time.perf_counter() - t0))
        loads.append(load_text())
    return Race(rates, loads)


def repeated(
    fn: Callable[[], object], work: float, seconds: float = 0.05
) -> tuple[Callable[[], None], float]:
    """``fn`` called as often as fills about ``seconds``, with the work scaled to match: a steady rate for
    ops of a few milliseconds. Timed once, right after other work, a bare AMX convolution runs ~30 % under
    its steady rate (caches and the AMX unit cold), which would understate a peak."""
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(1, round(seconds / max(time.perf_counter() - t0, 1e-6)))

    def run() -> None:
        for _ in range(reps):
            fn()

    return run, work * reps


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def demo_ready(run: Path = DEMO) -> str | None:
    """``None`` when the demo run (data, features, models) exists, else what to do."""
    need = [run / "data", run / "features", run / "models", run / "folds.csv", run / "streams.json"]
    missing = [str(p.relative_to(REPO)) for p in need if not p.exists()]
    if missing:
        return f"needs the demo run ({', '.join(missing)} missing): run `make demo` first"
    return None


def demo_streams(run: Path = DEMO) -> dict[str, str]:
    return json.loads((run / "streams.json").read_text())["streams"]


def timed(fn: Callable[[], Section]) -> Section:
    """Run one benchmark and record its wall time."""
    t0 = time.perf_counter()
    sec = fn()
    sec.seconds = time.perf_counter() - t0
    return sec


class DemoEval:
    """Score the demo's trained fold models on their held-out folds, with the features changed at will.

    ``score(model, transform)`` loads ``RUN/models/<model>/fold<k>.pt`` for every fold, applies
    ``transform(sequence) -> sequence`` to the raw (unnormalised) held-out sequences and returns the CCC
    over all valid frames of each fold (``vafusion.train.cv.evaluate``, the report's metric), averaged.
    """

    def __init__(self, run: Path = DEMO) -> None:
        import pandas as pd
        from omegaconf import OmegaConf

        from vafusion.config import CVConfig
        from vafusion.data.affwild2 import scan
        from vafusion.data.sequence import load_sequence

        self.run = run
        cv = OmegaConf.load(run / "config.yaml").get("cv", {})  # the run's own settings, read without schema
        self.window = int(cv.get("eval_window", CVConfig.eval_window))
        self.hop = int(cv.get("eval_hop", CVConfig.eval_hop))
        self.folds = pd.read_csv(run / "folds.csv")
        self.streams = demo_streams(run)
        corpus = scan(run / "data").by_name()
        self.seqs = {
            n: load_sequence(corpus[n], run / "features", self.streams, list(self.streams))
            for n in self.folds["name"]
        }
        self.fold_ids = sorted(int(f) for f in self.folds["fold"].unique())
        self._models: dict[tuple[str, int], tuple] = {}

    def model(self, name: str, fold: int) -> tuple:
        from vafusion.weights import load_checkpoint

        key = (name, fold)
        if key not in self._models:
            ckpt = load_checkpoint(self.run / "models" / name / f"fold{fold}.pt")
            self._models[key] = (ckpt.net, ckpt.normaliser, list(ckpt.streams))
        return self._models[key]

    def score(self, name: str, transform: Callable | None = None) -> dict:
        """Mean over folds of CCC valence, arousal and P, plus the per-fold P."""
        from vafusion.train.cv import evaluate

        per_fold = []
        for fold in self.fold_ids:
            net, norm, roles = self.model(name, fold)
            names = self.folds.loc[self.folds["fold"] == fold, "name"].tolist()
            seqs = [transform(self.seqs[n]) if transform else self.seqs[n] for n in names]
            seqs = [s.subset(roles) for s in seqs]
            with torch.inference_mode(), torch_threads(1):
                result, _ = evaluate(net, norm, seqs, self.window, self.hop)
            per_fold.append(result)
        return {
            "valence": float(np.mean([r["valence"] for r in per_fold])),
            "arousal": float(np.mean([r["arousal"] for r in per_fold])),
            "P": float(np.mean([r["mean"] for r in per_fold])),
            "P_per_fold": [round(float(r["mean"]), 4) for r in per_fold],
        }


def add_study_arguments(ap, out: str, features_help: str, variants: Iterable[str]) -> None:
    """The options every CV study script shares (dataset, feature store, output, variants, seeds, threads)."""
    ap.add_argument(
        "--data", type=Path, default=Path("runs/demo/data"), help="dataset (default runs/demo/data)"
    )
    ap.add_argument("--features", type=Path, default=Path("runs/demo/features"), help=features_help)
    ap.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")
    ap.add_argument("--variants", default=",".join(variants), help=f"comma list of {', '.join(variants)}")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed to every `vafusion cv` run (the same for all variants)",
    )
    ap.add_argument(
        "--seeds", default="0", help="comma list of cv.seed values; the first fixes the folds (default 0)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a few shared cores more threads oversubscribe them)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars")


def cv_over_seeds(
    data: Path,
    features: Path,
    base: Path,
    models: str,
    seeds: list[int],
    settings: list[str],
    quiet: bool,
    commands: list[str],
) -> Iterator[tuple[int, Path]]:
    """Run ``vafusion cv`` once per seed (the first seed's folds reused by the others) and yield each run.

    ``settings`` are ``KEY=VALUE`` config overrides; every command line is appended to ``commands``.
    """
    from vafusion.cli import main as vafusion

    for k, seed in enumerate(seeds):
        run = base if k == 0 else base.with_name(f"{base.name}_seed{seed}")
        cmd = [
            "cv",
            "--data",
            str(data),
            "--features",
            str(features),
            "--out",
            str(run),
            "--models",
            models,
            "--set",
            f"cv.seed={seed}",
        ]
        if k > 0:  # same folds as the first seed: only the training seeds (and inner split) change
            cmd += ["--folds", str(base / "folds.csv")]
        for setting in settings:
            cmd += ["--set", setting]
        commands.append("vafusion " + " ".join(cmd))
        if vafusion(cmd + (["--quiet"] if quiet else [])) != 0:
            raise SystemExit(f"vafusion {' '.join(cmd)} failed")
        yield seed, run
