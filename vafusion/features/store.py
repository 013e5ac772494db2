"""The feature store: one ``.npz`` per sample per extractor, plus a Parquet manifest any node can read.

``FEATS/<extractor>/<sample>.npz`` holds ``features (T, D) float32``, ``valid (T,) bool`` (frame has a
face / audio), ``times (T,) float64`` seconds and ``meta`` (JSON: extractor, params, weights hash, fps).
Row i belongs to annotation line i, i.e. video frame i (1-based), at time (i - 1) / fps.

The files are uncompressed zips, so ``read_features(path, mmap=True)`` maps their arrays straight from
the file instead of reading them: training on Aff-Wild2 (2.7 M frames, 8.3 GB of float32 features) then
holds only the pages it touches, shared by every process and fold through the page cache, and nothing
is converted or copied on disk.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from vafusion.errors import VafusionError
from vafusion.io.atomic import atomic_path, save_npz

MANIFEST = "manifest.parquet"
# what np.load raises for an empty, truncated, foreign or pickled file
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError)


@dataclass
class FeatureFile:
    """One sample's features from one extractor."""

    features: np.ndarray
    valid: np.ndarray
    times: np.ndarray
    meta: dict


def feature_path(root: str | Path, extractor: str, name: str) -> Path:
    """Where the features of ``name`` from ``extractor`` live."""
    return Path(root) / extractor / f"{name}.npz"


def write_features(
    path: Path, features: np.ndarray, valid: np.ndarray, times: np.ndarray, meta: dict
) -> dict:
    """Sanitise and write one feature file atomically; return counts of what was fixed.

    Rows with NaN/Inf are zeroed and marked invalid, so no NaN ever reaches a model.
    """
    features = np.asarray(features, np.float32)
    valid = np.asarray(valid, bool).copy()
    bad = nonfinite_rows(features)
    if bad.any():
        features = features.copy()
        features[bad] = 0.0
        valid &= ~bad
    meta = dict(meta, nonfinite_rows=int(bad.sum()))
    save_npz(
        path,
        features=features,
        valid=valid,
        times=np.asarray(times, np.float64),
        meta=np.array(json.dumps(meta, sort_keys=True, default=str)),
    )
    return {"nonfinite_rows": int(bad.sum())}


def read_features(path: str | Path, mmap: bool = False) -> FeatureFile:
    """Load one feature file; a missing or unreadable file names the command that makes it.

    ``mmap``: map ``features``, ``valid`` and ``times`` read-only from the file (the same rows, nothing read
    until used); arrays stored compressed are read as usual.
    """
    path = Path(path)
    if not path.is_file():
        raise VafusionError(path, "feature file missing", "run `vafusion extract` for this dataset first")
    try:
        if mmap:
            ff = _map_features(path)
        else:
            with np.load(path, allow_pickle=False) as z:
                ff = FeatureFile(z["features"], z["valid"], z["times"], json.loads(str(z["meta"])))
    except _UNREADABLE as exc:
        raise VafusionError(
            path,
            f"feature file is unreadable ({exc.__class__.__name__})",
            "delete it and rerun `vafusion extract` (finished files are skipped)",
        ) from None
    if ff.features.ndim != 2 or ff.features.shape[0] != ff.valid.shape[0]:
        raise VafusionError(
            path,
            f"feature file has shape {ff.features.shape} and {ff.valid.shape[0]} flags",
            "delete it and rerun `vafusion extract`",
        )
    bad = nonfinite_rows(ff.features)  # again on read: the file may have been written by other code
    if bad.any():
        ff.features = np.where(bad[:, None], 0.0, ff.features).astype(np.float32)
        ff.valid = ff.valid & ~bad
    return ff


def nonfinite_rows(features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``(T,) bool``: rows holding a NaN or an infinity, checked ``chunk`` rows at a time so a mapped file
    needs no full-size temporary (about 3 GB/s over a mapped store in the page cache).

    A memory-mapped array is read through a mapping of its own, closed when this returns, so the check
    leaves no page of the file in this process's resident memory (training maps only what it touches).
    """
    if isinstance(features, np.memmap) and features.filename is not None and features.size:
        features = np.memmap(
            features.filename, features.dtype, "r", features.offset, features.shape, _order(features)
        )
    bad = np.zeros(len(features), bool)
    for start in range(0, len(features), chunk):
        bad[start : start + chunk] = ~np.isfinite(features[start : start + chunk]).all(axis=1)
    return bad


def _order(a: np.ndarray) -> str:
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def _map_features(path: Path) -> FeatureFile:
    """The arrays of an ``.npz``, mapped from the file where they are stored uncompressed."""
    with zipfile.ZipFile(path) as z, open(path, "rb") as fh:
        meta = json.loads(str(np.load(z.open("meta.npy"), allow_pickle=False)))
        arrays = {}
        for key in ("features", "valid", "times"):
            info = z.getinfo(f"{key}.npy")
            mapped = _map_member(path, fh, info)
            arrays[key] = mapped if mapped is not None else np.load(z.open(info), allow_pickle=False)
    return FeatureFile(arrays["features"], arrays["valid"], arrays["times"], meta)


def _map_member(path: Path, fh: BinaryIO, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A stored (uncompressed) ``.npy`` member of the zip ``fh``, memory-mapped read-only; ``None`` when
    it is compressed, encrypted or of a format version that cannot be mapped."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        return None
    fh.seek(info.header_offset)
    head = fh.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    fh.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(fh)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        return None
    shape, fortran, dtype = readers[version](fh)
    if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects")
    if 0 in shape or not shape:
        return None
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape, order=order)


def read_meta(path: Path) -> dict | None:
    """The ``meta`` of a finished feature file, or ``None`` if it is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except _UNREADABLE:
        return None


def shard_manifest(index: int, count: int) -> str:
    """File name of the manifest part shard ``index`` of ``count`` writes (merged by ``merge-features``)."""
    return f"manifest.shard{index}of{count}.parquet"


def build_manifest(
    root: str | Path,
    names: set[str] | None = None,
    extractors: list[str] | None = None,
    filename: str = MANIFEST,
) -> pd.DataFrame:
    """Scan the store and write ``filename``: one row per (extractor, sample) file.

    ``names`` / ``extractors`` restrict the scan, so a shard lists only its own files in its own part and
    concurrent shards never write the same manifest.
    """
    root = Path(root)
    rows = []
    if extractors is None:
        paths = sorted(root.glob("*/*.npz"))
    else:
        paths = sorted(p for e in extractors for p in (root / e).glob("*.npz"))
    for path in paths:
        if names is not None and path.stem not in names:
            continue
        meta = read_meta(path)
        if meta is None:
            continue
        rows.append(
            {
                "extractor": path.parent.name,
                "name": path.stem,
                "path": str(path.relative_to(root)),
                "frames": meta.get("frames"),
                "dim": meta.get("dim"),
                "valid_frac": meta.get("valid_frac"),
                "fingerprint": meta.get("fingerprint"),
                "fps": meta.get("fps"),
            }
        )
    df = pd.DataFrame(
        rows, columns=["extractor", "name", "path", "frames", "dim", "valid_frac", "fingerprint", "fps"]
    )
    with atomic_path(root / filename) as tmp:
        df.to_parquet(tmp, index=False)
    return df
