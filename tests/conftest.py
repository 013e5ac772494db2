"""Shared fixtures (helpers that write media and corpora are in ``tests/helpers.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import SHARED_VIDEOS, build_tiny_run
from vafusion.cpu import torch_threads
from vafusion.inference.predictor import Predictor

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read or write the user's ``~/.cache/vafusion`` (remembered face paths, int8 models)."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """A module's tests on one torch thread (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    with torch_threads(1):
        yield


@pytest.fixture
def shared_videos() -> Path:
    """The real face videos of ``../shared/testdata/videos``."""
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"real test videos not found at {SHARED_VIDEOS}")
    return SHARED_VIDEOS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run (``tiny / "run"``) with its dataset (``data``) and features (``feats``)."""
    return build_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(tiny: Path) -> Predictor:
    """``Predictor.from_run`` of the tiny run (both fold models averaged)."""
    return Predictor.from_run(tiny / "run")
