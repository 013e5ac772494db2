"""Kill -9 at a random moment and rerun: nothing is lost, nothing half-written is left, same result.

``extract`` and ``cv`` run as real processes (``python -m vafusion.cli``) that are sent SIGKILL after a
short random delay, several times, and are then run to the end. Their outputs are compared with an
uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import write_linear_feature_corpus
from vafusion.cli import main
from vafusion.cpu import torch_threads
from vafusion.data.synth import make_corpus
from vafusion.features.store import read_features

pytestmark = pytest.mark.slow  # real processes killed at random moments (about 45 s)

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
CMD = [sys.executable, "-m", "vafusion.cli"]


def _default_sigint() -> None:
    """In the child before it starts: Ctrl-C as in a terminal. A test run started in the background by a
    non-interactive shell (``cmd &``) ignores SIGINT, the children would inherit that, and Python then
    never turns SIGINT into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        CMD + args,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _finish(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(CMD + args, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc``; True if it was still running (so the kill really interrupted it)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    return alive


def _in_process(args: list[str]) -> int:
    """Run the CLI here on one thread, as the subprocesses run (OMP_NUM_THREADS=1): same arithmetic, no
    second interpreter start."""
    with torch_threads(1):
        return main(args)


def _no_partial_files(root: Path) -> None:
    """Every file a killed run left is complete: no temp file is visible under its final name."""
    for p in root.rglob("*.npz"):
        read_features(p)
    for p in root.rglob("*.json"):
        json.loads(p.read_text())
    for p in root.rglob("*.parquet"):
        pd.read_parquet(p)


# ------------------------------------------------------------------------------------------------- extract


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kill_extract")
    make_corpus(root / "data", videos=6, seconds=2, seed=11, progress=False)
    return root


def _files(root: Path) -> int:
    return len(list(root.rglob("*.npz"))) if root.exists() else 0


def test_extract_killed_at_random_moments_resumes_to_identical_files(corpus):
    data = corpus / "data"
    ref, killed = corpus / "ref", corpus / "killed"
    assert _in_process(["extract", "--data", str(data), "--features", str(ref), "--quiet"]) == 0
    rng = random.Random(1234)
    interrupted = 0
    for _ in range(8):
        proc = _start(["extract", "--data", str(data), "--features", str(killed), "--quiet"])
        before = _files(killed)
        while proc.poll() is None and _files(killed) == before:  # let it finish at least one more file ...
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.25))  # ... then kill it at a random moment of the work that follows
        landed = _kill(proc)
        interrupted += landed
        _no_partial_files(killed)
        if not landed:  # it finished first (a fast machine): take some files away so there is work again
            for p in rng.sample(sorted(killed.rglob("*.npz")), k=_files(killed) // 2):
                p.unlink()
        if interrupted == 3:
            break
    assert interrupted == 3  # three kills landed while it was working
    done = _finish(["extract", "--data", str(data), "--features", str(killed), "--quiet"])
    assert done.returncode == 0, done.stderr
    assert not list(killed.rglob(".*.tmp*"))
    ref_files = sorted(p.relative_to(ref) for p in ref.rglob("*.npz"))
    assert ref_files and ref_files == sorted(p.relative_to(killed) for p in killed.rglob("*.npz"))
    for rel in ref_files:
        a, b = read_features(ref / rel), read_features(killed / rel)
        assert np.array_equal(a.features, b.features), rel
        assert np.array_equal(a.valid, b.valid) and np.array_equal(a.times, b.times), rel
        assert a.meta == b.meta, rel
    assert pd.read_parquet(ref / "manifest.parquet").equals(pd.read_parquet(killed / "manifest.parquet"))


# ------------------------------------------------------------------------------------------------------ cv

SETTINGS = [
    "--models",
    "visual",
    "--quiet",
    "--set",
    "train.accelerator=cpu",
    "--set",
    "cv.folds=[0]",
    "--set",
    "model.tcn_channels=8",
    "--set",
    "model.attn_dim=8",
    "--set",
    "model.head_hidden=8",
    "--set",
    "model.dilations=[1,2]",
    "--set",
    "train.window=40",
    "--set",
    "train.hop=10",
    "--set",
    "cv.eval_window=40",
    "--set",
    "cv.eval_hop=20",
    "--set",
    "train.max_epochs=6",
    "--set",
    "train.patience=3",
    "--set",
    "train.plateau_patience=1",
    "--set",
    "train.lr=0.003",
]


def _epochs_logged(work: Path) -> list[int]:
    log = work / "metrics.csv"
    if not log.exists():
        return []
    df = pd.read_csv(log)
    return sorted(set(df["epoch"].dropna().astype(int)))


def _ckpt_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


@pytest.fixture(scope="module")
def cv_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kill_cv")
    write_linear_feature_corpus(root, videos=8, frames=160, noise=1.5)
    return root


def test_cv_killed_mid_training_resumes_to_the_same_metrics(cv_corpus):
    common = ["cv", "--data", str(cv_corpus / "data"), "--features", str(cv_corpus / "feats")]
    ref_run, run = cv_corpus / "ref", cv_corpus / "killed"
    assert _in_process([*common, "--out", str(ref_run), *SETTINGS]) == 0
    ref = json.loads((ref_run / "metrics/visual/fold0.json").read_text())
    assert ref["epochs"] >= 4  # long enough to be killed in the middle

    work = run / "work/visual/fold0"
    rng = random.Random(7)
    resumed_from = []
    for attempt in range(2):
        before = _ckpt_epoch(work / "last.ckpt") if (work / "last.ckpt").exists() else -1
        proc = _start([*common, "--out", str(run), *SETTINGS, *(["--resume"] if attempt else [])])
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # wait for a checkpoint newer than before
            if (work / "last.ckpt").exists() and _ckpt_epoch_safe(work / "last.ckpt") > before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))  # then stop it somewhere in the following epoch
        if attempt == 0:  # Ctrl-C: a one-line note on how to continue, exit code 130
            assert proc.poll() is None, "training finished before it could be interrupted; make it longer"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130 and "Traceback" not in err, err
            assert (
                err.strip()
                .splitlines()[-1]
                .startswith("vafusion: interrupted; rerun the same command with --resume")
            )
        else:  # kill -9: no chance to clean up
            assert _kill(proc), "training finished before it could be killed; make it longer"
        assert not (run / "metrics/visual/fold0.json").exists() and not (run / "results.csv").exists()
        assert not (run / "models/visual/fold0.pt").exists()
        _no_partial_files(run)
        resumed_from.append(_ckpt_epoch(work / "last.ckpt"))
    assert resumed_from[1] > resumed_from[0]  # the second attempt continued, it did not start over

    done = _finish([*common, "--out", str(run), *SETTINGS, "--resume"])
    assert done.returncode == 0, done.stderr
    assert _epochs_logged(work)[0] == resumed_from[-1] + 1  # the last run started after the checkpoint
    got = json.loads((run / "metrics/visual/fold0.json").read_text())
    for key in ("valence", "arousal", "mean", "epochs", "best_val_P", "frames", "job"):
        assert got[key] == ref[key], key  # bit-equal on CPU
    assert got["per_video"] == ref["per_video"]
    assert (run / "results.csv").read_text() == (ref_run / "results.csv").read_text()
    assert not list(run.rglob(".*.tmp*"))


