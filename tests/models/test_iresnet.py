"""ArcFace IResNet: arcface_torch key layout, block wiring against a float64 layer-by-layer reference,
and the input normalisation."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vafusion.models import iresnet as ir


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics/affines and PReLU slopes so that their order matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean") or (name.endswith(".bias") and "bn" in name):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("prelu.weight"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5)
            elif re.search(r"(bn\d|downsample\.1)\.weight$", name):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
        # keep activations in a sane range through 8 residual blocks
        for name, t in model.named_parameters():
            if name.endswith(("conv1.weight", "conv2.weight")) or "downsample.0" in name:
                t.mul_(0.3)


@pytest.fixture(scope="module")
def r18() -> ir.IResNet:
    torch.manual_seed(0)
    model = ir.iresnet("iresnet18")
    _randomise_norms(model, 1)
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "n_keys", "blocks"),
    [("iresnet18", 187, (2, 2, 2, 2)), ("r34", 331, (3, 4, 6, 3)), ("iresnet50", 475, (3, 4, 14, 3))],
)
def test_state_dict_layout(arch: str, n_keys: int, blocks: tuple[int, ...]) -> None:
    sd = ir.iresnet(arch).state_dict()
    assert len(sd) == n_keys
    for stage, depth in enumerate(blocks, start=1):
        ids = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        assert ids == set(range(depth))
        assert f"layer{stage}.0.downsample.0.weight" in sd and f"layer{stage}.1.downsample.0.weight" not in sd
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["prelu.weight"] == (64,)
    assert shapes["layer2.0.bn1.weight"] == (64,)  # block BN1 acts on the block input
    assert shapes["layer2.0.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["bn2.weight"] == (512,)
    assert shapes["fc.weight"] == (512, 512 * 7 * 7)
    assert shapes["features.running_var"] == (512,)
    block_keys = sorted({k.split(".", 2)[2].split(".")[0] for k in sd if k.startswith("layer1.0.")})
    assert block_keys == ["bn1", "bn2", "bn3", "conv1", "conv2", "downsample", "prelu"]


def test_iresnet100_depths() -> None:
    assert ir.ARCH_LAYERS["iresnet100"] == (3, 13, 30, 3)
    assert ir.canonical_arch("R100") == "iresnet100"
    with pytest.raises(ValueError):
        ir.canonical_arch("iresnet101")


def _bn(h: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(
        h,
        sd[p + "running_mean"].double(),
        sd[p + "running_var"].double(),
        sd[p + "weight"].double(),
        sd[p + "bias"].double(),
        training=False,
        eps=1e-5,
    )


def _functional_iresnet(
    sd: dict[str, torch.Tensor], x: torch.Tensor, blocks: tuple[int, ...]
) -> torch.Tensor:
    """arcface_torch IResNet written out in float64 from the state dict: per block
    BN1 -> conv3x3 -> BN2 -> PReLU -> conv3x3 with the stride -> BN3, plus the (1x1 conv + BN) shortcut."""
    h = F.conv2d(x.double(), sd["conv1.weight"].double(), padding=1)
    h = F.prelu(_bn(h, sd, "bn1."), sd["prelu.weight"].double())
    for stage, depth in enumerate(blocks, start=1):
        for b in range(depth):
            p = f"layer{stage}.{b}."
            stride = 2 if b == 0 else 1
            out = F.conv2d(_bn(h, sd, p + "bn1."), sd[p + "conv1.weight"].double(), padding=1)
            out = F.prelu(_bn(out, sd, p + "bn2."), sd[p + "prelu.weight"].double())
            out = F.conv2d(out, sd[p + "conv2.weight"].double(), stride=stride, padding=1)
            out = _bn(out, sd, p + "bn3.")
            if b == 0:
                shortcut = F.conv2d(h, sd[p + "downsample.0.weight"].double(), stride=2)
                shortcut = _bn(shortcut, sd, p + "downsample.1.")
            else:
                shortcut = h
            h = out + shortcut
    h = _bn(h, sd, "bn2.").flatten(1)
    h = h @ sd["fc.weight"].double().T + sd["fc.bias"].double()
    return _bn(h, sd, "features.")


def test_forward_matches_float64_layerwise(r18: ir.IResNet) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        out = r18(x)
        fmap = r18.forward_features(x)
        ref = _functional_iresnet(r18.state_dict(), x, (2, 2, 2, 2))
    assert out.shape == (2, 512) and fmap.shape == (2, 512, 7, 7)
    assert ref.abs().mean() > 1e-3
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))
    torch.testing.assert_close(r18.head(fmap), out)


def test_eval_mode_is_deterministic_and_checks_input(r18: ir.IResNet) -> None:
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        a = r18(x)
        b = r18(x[:1])
    torch.testing.assert_close(a[:1], b, rtol=1e-4, atol=1e-5)  # no batch statistics used in eval
    with pytest.raises(ValueError):
        r18(torch.zeros(1, 3, 96, 96))


def test_features_bn_scale_is_frozen_at_one() -> None:
    model = ir.iresnet("r18")
    assert torch.all(model.features.weight == 1.0) and not model.features.weight.requires_grad


def test_preprocess_normalisation_and_channel_order() -> None:
    img = np.zeros((112, 112, 3), dtype=np.uint8)
    img[..., 0] = 255  # R
    img[..., 1] = 0  # G
    img[..., 2] = 51  # B
    out = ir.preprocess(np.stack([img, 255 - img]))
    assert out.shape == (2, 3, 112, 112) and out.dtype == torch.float32
    assert torch.all(out[0, 0] == 1.0) and torch.all(out[0, 1] == -1.0)
    torch.testing.assert_close(out[0, 2], torch.full((112, 112), 51 / 255 * 2 - 1))
    torch.testing.assert_close(out[1], -out[0])
    assert ir.preprocess(img).shape == (1, 3, 112, 112)
    with pytest.raises(TypeError):
        ir.preprocess(img.astype(np.float32))
    with pytest.raises(ValueError):
        ir.preprocess(np.zeros((1, 3, 112, 112), dtype=np.uint8))
