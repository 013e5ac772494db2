"""Choosing the face path by measurement that noise cannot flip, and remembering the choice per machine.

* :func:`race` times every candidate in interleaved rounds (A, B, C, A, B, C, ...), so load from other
  work hits them alike, after one warm-up call each;
* :func:`decide` keeps a stable default (torch in the best float precision) unless a challenger wins the
  median of the within-round ratios by ``MARGIN`` (5 %) and is faster in all rounds but one; int8 only
  where it is ``INT8_GAIN`` (1.3x) the chosen float path in the same sense, so a path that is merely as
  fast never changes the numbers;
* :class:`ChoiceCache` keeps the outcome in ``<cache_dir>/face_paths.json`` under a key of the CPU model
  and kind, library versions, threads, precision and backend settings and the network (architecture and
  weights hash), written atomically; an unreadable or corrupt file is ignored and rewritten.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vafusion.cpu import cache_dir
from vafusion.errors import OutputError
from vafusion.io.atomic import atomic_path

MARGIN = 1.05
INT8_GAIN = 1.3
ROUNDS = 5
CACHE_FILE = "face_paths.json"
CACHE_VERSION = 2


def race(
    candidates: dict[str, Callable[[], object]],
    work: int,
    rounds: int = ROUNDS,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """``{name: [faces/s in round 1, 2, ...]}``: each ``candidates[name]()`` encodes ``work`` faces."""
    for fn in candidates.values():
        fn()
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = timer()
            fn()
            rates[name].append(work / max(timer() - t0, 1e-9))
    return rates


def ratio(rates: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``rates[name] / rates[base]`` within each round."""
    return float(np.median(np.asarray(rates[name]) / np.asarray(rates[base])))


def beats(rates: dict[str, list[float]], name: str, base: str, factor: float) -> bool:
    """Whether ``name`` is ``factor`` x ``base`` in the median round and faster in all rounds but one."""
    within = np.sort(np.asarray(rates[name]) / np.asarray(rates[base]))
    return bool(np.median(within) > factor and within[min(1, len(within) - 1)] > 1.0)


def decide(
    rates: dict[str, list[float]], default: str, int8: str | None = None, margin: float = MARGIN
) -> tuple[str, str]:
    """The winner among the raced ``rates`` and why.

    Float candidates: ``default`` unless another beats it by more than ``margin`` (:func:`beats`), then the
    fastest such. ``int8``: taken only where it beats the chosen float path by ``INT8_GAIN``.
    """
    best, best_ratio = default, 1.0
    for name in rates:
        if name in (default, int8):
            continue
        r = ratio(rates, name, default)
        if beats(rates, name, default, margin) and r > best_ratio:
            best, best_ratio = name, r
    why = (
        f"{best} {best_ratio:.2f}x {default} (> {margin:.2f})"
        if best != default
        else f"{default} kept (no other float path > {margin:.2f}x in most rounds)"
    )
    if int8 is not None and int8 in rates:
        gain = ratio(rates, int8, best)
        if beats(rates, int8, best, INT8_GAIN - 1e-9):
            return int8, f"{why}; {int8} {gain:.2f}x {best} (>= {INT8_GAIN})"
        why += f"; {int8} {gain:.2f}x {best} (needs {INT8_GAIN})"
    return best, why


class ChoiceCache:
    """A small JSON file of past choices, ``{"version": 2, "entries": {key: entry}}``.

    Version 2: candidates are timed on real face crops where there are any (version 1 timed noise)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else cache_dir() / CACHE_FILE

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict | None:
        """The entry under ``key`` when it is well formed, else ``None``."""
        entry = self._read().get(key)
        ok = isinstance(entry, dict) and isinstance(entry.get("precision"), str)
        return entry if ok and isinstance(entry.get("backend"), str) else None

    def put(self, key: str, entry: dict) -> None:
        """Add or replace one entry; written to a temporary file and renamed, so readers never see half."""
        entries = self._read()
        entries[key] = entry
        text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True)
        write_atomic(self.path, text.encode())


def write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically (:func:`vafusion.io.atomic.atomic_path`); ``False`` when the
    folder is not writable (a read-only home: the work is simply done again next time)."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except (OSError, OutputError):
        return False
    return True
