"""Cross-validation jobs on several processes, with the results of one.

``vafusion cv`` trains (model, fold) pairs that do not depend on each other, except that the fusion model
of a fold starts from that fold's single-stream models. :func:`run_parallel` hands each pair to one of
``cv.processes`` worker processes as soon as the pairs it depends on are finished, in the order a single
process would run them. Every worker trains with the code and the torch thread count
(``train.threads``) of the single-process path, so each pair does the same arithmetic and ``results.csv``
is byte-identical whatever the number of processes or the machine's load.

Workers are fresh interpreters (``python -c``, not ``multiprocessing``, so a caller's unguarded script is
not run again): nothing of the parent's torch or OpenMP state is inherited. A worker's
:class:`~vafusion.errors.VafusionError` is raised again in the parent with the same one-line message, a
worker that dies stops the run with a one-line error, Ctrl-C stops every worker where it is (``--resume``
continues from their last checkpoints), and a worker whose parent is killed exits at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

import torch

from vafusion.config import Config
from vafusion.errors import VafusionError
from vafusion.io import atomic

Job = tuple[str, int]
"""A (model, fold) pair."""


class Runner(Protocol):
    """What a worker runs: a picklable object whose ``run_one`` trains and scores one pair."""

    def run_one(self, model: str, fold: int, report: bool) -> dict: ...


def single_device(cfg: Config) -> bool:
    """True when ``train`` runs each fit on one device in one process (no DDP, one node)."""
    t = cfg.train
    return str(t.devices) in ("1", "auto") and t.num_nodes == 1 and "ddp" not in str(t.strategy)


def process_count(cfg: Config, jobs: int) -> int:
    """How many processes train the ``jobs`` pairs still to do: ``cv.processes``, or with 0 one per CPU
    core this process may use divided by ``train.threads``; 1 on a GPU (by default) and under DDP."""
    wanted = cfg.cv.processes
    if not single_device(cfg):
        if wanted > 1:
            raise VafusionError(
                None,
                f"cv.processes={wanted} cannot be combined with train.devices/num_nodes > 1 or DDP",
                "use --set cv.processes=1 with several devices (each DDP process runs the fold loop)",
            )
        return 1
    if wanted == 0:
        gpu = cfg.train.accelerator in ("gpu", "cuda") or (
            cfg.train.accelerator == "auto" and torch.cuda.is_available()
        )
        threads = cfg.train.threads or torch.get_num_threads()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        wanted = 1 if gpu else max(1, cores // threads)
    return max(1, min(wanted, jobs))


def serve(conn_fd: int, lifeline_fd: int) -> None:
    """Worker process: train each job received on ``conn_fd``, send back its result or its error, stop on
    ``None``; exit at once when the parent's end of ``lifeline_fd`` closes (the parent died)."""
    threading.Thread(target=_exit_on_eof, args=(lifeline_fd,), daemon=True).start()
    conn = Connection(conn_fd)
    try:
        sys.path.extend(p for p in conn.recv() if p not in sys.path)  # where the parent finds its modules
        runner = conn.recv()
        while (job := conn.recv()) is not None:
            try:
                conn.send(("done", job, runner.run_one(job[0], job[1], report=True)))
            except VafusionError as exc:
                conn.send(("error", job, portable(exc)))
            except Exception:
                conn.send(("crash", job, traceback.format_exc()))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return


def _exit_on_eof(fd: int) -> None:
    """Block until ``fd`` reaches end of file (its writer, the parent, is gone), then end this process."""
    while os.read(fd, 1):
        pass
    with atomic.WRITING:  # a write under way finishes (and renames its temp file) first
        os._exit(1)


def portable(exc: VafusionError) -> tuple[type, Any, str, str]:
    """``exc`` as plain values that pickle whatever its class's constructor takes (see :func:`rebuilt`)."""
    return type(exc), exc.path, exc.problem, exc.fix


def rebuilt(kind: type, path: Any, problem: str, fix: str) -> VafusionError:
    """The error :func:`portable` took apart: the same class with the same message."""
    exc = kind.__new__(kind)
    exc.path, exc.problem, exc.fix = path, problem, fix
    Exception.__init__(exc, exc.one_line())
    return exc


