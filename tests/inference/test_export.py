"""ONNX export: graphs match PyTorch in ONNX Runtime (masked frames, dynamic batch and time), the sidecar
is enough for an ONNX-only consumer, and front ends are exported when their weights are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vafusion.cli import main
from vafusion.config import load_config, to_dict, to_yaml
from vafusion.data.sequence import Sequence
from vafusion.errors import VafusionError
from vafusion.inference.onnx_net import export_fusion, load_onnx, onnx_runner, parity
from vafusion.io.onnx import session
from vafusion.models.checkpoint import Checkpoint
from vafusion.models.fusion import FusionNet
from vafusion.models.iresnet import iresnet, preprocess
from vafusion.models.normaliser import Normaliser
from vafusion.models.registry import create_model
from vafusion.models.windows import sliding_predict
from vafusion.weights import load_checkpoint, save_checkpoint

DIMS = {"visual": 136, "vggish": 25, "logmel": 128}
STREAMS = {"visual": "landmarks", "vggish": "egemaps", "logmel": "logmel"}
SMALL = [
    "model.tcn_channels=8",
    "model.dilations=[1,2]",
    "model.attn_dim=16",
    "model.head_hidden=16",
    "cv.eval_window=48",
    "cv.eval_hop=24",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny layers: one thread is faster


def _predict(net, norm: Normaliser, seq: Sequence, window: int, hop: int) -> np.ndarray:
    """``sliding_predict`` of ``net`` on ``seq`` normalised with ``norm``."""
    normed = seq.normalised(norm)
    return sliding_predict(net, normed.feats, normed.valid, window, hop)


def _net(roles: list[str], span: int, seed: int = 0) -> FusionNet:
    torch.manual_seed(seed)
    cfg = load_config(None, SMALL + [f"model.attn_span={span}"])
    net = create_model("fusion" if len(roles) == 3 else roles[0], dims=DIMS, **vars(cfg.model))
    with torch.no_grad():  # trained-looking weights: non-zero stand-ins, biases, weight-norm gains
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("roles,span", [(["visual", "vggish", "logmel"], 0), (["logmel"], 0)])
def test_onnx_matches_torch_with_masks_and_dynamic_shapes(
    tmp_path: Path, roles: list[str], span: int
) -> None:
    net = _net(roles, span)
    path = tmp_path / "net.onnx"
    names = export_fusion(net, path)
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert [dims[0].dim_param, dims[1].dim_param] == ["batch", "time"]
    assert [i.name for i in model.graph.input] == names
    # exported at (2, 16); checked at other batch sizes and lengths, incl. a single frame and a masked stream
    assert parity(net, path, shapes=((1, 1), (3, 5), (2, 37), (4, 300)), seed=7) <= 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory as `vafusion cv` leaves it: config.yaml and models/fusion/fold{0,1}.pt."""
    root = tmp_path_factory.mktemp("run")
    cfg = load_config(None, SMALL + ["model.attn_span=5"])
    (root / "config.yaml").write_text(to_yaml(cfg))
    rng = np.random.default_rng(0)
    for fold in (0, 1):
        net = _net(list(DIMS), 5, seed=fold)
        norm = Normaliser(
            {r: rng.normal(size=d).astype(np.float32) for r, d in DIMS.items()},
            {r: rng.uniform(0.5, 2, size=d).astype(np.float32) for r, d in DIMS.items()},
        )
        ckpt = Checkpoint(
            net,
            norm,
            STREAMS,
            "fusion",
            None,
            cfg.cv.eval_window,
            cfg.cv.eval_hop,
            {},
            to_dict(cfg),
            {"model": "fusion", "fold": fold, "train": [], "facts": {}},
        )
        save_checkpoint(root / "models" / "fusion" / f"fold{fold}.pt", ckpt)
    return root


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory) -> tuple[Path, str]:
    """``vafusion export`` of the run (span-5 attention, two folds) and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("onnx")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--model", str(run), "--out", str(out), "--quiet"]) == 0
    return out, printed.getvalue()


def _sequence(length: int, seed: int = 3) -> Sequence:
    rng = np.random.default_rng(seed)
    feats = {r: rng.normal(1.0, 2.0, size=(length, d)).astype(np.float32) for r, d in DIMS.items()}
    valid = {r: rng.random(length) > 0.2 for r in DIMS}
    valid["logmel"][length // 2 :] = False  # audio ends half-way
    return Sequence("s", "s", feats, valid, np.zeros((length, 2), np.float32), np.ones(length, bool))


def _onnx_only(onnx_path: Path, seq: Sequence) -> np.ndarray:
    """What a consumer with only onnxruntime and the sidecar does: normalise, window, average."""
    import onnxruntime as ort

    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    w, hop, n = meta["window"], meta["hop"], seq.length
    starts = list(range(0, max(n - w, 0) + 1, hop))
    if starts[-1] + w < n:
        starts.append(n - w)
    w = min(w, n)
    ramp = np.minimum(np.arange(1, w + 1), np.arange(w, 0, -1)).astype(np.float64)
    acc, wsum = np.zeros((n, 2)), np.zeros(n)
    for s in starts:
        inputs = {}
        for spec in meta["inputs"]:
            role = spec["role"]
            if spec["dtype"] == "bool":
                inputs[spec["name"]] = seq.valid[role][None, s : s + w]
            else:
                m, sd = (np.asarray(meta["normaliser"][role][k], np.float32) for k in ("mean", "std"))
                x = np.where(seq.valid[role][:, None], (seq.feats[role] - m) / sd, 0.0).astype(np.float32)
                inputs[spec["name"]] = x[None, s : s + w]
        out = sess.run([meta["output"]["name"]], inputs)[0][0]
        acc[s : s + w] += out * ramp[:, None]
        wsum[s : s + w] += ramp
    return acc / wsum[:, None]


def test_export_command_writes_each_fold_and_a_sufficient_sidecar(
    run: Path, exported: tuple[Path, str]
) -> None:
    out, printed = exported
    for fold in (0, 1):
        meta = json.loads((out / "fusion" / f"fold{fold}.json").read_text())
        ckpt = load_checkpoint(run / "models" / "fusion" / f"fold{fold}.pt")
        net, norm = ckpt.net, ckpt.normaliser
        assert meta["streams"] == STREAMS and meta["roles"] == ["visual", "vggish", "logmel"]
        assert (meta["window"], meta["hop"]) == (48, 24) and meta["fold"] == fold
        for r in DIMS:
            assert np.allclose(meta["normaliser"][r]["mean"], norm.mean[r])
            assert np.allclose(meta["normaliser"][r]["std"], norm.std[r])
        assert meta["parity"]["max_abs_diff"] <= 1e-4
        # ONNX-only inference from the sidecar equals PyTorch's sliding-window prediction
        for length in (30, 130):
            seq = _sequence(length, seed=length)
            ref = _predict(net, norm, seq, meta["window"], meta["hop"])
            assert np.abs(_onnx_only(out / "fusion" / f"fold{fold}.onnx", seq) - ref).max() <= 1e-4
    summary = json.loads((out / "export.json").read_text())
    assert [m["fold"] for m in summary["models"]] == [0, 1]
    assert set(summary["frontends"]["skipped"]) == {"iresnet", "vggish", "logmel"}
    assert "skipped front end iresnet" in printed and "--iresnet-weights" in printed


def test_parity_catches_a_wrong_graph(run: Path, exported: tuple[Path, str]) -> None:
    """The check can fail: fold 0's graph against fold 1's weights differs by far more than the tolerance."""
    net = load_checkpoint(run / "models" / "fusion" / "fold1.pt").net
    assert parity(net, exported[0] / "fusion" / "fold0.onnx") > 1e-2


def test_onnx_runner_plugs_into_sliding_predict(run: Path, exported: tuple[Path, str]) -> None:
    onnx_net, onnx_norm, streams, _ = load_onnx(exported[0] / "fusion" / "fold1.onnx", threads=1)
    ckpt = load_checkpoint(run / "models" / "fusion" / "fold1.pt")
    net, norm = ckpt.net, ckpt.normaliser
    assert streams == STREAMS
    seq = _sequence(200)
    ref = _predict(net, norm, seq, 48, 24)
    got = _predict(onnx_net, onnx_norm, seq, 48, 24)
    assert np.abs(got - ref).max() <= 1e-4


def test_runner_cache_is_reused_and_refreshed_when_the_checkpoint_changes(run: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "fold0.pt"
    ckpt.write_bytes((run / "models" / "fusion" / "fold0.pt").read_bytes())
    cached = tmp_path / "onnx" / "fusion" / "fold0.onnx"
    onnx_runner(ckpt, cached)
    stamp = cached.stat().st_mtime_ns
    onnx_runner(ckpt, cached)
    assert cached.stat().st_mtime_ns == stamp  # same checkpoint: the cached graph is reused
    ckpt.write_bytes((run / "models" / "fusion" / "fold1.pt").read_bytes())
    runner = onnx_runner(ckpt, cached)  # another checkpoint under the same name: exported again
    loaded = load_checkpoint(ckpt)
    net, norm = loaded.net, loaded.normaliser
    seq = _sequence(60)
    ref = _predict(net, norm, seq, 48, 24)
    assert np.abs(_predict(runner, norm, seq, 48, 24) - ref).max() <= 1e-4


def test_front_ends_exported_when_weights_are_given(run: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    face = iresnet("iresnet18").eval()
    for m in face.modules():  # non-trivial BatchNorm statistics, as in trained weights
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(face.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "onnx"
    assert (
        main(
            [
                "export",
                "--model",
                str(run / "models" / "fusion" / "fold0.pt"),
                "--out",
                str(out),
                "--quiet",
                "--iresnet-weights",
                str(tmp_path / "r18.pth"),
                "--iresnet-arch",
                "iresnet18",
            ]
        )
        == 0
    )
    info = json.loads((out / "frontends" / "frontends.json").read_text())
    assert set(info["exported"]) == {"iresnet"} and set(info["skipped"]) == {"vggish", "logmel"}
    assert "vggish" in capsys.readouterr().out
    crops = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    got = session(out / "frontends" / "iresnet.onnx").run(None, {"crops": crops})[0]
    with torch.no_grad():
        ref = face(preprocess(crops)).numpy()
    assert got.shape == (4, 512)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_bad_requests_are_one_line(run: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "o"), "--opset", "13"]) == 2
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "o"), "--models", "visual"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "nope" in err[0] and "--opset 17" in err[1] and "visual" in err[2]
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(VafusionError, match="sidecar"):
        load_onnx(tmp_path / "x.onnx")


def test_unknown_models_and_folds_get_the_export_flags_in_the_fix(run: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o")
    assert main(["export", "--model", str(run), "--out", out, "--models", "audio", "--no-frontends"]) == 2
    assert main(["export", "--model", str(run), "--out", out, "--folds", "7", "--no-frontends"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown model 'audio'; --models takes a comma list of fusion" in err[0]
    assert "no fusion model for fold 7; choose among folds 0, 1 (predict --fold, export --folds)" in err[1]


def test_an_earlier_export_is_refused_or_replaced_whole(run: Path, tmp_path: Path, capsys) -> None:
    """A second export into the same folder would leave the first one's graphs beside an export.json that
    no longer lists them: refused, and with --overwrite the earlier export's files go first."""
    out = tmp_path / "o"
    common = ["export", "--model", str(run), "--out", str(out), "--no-frontends", "--quiet"]
    assert main(common) == 0
    assert sorted(p.name for p in (out / "fusion").glob("*.onnx")) == ["fold0.onnx", "fold1.onnx"]
    note = "vafusion: note: fusion: no checkpoint for fold 2, 3, 4, 5 of the run's cv.folds"
    assert note in capsys.readouterr().err  # the run's config asks for six folds, it holds two
    (out / "notes.txt").write_text("mine")
    assert main([*common, "--folds", "0"]) == 2
    assert "export.json: exists (an earlier export); pass --overwrite" in capsys.readouterr().err
    assert main([*common, "--folds", "0", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "fusion").iterdir()) == ["fold0.json", "fold0.onnx"]
    summary = json.loads((out / "export.json").read_text())
    assert [m["fold"] for m in summary["models"]] == [0]
    assert (out / "notes.txt").read_text() == "mine"  # only the earlier export's own files are removed


