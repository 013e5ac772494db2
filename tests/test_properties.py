"""Property tests (hypothesis): CCC, frame/time alignment, store row <-> annotation line, fold assignment.

tests/test_metrics.py already checks CCC's bounds, symmetry, permutation and shift invariance against a
float64 reference; the properties here are the ones it leaves out.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vafusion.data.affwild2 import Sample, video_id_of
from vafusion.data.folds import assign_folds, read_folds, write_folds
from vafusion.errors import VafusionError
from vafusion.features.extract import ExtractorStats, face_features
from vafusion.features.store import feature_path, write_features
from vafusion.features.vggish import (
    EXAMPLE_FRAMES,
    HOP_LENGTH,
    SAMPLE_RATE,
    WINDOW_LENGTH,
    example_start_frames,
)
from vafusion.io.video import VideoInfo, frame_times, row_times
from vafusion.metrics import CCC, ccc, ccc_loss
from vafusion.train.data import EpochSampler, load_sequence

TMP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------------ CCC

def _pair(_: None, n: int, seed: int, noise: float, scale: float, bias: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, n)
    x = scale * y + bias + rng.normal(0, noise, n)
    return x, y


VA = st.integers(-10000, 10000).map(lambda i: i / 10000)  # valence/arousal values, 4 decimals as annotated
pairs = st.builds(_pair, st.just(None), st.integers(3, 80), st.integers(0, 2**31 - 1), st.floats(0, 2),
                  st.floats(-3, 3), st.floats(-2, 2))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / np.sqrt((xc**2).sum() * (yc**2).sum()))


@settings(max_examples=80, deadline=None)
@given(pairs)
def test_ccc_is_pearson_times_bias_correction_and_never_exceeds_it(xy):
    x, y = xy
    assume(x.std() > 1e-6 and y.std() > 1e-6)
    c, r = ccc(x, y), _pearson(x, y)
    sx, sy = x.std(), y.std()
    bias_correction = 2 * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)
    assert 0 < bias_correction <= 1 + 1e-12
    assert c == pytest.approx(r * bias_correction, abs=1e-9)
    assert abs(c) <= abs(r) + 1e-9
    assert np.sign(c) == np.sign(r) or abs(r) < 1e-12


@settings(max_examples=80, deadline=None)
@given(pairs, st.floats(0.01, 100) | st.floats(-100, -0.01), st.floats(-50, 50))
def test_ccc_is_unchanged_by_one_affine_map_of_both(xy, a, b):
    x, y = xy
    assume(x.std() > 1e-3 and y.std() > 1e-3)
    assert ccc(a * x + b, a * y + b) == pytest.approx(ccc(x, y), abs=1e-7)


@settings(max_examples=80, deadline=None)
@given(pairs, st.floats(0.05, 20))
def test_ccc_is_not_scale_invariant_but_best_at_the_right_scale(xy, s):
    """Scaling only the prediction changes CCC (unlike Pearson); with matched means, CCC at scale s is
    2 s cov / (s^2 var(x) + var(y)), largest at s = sd(y) / sd(x) where it equals |r|."""
    x, y = xy
    assume(x.std() > 1e-3 and y.std() > 1e-3)
    x = x - x.mean() + y.mean()
    r = _pearson(x, y)
    assert _pearson(s * x, y) == pytest.approx(r, abs=1e-9)
    best = y.std() / x.std()
    xm = x - x.mean()
    at_best = ccc(best * np.sign(r) * xm + y.mean(), y)
    assert at_best >= abs(ccc(s * xm + y.mean(), y)) - 1e-9
    assert at_best == pytest.approx(abs(r), abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(pairs)
def test_moving_the_mean_onto_the_target_never_lowers_ccc(xy):
    x, y = xy
    c = ccc(x, y)
    centred = ccc(x - x.mean() + y.mean(), y)
    assert abs(centred) >= abs(c) - 1e-12


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=VA), VA)
def test_ccc_of_constants_is_defined(x, k):
    const = np.full_like(x, k)
    assert ccc(const, const) == 1.0  # identical constants: perfect agreement
    value = ccc(x, const)
    if np.ptp(x) > 0:
        assert abs(value) < 1e-12  # no covariance with a constant
    else:
        assert value == pytest.approx(1.0 if x[0] == k else 0.0, abs=1e-12)  # two constants: agree or not


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(5, 60), st.floats(0, 0.9))
def test_streaming_metric_and_loss_equal_the_batch_formula_for_any_split_and_mask(seed, batches, t, drop):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, (batches, t, 2))
    x = 0.5 * y + rng.normal(0, 0.4, y.shape)
    mask = rng.random((batches, t)) >= drop
    assume(mask.sum() >= 2)
    metric = CCC(2)
    for b in rng.permutation(batches):
        metric.update(torch.tensor(x[b]), torch.tensor(y[b]), torch.tensor(mask[b]))
    ref = [ccc(x[mask][:, d], y[mask][:, d]) for d in range(2)]
    assert metric.compute().numpy() == pytest.approx(ref, abs=1e-9)
    loss = ccc_loss(torch.tensor(x), torch.tensor(y), torch.tensor(mask)).item()
    assert loss == pytest.approx(1 - np.mean(ref), abs=1e-6)


# ---------------------------------------------------------------------------------------- frame/time alignment

@settings(max_examples=80, deadline=None)
@given(st.integers(0, 5000), st.floats(1, 120))
def test_frame_times_put_line_i_at_i_minus_1_over_fps(n, fps):
    t = frame_times(n, fps)
    assert t.shape == (n,) and t.dtype == np.float64
    assert np.array_equal(t, np.arange(n) / fps)
    assert (np.diff(t) > 0).all() and (n == 0 or t[0] == 0.0)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(0, 7200)))
def test_centred_example_is_centred_within_half_a_hop(times):
    starts = example_start_frames(times)
    span = (EXAMPLE_FRAMES - 1) * HOP_LENGTH + WINDOW_LENGTH
    centre = (starts * HOP_LENGTH + span / 2) / SAMPLE_RATE
    assert np.abs(centre - times).max() <= HOP_LENGTH / 2 / SAMPLE_RATE + 1e-9  # 5 ms
    order = np.argsort(times, kind="stable")
    assert (np.diff(starts[order]) >= 0).all()  # later frame, later (or same) example


def _info(n: int, fps: float, times: np.ndarray | None) -> VideoInfo:
    return VideoInfo(path=Path("v.mp4"), fps=fps, n_frames=n, width=64, height=48, duration=n / fps, rotation=0,
                     has_audio=True, audio_rate=16000, audio_channels=1, times=times)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 300), st.floats(5, 60), st.integers(-40, 40), st.integers(0, 2**31 - 1))
def test_row_times_follow_real_timestamps_only_for_variable_frame_rate(n, fps, extra_rows, seed):
    rows = max(1, n + extra_rows)
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-0.4, 0.4, n) / fps  # constant rate with timestamp rounding: nominal times
    jitter[0] = 0.0
    cfr = frame_times(n, fps) + jitter
    assert np.array_equal(row_times(_info(n, fps, np.sort(cfr)), rows), frame_times(rows, fps))
    assert np.array_equal(row_times(_info(n, fps, None), rows), frame_times(rows, fps))
    gaps = rng.choice([0.5, 1.0, 2.5], n - 1) / fps  # variable rate: each row at its frame's own time
    vfr = np.concatenate([[0.0], np.cumsum(gaps)])
    assume(np.abs(vfr - frame_times(n, fps)).max() > 0.5 / fps)
    t = row_times(_info(n, fps, vfr), rows)
    k = min(n, rows)
    assert t.shape == (rows,) and np.array_equal(t[:k], vfr[:k]) and (np.diff(t) > 0).all()
    if rows > n:  # past the last frame: on at the average rate
        assert t[n:] == pytest.approx(vfr[-1] + np.arange(1, rows - n + 1) / fps)


@TMP
@given(st.integers(1, 60), st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_store_row_i_is_annotation_line_i(tmp_path_factory, n_labels, n_rows, seed):
    """Whatever the lengths, sequence row i holds feature row i and annotation line i + 2 (after the
    header); rows the store lacks are invalid, rows past the annotation are dropped."""
    root = tmp_path_factory.mktemp("align")
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(-1, 1, (n_labels, 2)), 3)
    labels[rng.random(n_labels) < 0.2] = -5
    ann = root / "a.txt"
    ann.write_text("valence,arousal\n" + "".join(f"{v:g},{a:g}\n" for v, a in labels))
    feats = np.arange(n_rows, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    valid = rng.random(n_rows) < 0.8
    streams = {"visual": "landmarks"}
    write_features(feature_path(root, "landmarks", "a"), feats, valid, np.arange(n_rows) / 30.0,
                   {"extractor": "landmarks", "dim": 3})
    seq = load_sequence(Sample("a", "a", None, "Train_Set", ann, None), root, streams, ["visual"])
    k = min(n_labels, n_rows)
    assert seq.length == n_labels
    assert np.array_equal(seq.feats["visual"][:k, 0], np.arange(k))
    assert np.array_equal(seq.valid["visual"][:k], valid[:k]) and not seq.valid["visual"][k:].any()
    ok = labels[:, 0] != -5
    assert np.array_equal(seq.label_valid, ok) and np.allclose(seq.labels[ok], labels[ok])


class _Brightness:
    """A face 'extractor' whose feature is the crop's brightness, so each row names the crop it came from."""

    dim = 1

    def encode(self, crops: np.ndarray) -> np.ndarray:
        return crops.reshape(len(crops), -1).mean(1, keepdims=True).astype(np.float32)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 40), st.integers(0, 2**31 - 1), st.integers(1, 7))
