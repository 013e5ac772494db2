"""The fused torch face path computes the IResNet it was built from: BatchNorms folded (the one before each
block's first convolution with its border correction), residual additions fused, head folded, layers run in
chunks; with oneDNN's fused op and without; and no layer's activation outgrows the chunk budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vafusion import cpu
from vafusion.features import face_fused as ff
from vafusion.models.iresnet import iresnet

FP32_REL = 2e-5


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """IResNet-18 with BatchNorms far from identity (negative scales, large shifts) and PReLU slopes
    outside [0, 1], so that every fold and the border correction are exercised."""
    torch.manual_seed(0)
    model = iresnet("iresnet18").eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.normal_(0, 0.5)
        elif isinstance(m, nn.PReLU):
            m.weight.data.uniform_(-0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.randn(6, 3, 112, 112, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(net: nn.Module, faces: torch.Tensor) -> np.ndarray:
    """The plain network in float64."""
    with torch.no_grad():
        out = net.double()(faces.double()).numpy()
    net.float()
    return out


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("fused", [True, False])
def test_fp32_matches_the_plain_network(net, faces, reference, fused: bool) -> None:
    if fused and not ff.pointwise_available(torch.float32):
        pytest.skip("this torch has no oneDNN fused convolution")
    out = ff.FusedIResNet(net, torch.float32, fused=fused)(faces).numpy()
    assert out.shape == (6, 512) and out.dtype == np.float32
    assert _rel(out, reference) <= FP32_REL


def test_chunks_do_not_change_the_result(net, faces) -> None:
    whole = ff.FusedIResNet(net, torch.float32, chunk_bytes=16 << 20)
    small = ff.FusedIResNet(net, torch.float32, chunk_bytes=1 << 20)
    assert len(small.plan(len(faces))) > 1 and small.plan(len(faces))[0][0] == 1
    np.testing.assert_allclose(small(faces).numpy(), whole(faces).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 7, 32, 64])
def test_plan_keeps_every_activation_within_the_budget(net, dtype: torch.dtype, n: int) -> None:
    model = ff.FusedIResNet(net, dtype, fused=False)
    plan = model.plan(n)
    assert [s for _, steps in plan for s in steps] == [s for _, s in model.steps]
    budget = {id(s): nbytes for nbytes, s in model.steps}
    for per_call, steps in plan:
        assert 1 <= per_call <= n
        assert all(per_call == 1 or per_call * budget[id(s)] <= model.chunk_bytes for s in steps)
    assert model.plan(n)[-1][0] == n  # the deep layers see the whole batch


def test_budget_must_stay_under_the_mmap_threshold(net) -> None:
    with pytest.raises(ValueError, match="mmap threshold"):
        ff.FusedIResNet(net, chunk_bytes=ff.MMAP_THRESHOLD)


def test_empty_batch_and_wrong_shape(net) -> None:
    model = ff.FusedIResNet(net, fused=False)
    assert model(torch.zeros(0, 3, 112, 112)).shape == (0, 512)
    with pytest.raises(ValueError, match=r"\(N, 3, 112, 112\)"):
        model(torch.zeros(2, 3, 96, 96))


@pytest.mark.skipif(
    cpu.choose_precision(cpu.cpu_info()) != "bf16",
    reason="this CPU has no native bf16 (emulated bf16 is ~100x slower; never chosen)",
)
def test_bf16_keeps_the_embeddings(net, faces, reference) -> None:
    out = ff.FusedIResNet(net, torch.bfloat16)(faces).numpy()
    cos = (out * reference).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1))
    assert cos.min() >= 0.999
