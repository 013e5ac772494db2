"""The fast face path (vafusion.accel): same embeddings as the fp32 reference, precision chosen from the
detected CPU flags (simulated here), and the encode-every-k-th-face stride."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from vafusion import accel
from vafusion.config import FeaturesConfig
from vafusion.data.affwild2 import Sample
from vafusion.errors import VafusionError
from vafusion.features.extract import ExtractorStats, configured_extractor, face_features
from vafusion.features.extractors import IResNetExtractor
from vafusion.features.iresnet import iresnet, preprocess

# fp32 paths differ from the reference only by summation order. bf16 rounds every layer's input to 8
# mantissa bits: on this kind of network (IResNet-18/50, BatchNorm fitted on faces) that measured cosine
# 0.9992-0.9994 and max |error| 4-6 % of max |embedding|; the bounds leave room for other CPUs' kernels.
FP32_RTOL = 1e-4
BF16_COS_MIN = 0.998
BF16_MAX_REL = 0.10

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_2 avx f16c fma avx2\n"
AVX512_BF16 = (
    "model name\t: AMD EPYC 9B14\n"
    "flags\t\t: sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16\n"
)


def _simulated(text: str) -> accel.CPUInfo:
    model, flags = accel.parse_cpuinfo(text)
    return accel.CPUInfo(model, flags, "AVX2", 2, 2)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    from vafusion.data.synth import render_face

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


def test_parse_cpuinfo_reads_model_and_flags() -> None:
    model, flags = accel.parse_cpuinfo(AVX512_BF16)
    assert model == "AMD EPYC 9B14" and {"avx512_bf16", "avx512_vnni", "avx2"} <= flags
    model, flags = accel.parse_cpuinfo("Features\t: fp asimd bf16 sve\nCPU part\t: 0xd40\n")
    assert model == "" and {"asimd", "bf16"} <= flags
    assert accel.parse_cpuinfo("") == ("", frozenset())


@pytest.mark.parametrize(
    "text, kernels, want",
    [
        (AVX2_ONLY, True, "fp32"),  # emulated bf16 is ~100x slower there
        (AVX512_BF16, True, "bf16"),
        (AVX512_BF16, False, "fp32"),  # flags say yes but this torch build has no bf16 kernels
        ("flags\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n", True, "bf16"),
        ("flags\t: avx2 avx512f avx512_vnni\n", True, "fp32"),  # int8 dot products alone do not pick bf16
    ],
)
def test_precision_follows_detected_flags(text: str, kernels: bool, want: str) -> None:
    info = _simulated(text)
    assert accel.choose_precision(info, bf16_kernels=kernels) == want
    assert info.vnni == bool(info.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def test_selection_picks_fp32_when_flags_say_no_bf16(monkeypatch, net: nn.Module, crops, reference) -> None:
    monkeypatch.setattr(accel, "cpu_info", lambda: _simulated(AVX2_ONLY))
    monkeypatch.setattr(accel, "_CHOSEN", {})
    path, run = accel.select_face_path(net, key=("test", "avx2"), calibration_faces=2, repeats=1)
    assert path.precision == "fp32" and path.backend in accel.BACKENDS
    assert "no native bf16" in path.reason
    _close_fp32(np.asarray(run(preprocess(crops))), reference)
    again, _ = accel.select_face_path(net, key=("test", "avx2"))
    assert again is path  # cached per process: no second race


def test_fp32_torch_path_matches_reference(net: nn.Module, crops, reference) -> None:
    enc = accel.FaceEncoder(net, batch=5, precision="fp32", backend="torch")
    _close_fp32(enc(crops), reference)
    assert enc(crops[:0]).shape == (0, 512)


def test_folding_batchnorms_keeps_the_function(net: nn.Module) -> None:
    x = torch.randn(3, 3, 112, 112)
    folded = accel.fold_batchnorms(net)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) < sum(
        isinstance(m, nn.BatchNorm2d) for m in net.modules()
    )
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert torch.allclose(out, ref, rtol=0, atol=FP32_RTOL * float(ref.abs().max()))


@pytest.mark.skipif(not accel.onnxruntime_available(), reason="onnxruntime not installed (the onnx extra)")
def test_onnxruntime_path_matches_reference(net: nn.Module, crops, reference) -> None:
    _close_fp32(accel.FaceEncoder(net, batch=8, precision="fp32", backend="onnxruntime")(crops), reference)


@pytest.mark.skipif(
    accel.choose_precision(accel.cpu_info()) != "bf16",
    reason="this CPU has no native bf16 (emulated bf16 is ~100x slower; never chosen)",
)
def test_bf16_path_matches_reference_within_tolerance(net: nn.Module, crops, reference) -> None:
    _close_bf16(accel.FaceEncoder(net, batch=8, precision="bf16", backend="torch")(crops), reference)


def test_iresnet_extractor_uses_the_fast_path(tmp_path, net: nn.Module, crops, reference) -> None:
    weights = tmp_path / "backbone.pth"
    torch.save(net.state_dict(), weights)
    ext = IResNetExtractor("iresnet18", str(weights), batch=8)
    want = accel.choose_precision(accel.cpu_info())
    assert ext.params["precision"] == want
    out = ext.encode(crops)
    assert isinstance(ext.encoder, accel.FaceEncoder) and ext.encoder.precision == want
    (_close_bf16 if want == "bf16" else _close_fp32)(out, reference)
    other = IResNetExtractor("iresnet18", str(weights), precision="bf16" if want == "fp32" else "fp32")
    assert other.fingerprint != ext.fingerprint


def test_anchor_rows_cover_each_run_ends_included() -> None:
    present = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1], bool)
    assert accel.anchor_rows(present, 1).tolist() == np.flatnonzero(present).tolist()
    assert accel.anchor_rows(present, 2).tolist() == [0, 2, 4, 5, 8, 9, 11]
    assert accel.anchor_rows(present, 5).tolist() == [0, 5, 8, 9, 11]
    assert accel.anchor_rows(np.zeros(4, bool), 3).size == 0
    with pytest.raises(ValueError):
        accel.anchor_rows(present, 0)


def test_fill_between_anchors_is_exact_on_linear_rows_and_stays_in_runs() -> None:
    t = np.arange(20, dtype=np.float32)
    feats = np.stack([t, 2 * t + 1], axis=1)
    present = np.ones(20, bool)
    present[[7, 8]] = False
    present[15:] = False
    present[18] = True  # a run of one row that is never encoded below
    encoded = np.zeros(20, bool)
    encoded[[0, 3, 6, 9, 12, 14]] = True
    out, valid = accel.fill_between_anchors(np.where(encoded[:, None], feats, 0), encoded, present)
    inside = present.copy()
    inside[18] = False
    assert np.array_equal(valid, inside)
    assert np.allclose(out[inside], feats[inside])
    assert (out[~inside] == 0).all()


class _Brightness:
    """A face 'extractor' whose feature is the crop's brightness; counts the crops it encodes."""

    dim = 1

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, crops: np.ndarray) -> np.ndarray:
        self.encoded += len(crops)
        return crops.reshape(len(crops), -1).mean(1, keepdims=True).astype(np.float32)


