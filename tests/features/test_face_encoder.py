"""The fast face path: same embeddings as the fp32 reference, precision chosen from the detected CPU flags
(simulated here), backends checked against each other; int8 keeps the embeddings of real faces; the
fingerprint says which precision made the features."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import SHARED_VIDEOS
from tests.test_cpu import AVX2_ONLY, _simulated
from vafusion import cpu
from vafusion.data.synth import render_face
from vafusion.errors import VafusionError
from vafusion.face.align import FaceAligner
from vafusion.face.detect import FaceDetector
from vafusion.features import face_encoder as fe
from vafusion.features.extractors import FeaturesConfig, IResNetExtractor
from vafusion.features.face_fused import fold_batchnorms
from vafusion.features.face_int8 import RECIPE, build_int8, export_onnx, load_calibration
from vafusion.io.onnx import session
from vafusion.io.video import iter_frames
from vafusion.models.iresnet import iresnet, preprocess

FP32_RTOL = 1e-4


BF16_COS_MIN = 0.998


BF16_MAX_REL = 0.10


INT8_COS_MIN = 0.99


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two embedding matrices."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch) -> None:
    """Choices and int8 models go to a temporary user cache, never the real one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fe, "_CHOSEN", {})


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([render_face(float(v), float(a), rng=rng) for v, a in rng.uniform(-1, 1, (12, 2))])


def fitted_iresnet18(faces: np.ndarray) -> nn.Module:
    """Fixed-seed IResNet-18 (He init) whose BatchNorm statistics are fitted on ``faces``, so its
    activations have a trained network's scale."""
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
        model(preprocess(faces))
    return model.eval()


@pytest.fixture(scope="module")
def net(crops: np.ndarray) -> nn.Module:
    """IResNet-18 fitted on rendered faces."""
    return fitted_iresnet18(crops)