def _ckpt_epoch_safe(path: Path) -> int:
    """Epoch of a checkpoint being written right now, or -1 while it is incomplete."""
    try:
        return _ckpt_epoch(path)
    except Exception:
        return -1


def _workers(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _gone(pids: list[int], timeout: float = 30) -> bool:
    """True once none of ``pids`` runs any more (zombies count as gone)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [
            p
            for p in pids
            if Path(f"/proc/{p}/stat").exists() and ") Z" not in Path(f"/proc/{p}/stat").read_text()
        ]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through /proc")
def test_parallel_cv_interrupted_and_killed_resumes_to_the_same_results(cv_corpus):
    """Two folds on two worker processes: Ctrl-C stops the workers too (one line, exit 130); kill -9 of
    the command takes its workers with it; --resume then ends with the single-process results."""
    common = ["cv", "--data", str(cv_corpus / "data"), "--features", str(cv_corpus / "feats")]
    two_folds = ["--set", "cv.folds=[0,1]"]
    ref_run, run = cv_corpus / "ref2", cv_corpus / "killed2"
    assert (
        _in_process([*common, "--out", str(ref_run), *SETTINGS, *two_folds, "--set", "cv.processes=1"]) == 0
    )
    settings = [*SETTINGS, *two_folds, "--set", "cv.processes=2"]
    for attempt in range(2):
        proc = _start([*common, "--out", str(run), *settings, *(["--resume"] if attempt else [])])
        started, deadline = time.time(), time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # until a worker checkpoints an epoch
            if any(p.stat().st_mtime > started for p in run.glob("work/visual/*/last.ckpt")):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        workers = _workers(proc.pid)
        assert proc.poll() is None and len(workers) == 2, "finished before it could be interrupted"
        if attempt == 0:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130 and "Traceback" not in err, err
            assert err.strip().splitlines()[-1].startswith("vafusion: interrupted; rerun the same command")
        else:
            assert _kill(proc)
        assert _gone(workers), "a worker outlived the cv command"
        _no_partial_files(run)
    done = _finish([*common, "--out", str(run), *settings, "--resume"])
    assert done.returncode == 0, done.stderr
    assert (run / "results.csv").read_bytes() == (ref_run / "results.csv").read_bytes()
    for fold in (0, 1):
        got = json.loads((run / f"metrics/visual/fold{fold}.json").read_text())
        ref = json.loads((ref_run / f"metrics/visual/fold{fold}.json").read_text())
        assert {k: got[k] for k in ("valence", "arousal", "epochs", "best_val_P", "per_video", "job")} == {
            k: ref[k] for k in ("valence", "arousal", "epochs", "best_val_P", "per_video", "job")
        }
    assert not list(run.rglob(".*.tmp*"))
