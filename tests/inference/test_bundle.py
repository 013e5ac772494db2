"""Loading runs for inference: a run directory, one of its model folders, a single checkpoint or a
registered untrained model all give the same kind of bundle; the checkpoints say what made their features."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers import SHARED_VIDEOS
from vafusion.cli import main
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