def test_face_stride_encodes_fewer_crops_and_interpolates(tmp_path) -> None:
    n = 30
    for i in range(1, n + 1):
        if i not in (11, 12):  # a gap: two runs
            cv2.imwrite(str(tmp_path / f"{i:05d}.png"), np.full((112, 112, 3), 4 * i, np.uint8))
    (tmp_path / "00020.png").write_bytes(b"not an image")
    sample = Sample("s", "s", None, "Train_Set", None, tmp_path)
    full = _Brightness()
    f1, v1 = face_features(full, sample, n, 8, ExtractorStats())
    strided = _Brightness()
    stats = ExtractorStats()
    f3, v3 = face_features(strided, sample, n, 8, stats, stride=3)
    assert np.array_equal(v1, v3) and not v3[[10, 11, 19]].any()
    assert strided.encoded < full.encoded / 2
    assert np.allclose(f3[v3], f1[v1])  # brightness is linear in the frame number
    assert any("00020.png" in x for x in stats.notes["unreadable crops"])


def test_face_stride_enters_the_face_fingerprint_only() -> None:
    base = FeaturesConfig(visual="landmarks", face_stride=1)
    strided = dataclasses.replace(base, face_stride=2)
    assert (
        configured_extractor("landmarks", base).fingerprint
        != configured_extractor("landmarks", strided).fingerprint
    )
    assert (
        configured_extractor("logmel", base).fingerprint
        == configured_extractor("logmel", strided).fingerprint
    )
    with pytest.raises(VafusionError, match="face_stride"):
        configured_extractor("landmarks", dataclasses.replace(base, face_stride=0))


