"""`vafusion submit`: ABAW VA test-set file from the dataset layout, and `--check` of finished files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vafusion.cli import main
from vafusion.data.affwild2 import scan
from vafusion.data.sequence import load_sequence
from vafusion.errors import VafusionError
from vafusion.inference.submit import (
    HEADER,
    check_submission,
    frame_counts,
    predict_sample,
    read_video_list,
    write_submission,
)


@pytest.fixture(scope="module")
def dataset(tiny, tmp_path_factory):
    """A copy of the tiny corpus as a test set: the two-person video's right side and the silent video lose
    their crop folders (faces must be found in the video), plus the list file."""
    root = tmp_path_factory.mktemp("testset")
    shutil.copytree(tiny / "data", root / "data")
    manifest = json.loads((root / "data/synth_manifest.json").read_text())
    cases = manifest["cases"]
    two = cases["two_person"]
    for name in (f"{two}_right", cases["no_audio"]):
        shutil.rmtree(root / "data/cropped_aligned" / name)
    names = [f"{two}_left", f"{two}_right", cases["no_audio"], cases["fps_25"], cases["stereo_audio"]]
    (root / "list.txt").write_text("\n".join([names[0], names[1] + ".mp4", "", *names[2:]]) + "\n")
    return root, names, manifest


@pytest.fixture(scope="module")
def submission(dataset, predictor):
    root, names, _ = dataset
    out = root / "sub" / "predictions.txt"
    summary = write_submission(predictor, root / "data", names, out)
    return out, summary


def read_rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    return [ln.split(",") for ln in lines[1:]]


def test_file_has_one_row_per_frame_of_every_listed_video(dataset, submission):
    root, names, manifest = dataset
    out, summary = submission
    frames = {e["name"]: e["frames"] for e in manifest["videos"]}
    want = [
        (n, i)
        for n in names
        for i in range(1, frames[n.rsplit("_", 1)[0] if n.endswith(("_left", "_right")) else n] + 1)
    ]
    rows = read_rows(out)
    assert [(r[0].split("/")[0], int(r[0].split("/")[1][:5])) for r in rows] == want
    assert all(r[0].endswith(".jpg") and len(r[0].split("/")[1]) == 9 for r in rows)
    values = np.array([[float(r[1]), float(r[2])] for r in rows])
    assert np.isfinite(values).all() and np.abs(values).max() <= 1.0
    assert summary.rows == len(rows) and summary.videos == len(names)
    assert sorted(summary.from_video) == sorted([names[1], names[2]])
    assert sorted(summary.from_crops) == sorted([names[0], *names[3:]])
    assert not (out.parent / f"{out.name}.parts").exists()
    assert check_submission(out, frame_counts(root / "data", names)) == {
        "videos": len(names),
        "rows": len(rows),
    }


def test_crop_based_rows_equal_the_training_features_path(tiny, dataset, submission, predictor):
    _, names, _ = dataset
    out, _ = submission
    name = names[3]  # the 25 fps video, crops present
    sample = next(s for s in scan(tiny / "data").samples if s.name == name)
    seq = load_sequence(sample, tiny / "feats", predictor.streams, predictor.roles)
    want = predictor.predict_arrays(seq.feats, seq.valid)
    got = np.array([[float(r[1]), float(r[2])] for r in read_rows(out) if r[0].startswith(name + "/")])
    assert np.abs(got - want).max() < 1e-5  # 6 decimals in the file


def test_two_person_sides_track_the_matching_face(dataset, predictor):
    root, names, _ = dataset
    samples = {s.name: s for s in scan(root / "data", names=names).samples if s.split == "Test"}
    video = samples[names[1]].video
    width = 320
    for side, subject in (("left", 0), ("right", 1)):
        vf = predictor.extract(video, subject=subject)
        centres = (vf.boxes[vf.face, 0] + vf.boxes[vf.face, 2]) / 2
        assert vf.face.mean() > 0.8
        assert ((centres < width / 2) if side == "left" else (centres > width / 2)).mean() > 0.9
    pred, source = predict_sample(predictor, samples[names[1]])
    assert source == "video" and pred.shape == (60, 2)


def test_cli_submit_and_check(dataset, tiny, tmp_path, capsys):
    root, names, _ = dataset
    out, listed = tmp_path / "sub.txt", tmp_path / "two.txt"
    listed.write_text(f"{names[0]}\n{names[3]}\n")
    assert (
        main(
            [
                "submit",
                "--data",
                str(root / "data"),
                "--model",
                str(tiny / "run"),
                "--videos",
                str(listed),
                "--out",
                str(out),
                "--fold",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert main(["submit", "--check", str(out), "--data", str(root / "data"), "--videos", str(listed)]) == 0
    assert "valid (2 videos" in capsys.readouterr().out
    assert (
        main(
            ["submit", "--check", str(out), "--data", str(root / "data"), "--videos", str(root / "list.txt")]
        )
        == 2
    )
    assert "3 listed videos have no rows" in capsys.readouterr().err


def _corrupt(lines: list[str], how: str) -> list[str]:
    if how == "header":
        return ["image,valence,arousal"] + lines[1:]
    if how == "missing":
        return lines[:-5]
    if how == "repeated":
        return lines + [lines[3]]
    if how == "range":
        name = lines[2].split(",")[0]
        return lines[:2] + [f"{name},1.5,0.0"] + lines[3:]
    if how == "nan":
        name = lines[2].split(",")[0]
        return lines[:2] + [f"{name},nan,0.0"] + lines[3:]
    if how == "unknown":
        return lines + ["stranger/00001.jpg,0.1,0.1"]
    if how == "text":
        name = lines[2].split(",")[0]
        return lines[:2] + [f"{name},abc,0.0"] + lines[3:]
    raise ValueError(how)


@pytest.mark.parametrize(
    "how,words",
    [
        ("header", "not the header"),
        ("missing", "miss frames"),
        ("repeated", "repeated frames"),
        ("range", "outside [-1, 1]"),
        ("nan", "line 3 has a NaN or infinite value"),
        ("unknown", "not in the list"),
        ("text", "non-numeric"),
    ],
)
def test_check_finds_broken_files(dataset, submission, tmp_path, capsys, how, words):
    root, _, _ = dataset
    out, _ = submission
    bad = tmp_path / f"{how}.txt"
    bad.write_text("\n".join(_corrupt(out.read_text().splitlines(), how)) + "\n")
    assert (
        main(
            ["submit", "--check", str(bad), "--data", str(root / "data"), "--videos", str(root / "list.txt")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and words in err[0]


def test_interrupted_run_reuses_finished_videos(dataset, predictor, tmp_path, monkeypatch):
    from vafusion.inference import submit

    root, names, _ = dataset
    out = tmp_path / "resume.txt"
    real = submit.predict_sample
    calls: list[str] = []

    def failing(pred, sample, notes=None):
        calls.append(sample.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(pred, sample, notes)

    monkeypatch.setattr(submit, "predict_sample", failing)
    chosen = [names[0], names[3], names[4]]  # crops present: quick
    with pytest.raises(KeyboardInterrupt):
        write_submission(predictor, root / "data", chosen, out)
    assert not out.exists() and len(list((tmp_path / "resume.txt.parts").glob("*.npy"))) == 1
    monkeypatch.setattr(submit, "predict_sample", real)
    summary = write_submission(predictor, root / "data", chosen, out)
    assert summary.reused == [calls[0]] and out.is_file()


def test_video_list_reading(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("\ufeffa-30-640x360\n\nb_left.mp4\r\nb_right\n")
    assert read_video_list(p) == ["a-30-640x360", "b_left", "b_right"]
    p.write_text("a\na\n")
    with pytest.raises(VafusionError, match="listed twice"):
        read_video_list(p)
    with pytest.raises(VafusionError, match="video list not found"):
        read_video_list(tmp_path / "none.txt")


def test_listed_video_missing_from_the_dataset(dataset, predictor, tmp_path):
    root, names, _ = dataset
    with pytest.raises(VafusionError, match="no video for 1 listed names, e.g. ghost"):
        write_submission(predictor, root / "data", [*names[:1], "ghost"], tmp_path / "x.txt")
