"""Sequences: row i of every stream is annotation line i whatever the lengths, and the training order
depends only on the seed and the epoch (so a resumed run sees what a fresh one saw)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vafusion.data.affwild2 import Sample
from vafusion.data.sequence import EpochSampler, load_sequence
from vafusion.features.store import feature_path, write_features

TMP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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
    write_features(
        feature_path(root, "landmarks", "a"),
        feats,
        valid,
        np.arange(n_rows) / 30.0,
        {"extractor": "landmarks", "dim": 3},
    )
    seq = load_sequence(Sample("a", "a", None, "Train_Set", ann, None), root, streams, ["visual"])
    k = min(n_labels, n_rows)
    assert seq.length == n_labels
    assert np.array_equal(seq.feats["visual"][:k, 0], np.arange(k))
    assert np.array_equal(seq.valid["visual"][:k], valid[:k]) and not seq.valid["visual"][k:].any()
    ok = labels[:, 0] != -5
    assert np.array_equal(seq.label_valid, ok) and np.allclose(seq.labels[ok], labels[ok])


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
