"""The VGGish network and the VGG log-mel encoder: torchvggish's state-dict layout, layer-by-layer numerics
against a float64 functional re-implementation, and the AudioSet PCA post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vafusion.models import vggish as vg

PUBLISHED_LAYOUT = {
    "features.0.weight": (64, 1, 3, 3),
    "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3),
    "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3),
    "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3),
    "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3),
    "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3),
    "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288),
    "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096),
    "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096),
    "embeddings.4.bias": (128,),
}


@pytest.fixture(scope="module")
def model() -> vg.VGGish:
    torch.manual_seed(0)
    return vg.VGGish().eval()


def test_state_dict_layout_is_torchvggish(model: vg.VGGish) -> None:
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == PUBLISHED_LAYOUT


def _functional_vggish(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """VGGish written out layer by layer in float64, flattening in TensorFlow's NHWC order."""
    h = x.double().unsqueeze(1)  # (N, 1, 96, 64)
    for i, pool_after in ((0, True), (3, True), (6, False), (8, True), (11, False), (13, True)):
        weight, bias = sd[f"features.{i}.weight"].double(), sd[f"features.{i}.bias"].double()
        h = F.relu(F.conv2d(h, weight, bias, padding=1))
        if pool_after:
            h = F.max_pool2d(h, 2)
    n = h.shape[0]
    h = h.permute(0, 2, 3, 1).reshape(n, 6 * 4 * 512)  # (N, time, band, channel)
    for i in (0, 2, 4):
        h = F.relu(h @ sd[f"embeddings.{i}.weight"].double().T + sd[f"embeddings.{i}.bias"].double())
    return h


def test_forward_matches_float64_layerwise(model: vg.VGGish) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 96, 64) * 3.0
    with torch.no_grad():
        out = model(x)
        ref = _functional_vggish(model.state_dict(), x)
        out4 = model(x.unsqueeze(1))
    assert out.shape == (2, 128)
    assert (ref > 0).sum() > 10  # the check is not vacuous (not all ReLU-zero)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out4, out)
    # NCHW flattening (the classic porting bug) gives a different answer
    with torch.no_grad():
        wrong = model.embeddings(model.features(x.unsqueeze(1)).reshape(2, -1))
    assert not torch.allclose(wrong, out, atol=1e-3)
    with pytest.raises(ValueError):
        model(torch.zeros(2, 64, 96))


def test_postprocess_matches_formula(model: vg.VGGish) -> None:
    rng = np.random.default_rng(5)
    eigen = rng.standard_normal((128, 128)) * 0.5
    means = rng.standard_normal(128)
    emb = rng.standard_normal((4, 128)) * 2
    m = vg.VGGish()
    with pytest.raises(RuntimeError):
        m.postprocess(torch.zeros(1, 128))
    m.set_pca(eigen, means)
    out = m.postprocess(torch.as_tensor(emb, dtype=torch.float32)).numpy()
    expected = np.round((np.clip((emb - means) @ eigen.T, -2, 2) + 2) * 255 / 4)
    assert out.shape == (4, 128)
    assert np.all(out == np.round(out)) and out.min() >= 0 and out.max() <= 255
    assert (out == 0).any() and (out == 255).any()  # clipping happened on both sides
    assert np.mean(out != expected) < 0.01  # float32 vs float64 may flip a rare .5 rounding
    np.testing.assert_allclose(out, expected, atol=1.0)
    with pytest.raises(ValueError):
        m.set_pca(eigen[:64], means)


def test_logmel_encoder_is_vggish_over_any_batch_shape(model: vg.VGGish) -> None:
    enc = vg.VGGLogMelEncoder().eval()
    enc.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        out = enc(x)
        ref = model(x.reshape(6, 96, 64)).reshape(2, 3, 128)
    assert out.shape == (2, 3, 128)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError):
        enc(torch.zeros(96, 63))


def test_forward_applies_the_postprocessing_once_pca_is_attached(model: vg.VGGish) -> None:
    rng = np.random.default_rng(6)
    m = vg.VGGish().eval()
    m.load_state_dict(model.state_dict())
    x = torch.randn(3, 96, 64) * 3.0
    with torch.no_grad():
        raw = m(x)
        m.set_pca(rng.standard_normal((128, 128)) * 0.5, rng.standard_normal(128))
        post = m(x)
        torch.testing.assert_close(m.embed(x), raw)
        torch.testing.assert_close(post, m.postprocess(raw))
    assert not torch.allclose(post, raw)
    assert torch.all(post == torch.round(post)) and post.min() >= 0 and post.max() <= 255