def test_face_row_i_comes_from_crop_i(tmp_path_factory, n, seed, batch):
    folder = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(seed)
    present = [i for i in range(1, n + 3) if rng.random() < 0.7]  # gaps, and crops past the last row
    for i in present:
        cv2.imwrite(str(folder / f"{i:05d}.png"), np.full((112, 112, 3), 5 * i, np.uint8))
    sample = Sample("s", "s", None, "Train_Set", None, folder)
    feats, valid = face_features(_Brightness(), sample, n, batch, ExtractorStats())
    want = np.array([i in present for i in range(1, n + 1)])
    assert np.array_equal(valid, want)
    assert np.array_equal(feats[want, 0], 5.0 * np.arange(1, n + 1)[want])
    assert (feats[~want] == 0).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(0, 10**6), st.integers(0, 50))
def test_epoch_order_depends_only_on_seed_and_epoch(n, seed, epoch):
    """The shuffle of epoch k is the same in a fresh run and in one resumed at k."""
    fresh = EpochSampler(n, seed)
    fresh.set_epoch(epoch)
    resumed = EpochSampler(n, seed, epoch_of=lambda: epoch)
    a, b = list(fresh), list(resumed)
    assert a == b and sorted(k for _, k in a) == list(range(n)) and {e for e, _ in a} == {epoch}
    if n > 5:
        fresh.set_epoch(epoch + 1)
        assert [k for _, k in fresh] != [k for _, k in a]