class _Worker:
    """One worker process (a fresh interpreter in its own process group, so a Ctrl-C reaches only the
    parent, which interrupts the workers itself) and the parent's ends of its pipes."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        life_r, self.lifeline = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])
        path = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(life_r)],
            pass_fds=(theirs.fileno(), life_r),
            env=env,
            process_group=0,
        )
        theirs.close()
        os.close(life_r)
        self.conn = Connection(ours.detach())
        self.job: Job | None = None

    def hand(self, runner: Runner) -> None:
        """Give the worker the parent's module path and the runner (after every worker has started, so
        that they import torch at the same time)."""
        self.conn.send(list(sys.path))
        self.conn.send(runner)

    def died(self) -> VafusionError:
        """The error that says this worker ended while training its job."""
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
        model, fold = self.job or ("?", "?")
        return VafusionError(
            None,
            f"the process training {model} fold {fold} {how}",
            "rerun with --resume to continue (finished folds are kept); --set cv.processes=1 trains in "
            "one process",
        )

    def close(self, interrupt: bool) -> None:
        """Stop the worker: ask an idle one to exit, interrupt a busy one (``interrupt``) as Ctrl-C would."""
        if self.proc.poll() is None:
            try:
                if interrupt and self.job is not None:
                    self.proc.send_signal(signal.SIGINT)
                else:
                    self.conn.send(None)
            except OSError:
                pass

    def reap(self) -> None:
        """Wait for the worker to end (kill it after 30 s) and close its pipes."""
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()
        os.close(self.lifeline)


_BOOT = "import sys\nfrom vafusion.train.parallel import serve\nserve(int(sys.argv[1]), int(sys.argv[2]))\n"


def _stop(workers: list[_Worker], abort: bool) -> None:
    """End every worker: idle ones exit, busy ones are interrupted on ``abort``."""
    for w in workers:
        w.close(interrupt=abort)
    for w in workers:
        w.reap()


def _next_job(pending: list[Job], needs: dict[Job, set[Job]], done: set[Job]) -> Job | None:
    """The first pending job whose prerequisites are all done."""
    return next((j for j in pending if needs.get(j, set()) <= done), None)


def _receive(w: _Worker, results: dict[Job, dict]) -> Job:
    """Take the finished job's result from worker ``w``; raise its error if it failed."""
    try:
        kind, job, payload = w.conn.recv()
    except (EOFError, OSError):
        raise w.died() from None
    w.job = None
    if kind == "error":
        raise rebuilt(*payload)
    if kind == "crash":
        raise RuntimeError(f"training {job[0]} fold {job[1]} failed in a worker process:\n{payload}")
    results[job] = payload
    return job


def run_parallel(
    runner: Runner,
    jobs: list[Job],
    needs: dict[Job, set[Job]],
    processes: int,
    on_done: Callable[[Job, list[Job]], None],
) -> dict[Job, dict]:
    """Run ``jobs`` (in this order of preference) on ``processes`` workers, each job only after the jobs
    in ``needs[job]``; ``on_done(job, running)`` after each. Returns every job's result."""
    pending, results, done = list(jobs), {}, set()
    workers: list[_Worker] = []
    try:
        workers += [_Worker() for _ in range(processes)]
        for w in workers:
            w.hand(runner)
        while pending or any(w.job for w in workers):
            for w in workers:
                job = _next_job(pending, needs, done) if w.job is None else None
                if job is not None:
                    pending.remove(job)
                    w.job = job
                    w.conn.send(job)
            busy = [w for w in workers if w.job is not None]
            if not busy:
                raise RuntimeError(f"cv jobs {pending} wait for jobs that are not scheduled")
            ready = wait([w.conn for w in busy], timeout=5)
            for w in busy:
                if w.conn in ready:
                    finished = _receive(w, results)
                    done.add(finished)
                    on_done(finished, [w.job for w in workers if w.job is not None])
                elif w.proc.poll() is not None:
                    raise w.died()
    except BaseException:
        _stop(workers, abort=True)
        raise
    _stop(workers, abort=False)
    return results
