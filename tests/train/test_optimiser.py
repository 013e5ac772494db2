"""The training optimiser: AdamW's multi-tensor implementation, which must not change any result."""

from __future__ import annotations

import copy

import torch

from vafusion.metrics import ccc_loss
from vafusion.models.registry import create_model
from vafusion.train.module import FOREACH


def _train(net: torch.nn.Module, foreach: bool | None, steps: int = 5) -> torch.Tensor:
    """``steps`` AdamW steps of the 1 - CCC loss with dropout on; the parameters afterwards, flattened."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2, foreach=foreach)
    gen = torch.Generator().manual_seed(1)
    net.train()
    for step in range(steps):
        torch.manual_seed(step)
        feats = {
            r: torch.randn(2, 40, d, generator=gen) for r, d in (("visual", 12), ("vggish", 6), ("logmel", 5))
        }
        valid = {r: torch.rand(2, 40, generator=gen) > 0.1 for r in feats}
        labels = torch.rand(2, 40, 2, generator=gen) * 2 - 1
        opt.zero_grad(set_to_none=True)
        ccc_loss(net(feats, valid), labels, torch.ones(2, 40, dtype=torch.bool)).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_foreach_adamw_trains_exactly_as_the_default_loop():
    torch.manual_seed(0)
    net = create_model("fusion", dims={"visual": 12, "vggish": 6, "logmel": 5})
    with torch.random.fork_rng():
        loop = _train(copy.deepcopy(net), foreach=False)
    with torch.random.fork_rng():
        multi = _train(copy.deepcopy(net), foreach=FOREACH)
    assert FOREACH is True
    assert not torch.equal(loop, torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(loop, multi)
