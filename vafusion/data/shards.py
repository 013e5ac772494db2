"""Sharded extraction: check a feature store that ``extract --shard I/N`` jobs filled, and merge it.

``vafusion merge-features`` runs :func:`merge_shards`: every (sample, extractor) file must exist, be made
with the current settings (fingerprint) and have one row per annotation line; then the single
``manifest.parquet`` is written. Otherwise the report lists each problem with its sample's shard and the
exact commands that fix it.
"""

from __future__ import annotations

import json
import re
import shlex
import zipfile
from collections import defaultdict
from dataclasses import fields
from pathlib import Path

import numpy as np

from vafusion.data.affwild2 import Corpus, Sample, read_annotation
from vafusion.data.calibration import plan_calibration
from vafusion.data.extract import sample_frames
from vafusion.errors import VafusionError
from vafusion.features.extractors import FeaturesConfig, configured_extractor
from vafusion.features.store import MANIFEST, build_manifest, feature_path, read_meta
from vafusion.io.atomic import write_json

_PART = re.compile(r"^(?:manifest|extract_summary)\.shard(\d+)of(\d+)\.(?:parquet|json)$")


def shard_parts(root: Path) -> dict[int, set[int]]:
    """Shard count N -> indices of the shards that finished (left a manifest part or summary) in ``root``."""
    found: dict[int, set[int]] = defaultdict(set)
    for p in Path(root).iterdir() if Path(root).is_dir() else []:
        m = _PART.match(p.name)
        if m and int(m.group(1)) < int(m.group(2)):
            found[int(m.group(2))].add(int(m.group(1)))
    return dict(found)


def shard_of(samples: list[Sample], name: str, count: int) -> int:
    """Which of ``count`` shards processes sample ``name`` (the rule of :func:`shard_samples`)."""
    videos = sorted({s.video_id for s in samples})
    vid = next(s.video_id for s in samples if s.name == name)
    return videos.index(vid) % count


def _stored_rows(path: Path) -> tuple[int, int] | None:
    """Rows of ``features`` and ``valid`` in a feature file, read from the array headers only."""
    try:
        with zipfile.ZipFile(path) as z:
            rows = []
            for member in ("features.npy", "valid.npy"):
                with z.open(member) as fh:
                    major, _ = np.lib.format.read_magic(fh)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape = read(fh)[0]
                    rows.append(int(shape[0]) if shape else -1)
            return rows[0], rows[1]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _expected_rows(sample: Sample) -> int:
    """Rows of a complete feature file of ``sample``: one per annotation line (else per video frame)."""
    if sample.annotation is not None:
        return len(read_annotation(sample.annotation)[0])
    return sample_frames(sample)[0]


def _rerun_flags(cfg: FeaturesConfig) -> list[str]:
    flags = []
    for flag, value in (
        ("--iresnet-weights", cfg.iresnet_weights),
        ("--vggish-weights", cfg.vggish_weights),
        ("--vggish-pca", cfg.vggish_pca),
        ("--logmel-weights", cfg.logmel_weights),
    ):
        if value:
            flags += [flag, str(value)]
    if cfg.iresnet_weights and cfg.iresnet_arch != FeaturesConfig.iresnet_arch:
        flags += ["--iresnet-arch", cfg.iresnet_arch]
    flagged = {"iresnet_weights", "vggish_weights", "vggish_pca", "logmel_weights", "iresnet_arch"}
    for f in fields(FeaturesConfig):  # any other setting that differs from its default
        value = getattr(cfg, f.name)
        if f.name not in flagged and value != f.default:
            flags += ["--set", f"features.{f.name}={value}"]
    return flags


def _file_problem(path: Path, fingerprint: str, want: int | str) -> tuple[str, str] | None:
    """(kind, what) of what is wrong with one feature file, ``None`` when it is current and complete.

    ``want`` is the number of rows the file must have, or why the sample itself is unusable.
    """
    meta = read_meta(path) if path.exists() else None
    if not path.exists():
        return "missing", "no feature file"
    if meta is None:
        return "unreadable", "unreadable feature file"
    if meta.get("fingerprint") != fingerprint:
        return "stale", (
            f"made with other settings or weights (fingerprint {meta.get('fingerprint')}, "
            f"expected {fingerprint})"
        )
    if isinstance(want, str):
        return "dataset", want
    if (got := _stored_rows(path)) != (want, want) or meta.get("frames") != want:
        return "length", f"{got[0] if got else '?'} rows, annotation has {want}"
    return None


