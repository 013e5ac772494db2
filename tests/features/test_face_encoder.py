"""The fast face path: same embeddings as the fp32 reference, precision chosen from the detected CPU flags
(simulated here), backends checked against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_cpu import AVX2_ONLY, _simulated
from vafusion import cpu
from vafusion.data.synth import render_face
from vafusion.features import face_encoder as fe
from vafusion.features.extractors import IResNetExtractor
from vafusion.models.iresnet import iresnet, preprocess

FP32_RTOL = 1e-4


BF16_COS_MIN = 0.998


BF16_MAX_REL = 0.10


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([render_face(float(v), float(a), rng=rng) for v, a in rng.uniform(-1, 1, (12, 2))])


@pytest.fixture(scope="module")
def net(crops: np.ndarray) -> nn.Module:
    """Fixed-seed IResNet-18 whose BatchNorm statistics are fitted on faces (trained-network scale)."""
    torch.manual_seed(0)
    model = iresnet("iresnet18")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(preprocess(crops))
    return model.eval()


@pytest.fixture(scope="module")
def reference(net: nn.Module, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(preprocess(crops)).numpy()


def _close_fp32(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() <= FP32_RTOL * np.abs(ref).max()


def _close_bf16(out: np.ndarray, ref: np.ndarray) -> None:
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= BF16_COS_MIN
    assert np.abs(out - ref).max() <= BF16_MAX_REL * np.abs(ref).max()


def test_selection_picks_fp32_when_flags_say_no_bf16(monkeypatch, net: nn.Module, crops, reference) -> None:
    monkeypatch.setattr(fe, "cpu_info", lambda: _simulated(AVX2_ONLY))
    monkeypatch.setattr(fe, "_CHOSEN", {})
    path, run = fe.select_face_path(net, key=("test", "avx2"), calibration_faces=2, repeats=1)
    assert path.precision == "fp32" and path.backend in fe.BACKENDS
    assert "no native bf16" in path.reason
    _close_fp32(np.asarray(run(preprocess(crops))), reference)
    again, _ = fe.select_face_path(net, key=("test", "avx2"))
    assert again is path  # cached per process: no second race


def test_fp32_torch_path_matches_reference(net: nn.Module, crops, reference) -> None:
    enc = fe.FaceEncoder(net, batch=5, precision="fp32", backend="torch")
    _close_fp32(enc(crops), reference)
    assert enc(crops[:0]).shape == (0, 512)


def test_folding_batchnorms_keeps_the_function(net: nn.Module) -> None:
    x = torch.randn(3, 3, 112, 112)
    folded = fe.fold_batchnorms(net)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) < sum(
        isinstance(m, nn.BatchNorm2d) for m in net.modules()
    )
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert torch.allclose(out, ref, rtol=0, atol=FP32_RTOL * float(ref.abs().max()))


@pytest.mark.skipif(not fe.onnxruntime_available(), reason="onnxruntime not installed (the onnx extra)")
def test_onnxruntime_path_matches_reference(net: nn.Module, crops, reference) -> None:
    _close_fp32(fe.FaceEncoder(net, batch=8, precision="fp32", backend="onnxruntime")(crops), reference)


@pytest.mark.skipif(
    cpu.choose_precision(cpu.cpu_info()) != "bf16",
    reason="this CPU has no native bf16 (emulated bf16 is ~100x slower; never chosen)",
)
def test_bf16_path_matches_reference_within_tolerance(net: nn.Module, crops, reference) -> None:
    _close_bf16(fe.FaceEncoder(net, batch=8, precision="bf16", backend="torch")(crops), reference)


def test_iresnet_extractor_uses_the_fast_path(tmp_path, net: nn.Module, crops, reference) -> None:
    weights = tmp_path / "backbone.pth"
    torch.save(net.state_dict(), weights)
    ext = IResNetExtractor("iresnet18", str(weights), batch=8)
    want = cpu.choose_precision(cpu.cpu_info())
    assert ext.params["precision"] == want
    out = ext.encode(crops)
    assert isinstance(ext.encoder, fe.FaceEncoder) and ext.encoder.precision == want
    (_close_bf16 if want == "bf16" else _close_fp32)(out, reference)
    other = IResNetExtractor("iresnet18", str(weights), precision="bf16" if want == "fp32" else "fp32")
    assert other.fingerprint != ext.fingerprint
