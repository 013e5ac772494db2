"""The memory-mapped feature store: the same rows as reading the files, a chunked ``Normaliser.fit`` equal
bit for bit to statistics over all rows at once, and the same training windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vafusion.data.affwild2 import Sample
from vafusion.data.sequence import Sequence, WindowDataset, load_sequence
from vafusion.features.store import feature_path, read_features, write_features
from vafusion.models.normaliser import Normaliser

TMP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _same(a, b) -> None:
    assert np.array_equal(a.features, b.features) and a.features.dtype == b.features.dtype
    assert np.array_equal(a.valid, b.valid) and np.array_equal(a.times, b.times) and a.meta == b.meta


@TMP
@given(st.integers(0, 50), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_mapped_rows_are_the_rows_read(tmp_path_factory, rows, dim, seed):
    """Whatever the shape, and with non-finite rows (zeroed and flagged on write)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim)).astype(np.float32) * 10.0 ** rng.integers(-3, 4)
    if rows:
        x[rng.random(rows) < 0.1, 0] = np.nan
    path = feature_path(tmp_path_factory.mktemp("mmap"), "e", "s")
    write_features(path, x, rng.random(rows) < 0.8, np.arange(rows) / 30.0, {"extractor": "e", "dim": dim})
    mapped = read_features(path, mmap=True)
    _same(read_features(path), mapped)
    if rows:
        assert isinstance(mapped.features, np.memmap) and not mapped.features.flags.writeable


def test_compressed_or_foreign_files_are_read_and_cleaned(tmp_path):
    """A compressed ``.npz`` cannot be mapped: it is read; NaN rows of a file not written by vafusion are
    zeroed and flagged as when reading it."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    x[2, 1] = np.inf
    meta = np.array(json.dumps({"extractor": "e"}))
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, features=x, valid=np.ones(4, bool), times=np.arange(4.0), meta=meta)
        got = read_features(path, mmap=True)
        _same(read_features(path), got)
        assert not got.valid[2] and not got.features[2].any()


def _sequences(rng: np.random.Generator, n: int, dims: dict[str, int]) -> list[Sequence]:
    out = []
    for i in range(n):
        t = int(rng.integers(1, 400))
        feats = {
            r: (rng.normal(size=(t, d)) * rng.uniform(0.1, 50)).astype(np.float32) for r, d in dims.items()
        }
        valid = {r: rng.random(t) < rng.uniform(0, 1) for r in dims}
        labels = rng.uniform(-1, 1, (t, 2)).astype(np.float32)
        out.append(Sequence(f"s{i}", f"s{i}", feats, valid, labels, rng.random(t) < 0.9))
    return out


def _fit_all_at_once(seqs: list[Sequence]) -> Normaliser:
    """The plain statistics: every valid row concatenated, float64 mean and standard deviation."""
    mean, std = {}, {}
    for role in seqs[0].feats:
        rows = [s.feats[role][s.valid[role]] for s in seqs]
        dim = seqs[0].feats[role].shape[1]
        x = np.concatenate([r for r in rows if len(r)] or [np.zeros((1, dim), np.float32)])
        x = x.astype(np.float64)
        mean[role] = x.mean(0).astype(np.float32)
        std[role] = np.maximum(x.std(0), 1e-6).astype(np.float32)
    return Normaliser(mean, std)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 7, 64, 1 << 16]))
def test_chunked_normaliser_is_the_all_at_once_one_bit_for_bit(seed, chunk):
    rng = np.random.default_rng(seed)
    seqs = _sequences(rng, int(rng.integers(1, 6)), {"visual": 5, "vggish": 1, "logmel": 3})
    seqs[0].valid["logmel"][:] = False
    if rng.random() < 0.3:  # a stream without a single valid frame
        for s in seqs:
            s.valid["logmel"][:] = False
    ref, got = _fit_all_at_once(seqs), Normaliser.fit(seqs, chunk)
    for r in ref.mean:
        assert np.array_equal(ref.mean[r], got.mean[r]) and np.array_equal(ref.std[r], got.std[r]), r


def test_windows_cut_from_raw_sequences_equal_windows_of_normalised_ones():
    """Normalising each window as it is cut gives the values of the normalised sequence's windows, with
    the same augmentation (which hides frames, not values)."""
    rng = np.random.default_rng(0)
    seqs = _sequences(rng, 4, {"visual": 6, "vggish": 2})
    norm = Normaliser.fit(seqs)
    kw = {"train": True, "branch_dropout": 0.5, "frame_dropout": 0.3, "seed": 3}
    ref = WindowDataset([s.normalised(norm) for s in seqs], 50, 20, **kw)
    lazy = WindowDataset(seqs, 50, 20, norm=norm, **kw)
    assert len(ref) == len(lazy)
    for k in range(len(ref)):
        for epoch in (0, 1):
            a, b = ref[(epoch, k)], lazy[(epoch, k)]
            for part in ("feats", "valid"):
                for r in a[part]:
                    assert a[part][r].dtype == b[part][r].dtype
                    assert np.array_equal(a[part][r].numpy(), b[part][r].numpy()), (k, part, r)
            assert np.array_equal(a["labels"].numpy(), b["labels"].numpy())


@pytest.mark.parametrize("rows", [10, 25, 40])
def test_mapped_sequence_equals_the_read_one(tmp_path, rows):
    """Shorter, equal and longer feature files than the annotation (padded or cut the same way)."""
    rng = np.random.default_rng(rows)
    ann = tmp_path / "a.txt"
    ann.write_text(
        "valence,arousal\n" + "".join(f"{v:.3f},{a:.3f}\n" for v, a in rng.uniform(-1, 1, (25, 2)))
    )
    streams = {"visual": "landmarks", "vggish": "egemaps"}
    for ext, d in (("landmarks", 4), ("egemaps", 3)):
        write_features(
            feature_path(tmp_path, ext, "a"),
            rng.normal(size=(rows, d)),
            rng.random(rows) < 0.7,
            np.arange(rows) / 30,
            {"extractor": ext, "dim": d},
        )
    sample = Sample("a", "a", None, "Train_Set", ann, None)
    a = load_sequence(sample, tmp_path, streams, ["visual", "vggish"])
    b = load_sequence(sample, tmp_path, streams, ["visual", "vggish"], mmap=True)
    assert a.length == b.length == 25
    for r in streams:
        assert np.array_equal(a.feats[r], b.feats[r]) and np.array_equal(a.valid[r], b.valid[r])
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.label_valid, b.label_valid)
