"""The model registry: every registered name builds, trains a step and keeps its streams; names and
settings that do not exist are one-line errors that say what does."""

from __future__ import annotations

import pytest
import torch

import vafusion
from vafusion.errors import VafusionError
from vafusion.models.fusion import FusionConfig
from vafusion.models.registry import PAPER_DIMS, ROLES, create_model, model_entry, model_names


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_runs_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    net = create_model(name, tcn_channels=4, attn_dim=8, head_hidden=8)
    roles = model_entry(name).roles
    assert net.names == list(roles)
    feats = {r: torch.randn(2, 30, PAPER_DIMS[r], requires_grad=True) for r in roles}
    valid = {r: torch.rand(2, 30) > 0.2 for r in roles}
    out = net(feats, valid)
    assert out.shape == (2, 30, 2) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(feats[r].grad is not None and feats[r].grad.abs().sum() > 0 for r in roles)


def test_trainable_models_are_the_papers_and_fusion_queries_with_the_face() -> None:
    assert model_names(trainable=True) == ["fusion", "visual", "vggish", "logmel"]
    assert model_entry("fusion").roles == ROLES and ROLES[0] == "visual"
    assert "vafusion_tiny" in model_names() and "vafusion_tiny" not in model_names(trainable=True)


def test_overrides_and_dims_reach_the_network() -> None:
    net = create_model(
        "fusion", dims={"visual": 136, "vggish": 25}, tcn_channels=6, kernel_sizes=[3, 5], attn_span=0
    )
    assert [s.dim for s in net.specs] == [136, 25, 128]
    assert net.cfg == FusionConfig(tcn_channels=6, kernel_sizes=[3, 5], attn_span=0)
    assert net.branches["visual"].out_dim == 12


def test_the_tiny_model_is_tiny_and_the_paper_model_is_not() -> None:
    tiny = sum(p.numel() for p in create_model("vafusion_tiny").parameters())
    full = sum(p.numel() for p in create_model("fusion").parameters())
    assert 10 * tiny < full


def test_unknown_names_and_settings_are_one_line_errors() -> None:
    with pytest.raises(VafusionError, match="unknown model 'fuson'.*fusion, visual"):
        create_model("fuson")
    with pytest.raises(VafusionError, match="unknown model setting 'tcn_chanels'"):
        create_model("fusion", tcn_chanels=8)


def test_create_model_is_the_public_factory() -> None:
    assert vafusion.create_model is create_model
