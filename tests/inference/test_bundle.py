"""Loading runs for inference: a run directory, one of its model folders, a single checkpoint or a
registered untrained model all give the same kind of bundle; the checkpoints say what made their features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers import SHARED_VIDEOS
from vafusion.cli import main
from vafusion.errors import VafusionError
from vafusion.features.face_int8 import CALIBRATION_FILE, calibration_crops, save_calibration
from vafusion.inference.bundle import RunBundle, find_checkpoints
from vafusion.inference.predictor import FeaturesWarning, Predictor


def test_a_run_a_model_folder_and_a_checkpoint_load_alike(tiny) -> None:
    run = tiny / "run"
    whole = RunBundle.load(run)
    folder = RunBundle.load(run / "models" / "fusion")
    single = RunBundle.load(run / "models" / "fusion" / "fold1.pt")
    assert [m.fold for m in whole.folds] == [0, 1] == [m.fold for m in folder.folds]
    assert [m.fold for m in single.folds] == [1]
    assert whole.streams == folder.streams == single.streams
    assert whole.config.features == single.config.features and whole.config.cv == single.config.cv
    assert whole.train_fps == single.train_fps == pytest.approx(30.0, abs=6)
    assert find_checkpoints(run, "fusion", [0]) == [("fusion", 0, run / "models" / "fusion" / "fold0.pt")]


def test_checkpoints_record_the_training_features(tiny) -> None:
    ckpt = RunBundle.load(tiny / "run").folds[0].checkpoint
    assert ckpt is not None and ckpt.model == "fusion" and ckpt.fold == 0
    assert set(ckpt.features) == {"visual", "vggish", "logmel"}
    assert ckpt.features["visual"]["extractor"] == "landmarks"
    assert ckpt.features["visual"]["params"]["face_stride"] == 5 and ckpt.features["visual"]["fingerprint"]


def test_other_front_end_settings_than_in_training_are_said(tiny) -> None:
    with pytest.warns(FeaturesWarning, match="stream logmel .*hop_s differs from the training features"):
        predictor = Predictor.from_run(tiny / "run", feature_overrides=["features.audio_hop=0.24"])
    assert any("hop_s" in n for n in predictor.notes)
    assert not [n for n in Predictor.from_run(tiny / "run").notes if "differ" in n]


def test_the_tiny_untrained_model_runs_the_whole_pipeline(tmp_path, capsys) -> None:
    video = SHARED_VIDEOS / "d12.mp4"
    if not video.is_file():
        pytest.skip("real test videos not found")
    assert (
        main(
            [
                "predict",
                str(video),
                "--model",
                "vafusion_tiny",
                "--out",
                str(tmp_path),
                "--no-plot",
                "--quiet",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert err.count("untrained model") == 1
    table = pd.read_csv(tmp_path / "d12.csv")
    assert (
        len(table) == 183
        and table["face"].mean() > 0.9
        and table[["valence", "arousal"]].abs().max().max() <= 1
    )


def test_which_is_refused_for_a_registered_network_rather_than_ignored() -> None:
    with pytest.raises(VafusionError, match="--which visual picks a model of a run directory") as caught:
        RunBundle.load("vafusion_tiny", which="visual")
    assert "pass --model visual" in str(caught.value)
    assert RunBundle.load("visual").which == "visual" == RunBundle.load("visual", which="visual").which
    assert set(RunBundle.load("vggish").streams) == {"vggish"}


def _run_copy(tiny: Path, dest: Path, calibration: str | None = None) -> Path:
    """The tiny run's models and settings in ``dest``; ``calibration`` replaces its face_calibration."""
    shutil.copytree(tiny / "run" / "models", dest / "models")
    shutil.copy(tiny / "run" / "streams.json", dest)
    config = yaml.safe_load((tiny / "run" / "config.yaml").read_text())
    if calibration is not None:
        config["features"]["face_calibration"] = calibration
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


def test_predict_finds_the_calibration_set_stored_with_the_run(tiny, tmp_path) -> None:
    run = _run_copy(tiny, tmp_path / "run")
    assert RunBundle.load(run).config.features.face_calibration == "auto"  # an older run: float, no error
    crops = np.random.default_rng(0).integers(0, 256, (20, 112, 112, 3), dtype=np.uint8)
    save_calibration(run / CALIBRATION_FILE, crops, "test")
    for source in (run, run / "models" / "fusion", run / "models" / "fusion" / "fold0.pt"):
        stored = RunBundle.load(source).config.features.face_calibration
        assert stored == str(run / CALIBRATION_FILE)
        np.testing.assert_array_equal(calibration_crops(stored), crops)
    mine = RunBundle.load(run, feature_overrides=["features.face_calibration=none"])
    assert mine.config.features.face_calibration == "none" and calibration_crops("none") is None


def test_a_calibration_folder_that_is_gone_means_the_float_path(tiny, tmp_path) -> None:
    run = _run_copy(tiny, tmp_path / "run", str(tmp_path / "gone"))
    bundle = RunBundle.load(run)
    assert bundle.config.features.face_calibration == "none"
    assert any("is not here" in n and "float path" in n for n in bundle.notes)
    off = RunBundle.load(_run_copy(tiny, tmp_path / "off", "none"))
    assert off.config.features.face_calibration == "none" and not [n for n in off.notes if "calib" in n]