# ------------------------------------------------------------------------------------------------------ folds

names = st.text(alphabet=string.ascii_letters + string.digits + "-_.,x ", min_size=1, max_size=12).map(str.strip) \
    .filter(lambda s: s and not s.endswith(("_left", "_right")))


def _samples(videos: list[str], two_person: set[str], val: set[str]) -> list[Sample]:
    index = {v: Path(f"{v}.mp4") for v in videos}
    out = []
    for v in videos:
        split = "Validation_Set" if v in val else "Train_Set"
        for name in ([f"{v}_left", f"{v}_right"] if v in two_person else [v]):
            out.append(Sample(name, video_id_of(name, index), index[v], split, None, None))
    return out


@st.composite
def corpora(draw) -> list[Sample]:
    videos = draw(st.lists(names, min_size=5, max_size=40, unique=True))
    two = set(draw(st.lists(st.sampled_from(videos), max_size=len(videos) // 2)))
    val = set(draw(st.lists(st.sampled_from(videos), max_size=len(videos) // 3)))
    assume(len(set(videos) - val) >= 5)
    return _samples(videos, two, val)


@settings(max_examples=60, deadline=None)
@given(corpora(), st.integers(0, 3), st.randoms(use_true_random=False))
def test_folds_are_video_disjoint_deterministic_and_balanced(samples, seed, rnd):
    folds = assign_folds(samples, seed=seed)
    assert sorted(folds["name"]) == sorted(s.name for s in samples)  # every sample exactly once
    assert (folds.groupby("video")["fold"].nunique() == 1).all()  # a video (and both its people) in one fold
    by = dict(zip(folds["name"], folds["fold"]))
    for s in samples:
        assert (by[s.name] == 0) == (s.split == "Validation_Set")
        if s.side == "left":
            assert by[s.name] == by[s.name[:-5] + "_right"]
    per_fold = folds[folds["fold"] > 0].groupby("fold")["video"].nunique()
    assert set(per_fold.index) == {1, 2, 3, 4, 5} and per_fold.max() - per_fold.min() <= 1
    shuffled = list(samples)
    rnd.shuffle(shuffled)
    assert assign_folds(shuffled, seed=seed).equals(folds)  # independent of file order


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpora())
def test_fold_file_round_trips(tmp_path_factory, samples):
    assume(not {s.name for s in samples} & _PANDAS_NA)
    path = tmp_path_factory.mktemp("folds") / "folds.csv"
    folds = assign_folds(samples)
    write_folds(folds, path)
    assert read_folds(path, samples).equals(folds)


# pandas.read_csv reads these cells as missing values by default
_PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
              "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def test_fold_file_round_trips_names_pandas_reads_as_missing(tmp_path):
    samples = _samples(["NA", "null", "v1", "v2", "v3", "v4", "v5"], set(), set())
    write_folds(assign_folds(samples), tmp_path / "folds.csv")
    read_folds(tmp_path / "folds.csv", samples)


@settings(max_examples=30, deadline=None)
@given(st.lists(names, min_size=1, max_size=4, unique=True))
def test_too_few_training_videos_is_a_one_line_error(videos):
    with pytest.raises(VafusionError, match="Train_Set videos for 5 folds"):
        assign_folds(_samples(videos, set(), set()))


def test_folds_json_safe_names_survive_the_run_directory(tmp_path):
    """Names with commas and spaces go through folds.csv unchanged (CSV quoting)."""
    samples = _samples(["a,b", "c d", "e\"f", "g", "h", "i"], {"g"}, {"i"})
    folds = assign_folds(samples)
    write_folds(folds, tmp_path / "folds.csv")
    assert read_folds(tmp_path / "folds.csv", samples).equals(folds)
    assert json.loads(json.dumps(folds.to_dict("list")))["name"] == folds["name"].tolist()
    assert isinstance(pd.read_csv(tmp_path / "folds.csv")["fold"].iloc[0], np.integer)
