"""The paper's six folds: video-disjoint, deterministic, balanced, and the fold file round-trips any name."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vafusion.data.affwild2 import Sample, video_id_of
from vafusion.data.folds import assign_folds, read_folds, write_folds
from vafusion.errors import VafusionError

names = (
    st.text(alphabet=string.ascii_letters + string.digits + "-_.,x ", min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda s: s and not s.endswith(("_left", "_right")))
)


def _samples(videos: list[str], two_person: set[str], val: set[str]) -> list[Sample]:
    index = {v: Path(f"{v}.mp4") for v in videos}
    out = []
    for v in videos:
        split = "Validation_Set" if v in val else "Train_Set"
        for name in [f"{v}_left", f"{v}_right"] if v in two_person else [v]:
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
    path = tmp_path_factory.mktemp("folds") / "folds.csv"
    folds = assign_folds(samples)
    write_folds(folds, path)
    assert read_folds(path, samples).equals(folds)


def test_fold_file_round_trips_names_pandas_reads_as_missing(tmp_path):
    samples = _samples(["NA", "null", "v1", "v2", "v3", "v4", "v5"], set(), set())
    folds = assign_folds(samples)
    write_folds(folds, tmp_path / "folds.csv")
    back = read_folds(tmp_path / "folds.csv", samples)
    assert back.equals(folds) and {"NA", "null"} <= set(back["name"])


@settings(max_examples=30, deadline=None)
@given(st.lists(names, min_size=1, max_size=4, unique=True))
def test_too_few_training_videos_is_a_one_line_error(videos):
    with pytest.raises(VafusionError, match="Train_Set videos for 5 folds"):
        assign_folds(_samples(videos, set(), set()))


def test_folds_json_safe_names_survive_the_run_directory(tmp_path):
    """Names with commas and spaces go through folds.csv unchanged (CSV quoting)."""
    samples = _samples(["a,b", "c d", 'e"f', "g", "h", "i"], {"g"}, {"i"})
    folds = assign_folds(samples)
    write_folds(folds, tmp_path / "folds.csv")
    assert read_folds(tmp_path / "folds.csv", samples).equals(folds)
    assert json.loads(json.dumps(folds.to_dict("list")))["name"] == folds["name"].tolist()
    assert isinstance(pd.read_csv(tmp_path / "folds.csv")["fold"].iloc[0], np.integer)


@pytest.mark.parametrize("value", ["9", "-1", "x", "1.5"])
def test_a_fold_number_outside_the_folds_is_a_one_line_error(tmp_path, value):
    samples = _samples([f"v{i}" for i in range(8)], set(), {"v0"})
    folds = assign_folds(samples, seed=0)
    folds["fold"] = folds["fold"].astype(str)
    folds.loc[folds.index[-1], "fold"] = value
    write_folds(folds, tmp_path / "folds.csv")
    with pytest.raises(VafusionError, match=f"has fold {value}; folds are 0 .Validation_Set. to 5"):
        read_folds(tmp_path / "folds.csv", samples)