def test_predict_backend_onnx_matches_torch(run: Path, tmp_path: Path, capsys) -> None:
    """`vafusion predict --backend onnx` exports the fold graphs into RUN/onnx on first use and writes the
    same per-frame values as the PyTorch backend (the corpus's features, smoothing, averaging are shared)."""
    import pandas as pd

    from tests.helpers import write_video

    clip = write_video(tmp_path / "clip.mp4", 45, size=(96, 72))
    copy = tmp_path / "run"
    (copy / "models" / "fusion").mkdir(parents=True)
    (copy / "config.yaml").write_text((run / "config.yaml").read_text())
    (copy / "models/fusion/fold1.pt").write_bytes((run / "models/fusion/fold1.pt").read_bytes())
    out = {}
    for backend in ("torch", "onnx"):
        assert (
            main(
                [
                    "predict",
                    str(clip),
                    "--model",
                    str(copy),
                    "--out",
                    str(tmp_path / backend),
                    "--no-plot",
                    "--quiet",
                    "--backend",
                    backend,
                ]
            )
            == 0
        )
        out[backend] = pd.read_csv(tmp_path / backend / "clip.csv")
    assert sorted(p.name for p in (copy / "onnx" / "fusion").iterdir()) == ["fold1.json", "fold1.onnx"]
    assert list(out["onnx"].columns) == list(out["torch"].columns) and len(out["onnx"]) == 45
    for col in ("valence", "arousal"):
        assert np.abs(out["onnx"][col].to_numpy() - out["torch"][col].to_numpy()).max() <= 1e-4
    assert out["onnx"]["valence"].std() > 0  # a real prediction, not a constant