def _voice(seconds: float, sr: int) -> np.ndarray:
    """A tone whose pitch and loudness drift, so every 0.96 s patch differs from its neighbours."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * (1 + np.sin(2 * np.pi * 0.3 * t)) * np.sin(2 * np.pi * (300 + 80 * t) * t)).astype(np.float32)


def test_audio_hop_encodes_a_grid_and_interpolates_to_frames() -> None:
    from vafusion.features.extractors import LogMelExtractor

    sr, times = 16000, np.arange(0, 150) / 30.0
    wave = _voice(5.0, sr)
    per_frame, valid0 = LogMelExtractor(hop=0.0).at_times(wave, sr, times)
    hopped = LogMelExtractor(hop=0.48)
    grid = hopped.centres(times)
    assert np.allclose(np.diff(grid), 0.48) and grid[0] <= times[0] and grid[-1] >= times[-1]
    assert len(grid) < len(times) / 10
    feats, valid = hopped.at_times(wave, sr, times)
    assert np.array_equal(valid, valid0)
    on_grid = np.flatnonzero(np.isclose(times[:, None], grid[None, :], atol=1e-9).any(1))  # 0, 2.4, 4.8 s
    assert len(on_grid) >= 2
    assert np.allclose(feats[on_grid], per_frame[on_grid], atol=1e-5)
    grid_feats, _ = LogMelExtractor(hop=0.0).at_times(wave, sr, grid)
    assert np.allclose(feats, accel.resample_rows(grid, grid_feats, times), atol=1e-5)
    assert not np.allclose(feats, per_frame, atol=1e-3)  # it did interpolate between grid points


def test_audio_hop_grid_lines_up_across_chunks() -> None:
    """A chunk starting at a whole second, given its start as ``origin``, reproduces the whole file's rows."""
    from vafusion.features.extractors import LogMelExtractor

    sr = 16000
    wave = _voice(8.0, sr)
    ext = LogMelExtractor(hop=0.48)
    times = np.arange(90, 150) / 30.0  # 3-5 s
    whole, _ = ext.at_times(wave, sr, times)
    start = 1.0
    chunk, _ = ext.at_times(wave[int(start * sr):int(7.0 * sr)], sr, times - start, origin=start)
    assert np.allclose(chunk, whole, atol=1e-5)
    shifted, _ = ext.at_times(wave[int(start * sr):int(7.0 * sr)], sr, times - start)
    assert not np.allclose(shifted, whole, atol=1e-3)  # without the origin the grid would move


def test_audio_hop_enters_the_audio_fingerprint_and_is_checked() -> None:
    base = FeaturesConfig(visual="landmarks")
    assert base.audio_hop == 0.48 and base.face_stride == 2  # the defaults the benchmarks picked
    other = dataclasses.replace(base, audio_hop=0.0)
    def prints(name: str) -> tuple[str, str]:
        return configured_extractor(name, base).fingerprint, configured_extractor(name, other).fingerprint

    assert len(set(prints("logmel"))) == 2 and len(set(prints("landmarks"))) == 1
    with pytest.raises(VafusionError, match="audio_hop"):
        configured_extractor("logmel", dataclasses.replace(base, audio_hop=-0.1))


def test_torch_threads_sets_and_always_restores_the_count() -> None:
    before = torch.get_num_threads()
    with accel.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), accel.torch_threads(1):
        raise RuntimeError("a failing block")
    assert torch.get_num_threads() == before
    with accel.torch_threads(0):  # 0: leave the count as it is (Predictor(fuse_threads=0))
        assert torch.get_num_threads() == before