def _problems(
    samples: list[Sample],
    root: Path,
    cfg: FeaturesConfig,
    extractor_names: list[str],
    shards: int | None,
    calibration: np.ndarray | None = None,
) -> list[dict]:
    """Every (sample, extractor) file that is missing, unreadable, stale or of the wrong length."""
    problems: list[dict] = []
    rows: dict[str, int | str] = {}
    for name in extractor_names:
        fingerprint = configured_extractor(name, cfg, calibration).fingerprint
        for s in samples:
            if s.name not in rows:
                try:
                    rows[s.name] = _expected_rows(s)
                except VafusionError as exc:
                    rows[s.name] = exc.one_line()
            path = feature_path(root, name, s.name)
            found = _file_problem(path, fingerprint, rows[s.name])
            if found is not None:
                shard = None if not shards else f"{shard_of(samples, s.name, shards)}/{shards}"
                problems.append(
                    {
                        "sample": s.name,
                        "video": s.video_id,
                        "extractor": name,
                        "kind": found[0],
                        "problem": found[1],
                        "path": str(path),
                        "shard": shard,
                    }
                )
    return problems


def _fix_commands(
    problems: list[dict], corpus: Corpus, root: Path, cfg: FeaturesConfig, extractor_names: list[str]
) -> list[str]:
    """The shell commands that fix ``problems``: delete wrong-length files, rerun each shard's extractors."""
    base = ["vafusion", "extract", "--data", str(corpus.root), "--features", str(root)] + _rerun_flags(cfg)
    commands = []
    delete = [p["path"] for p in problems if p["kind"] == "length"]
    if delete:
        commands.append(shlex.join(["rm", "-f", *delete]))
    groups: dict[str | None, set[str]] = defaultdict(set)
    for p in problems:
        if p["kind"] != "dataset":
            groups[p["shard"]].add(p["extractor"])
    for shard in sorted(groups, key=lambda g: (g is None, int(g.split("/")[0]) if g else 0)):
        exts = [e for e in extractor_names if e in groups[shard]]
        commands.append(
            shlex.join(base + ["--extractors", ",".join(exts)] + (["--shard", shard] if shard else []))
        )
    return commands


def _recorded_failures(root: Path, notes: list[str]) -> list[str]:
    """Failures the shards' ``extract_summary*.json`` recorded (an unreadable summary adds a note)."""
    failures = []
    for p in sorted(root.glob("extract_summary*.json")):
        try:
            failures += [f"{p.name}: {f}" for f in json.loads(p.read_text()).get("failed", [])]
        except (OSError, json.JSONDecodeError):
            notes.append(f"{p.name} is unreadable")
    return failures


def merge_shards(
    corpus: Corpus,
    root: str | Path,
    cfg: FeaturesConfig,
    extractor_names: list[str],
    shards: int | None = None,
) -> dict:
    """Check that every (sample, extractor) file exists, was made with the current settings and has one row
    per annotation line; if all do, write the single ``manifest.parquet`` (if not, remove an earlier one).

    ``shards`` is the N of the ``--shard I/N`` runs (default: read from the manifest parts they left).
    The report lists each problem with its sample's shard and the exact commands that fix them; files
    that are present and current but of the wrong length must be deleted first (extraction skips them).
    """
    root = Path(root)
    if not root.is_dir():
        raise VafusionError(
            root, "feature store not found", "run `vafusion extract` (with --shard I/N) first"
        )
    parts = shard_parts(root)
    notes = []
    if shards is None and parts:
        shards = max(parts, key=lambda n: (len(parts[n]), n))
        if len(parts) > 1:
            notes.append(
                f"manifest parts from several shard counts {sorted(parts)}; checked against N={shards}"
            )
    samples = sorted(corpus.samples, key=lambda s: s.name)
    calibration = plan_calibration(cfg, corpus, root, extractor_names)  # as extract does (writes nothing)
    notes += [calibration.note] if calibration.note else []
    problems = _problems(samples, root, calibration.cfg, extractor_names, shards, calibration.crops)
    commands = _fix_commands(problems, corpus, root, cfg, extractor_names)
    failures = _recorded_failures(root, notes)
    missing_parts = sorted(set(range(shards)) - parts.get(shards, set())) if shards else []
    if missing_parts:
        notes.append(
            "no manifest part from shard "
            + ", ".join(f"{i}/{shards}" for i in missing_parts)
            + " (not run, or killed before its end); its files were checked one by one"
        )
    expected = len(samples) * len(extractor_names)
    report = {
        "complete": not problems,
        "expected": expected,
        "ok": expected - len(problems),
        "extractors": list(extractor_names),
        "shards": shards,
        "problems": problems,
        "commands": commands,
        "recorded_failures": failures,
        "notes": notes,
    }
    if not problems:
        report["manifest_rows"] = len(build_manifest(root))
    else:
        (root / MANIFEST).unlink(missing_ok=True)  # a manifest exists only for a store found complete
    write_json(root / "merge_report.json", report)
    return report
