"""`vafusion cv` on two CPU processes (Lightning DDP over gloo) against one process.

The corpus is annotations plus feature files written here (no video decoding), so the test spends its
time on what it checks: the fold loop under DDP, the all-reduced validation CCC and the final metrics.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import write_linear_feature_corpus
from vafusion.cli import main
from vafusion.cpu import torch_threads
from vafusion.data.affwild2 import scan
from vafusion.data.sequence import WindowDataset, load_sequence
from vafusion.metrics import CCC
from vafusion.train.cv import inner_split
from vafusion.train.fit import _collate
from vafusion.weights import load_checkpoint

pytestmark = pytest.mark.slow  # two training processes (about 15 s)

MODEL = "visual"
# One process with batch 4 against two with batch 2 each: the same global batch and steps per epoch.
SETTINGS = [
    "--models",
    MODEL,
    "--quiet",
    "--set",
    "train.accelerator=cpu",
    "--set",
    "cv.folds=[0]",
    "--set",
    "model.tcn_channels=8",
    "--set",
    "model.head_hidden=16",
    "--set",
    "model.dilations=[1,2]",
    "--set",
    "train.window=50",
    "--set",
    "train.hop=25",
    "--set",
    "cv.eval_window=50",
    "--set",
    "cv.eval_hop=25",
    "--set",
    "train.lr=0.01",
    "--set",
    "train.max_epochs=6",
    "--set",
    "train.patience=6",
    "--set",
    "train.frame_dropout=0",
]
RUNNER = "import sys\nfrom vafusion.cli import main\nsys.exit(main())\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    write_linear_feature_corpus(root, videos=10, frames=150, invalid_rows=5)
    common = ["cv", "--data", str(root / "data"), "--features", str(root / "feats")]
    with torch_threads(1):  # as each DDP process below; tiny convolutions only lose from more threads
        assert (
            main(
                [
                    *common,
                    "--out",
                    str(root / "one"),
                    "--devices",
                    "1",
                    *SETTINGS,
                    "--set",
                    "train.batch_size=4",
                ]
            )
            == 0
        )
    script = root / "run_vafusion.py"
    script.write_text(RUNNER)
    # a clean launch: no rank or cluster variables inherited from whatever runs the tests
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLURM_")
        and k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            *common,
            "--out",
            str(root / "two"),
            "--devices",
            "2",
            "--strategy",
            "ddp",
            *SETTINGS,
            "--set",
            "train.batch_size=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    return {"root": root, "proc": proc}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics" / MODEL / "fold0.json").read_text())


def _val_ccc(root: Path, run: Path, world: int, rank: int | None = None) -> float:
    """Mean CCC of the saved model on the inner validation windows, as ``world`` DistributedSampler ranks
    see them: Lightning's sampler pads the list by repeating its first windows up to a multiple of
    ``world`` and gives rank r every world-th window from r; the metric sums over every rank's windows
    (all-reduce), or over ``rank``'s alone when given."""
    ckpt = load_checkpoint(run / "models" / MODEL / "fold0.pt")
    net, norm, streams, payload = ckpt.net, ckpt.normaliser, ckpt.streams, {"config": ckpt.config}
    by_name = scan(root / "data").by_name()
    folds = pd.read_csv(run / "folds.csv")
    seqs = [
        load_sequence(by_name[n], root / "feats", streams, [MODEL])
        for n in folds.loc[folds["fold"] != 0, "name"]
    ]
    _, val = inner_split(
        seqs, payload["config"]["train"]["inner_val_fraction"], payload["config"]["cv"]["seed"] + 0
    )
    window = payload["config"]["train"]["window"]
    ds = WindowDataset([s.normalised(norm) for s in val], window, window)
    total = math.ceil(len(ds) / world) * world
    order = list(range(len(ds))) + list(range(total - len(ds)))
    if rank is not None:
        order = order[rank::world]
        total = len(order)
    metric = CCC(num_outputs=2)
    with torch.no_grad():
        for k in range(0, total, 4):
            batch = _collate([ds[i] for i in order[k : k + 4]])
            metric.update(net(batch["feats"], batch["valid"]), batch["labels"], batch["label_valid"])
    return float(metric.compute().mean())


def test_two_processes_run_the_fold_loop_and_print_once(runs: dict) -> None:
    proc = runs["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report:") == 1  # only rank 0 prints; rank 1 ran the same loop silently
    two = runs["root"] / "two"
    for rel in (
        "results.csv",
        "report.md",
        "folds.csv",
        f"models/{MODEL}/fold0.pt",
        f"predictions/{MODEL}/fold0.parquet",
        f"work/{MODEL}/fold0/best.ckpt",
    ):
        assert (two / rel).is_file(), rel
    assert not list(two.rglob(".*.tmp*"))  # no temp file left by the two writers


def test_validation_ccc_is_reduced_over_both_processes(runs: dict) -> None:
    """The early-stopping score logged under DDP is the CCC over all windows of both ranks: it equals a
    one-process recomputation over the padded window list to float precision (1e-8 measured), while either
    rank's half alone gives a different value."""
    assert runs["proc"].returncode == 0, runs["proc"].stderr[-3000:]
    root = runs["root"]
    one, two = _metrics(root / "one"), _metrics(root / "two")
    assert one["best_val_P"] == pytest.approx(_val_ccc(root, root / "one", 1), abs=1e-6)
    assert two["best_val_P"] == pytest.approx(_val_ccc(root, root / "two", 2), abs=1e-6)
    for rank in (0, 1):  # either rank's windows alone score measurably differently (~5e-4 here)
        assert abs(two["best_val_P"] - _val_ccc(root, root / "two", 2, rank=rank)) > 1e-4


def test_two_processes_match_one_within_tolerance(runs: dict) -> None:
    """Same data, seed and global batch; the runs still differ in batch order (DistributedSampler vs a
    seeded RandomSampler) and in the loss (mean of two per-rank CCCs vs one CCC over the batch), so the
    trajectories differ slightly. Both must learn the linear signal and end close together."""
    assert runs["proc"].returncode == 0, runs["proc"].stderr[-3000:]
    one, two = _metrics(runs["root"] / "one"), _metrics(runs["root"] / "two")
    assert one["epochs"] == two["epochs"]
    assert min(one["mean"], two["mean"]) > 0.5
    for key in ("valence", "arousal", "mean"):
        assert abs(one[key] - two[key]) < 0.1, (key, one[key], two[key])


def test_spawning_strategies_are_refused_in_one_line(runs: dict, capsys) -> None:
    root = runs["root"]
    assert (
        main(
            [
                "cv",
                "--data",
                str(root / "data"),
                "--features",
                str(root / "feats"),
                "--out",
                str(root / "spawn"),
                "--devices",
                "2",
                "--strategy",
                "ddp_spawn",
                *SETTINGS,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ddp_spawn" in err[0] and "--strategy ddp" in err[0]
