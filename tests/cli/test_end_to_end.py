"""The whole pipeline through the CLI on a tiny synthetic corpus: synth -> extract -> cv -> report."""

import json

import pandas as pd
import pytest

from tests.helpers import fast_cv
from vafusion.cli import main
from vafusion.data.affwild2 import crop_index
from vafusion.features.store import read_features

FAST = fast_cv(2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    assert (
        main(["synth", str(root / "data"), "--videos", "8", "--seconds", "2", "--seed", "3", "--quiet"]) == 0
    )
    return root


def test_extract_then_cv_writes_the_run_directory(corpus, capsys):
    data, feats, run = corpus / "data", corpus / "feats", corpus / "run"
    assert main(["extract", "--data", str(data), "--features", str(feats), "--quiet"]) == 0
    names = sorted(p.stem for p in (data / "annotations/VA_Estimation_Challenge").rglob("*.txt"))
    for ext in ("landmarks", "egemaps", "logmel"):
        assert sorted(p.stem for p in (feats / ext).glob("*.npz")) == names
    summary = json.loads((feats / "extract_summary.json").read_text())
    assert summary["failed"] == []
    # row i of a feature file is frame i: a face row is valid exactly where crop i exists
    for name in names:
        ff = read_features(feats / "landmarks" / f"{name}.npz")
        crops = crop_index(data / "cropped_aligned" / name)
        assert ff.valid.tolist() == [i in crops for i in range(1, len(ff.valid) + 1)]
        assert ff.times[1] - ff.times[0] == pytest.approx(1 / ff.meta["fps"])
    manifest = json.loads((data / "synth_manifest.json").read_text())
    silent = [v["name"] for v in manifest["videos"] if v["audio_channels"] == 0]
    assert silent  # the corpus always has a video without audio
    for name in silent:
        assert not read_features(feats / "logmel" / f"{name}.npz").valid.any()
    assert (feats / "manifest.parquet").exists()

    assert (
        main(["cv", "--data", str(data), "--features", str(feats), "--out", str(run), "--quiet", *FAST]) == 0
    )
    res = pd.read_csv(run / "results.csv", dtype={"fold": str})
    assert list(res.columns) == ["model", "fold", "valence", "arousal", "mean"]
    assert set(res["model"]) == {"fusion", "visual", "vggish", "logmel"}
    for _, part in res.groupby("model"):
        assert part["fold"].tolist() == ["0", "1", "2", "3", "4", "5", "mean"]
        assert part["mean"].iloc[-1] == pytest.approx(part["mean"].iloc[:-1].mean(), abs=1e-4)
    assert res[["valence", "arousal"]].abs().le(1).all().all()
    folds = pd.read_csv(run / "folds.csv")
    assert (folds.groupby("video")["fold"].nunique() == 1).all()
    assert set(folds[folds["split"] == "Validation_Set"]["fold"]) == {0}
    for m in ("fusion", "visual"):
        assert sorted(p.name for p in (run / "models" / m).glob("*.pt")) == [f"fold{k}.pt" for k in range(6)]
    report = (run / "report.md").read_text()
    assert "Fold-5" in report and "0.6184" in report  # paper's fold-5 arousal printed beside ours
    assert (run / "folds.png").stat().st_size > 1000 and (run / "traces.png").exists()

    # rerun: everything is already done, so nothing is retrained and the table is identical
    before = {p: p.stat().st_mtime_ns for p in (run / "models").rglob("*.pt")}
    assert (
        main(["cv", "--data", str(data), "--features", str(feats), "--out", str(run), "--quiet", *FAST]) == 0
    )
    assert before == {p: p.stat().st_mtime_ns for p in (run / "models").rglob("*.pt")}
    assert pd.read_csv(run / "results.csv", dtype={"fold": str}).equals(res)

    # extraction rerun skips finished files
    capsys.readouterr()
    assert main(["extract", "--data", str(data), "--features", str(feats), "--quiet"]) == 0
    assert "done    0" in capsys.readouterr().out


def test_bad_input_exits_2_with_one_line(corpus, capsys, tmp_path):
    out = tmp_path / "runs" / "y"
    assert main(["cv", "--data", str(corpus / "nope"), "--features", "x", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "dataset folder not found" in err[0]
    assert not (tmp_path / "runs").exists()  # the failed command leaves no empty output folder
    assert (
        main(
            [
                "cv",
                "--data",
                str(corpus / "data"),
                "--features",
                "x",
                "--out",
                str(out),
                "--set",
                "train.lrr=1",
            ]
        )
        == 2
    )
