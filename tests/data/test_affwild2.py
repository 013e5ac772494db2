import numpy as np
import pytest

from tests.helpers import write_annotation, write_video
from vafusion.data.affwild2 import crop_index, read_annotation, scan
from vafusion.data.folds import assign_folds, read_folds, write_folds
from vafusion.errors import AnnotationError, VafusionError

ANN = "annotations/VA_Estimation_Challenge"


def _touch_crops(folder, frames):
    folder.mkdir(parents=True, exist_ok=True)
    for i in frames:
        (folder / f"{i:05d}.jpg").write_bytes(b"x")


@pytest.fixture
def layout(tmp_path):
    """A real-layout tree: batch1 mp4, batch2 avi, new_vids, a two-person video, an unannotated video."""
    root = tmp_path / "aff"
    write_video(root / "videos/batch1/1-30-1280x720.mp4", 5)
    write_video(root / "videos/batch2/video7.avi", 5, codec="mpeg4")
    write_video(root / "videos/new_vids/10-60-1280x720.mp4", 5)
    write_video(root / "videos/batch1/orphan.mp4", 3)
    write_annotation(root / ANN / "Train_Set/1-30-1280x720.txt", [(0.1, 0.2)] * 5)
    write_annotation(
        root / ANN / "Train_Set/video7.txt", [(0.1, 0.2), (-5, -5), (0.3, -0.4), (0, 0), (1, -1)]
    )
    write_annotation(root / ANN / "Validation_Set/10-60-1280x720_left.txt", [(0.5, 0.5)] * 5)
    write_annotation(root / ANN / "Validation_Set/10-60-1280x720_right.txt", [(-0.5, 0.5)] * 5)
    write_annotation(root / ANN / "Train_Set/ghost.txt", [(0.0, 0.0)] * 2)
    _touch_crops(root / "cropped_aligned/1-30-1280x720", [1, 2, 4, 5])
    _touch_crops(root / "cropped_aligned/video7", range(1, 6))
    _touch_crops(root / "cropped_aligned_new_50_vids/10-60-1280x720_left", range(1, 6))
    _touch_crops(root / "cropped_aligned_new_50_vids/10-60-1280x720_right", range(1, 6))
    return root


def test_scan_finds_every_batch_format_and_two_person_videos(layout):
    corpus = scan(layout)
    by = corpus.by_name()
    assert by["video7"].video.suffix == ".avi" and by["video7"].video.parent.name == "batch2"
    assert by["10-60-1280x720_left"].video == by["10-60-1280x720_right"].video
    assert by["10-60-1280x720_left"].video_id == "10-60-1280x720"
    assert by["10-60-1280x720_left"].side == "left"
    assert by["10-60-1280x720_left"].crops.parent.name == "cropped_aligned_new_50_vids"
    assert {s.split for s in corpus.samples} == {"Train_Set", "Validation_Set"}
    # an annotation without its video is reported, not fatal
    assert by["ghost"].video is None
    assert any("ghost" in p and "no video" in p for p in corpus.problems)


def test_crop_index_is_one_based_and_has_gaps(layout):
    idx = crop_index(layout / "cropped_aligned/1-30-1280x720")
    assert sorted(idx) == [1, 2, 4, 5]
    assert crop_index(None) == {} and crop_index(layout / "nope") == {}


def test_read_annotation_marks_minus_five_invalid(layout):
    labels, valid = read_annotation(layout / ANN / "Train_Set/video7.txt")
    assert labels.shape == (5, 2) and labels.dtype == np.float32
    assert valid.tolist() == [True, False, True, True, True]
    assert labels[2].tolist() == pytest.approx([0.3, -0.4])


@pytest.mark.parametrize(
    "content, words",
    [
        ("0.1,0.2\n0.3,0.4\n", "header"),
        ("valence,arousal\n0.1,0.2,0.3\n", "3 columns"),
        ("valence,arousal\n0.1,abc\n", "not numeric"),
        ("valence,arousal\n0.1,1.5\n", "outside [-1, 1]"),
        ("valence,arousal\n", "no annotation rows"),
        ("", "header"),
    ],
)
def test_read_annotation_rejects_broken_files_naming_the_line(tmp_path, content, words):
    p = tmp_path / "bad.txt"
    p.write_text(content)
    with pytest.raises(AnnotationError) as err:
        read_annotation(p)
    assert words in str(err.value) and "bad.txt" in str(err.value)


def test_all_invalid_annotation_is_read_not_rejected(tmp_path):
    p = write_annotation(tmp_path / "x.txt", [(-5, -5)] * 4)
    _, valid = read_annotation(p)
    assert not valid.any()


def test_scan_rejects_a_folder_without_annotations(tmp_path):
    with pytest.raises(VafusionError, match="no VA annotations"):
        scan(tmp_path)


def test_folds_video_disjoint_and_left_right_together(tmp_path):
    from vafusion.data.affwild2 import Sample

    samples = [Sample(f"v{i}", f"v{i}", None, "Train_Set", None, None) for i in range(12)]
    samples += [
        Sample("pair_left", "pair", None, "Train_Set", None, None),
        Sample("pair_right", "pair", None, "Train_Set", None, None),
        Sample("val1", "val1", None, "Validation_Set", None, None),
    ]
    folds = assign_folds(samples, seed=0)
    assert folds.loc[folds["name"] == "val1", "fold"].item() == 0
    assert set(folds["fold"]) == {0, 1, 2, 3, 4, 5}
    pair = folds[folds["video"] == "pair"]["fold"]
    assert pair.nunique() == 1
    assert (folds.groupby("video")["fold"].nunique() == 1).all()
    counts = folds[folds["fold"] > 0].groupby("fold")["video"].nunique()
    assert counts.max() - counts.min() <= 1
    # deterministic, independent of input order, and changed by the seed
    again = assign_folds(list(reversed(samples)), seed=0)
    assert folds.equals(again)
    assert not folds.equals(assign_folds(samples, seed=1))
    # round trip through folds.csv
    write_folds(folds, tmp_path / "folds.csv")
    assert read_folds(tmp_path / "folds.csv", samples).equals(folds)


def test_read_folds_rejects_a_split_video(tmp_path):
    from vafusion.data.affwild2 import Sample

    samples = [
        Sample("p_left", "p", None, "Train_Set", None, None),
        Sample("p_right", "p", None, "Train_Set", None, None),
    ]
    (tmp_path / "f.csv").write_text("name,video,split,fold\np_left,p,Train_Set,1\np_right,p,Train_Set,2\n")
    with pytest.raises(VafusionError, match="split across folds"):
        read_folds(tmp_path / "f.csv", samples)
