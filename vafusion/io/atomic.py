"""Atomic file writes: a failure or a kill leaves either the old file or none, never half a file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vafusion.errors import OutputError

WRITING = threading.RLock()
"""Held for the whole of every atomic write. Code that ends the process abruptly (``os._exit``) takes it
first, so the process never dies between creating a temp file and renaming or removing it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (the nearest existing ancestor's)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _output_error(exc: OSError, path: Path, fix: str) -> OutputError | None:
    """The one-line error for an ``OSError`` that says the destination itself cannot take writes."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            None,
            f"no space left on {mount_point(path)} writing {path}",
            "free some space or write elsewhere; the files finished before are kept",
        )
    if exc.errno == errno.EROFS:
        return OutputError(path, f"read-only file system ({mount_point(path)})", fix)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OutputError(path, "permission denied", fix)
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A full disk, a read-only file system or a missing permission becomes one :class:`OutputError` (the
    temporary file is removed, and an earlier ``path`` is left as it was).
    """
    with WRITING, _atomic_path(Path(path)) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(
            tmp_path, 0o666 & ~_umask()
        )  # mkstemp makes 0600; a shared store needs the usual permissions
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        error = _output_error(exc, path, "write somewhere you can write to")
        if error is None:
            raise
        raise error from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


MADE: list[Path] = []
"""Folders :func:`prepare_dir` created in this process, outermost first (see :func:`remove_made_if_empty`)."""


def remove_made_if_empty() -> None:
    """Remove the folders :func:`prepare_dir` created that are still empty, innermost first: a command
    that fails before it writes anything leaves no empty output folder behind. Forgets them either way."""
    for folder in reversed(MADE):
        with contextlib.suppress(OSError):  # not empty (or already gone): kept
            folder.rmdir()
    MADE.clear()


def prepare_dir(path: str | Path, flag: str) -> Path:
    """Create output folder ``path`` and prove that it takes files, before any work is done.

    ``flag`` names the option the user gave it with, for the error message.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(
            path, "exists and is not a folder", f"pass a folder to {flag} (or remove that file)"
        )
    new = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
        MADE.extend(new)
        fd, probe = tempfile.mkstemp(prefix=".vafusion-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        error = _output_error(exc, path, f"pass a folder you can write to as {flag}")
        raise (
            error
            or OutputError(path, f"cannot write here ({exc.strerror})", f"pass another folder to {flag}")
        ) from None
    return path


def prepare_file(path: str | Path, flag: str) -> Path:
    """Check that output file ``path`` can be written (its folder made and writable; not a folder itself)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a folder", f"pass a file name to {flag}, e.g. {path / 'submission.txt'}")
    prepare_dir(path.parent if str(path.parent) else Path("."), flag)
    return path


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Save arrays to an uncompressed ``.npz`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def clean_stale_temps(folder: str | Path) -> int:
    """Remove temp files a killed process left in ``folder`` (recursively); return how many."""
    n = 0
    for p in Path(folder).rglob(".*.tmp*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n