@pytest.fixture(scope="module")
def reference(net: nn.Module, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(preprocess(crops)).numpy()


def _close_fp32(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() <= FP32_RTOL * np.abs(ref).max()


def _close_bf16(out: np.ndarray, ref: np.ndarray) -> None:
    cos = cosines(out, ref)
    assert cos.min() >= BF16_COS_MIN
    assert np.abs(out - ref).max() <= BF16_MAX_REL * np.abs(ref).max()


def test_selection_picks_fp32_when_flags_say_no_bf16(monkeypatch, net: nn.Module, crops, reference) -> None:
    monkeypatch.setattr(fe, "cpu_info", lambda: _simulated(AVX2_ONLY))
    monkeypatch.setattr(fe, "choose_precision", lambda info: cpu.choose_precision(info, bf16_kernels=True))
    path, run = fe.select_face_path(net, key=("test", "avx2"), batch=2, rounds=1)
    assert path.precision == "fp32" and path.backend in fe.BACKENDS
    assert "no native bf16" in path.reason
    _close_fp32(np.asarray(run(preprocess(crops))), reference)
    again, _ = fe.select_face_path(net, key=("test", "avx2"), batch=2)
    assert again is path or not fe.onnxruntime_available()  # remembered: no second race


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


@pytest.fixture(scope="module")
def real_faces() -> np.ndarray:
    """48 real aligned crops (vafusion's detector and aligner): 32 of one person, then 16 of another."""
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"real test videos not found at {SHARED_VIDEOS}")
    detector, aligner, out = FaceDetector(), FaceAligner(), []
    for video, want in (("d11", 32), ("s32", 16)):
        got = 0
        for frame in iter_frames(SHARED_VIDEOS / f"{video}.mp4"):
            boxes = detector.detect(frame.image) if frame.index % 3 == 0 else []
            if boxes and got < want:
                out.append(aligner.align(frame.image, max(boxes, key=lambda b: b.area))[0])
                got += 1
            if got == want:
                break
    return np.stack(out)


@pytest.fixture(scope="module")
def real_net(real_faces: np.ndarray) -> nn.Module:
    """IResNet-18 fitted on the 32 first real faces."""
    return fitted_iresnet18(real_faces[:32])


@pytest.mark.skipif(not fe.onnxruntime_available(), reason="onnxruntime not installed (the onnx extra)")
def test_int8_keeps_the_embeddings_of_held_out_real_faces(
    real_net: nn.Module, real_faces: np.ndarray
) -> None:
    calibration, held_out = real_faces[:32], real_faces[32:]  # another person than the calibration set
    enc = fe.FaceEncoder(real_net, batch=8, precision="int8", calibration=calibration)
    assert (enc.path.precision, enc.path.backend) == ("int8", "onnxruntime")
    with torch.no_grad():
        ref = real_net(preprocess(held_out)).numpy()
    out = enc(held_out)
    cos = cosines(out, ref)
    assert out.shape == (16, 512) and cos.min() >= INT8_COS_MIN
    cached = list((Path(cpu.cache_dir()) / "int8").glob("*.onnx"))
    assert len(cached) == 1  # the quantised model is kept for the next process
    again = fe.FaceEncoder(real_net, batch=8, precision="int8", calibration=calibration)
    np.testing.assert_array_equal(again(held_out), out)


@pytest.mark.skipif(not fe.onnxruntime_available(), reason="onnxruntime not installed (the onnx extra)")
def test_int8_builds_where_the_exporter_shares_equal_constants(crops) -> None:
    """BatchNorms at their defaults fold into all-zero biases, which the ONNX exporter stores once and
    names through Identity nodes: the int8 build reads them through those (it raised KeyError before and
    the race silently left int8 out)."""
    import onnx

    torch.manual_seed(0)
    net = iresnet("iresnet18").eval()
    folded = fold_batchnorms(net)
    exported = onnx.load_from_string(export_onnx(folded))
    assert any(n.op_type == "Identity" for n in exported.graph.node)
    model = onnx.load_from_string(build_int8(folded, crops, 2))
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.initializer}
    assert all(i in produced for n in model.graph.node for i in n.input if i != "faces")
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 0
    out = session(model.SerializeToString(), 2).run(None, {"faces": preprocess(crops).numpy()})[0]
    with torch.no_grad():
        ref = net(preprocess(crops)).numpy()
    cos = cosines(out, ref)
    assert cos.min() >= INT8_COS_MIN


def test_fingerprint_says_which_precision_made_the_features(tmp_path, net: nn.Module, crops) -> None:
    weights = tmp_path / "backbone.pth"
    torch.save(net.state_dict(), weights)
    folder = tmp_path / "calib" / "video"
    folder.mkdir(parents=True)
    for i, crop in enumerate(np.concatenate([crops, crops[::-1]])[:16]):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    prints = {
        p: IResNetExtractor("iresnet18", str(weights), precision=p, backend="torch").fingerprint
        for p in ("fp32", "bf16")
    }
    if fe.onnxruntime_available():
        int8 = IResNetExtractor(
            "iresnet18", str(weights), precision="int8", calibration=str(tmp_path / "calib")
        )
        assert int8.params["precision"] == "int8" and int8.params["int8"]["recipe"] == RECIPE
        prints["int8"] = int8.fingerprint
    assert len(set(prints.values())) == len(prints)
    cfg = FeaturesConfig(iresnet_arch="iresnet18", iresnet_weights=str(weights), face_precision="fp32")
    assert IResNetExtractor.from_config(cfg).fingerprint == prints["fp32"]


def test_calibration_needs_enough_real_crops(tmp_path) -> None:
    with pytest.raises(VafusionError, match="fewer than 16"):
        load_calibration(tmp_path)
    np.savez(tmp_path / "c.npz", crops=np.zeros((40, 112, 112, 3), np.uint8))
    assert load_calibration(tmp_path / "c.npz", limit=24).shape == (24, 112, 112, 3)
