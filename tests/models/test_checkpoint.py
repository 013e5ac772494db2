"""Checkpoints are class + constructor arguments + weights + what the model was trained on, and files of
the earlier format (version 1) still load to the same network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vafusion.errors import WeightsError
from vafusion.models.checkpoint import Checkpoint
from vafusion.models.normaliser import Normaliser
from vafusion.models.registry import create_model
from vafusion.weights import load_checkpoint, save_checkpoint

DIMS = {"visual": 6, "vggish": 4, "logmel": 5}


def _checkpoint() -> Checkpoint:
    torch.manual_seed(3)
    net = create_model("fusion", dims=DIMS, tcn_channels=4, attn_dim=8, head_hidden=8).eval()
    norm = Normaliser(
        {r: np.arange(d, dtype=np.float32) for r, d in DIMS.items()},
        {r: np.full(d, 2.0, np.float32) for r, d in DIMS.items()},
    )
    features = {"visual": {"extractor": "landmarks", "fingerprint": "abc", "params": {"face_stride": 2}}}
    return Checkpoint(
        net,
        norm,
        {"visual": "landmarks", "vggish": "egemaps", "logmel": "logmel"},
        "fusion",
        25.0,
        300,
        150,
        features,
        {"cv": {"eval_window": 300}},
        {"fold": 3},
    )


def _same_outputs(a, b) -> None:
    g = torch.Generator().manual_seed(1)
    feats = {r: torch.randn(1, 20, d, generator=g) for r, d in DIMS.items()}
    valid = {r: torch.ones(1, 20, dtype=torch.bool) for r in DIMS}
    with torch.no_grad():
        torch.testing.assert_close(a(feats, valid), b(feats, valid), rtol=0, atol=0)


def test_round_trip_keeps_network_normaliser_and_facts(tmp_path) -> None:
    ckpt = _checkpoint()
    save_checkpoint(tmp_path / "fold3.pt", ckpt)
    back = load_checkpoint(tmp_path / "fold3.pt")
    _same_outputs(ckpt.net, back.net)
    assert back.net.cfg == ckpt.net.cfg and back.net.specs == ckpt.net.specs
    assert back.streams == ckpt.streams and back.model == "fusion" and back.fold == 3
    assert (back.fps, back.window, back.hop) == (25.0, 300, 150)
    assert back.features == ckpt.features
    np.testing.assert_array_equal(back.normaliser.mean["vggish"], ckpt.normaliser.mean["vggish"])


def test_a_version_1_file_still_loads(tmp_path) -> None:
    ckpt = _checkpoint()
    net = ckpt.net
    old = {
        "format": "vafusion-model/1",
        "net": {
            **{k: v for k, v in vars(net.cfg).items() if k != "attn_span"},
            "outputs": 2,
            "branches": [[b.name, b.dim] for b in net.specs],
        },
        "streams": ckpt.streams,
        "norm": ckpt.normaliser.state(),
        "state_dict": net.state_dict(),
        "config": {"cv": {"eval_window": 200, "eval_hop": 100}},
        "extra": {"model": "fusion", "fold": 1},
    }
    torch.save(old, tmp_path / "fold1.pt")
    back = load_checkpoint(tmp_path / "fold1.pt")
    assert back.net.cfg.attn_span == 0  # version 1 without attention spans: full-window attention
    assert (back.window, back.hop, back.fold, back.model, back.features) == (200, 100, 1, "fusion", {})


def test_foreign_and_damaged_files_are_one_line_errors(tmp_path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a vafusion model checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    payload = _checkpoint().to_payload()
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if "head" not in k}
    torch.save(payload, tmp_path / "cut.pt")
    with pytest.raises(WeightsError, match="does not match its network"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "half.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:300])
    with pytest.raises(WeightsError, match="not a readable vafusion checkpoint"):
        load_checkpoint(tmp_path / "half.pt")
