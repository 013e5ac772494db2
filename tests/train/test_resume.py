"""A run stopped after any epoch and resumed from its ``last.ckpt`` ends with the uninterrupted run's
weights: the optimiser, the learning-rate schedule and early stopping all continue where they were."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_NET, write_linear_feature_corpus
from vafusion.config import load_config
from vafusion.data.affwild2 import scan
from vafusion.data.sequence import load_sequence
from vafusion.features.extractors import resolve_streams
from vafusion.train.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCHS = 5
# plateau_patience 0: the learning rate falls after every epoch that does not beat the best, so a step the
# scheduler missed (or took twice) on resume changes the weights of every later epoch
TINY = [
    *TINY_NET,
    f"train.patience={EPOCHS}",
    "train.plateau_patience=0",
    "train.plateau_factor=0.3",
    "train.lr=0.01",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    root = tmp_path_factory.mktemp("resume")
    write_linear_feature_corpus(root, videos=6, frames=120, seed=5, noise=2.0)
    streams, _ = resolve_streams(load_config(None, TINY).features)
    seqs = [load_sequence(s, root / "feats", streams, ["visual"]) for s in scan(root / "data").samples]
    return seqs[2:], seqs[:2]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    """The uninterrupted run's weights and work folder."""
    work = tmp_path_factory.mktemp("reference")
    return _fit(data, work, EPOCHS), work


def _fit(data: tuple[list, list], work: Path, epochs: int, resume: bool = False) -> dict[str, torch.Tensor]:
    cfg = load_config(None, [*TINY, f"train.max_epochs={epochs}"])
    net, _, facts = fit(*data, "visual", cfg, work, seed=3, resume=resume)
    assert facts["epochs"] == epochs
    return net.state_dict()


@pytest.mark.parametrize("stopped_after", [0, 1, 2])
def test_resumed_after_any_epoch_ends_with_the_same_weights(data, reference, tmp_path, stopped_after):
    ref = reference[0]
    work = tmp_path / "stopped"
    _fit(data, work, stopped_after + 1)  # its last.ckpt is what a run killed after that epoch leaves
    assert torch.load(work / "last.ckpt", weights_only=True)["epoch"] == stopped_after  # even if not the best
    got = _fit(data, work, EPOCHS, resume=True)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_the_schedule_lowers_the_learning_rate_in_this_setting(reference):
    """The test above only means something if the plateau scheduler acts within the run."""
    ckpt = torch.load(reference[1] / "last.ckpt", weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] < 0.01
