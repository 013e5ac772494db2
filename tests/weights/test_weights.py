"""Weight loading: strict round trips in the published layouts and one-line errors for every bad file."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vafusion import weights as W
from vafusion.errors import WeightsError
from vafusion.models.iresnet import iresnet
from vafusion.models.vggish import VGGish, VGGLogMelEncoder


def _shape_only(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same keys and shapes, but each tensor is a broadcast view of one value: saves to a few kB."""
    return {k: torch.zeros(1, dtype=v.dtype).expand(v.shape) if v.dim() else v.clone() for k, v in sd.items()}


def _tagged(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published key layout where float tensor number i holds the constant i + 0.25 (integer ones: i), as
    broadcast views so the file stays tiny; a loader that mixes up keys or shapes cannot pass."""
    out = {}
    for i, (k, v) in enumerate(sd.items()):
        if v.is_floating_point():
            out[k] = torch.full((1,), i + 0.25, dtype=v.dtype).expand(v.shape)
        else:
            out[k] = torch.tensor(i, dtype=v.dtype)
    return out


def _holds_tags(model: torch.nn.Module, tagged: dict[str, torch.Tensor]) -> bool:
    sd = model.state_dict()
    return (
        sd.keys() == tagged.keys()
        and all(torch.equal(sd[k], v.to(sd[k].dtype).expand(sd[k].shape)) for k, v in tagged.items())
        and all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    )


@pytest.fixture(scope="module")
def vggish_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    tagged = _tagged(VGGish().state_dict())
    path = tmp_path_factory.mktemp("w") / "vggish-10086976.pth"
    torch.save(tagged, path)
    return path, tagged


@pytest.fixture(scope="module")
def r18_tags() -> dict[str, torch.Tensor]:
    return _tagged(iresnet("iresnet18").state_dict())


def test_vggish_round_trip(vggish_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, tagged = vggish_file
    loaded = W.load_vggish(path)
    assert isinstance(loaded, VGGish) and not loaded.training
    assert _holds_tags(loaded, tagged)
    enc = W.load_vgg_logmel(path)
    assert isinstance(enc, VGGLogMelEncoder) and not enc.training and _holds_tags(enc, tagged)


def test_half_precision_file_loads_as_float32(
    vggish_file: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, tagged = vggish_file
    p = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in tagged.items()}, p)
    assert _holds_tags(W.load_vggish(p), tagged)


def test_vggish_with_pca_numpy_file(
    vggish_file: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, _ = vggish_file
    rng = np.random.default_rng(0)
    eigen, means = rng.standard_normal((128, 128)), rng.standard_normal((128, 1))  # published: numpy arrays
    pca = tmp_path / "vggish_pca_params-970ea276.pth"
    torch.save({"pca_eigen_vectors": eigen, "pca_means": means}, pca, _use_new_zipfile_serialization=False)
    model = W.load_vggish(path, pca=pca)
    np.testing.assert_allclose(model.pca_eigen_vectors.numpy(), eigen, rtol=1e-6)
    np.testing.assert_allclose(model.pca_means.numpy(), means[:, 0], rtol=1e-6)
    assert model.postprocess(torch.zeros(2, 128)).shape == (2, 128)
    # the numpy allowance is only for the PCA file: a model file holding numpy arrays is refused
    with pytest.raises(WeightsError, match="holds numpy arrays.*pass it as the PCA file"):
        W.load_vggish(pca)


def test_pca_file_problems(tmp_path: Path) -> None:
    bad = tmp_path / "pca.pth"
    torch.save({"pca_eigen_vectors": torch.zeros(64, 128), "pca_means": torch.zeros(128)}, bad)
    with pytest.raises(WeightsError, match=r"\(64, 128\)"):
        W.load_vggish_pca(bad)
    torch.save({"pca_means": torch.zeros(128)}, bad)
    with pytest.raises(WeightsError, match="missing pca_eigen_vectors"):
        W.load_vggish_pca(bad)


def test_iresnet_real_values_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = iresnet("iresnet18")
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif name.endswith("num_batches_tracked"):
                t.fill_(1234)
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)
    loaded = W.load_iresnet("iresnet18", path)
    assert not loaded.training
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_iresnet_prefixes_and_wrappers(r18_tags: dict[str, torch.Tensor], tmp_path: Path) -> None:
    variants = {
        "plain": r18_tags,
        "module": {"module." + k: v for k, v in r18_tags.items()},
        "lightning": {
            "state_dict": {
                **{"backbone." + k: v for k, v in r18_tags.items()},
                "head.weight": torch.zeros(8, 512),
                "head.bias": torch.zeros(8),
            },
            "epoch": 3,
        },
        "ddp_backbone": {"module.backbone." + k: v for k, v in r18_tags.items()},
        "model_state_dict": {"model_state_dict": r18_tags, "optimizer": {"lr": torch.tensor(0.1)}},
    }
    for name, obj in variants.items():
        p = tmp_path / f"{name}.pth"
        torch.save(obj, p)
        assert _holds_tags(W.load_iresnet("r18", p), r18_tags), name


def test_iresnet_tolerates_only_missing_batch_counters(
    r18_tags: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    sd = {k: v for k, v in r18_tags.items() if not k.endswith("num_batches_tracked")}
    p = tmp_path / "no_counters.pth"
    torch.save(sd, p)
    loaded = W.load_iresnet("iresnet18", p)
    assert torch.equal(loaded.layer1[0].bn1.running_mean, sd["layer1.0.bn1.running_mean"].expand(64))
    del sd["layer1.0.bn1.running_mean"]
    torch.save(sd, p)
    with pytest.raises(WeightsError, match=r"1 missing \(layer1\.0\.bn1\.running_mean\)"):
        W.load_iresnet("iresnet18", p)


def test_wrong_architecture_is_named(tmp_path: Path) -> None:
    p = tmp_path / "r34.pth"
    torch.save(_shape_only(iresnet("iresnet34").state_dict()), p)
    with pytest.raises(WeightsError) as err:
        W.load_iresnet("iresnet50", p)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(p) in msg and "not iresnet50 weights" in msg
    assert re.search(r"\d+ missing \(layer3\.6\.", msg) and "looks like iresnet34" in msg
    assert "ms1mv3_arcface_r50" in msg
    with pytest.raises(WeightsError, match="looks like iresnet34") as err2:
        W.load_vggish(p)
    assert "vggish-10086976.pth from https://github.com/harritaylor/torchvggish/releases" in str(err2.value)


def test_renamed_extra_and_reshaped_keys(tmp_path: Path) -> None:
    sd = _shape_only(VGGish().state_dict())
    sd["embeddings.6.weight"] = sd.pop("embeddings.4.weight")  # renamed
    sd["extra.scale"] = torch.ones(1)  # unexpected
    sd["embeddings.0.weight"] = torch.zeros(1).expand(4096, 512 * 4 * 4)  # wrong flatten size
    p = tmp_path / "odd.pth"
    torch.save(sd, p)
    with pytest.raises(WeightsError) as err:
        W.load_vggish(p)
    msg = str(err.value)
    assert "1 missing (embeddings.4.weight)" in msg
    assert "2 unexpected (embeddings.6.weight, extra.scale)" in msg
    assert "1 shape mismatches (embeddings.0.weight file (4096, 8192) vs model (4096, 12288))" in msg


def test_long_key_lists_are_shortened(tmp_path: Path) -> None:
    sd = _shape_only(iresnet("iresnet18").state_dict())
    p = tmp_path / "renamed.pth"
    torch.save({"net." + k.replace("layer", "stage"): v for k, v in sd.items()}, p)
    with pytest.raises(WeightsError) as err:
        W.load_iresnet("iresnet18", p)
    msg = str(err.value)
    assert re.search(r"\d+ missing \([^)]*, \.\.\. \d+ more\)", msg)
    assert len(msg) < 2000


def test_missing_file_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as err:
        W.load_vggish(tmp_path / "nope.pth")
    msg = str(err.value)
    assert "nope.pth" in msg and "not found" in msg
    assert "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth" in msg
    with pytest.raises(WeightsError, match="arcface_torch") as err2:
        W.load_iresnet("r50", tmp_path / "backbone.pth")
    assert "ms1mv3_arcface_r50_fp16/backbone.pth" in str(err2.value)
    with pytest.raises(WeightsError, match="vggish_pca_params-970ea276.pth"):
        W.load_vggish_pca(tmp_path / "pca.pth")


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("keep", [0.1, 0.6, 0.98])
def test_truncated_file(tmp_path: Path, zip_format: bool, keep: float) -> None:
    full = tmp_path / "full.pth"
    torch.save(
        {"a": torch.randn(300, 300), "b": torch.randn(10)}, full, _use_new_zipfile_serialization=zip_format
    )
    raw = full.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(WeightsError, match="truncated or corrupt") as err:
        W.load_vggish(cut)
    assert "\n" not in str(err.value) and "again" in str(err.value)


def test_empty_and_non_checkpoint_files(tmp_path: Path) -> None:
    cases = {
        "empty.pth": (b"", "empty"),
        "lfs.pth": (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
        "page.pth": (b"<!DOCTYPE html><html><body>sign in</body></html>", "HTML"),
        "junk.pth": (b"\x00\x01garbage" * 10, "not a PyTorch checkpoint"),
    }
    for name, (content, expected) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(WeightsError, match=expected):
            W.load_iresnet("r18", p)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    whole_model = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), whole_model)
    with pytest.raises(WeightsError, match=r"pickled Python objects \(torch\.nn\.modules\.linear\.Linear\)"):
        W.load_vggish(whole_model)

    class Boom:
        def __reduce__(self) -> tuple:
            return (Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": Boom()}}, evil)
    with pytest.raises(WeightsError, match="refused"):
        W.load_iresnet("r18", evil)
    # the PCA reader allows numeric numpy arrays, nothing more
    torch.save({"pca_eigen_vectors": Boom(), "pca_means": np.zeros(128)}, evil)
    with pytest.raises(WeightsError, match="refused"):
        W.load_vggish_pca(evil)
    torch.save({"pca_eigen_vectors": np.array([Boom()], dtype=object), "pca_means": np.zeros(128)}, evil)
    with pytest.raises(WeightsError, match="refused"):
        W.load_vggish_pca(evil)
    assert not (tmp_path / "pwned").exists()


def test_non_tensor_contents(tmp_path: Path) -> None:
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], p)
    with pytest.raises(WeightsError, match="holds list, not a state dict"):
        W.load_vggish(p)
    torch.save({"features.0.weight": 3}, p)
    with pytest.raises(WeightsError, match="not tensors"):
        W.load_vggish(p)


def test_safetensors_without_package(tmp_path: Path) -> None:
    p = tmp_path / "backbone.safetensors"
    p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    try:
        import safetensors  # noqa: F401
    except ImportError:
        with pytest.raises(WeightsError, match="safetensors package is not installed"):
            W.load_iresnet("r18", p)
    else:
        with pytest.raises(WeightsError):
            W.load_iresnet("r18", p)


def test_sha256_and_published_table(tmp_path: Path) -> None:
    p = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000
    p.write_bytes(data)
    assert W.sha256(p) == hashlib.sha256(data).hexdigest()
    assert W.PUBLISHED["vggish"].filename == "vggish-10086976.pth"
    assert W.PUBLISHED["vggish"].sha256_prefix == "10086976"
    assert W.PUBLISHED["vggish_pca"].url.endswith("/v0.1/vggish_pca_params-970ea276.pth")
    assert set(W.PUBLISHED) >= {"iresnet18", "iresnet34", "iresnet50", "iresnet100"}


def test_guess_architecture() -> None:
    assert W.guess_architecture(VGGish().state_dict()) == "vggish"
    assert W.guess_architecture(_shape_only(iresnet("iresnet50").state_dict())) == "iresnet50"
    assert W.guess_architecture({"foo": torch.zeros(1)}) is None
