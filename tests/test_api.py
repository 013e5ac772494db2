"""The public API: the names the README shows import from ``vafusion`` itself, lazily, and behave."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import vafusion
from vafusion.models.vggish import VGGish

PUBLIC = ["vggish_examples", "load_vggish", "load_iresnet", "ccc", "Predictor", "create_model"]


def test_public_names_are_listed_and_importable() -> None:
    assert sorted(vafusion.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert callable(getattr(vafusion, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vafusion.nope  # noqa: B018


def test_import_is_cheap_until_a_name_is_used() -> None:
    code = (
        "import sys, vafusion; assert 'torch' not in sys.modules, 'torch imported'; "
        "vafusion.ccc; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_examples_ccc_and_models_through_the_top_level() -> None:
    sr = 16000
    wave = np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr).astype(np.float32)
    assert vafusion.vggish_examples(wave, sr).shape == (2, 96, 64)
    assert vafusion.ccc([0.1, 0.5, -0.2], [0.1, 0.5, -0.2]) == pytest.approx(1.0)
    net = vafusion.create_model("vafusion_tiny", dims={"visual": 8, "vggish": 4, "logmel": 4})
    feats = {r: torch.zeros(1, 5, d) for r, d in (("visual", 8), ("vggish", 4), ("logmel", 4))}
    assert net(feats, {r: torch.ones(1, 5, dtype=torch.bool) for r in feats}).shape == (1, 5, 2)


def test_load_vggish_with_pca_post_processes_in_forward(tmp_path) -> None:
    torch.manual_seed(0)
    ref = VGGish()
    torch.save(ref.state_dict(), tmp_path / "vggish.pth")
    rng = np.random.default_rng(0)
    torch.save(
        {
            "pca_eigen_vectors": torch.as_tensor(rng.standard_normal((128, 128)), dtype=torch.float32),
            "pca_means": torch.as_tensor(rng.standard_normal(128), dtype=torch.float32),
        },
        tmp_path / "pca.pth",
    )
    raw_net = vafusion.load_vggish(tmp_path / "vggish.pth")
    post_net = vafusion.load_vggish(tmp_path / "vggish.pth", pca=tmp_path / "pca.pth")
    x = torch.randn(2, 96, 64) * 3
    with torch.no_grad():
        raw, post = raw_net(x), post_net(x)
    torch.testing.assert_close(post, post_net.postprocess(raw))
    assert torch.all(post == torch.round(post)) and post.min() >= 0 and post.max() <= 255
