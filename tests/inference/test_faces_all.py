"""``--faces all``: one identity-consistent track per person, with boxes and fold spread (issue 13)."""

from __future__ import annotations

import av
import numpy as np
import pandas as pd
import pytest

from tests.helpers import SHARED_VIDEOS, write_frames
from vafusion.cli import main
from vafusion.data.faceset import match_score
from vafusion.data.scenes import Actor, people_scene
from vafusion.face.detect import Box
from vafusion.inference.tables import BOX, FIRST, SPREAD

pytestmark = pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason="real test videos not found")
N = 80
HIDDEN = (40, 65)


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    """Two real people side by side; the left one is hidden behind a card for 1 s (frames 40-64)."""
    actors = [Actor(SHARED_VIDEOS / "d11.mp4", 100, hidden=(HIDDEN,)), Actor(SHARED_VIDEOS / "s32.mp4", 90)]
    scene = people_scene(actors, N, canvas=(960, 540), truth_step=2)
    return scene, write_frames(tmp_path_factory.mktemp("people") / "two.mp4", scene.frames)


def test_predict_faces_all_writes_one_track_per_person(tiny, two_people, tmp_path):
    scene, clip = two_people
    out = tmp_path / "out"
    args = ["predict", str(clip), "--faces", "all", "--model", str(tiny / "run"), "--out", str(out)]
    assert main([*args, "--overlay", "--quiet"]) == 0
    table = pd.read_csv(out / "two.csv")
    assert list(table.columns) == FIRST + ["person"] + BOX + SPREAD
    assert len(table) == 2 * N and table["person"].tolist() == [0] * N + [1] * N
    assert table["frame"].tolist() == list(range(1, N + 1)) * 2
    left, right = (table[table["person"] == k].reset_index(drop=True) for k in (0, 1))
    assert left.loc[0, "box_x"] < right.loc[0, "box_x"]  # numbered left to right
    hidden = np.arange(N) >= HIDDEN[0]
    hidden &= np.arange(N) < HIDDEN[1]
    assert left["face"][~hidden].mean() >= 0.9 and right["face"].mean() >= 0.9
    assert left["face"][hidden].mean() <= 0.25  # the face column is 1 only where a face was found
    for k, rows in enumerate((left, right)):
        assert rows[BOX].isna().all(axis=1).eq(rows["face"] == 0).all()
        on_face = [
            match_score(Box(r.box_x, r.box_y, r.box_x + r.box_w - 1, r.box_y + r.box_h - 1), truth[k]) > 0
            for r, truth, scored in zip(rows.itertuples(), scene.boxes, scene.scored, strict=True)
            if scored and r.face == 1 and k in truth
        ]
        assert len(on_face) > 20 and np.mean(on_face) >= 0.95
    assert (table[SPREAD] >= 0).all().all() and (table[SPREAD] > 0).any().all()  # two fold models
    assert (out / "two.png").stat().st_size > 0
    with av.open(str(out / "two_overlay.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == N


def test_api_gives_the_same_table_and_one_subject_keeps_its_columns(predictor, two_people, tmp_path):
    _, clip = two_people
    every = predictor.predict(clip, faces="all")
    assert list(every.columns) == FIRST + ["person"] + BOX + SPREAD and len(every) == 2 * N
    one = predictor.predict(clip)
    assert list(one.columns) == FIRST + BOX + SPREAD and len(one) == N
    with pytest.raises(Exception, match="faces must be 'one' or 'all'"):
        predictor.predict(clip, faces="both")
