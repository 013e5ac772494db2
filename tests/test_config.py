"""Configuration: the shipped experiment configs load by name or path, from the source tree and from an
installed wheel; unknown names say which exist."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO
from vafusion.config import config_file, config_names, load_config
from vafusion.errors import VafusionError
from vafusion.pipeline import parse_models


def test_shipped_configs_load_by_name_and_by_path() -> None:
    assert {"demo", "paper", "debug/fast"} <= set(config_names())
    paper = load_config("paper")
    assert paper.model.tcn_channels == 128 and paper.features.visual == "iresnet"
    assert load_config(config_file("paper")) == paper
    assert load_config("debug/fast.yaml").train.max_epochs == 2


def test_an_unknown_config_names_the_shipped_ones() -> None:
    with pytest.raises(VafusionError, match="config file not found.*debug/fast, demo, paper"):
        load_config("papr")


@pytest.mark.slow
def test_a_built_wheel_carries_the_configs(tmp_path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("vafusion-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "vafusion/configs/paper.yaml",
        "vafusion/configs/demo.yaml",
        "vafusion/configs/debug/fast.yaml",
    } <= names


def test_models_named_twice_are_refused() -> None:
    """Two workers would train the same (model, fold) into the same folder at once."""
    with pytest.raises(VafusionError, match="--models 'vggish,vggish' names a model twice"):
        parse_models("vggish,vggish", load_config())
    assert parse_models("vggish,visual", load_config()) == ["vggish", "visual"]


def test_a_config_file_yaml_cannot_parse_names_its_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_epochs: [\n")
    with pytest.raises(VafusionError, match=r"bad.yaml: is not valid YAML at line 3, column 1 .*fix the"):
        load_config(bad)
