"""int8 calibration crops taken from the dataset itself: the same spread-out sample every time, kept beside
the features and reused, an explicit folder wins, ``none`` turns it off, unreadable crops are skipped and
named."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import write_annotation, write_video
from vafusion.data.affwild2 import scan
from vafusion.data.calibration import (
    CalibrationPlan,
    centred,
    keep_calibration,
    plan_calibration,
    sample_crops,
    spread,
)
from vafusion.data.extract import extract
from vafusion.data.shards import merge_shards
from vafusion.errors import VafusionError
from vafusion.features import extractors
from vafusion.features.extractors import FeaturesConfig, IResNetExtractor, configured_extractor
from vafusion.features.face_encoder import calibration_id
from vafusion.features.face_int8 import CALIBRATION_FILE, calibration_source, load_calibration
from vafusion.features.store import read_meta
from vafusion.models.iresnet import iresnet
from vafusion.pipeline import extract_lines

ANN = "annotations/VA_Estimation_Challenge/Train_Set"
FRAMES = {"a": 40, "b": 6, "c": 40, "d": 25}
"""Crop folders and how many crops each holds (folder ``b`` is short)."""


def _crop(folder: int, frame: int) -> np.ndarray:
    """A crop whose pixels say which folder and frame it is (red = folder, green = frame)."""
    return np.full((112, 112, 3), (40 * folder, frame, 7), np.uint8)


def _write_crop(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _dataset(root: Path, frames: dict[str, int] = FRAMES) -> Path:
    for k, (name, n) in enumerate(sorted(frames.items())):
        write_annotation(root / ANN / f"{name}.txt", [(0.0, 0.0)] * n)
        for i in range(1, n + 1):
            _write_crop(root / "cropped_aligned" / name / f"{i:05d}.png", _crop(k + 1, i))
    return root


def _where(crops: np.ndarray) -> list[tuple[int, int]]:
    """(folder, frame) of each crop, read back from its pixels."""
    return [(int(c[0, 0, 0]) // 40, int(c[0, 0, 1])) for c in crops]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _dataset(tmp_path / "aff")


IRESNET = FeaturesConfig(iresnet_weights="backbone.pth")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=12), st.integers(0, 80))
def test_spread_takes_as_evenly_as_the_folders_allow(counts: list[int], limit: int) -> None:
    take = spread(counts, limit)
    assert sum(take) == min(limit, sum(counts)) and all(0 <= t <= c for t, c in zip(take, counts))
    open_ = [t for t, c in zip(take, counts) if t < c]  # folders that could have given more
    assert not open_ or max(take) <= min(open_) + 1


def test_auto_sample_is_deterministic_and_spread_over_folders_and_frames(data: Path) -> None:
    got = sample_crops(scan(data), limit=32)
    assert np.array_equal(got.crops, sample_crops(scan(data), limit=32).crops)
    where = _where(got.crops)
    per_folder = {f: sorted(i for g, i in where if g == f) for f in range(1, 5)}
    assert [len(per_folder[f]) for f in range(1, 5)] == [9, 6, 9, 8]  # b gives all 6, the rest share
    for f, n in zip(range(1, 5), (40, 6, 40, 25)):
        frames, gap = per_folder[f], n / len(per_folder[f])
        assert frames[0] <= gap and frames[-1] > n - gap  # from the start to the end of each folder
    assert got.files[0] == "cropped_aligned/a/00003.png" and got.folders == 4 and not got.unreadable
    few = sample_crops(scan(data), limit=2)  # fewer crops than folders: folders evenly spaced, 1 each
    assert _where(few.crops) == [(2, 4), (4, 13)]


def _kept(cfg: FeaturesConfig, data: Path, feats: Path, names=("iresnet",)) -> tuple[CalibrationPlan, str]:
    """What extract plans and keeps in ``feats`` (its note)."""
    plan = plan_calibration(cfg, scan(data), feats, list(names))
    plan.keep()
    return plan, plan.note


def test_extract_keeps_the_sample_and_reuses_it_when_the_dataset_grows(data: Path, tmp_path: Path) -> None:
    feats = tmp_path / "feats"
    stored = feats / CALIBRATION_FILE
    plan = plan_calibration(IRESNET, scan(data), feats, ["iresnet", "logmel"])
    assert plan.cfg.face_calibration == str(stored) and "111 crops from 4 crop folders" in plan.note
    assert not stored.exists()  # written only once the extractor is built (bad weights leave no file)
    plan.keep()
    np.testing.assert_array_equal(load_calibration(stored), sample_crops(scan(data)).crops)
    np.testing.assert_array_equal(load_calibration(stored), plan.crops)
    assert stored.stat().st_size < 200_000  # compressed
    _dataset(data, {"e": 30})  # a video added later
    again, note = _kept(IRESNET, data, feats)
    assert again.cfg == plan.cfg and "reused" in note
    assert calibration_id(load_calibration(stored)) == calibration_id(plan.crops)
    other = plan_calibration(IRESNET, scan(data), tmp_path / "f2", ["landmarks"])
    assert (other.cfg, other.crops, other.note) == (IRESNET, None, None)
    other.keep()
    assert not (tmp_path / "f2").exists()


def test_an_explicit_folder_wins_over_the_dataset(data: Path, tmp_path: Path) -> None:
    feats, mine = tmp_path / "feats", tmp_path / "mine"
    _kept(IRESNET, data, feats)  # an automatic set first
    for i in range(20):
        _write_crop(mine / f"{i:03d}.png", _crop(6, i))
    plan, note = _kept(FeaturesConfig(iresnet_weights="w", face_calibration=str(mine)), data, feats)
    kept = load_calibration(feats / CALIBRATION_FILE)
    assert plan.cfg.face_calibration == str(feats / CALIBRATION_FILE) and f"20 crops of {mine}" in note
    assert _where(kept) == _where(plan.crops) == [(6, i) for i in range(20)]
    assert str(mine) in calibration_source(feats / CALIBRATION_FILE)


def test_none_and_float_precisions_turn_it_off(data: Path, tmp_path: Path) -> None:
    feats = tmp_path / "feats"
    _kept(IRESNET, data, feats)
    plan, note = _kept(FeaturesConfig(iresnet_weights="w", face_calibration="none"), data, feats)
    assert plan.cfg.face_calibration == "none" and plan.crops is None and "off" in note and "removes" in note
    assert not (feats / CALIBRATION_FILE).exists()
    plan, note = _kept(FeaturesConfig(iresnet_weights="w", face_precision="fp32"), data, feats)
    assert plan.cfg.face_calibration == "none" and plan.crops is None and note is None
    assert not (feats / CALIBRATION_FILE).exists()  # nothing sampled for a path that never uses it


def test_unreadable_crops_are_skipped_and_named(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "aff", {"a": 12, "b": 12})
    (data / "cropped_aligned/a/00004.png").write_bytes(b"not an image")
    (data / "cropped_aligned/b/00007.png").write_bytes(b"")
    got = sample_crops(scan(data))
    assert len(got.crops) == 22
    assert got.unreadable == ["cropped_aligned/a/00004.png", "cropped_aligned/b/00007.png"]
    for p in (data / "cropped_aligned").rglob("*.png"):  # now none is usable
        p.write_bytes(b"\xff\xd8 cut short")
    plan, note = _kept(IRESNET, data, tmp_path / "feats")
    assert plan.cfg.face_calibration == "none" and plan.crops is None and "only 0 readable crops" in note
    assert "e.g. cropped_aligned/a/00001.png" in note and not (tmp_path / "feats" / CALIBRATION_FILE).exists()
    with pytest.raises(VafusionError, match=r"24 unreadable, e\.g\. a/00001\.png"):  # a folder given: error
        load_calibration(data / "cropped_aligned")


class _ChoosesInt8:
    """Stands in for ``FaceEncoder``: records what it was built with, 'chooses' int8, encodes zeros."""

    built: ClassVar[list] = []

    def __init__(self, net, batch, precision, backend, key, calibration) -> None:
        self.built.append((precision, calibration))
        self.precision = "int8"

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return np.zeros((len(crops), 512), np.float32)


def test_extract_merge_and_predict_calibrate_on_the_kept_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(extractors, "FaceEncoder", _ChoosesInt8)
    monkeypatch.setattr(_ChoosesInt8, "built", [])
    data = _dataset(tmp_path / "aff", {"a": 20, "b": 12})
    for name, n in (("a", 20), ("b", 12)):
        write_video(data / "videos" / f"{name}.mp4", n, audio=False)
    feats, weights = tmp_path / "feats", tmp_path / "backbone.pth"
    torch.save(iresnet("iresnet18").state_dict(), weights)
    cfg = FeaturesConfig(iresnet_arch="iresnet18", iresnet_weights=str(weights))
    summary = extract(scan(data), feats, cfg, ["iresnet"], progress=False)
    kept = load_calibration(feats / CALIBRATION_FILE)
    assert "32 crops from 2 crop folders" in summary["face_calibration"] and len(kept) == 32
    assert f"note: {summary['face_calibration']}" in extract_lines(summary, [])[0]
    meta = read_meta(next((feats / "iresnet").glob("*.npz")))
    assert meta["params"]["int8"]["calibration"] == calibration_id(kept)
    report = merge_shards(scan(data), feats, cfg, ["iresnet"])
    assert report["complete"] and any("reused" in n for n in report["notes"])
    predicting = configured_extractor(
        "iresnet", dataclasses.replace(cfg, face_calibration=str(feats / CALIBRATION_FILE))
    )
    assert predicting.fingerprint == meta["fingerprint"]
    assert [p for p, _ in _ChoosesInt8.built] == ["auto"] * 3
    assert all(np.array_equal(c, kept) for _, c in _ChoosesInt8.built)
    forced = configured_extractor("iresnet", dataclasses.replace(cfg, face_precision="fp32"))
    assert forced.params["precision"] == "fp32" and "int8" not in forced.params  # the config reaches it
    with pytest.raises(VafusionError, match="needs calibration crops"):  # before loading any weights
        IResNetExtractor("iresnet18", str(tmp_path / "absent.pth"), precision="int8", calibration="auto")


def test_cv_keeps_a_copy_in_the_run(tmp_path: Path) -> None:
    feats, run = tmp_path / "feats", tmp_path / "run"
    assert keep_calibration(feats, run) is None and not (run / CALIBRATION_FILE).exists()
    feats.mkdir()
    (feats / CALIBRATION_FILE).write_bytes(b"set")
    assert keep_calibration(feats, run).read_bytes() == b"set"
    (feats / CALIBRATION_FILE).unlink()
    keep_calibration(feats, run)
    assert not (run / CALIBRATION_FILE).exists()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 50), st.integers(0, 60))
def test_centred_picks_distinct_evenly_spaced_indices(n: int, k: int) -> None:
    picked = centred(n, k)
    assert len(picked) == min(n, k) and picked == sorted(set(picked)) and all(0 <= i < n for i in picked)
    if picked:
        assert picked[0] <= n // (2 * len(picked)) and picked[-1] >= n - 1 - n // (2 * len(picked))


def test_a_calibration_folder_is_read_as_extract_reads_crops(tmp_path) -> None:
    """A crop folder given for calibration: a JPEG cut short is skipped (OpenCV would decode its first half
    and fill the rest with grey), a crop of another size is resized to 112x112, as ``extract`` does."""
    folder = tmp_path / "crops"
    for i in range(1, 17):
        _write_crop(folder / f"{i:05d}.jpg", _crop(1, i))
    big = np.full((128, 128, 3), 200, np.uint8)
    _write_crop(folder / "00017.jpg", big)
    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (112, 112, 3), np.uint8))
    (folder / "00018.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    crops = load_calibration(folder)
    assert ok and crops.shape == (17, 112, 112, 3)
    assert np.abs(crops[-1].astype(int) - 200).max() <= 2  # the 128x128 crop, resized
