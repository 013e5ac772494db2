"""`vafusion cv` on several processes gives the single-process results byte for byte; a worker's error
surfaces as the same one-line error, and a worker that dies stops the run instead of hanging it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import fast_cv, write_linear_feature_corpus
from vafusion.cli import main
from vafusion.config import load_config
from vafusion.errors import AnnotationError, VafusionError
from vafusion.train.parallel import portable, process_count, rebuilt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the fusion model of each fold starts from that fold's three branches: the scheduler must wait for them
SETTINGS = fast_cv(2, "model.dilations=[1,2]", "fusion_stage.max_epochs=2", "cv.folds=[0,1]")


def _cv(root: Path, out: Path, processes: int, *extra: str) -> int:
    args = ["cv", "--data", str(root / "data"), "--features", str(root / "feats"), "--out", str(out)]
    return main([*args, "--quiet", *SETTINGS, "--set", f"cv.processes={processes}", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same cv (4 models x 2 folds) in one process (``one``) and in two (``two``)."""
    root = tmp_path_factory.mktemp("parallel")
    write_linear_feature_corpus(root, videos=8, frames=120, seed=4, noise=1.5)
    assert _cv(root, root / "one", 1) == 0
    assert _cv(root, root / "two", 2) == 0
    return root


def test_two_processes_give_the_same_bytes_as_one(runs: Path) -> None:
    one, two = runs / "one", runs / "two"
    assert (one / "results.csv").read_bytes() == (two / "results.csv").read_bytes()
    assert len(pd.read_csv(one / "results.csv")) == 4 * 3  # 4 models x (2 folds + mean)
    for model in ("fusion", "visual", "vggish", "logmel"):
        for fold in (0, 1):
            rel = f"predictions/{model}/fold{fold}.parquet"
            assert pd.read_parquet(one / rel).equals(pd.read_parquet(two / rel)), rel
            sa = torch.load(one / f"models/{model}/fold{fold}.pt", weights_only=True)["state_dict"]
            sb = torch.load(two / f"models/{model}/fold{fold}.pt", weights_only=True)["state_dict"]
            assert all(torch.equal(sa[k], sb[k]) for k in sa), (model, fold)
    assert not list(two.rglob(".*.tmp*"))


def test_a_rerun_with_other_processes_reuses_every_result(runs: Path) -> None:
    run = runs / "rerun"
    shutil.copytree(runs / "two", run)
    stamp = {p: p.stat().st_mtime_ns for p in run.glob("models/*/*.pt")}
    assert _cv(runs, run, 1) == 0
    assert {p: p.stat().st_mtime_ns for p in run.glob("models/*/*.pt")} == stamp
    assert (run / "results.csv").read_bytes() == (runs / "one" / "results.csv").read_bytes()


def test_a_worker_error_is_the_same_one_line_error(runs: Path, capsys) -> None:
    """A damaged branch checkpoint stops the fusion model that starts from it: in a worker process the
    user sees the line a single process prints."""
    lines = {}
    for processes in (1, 2):
        run = runs / f"broken{processes}"
        shutil.copytree(runs / "one", run)
        for fold in (0, 1):
            (run / f"metrics/fusion/fold{fold}.json").unlink()
        (run / "models/visual/fold0.pt").write_bytes(b"not a checkpoint")
        capsys.readouterr()
        assert _cv(runs, run, processes) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vafusion: error: ") and "fold0.pt" in err[0], err
        lines[processes] = err[0].replace(str(run), "RUN")
    assert lines[1] == lines[2]


def test_errors_cross_the_process_boundary_unchanged() -> None:
    exc = AnnotationError(Path("a/b.txt"), "line 3 has 3 columns", "fix that line")
    back = rebuilt(*portable(exc))
    assert type(back) is AnnotationError and back.one_line() == exc.one_line() and str(back) == str(exc)


def test_process_count_follows_the_cores_jobs_and_devices() -> None:
    cores = len(os.sched_getaffinity(0))
    assert process_count(load_config(None, []), 100) == cores
    assert process_count(load_config(None, ["cv.processes=4"]), 3) == 3
    assert process_count(load_config(None, ["cv.processes=1"]), 10) == 1
    assert process_count(load_config(None, ["train.threads=2"]), 100) == max(1, cores // 2)
    ddp = ["train.devices=2", "train.strategy=ddp"]
    assert process_count(load_config(None, ddp), 10) == 1  # every DDP process runs the fold loop itself
    with pytest.raises(VafusionError, match="cv.processes=2 cannot be combined"):
        process_count(load_config(None, [*ddp, "cv.processes=2"]), 10)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


@pytest.mark.slow  # a real cv process and its workers (about 15 s)
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through /proc")
def test_a_worker_that_dies_stops_the_run_with_one_line(runs: Path) -> None:
    """SIGKILL one worker mid-training: the command ends at once with one line, and no worker is left."""
    args = [
        "cv",
        "--data",
        str(runs / "data"),
        "--features",
        str(runs / "feats"),
        "--out",
        str(runs / "kill"),
    ]
    longer = [
        *SETTINGS,
        "--set",
        "train.max_epochs=400",
        "--set",
        "train.patience=400",
        "--set",
        "cv.processes=2",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vafusion.cli", *args, "--quiet", *longer],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list((runs / "kill").glob("work/*/fold*/last.ckpt")):
            time.sleep(0.1)  # both workers are training once a first epoch is checkpointed
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "was killed by signal 9" in lines[0] and "--resume" in lines[0], err
    assert not any(_alive(w) for w in workers)


ORPHAN = """
import os, sys, threading, time
from pathlib import Path
from vafusion.io.atomic import atomic_path
from vafusion.train.parallel import _exit_on_eof

read, write = os.pipe()
threading.Thread(target=_exit_on_eof, args=(read,), daemon=True).start()
with atomic_path(Path(sys.argv[1])) as tmp:
    os.close(write)  # the parent dies in the middle of a write
    time.sleep(0.5)
    tmp.write_text("complete")
time.sleep(5)
sys.exit(0)
"""


def test_an_orphaned_worker_finishes_its_write_before_it_exits(tmp_path: Path) -> None:
    """A worker whose parent was killed exits at once, but never between a temp file and its rename:
    the file being written is complete and no temp file is left."""
    target = tmp_path / "fold0.pt"
    root = Path(__file__).resolve().parents[2]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", ORPHAN, str(target)], cwd=root, timeout=60)
    assert proc.returncode == 1 and time.time() - t0 < 5  # the watcher ended it, not the script
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["fold0.pt"]
