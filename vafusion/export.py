"""ONNX export of trained models and front ends, checked against PyTorch with ONNX Runtime.

Layout written by :func:`export_run` (``vafusion export``)::

    OUT/<model>/fold<k>.onnx   the network: feats_<role> (B, T, D) float32, valid_<role> (B, T) bool -> va (B, T, 2)
    OUT/<model>/fold<k>.json   sidecar: streams, normaliser mean/std, window/hop, input names, parity check
    OUT/frontends/<name>.onnx  IResNet (uint8 crops -> 512-d), VGGish / VGG log-mel encoder (log-mel -> 128-d)
    OUT/frontends/frontends.json  what each front end expects and which were skipped, with the reason
    OUT/export.json            summary of the whole export

An ONNX-only consumer normalises each stream with the sidecar's mean/std (``(x - mean) / std`` on valid
frames, 0 elsewhere), runs windows of ``window`` frames every ``hop`` frames and averages the overlaps
with a triangular weight, as :func:`vafusion.inference.sliding_predict` does; :class:`OnnxNet` plugs
straight into that function. The graphs have dynamic batch and time axes and use opset 17 or later.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vafusion.config import FeaturesConfig
from vafusion.errors import VafusionError
from vafusion.io.atomic import atomic_path, write_json
from vafusion.models.fusion import FusionNet
from vafusion.train.data import Normaliser

SIDECAR_FORMAT = "vafusion-onnx/1"
MIN_OPSET = 17
DEFAULT_OPSET = 17
OUTPUT = "va"


def feats_input(role: str) -> str:
    """ONNX input name of a stream's features."""
    return f"feats_{role}"


def valid_input(role: str) -> str:
    """ONNX input name of a stream's validity mask."""
    return f"valid_{role}"


class PositionalFusion(nn.Module):
    """``FusionNet`` with positional tensors ``(feats_0, valid_0, feats_1, valid_1, ...)`` in branch order.

    ``FusionNet.forward`` takes dicts, which ONNX graphs cannot; this wrapper fixes the order to
    ``net.names`` (the query stream first).
    """

    def __init__(self, net: FusionNet) -> None:
        super().__init__()
        self.net = net
        self.names = list(net.names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        """``2 * len(names)`` tensors -> ``(B, T, 2)``."""
        feats = {r: tensors[2 * i] for i, r in enumerate(self.names)}
        valid = {r: tensors[2 * i + 1] for i, r in enumerate(self.names)}
        return self.net(feats, valid)


class FaceEmbedder(nn.Module):
    """IResNet with its preprocessing inside: aligned RGB crops ``(N, 112, 112, 3)`` uint8 -> ``(N, 512)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 RGB crops -> embeddings, with arcface_torch's ``(x / 255 - 0.5) / 0.5``."""
        x = crops.permute(0, 3, 1, 2).to(torch.float32)
        return self.net((x / 255.0 - 0.5) / 0.5)


def _plain(net: FusionNet) -> FusionNet:
    """An eval-mode copy with weight-norm parametrisations folded into plain weights (a smaller graph).

    The copy is rebuilt from the config, not ``deepcopy``-ed: parametrised modules share their generated
    class with a deep copy, and removing the parametrisation from one would break the other.
    """
    from torch.nn.utils import parametrize

    fresh = FusionNet(net.cfg)
    fresh.load_state_dict(net.state_dict())
    net = fresh.eval()
    for module in net.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return net


def _check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise VafusionError(None, f"ONNX opset {opset} is too old for the attention masks and LayerNorm",
                            f"use --opset {MIN_OPSET} or later")


def _onnx_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
                 outputs: list[str], dynamic: dict[str, dict[int, str]], opset: int) -> None:
    """Trace ``module`` to ``path`` atomically with the TorchScript-based exporter (no onnxscript needed)."""
    _check_opset(opset)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False, do_constant_folding=True)


def session(path: str | Path, threads: int = 0):
    """An ONNX Runtime CPU session for ``path`` (``threads`` 0 = ONNX Runtime's default)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise VafusionError(None, "onnxruntime is not installed",
                            "install the onnx extra: pip install 'vafusion[onnx]' (make install does)") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise VafusionError(path, f"ONNX Runtime cannot load the model ({str(exc).splitlines()[0][:120]})",
                            "re-export it with `vafusion export`") from None


def _fusion_example(net: FusionNet, batch: int, length: int, seed: int) -> list[torch.Tensor]:
    """Random features with masked frames: a random 30 % of every stream, the whole last stream of item 0,
    and the trailing frames of the query stream (as in the padding of a short sequence)."""
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for k, role in enumerate(net.names):
        dim = net.cfg.branches[k].dim
        valid = torch.rand(batch, length, generator=g) > 0.3
        if k == len(net.names) - 1 and len(net.names) > 1:
            valid[0] = False
        if k == 0:
            valid[:, -max(1, length // 5):] = False
        tensors += [torch.randn(batch, length, dim, generator=g), valid]
    return tensors


def parity(net: FusionNet, onnx_path: str | Path, shapes: tuple[tuple[int, int], ...] = ((1, 1), (2, 37), (3, 300)),
           seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over random inputs with masked frames at several (batch, time) shapes."""
    sess = session(onnx_path)
    wrapped = PositionalFusion(net).eval()
    names = [n for r in net.names for n in (feats_input(r), valid_input(r))]
    worst = 0.0
    for j, (b, t) in enumerate(shapes):
        tensors = _fusion_example(net, b, t, seed + j)
        with torch.no_grad():
            ref = wrapped(*tensors).numpy()
        got = sess.run([OUTPUT], {n: x.numpy() for n, x in zip(names, tensors)})[0]
        if got.shape != ref.shape or not np.isfinite(got).all():
            return float("inf")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_fusion(net: FusionNet, path: str | Path, opset: int = DEFAULT_OPSET) -> list[str]:
    """Write ``net`` as ONNX with dynamic batch and time axes; return its input names in order."""
    plain = PositionalFusion(_plain(net)).eval()
    inputs = [n for r in net.names for n in (feats_input(r), valid_input(r))]
    dynamic = {n: {0: "batch", 1: "time"} for n in inputs + [OUTPUT]}
    _onnx_export(plain, tuple(_fusion_example(net, 2, 16, 0)), Path(path), inputs, [OUTPUT], dynamic, opset)
    return inputs


def sidecar(net: FusionNet, norm: Normaliser, streams: dict[str, str], payload: dict, source: Path,
            opset: int, max_abs_diff: float) -> dict:
    """Everything an ONNX-only consumer needs besides the graph."""
    cv = payload.get("config", {}).get("cv", {})
    train = payload.get("config", {}).get("train", {})
    extra = payload.get("extra", {})
    return {
        "format": SIDECAR_FORMAT,
        "model": extra.get("model"),
        "fold": extra.get("fold"),
        "source": str(source),
        "source_sha256": _sha256(source),
        "opset": opset,
        "roles": list(net.names),
        "streams": {r: streams[r] for r in net.names},
        "inputs": [{"name": n, "role": r, "dtype": dt, "shape": shape}
                   for k, r in enumerate(net.names)
                   for n, dt, shape in ((feats_input(r), "float32", ["batch", "time", net.cfg.branches[k].dim]),
                                        (valid_input(r), "bool", ["batch", "time"]))],
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", "time", 2],
                   "columns": ["valence", "arousal"]},
        "normaliser": {r: {"mean": norm.mean[r].astype(float).tolist(), "std": norm.std[r].astype(float).tolist()}
                       for r in net.names},
        "normalise": "x = (features - mean) / std on valid frames, 0 on invalid frames",
        "window": int(cv.get("eval_window", train.get("window", 300))),
        "hop": int(cv.get("eval_hop", train.get("hop", 150))),
        "averaging": "overlapping windows averaged with a triangular weight, min(i + 1, w - i) for row i",
        "parity": {"max_abs_diff": max_abs_diff, "reference": "PyTorch float32 on CPU",
                   "inputs": "random features, ~30 % masked frames, a fully masked stream, time 1, 37 and 300"},
    }


def export_checkpoint(model_path: str | Path, out: str | Path, opset: int = DEFAULT_OPSET,
                      atol: float = 1e-4) -> dict:
    """Export one ``fold<k>.pt`` to ``out`` (``.onnx``) plus its ``.json`` sidecar; fail if parity > ``atol``."""
    from vafusion.weights import load_model

    model_path, out = Path(model_path), Path(out)
    net, norm, streams, payload = load_model(model_path)
    export_fusion(net, out, opset)
    diff = parity(net, out)
    if not diff <= atol:
        out.unlink(missing_ok=True)
        raise VafusionError(model_path, f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> {atol:g})",
                            "report this with the model file; try another --opset")
    meta = sidecar(net, norm, streams, payload, model_path, opset, diff)
    write_json(out.with_suffix(".json"), meta)
    return {"onnx": str(out), "sidecar": str(out.with_suffix(".json")), "max_abs_diff": diff}


def _sha256(path: Path) -> str:
    from vafusion.weights import sha256

    return sha256(path)


def onnx_runner(checkpoint: str | Path, onnx_path: str | Path, threads: int = 0, atol: float = 1e-4) -> OnnxNet:
    """ONNX Runtime runner for ``checkpoint``, cached at ``onnx_path`` (e.g. ``RUN/onnx/fusion/fold0.onnx``,
    the layout of ``vafusion export --model RUN --out RUN/onnx``).

    The cached graph is reused when its sidecar records this checkpoint's SHA-256; otherwise (missing,
    unreadable or from another checkpoint) the checkpoint is exported there first, parity-checked.
    """
    checkpoint, onnx_path = Path(checkpoint), Path(onnx_path)
    side = onnx_path.with_suffix(".json")
    try:
        current = onnx_path.is_file() and read_sidecar(side).get("source_sha256") == _sha256(checkpoint)
    except VafusionError:
        current = False
    if not current:
        export_checkpoint(checkpoint, onnx_path, atol=atol)
    return OnnxNet(onnx_path, threads)


class OnnxNet:
    """An exported fusion model run by ONNX Runtime behind ``FusionNet``'s call: dicts of ``(B, T, D)`` /
    ``(B, T)`` tensors in, ``(B, T, 2)`` tensor out, so :func:`vafusion.inference.sliding_predict` takes it."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.meta = read_sidecar(self.path.with_suffix(".json"))
        self.names: list[str] = list(self.meta["roles"])
        self.session = session(self.path, threads)
        got = [i.name for i in self.session.get_inputs()]
        want = [n for r in self.names for n in (feats_input(r), valid_input(r))]
        if got != want:
            raise VafusionError(self.path, f"graph inputs {got} do not match its sidecar {want}",
                                "export the model and its .json together with `vafusion export`")

    def eval(self) -> OnnxNet:
        """No-op (an exported graph is always in inference mode); mirrors ``nn.Module.eval``."""
        return self

    def __call__(self, feats: dict[str, Any], valid: dict[str, Any]) -> torch.Tensor:
        """Per-role features and masks (torch tensors or arrays) -> ``(B, T, 2)`` float32 tensor."""
        inputs = {}
        for r in self.names:
            inputs[feats_input(r)] = np.ascontiguousarray(np.asarray(feats[r], dtype=np.float32))
            inputs[valid_input(r)] = np.ascontiguousarray(np.asarray(valid[r], dtype=bool))
        return torch.from_numpy(self.session.run([OUTPUT], inputs)[0])


def read_sidecar(path: str | Path) -> dict:
    """The JSON written beside a ``fold<k>.onnx``; checks its format."""
    path = Path(path)
    if not path.is_file():
        raise VafusionError(path, "ONNX sidecar missing", "export with `vafusion export`, which writes "
                                                         "fold<k>.json beside fold<k>.onnx")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VafusionError(path, f"ONNX sidecar is unreadable ({exc.__class__.__name__})",
                            "re-export with `vafusion export`") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise VafusionError(path, "not a vafusion ONNX sidecar", "re-export with `vafusion export`")
    return meta


def load_onnx(path: str | Path, threads: int = 0) -> tuple[OnnxNet, Normaliser, dict[str, str], dict]:
    """The ONNX counterpart of :func:`vafusion.weights.load_model`: (runner, normaliser, streams, sidecar)."""
    path = Path(path)
    if not path.is_file():
        raise VafusionError(path, "ONNX model not found", "export one with `vafusion export --model RUN --out DIR`")
    net = OnnxNet(path, threads)
    norm = Normaliser({r: np.asarray(v["mean"], np.float32) for r, v in net.meta["normaliser"].items()},
                      {r: np.asarray(v["std"], np.float32) for r, v in net.meta["normaliser"].items()})
    return net, norm, dict(net.meta["streams"]), net.meta


@dataclass
class FrontEnd:
    """One exportable front end: the module, an example input and what its input means."""

    name: str
    module: nn.Module
    example: torch.Tensor
    input: str
    output: str
    expects: str
    fingerprint: str


def frontends(cfg: FeaturesConfig) -> tuple[list[FrontEnd], dict[str, str]]:
    """Front ends whose weights ``cfg`` names, built as the extractors build them; and skipped ones with why."""
    from vafusion.features.extractors import build_extractor

    found, skipped = [], {}
    g = torch.Generator().manual_seed(0)
    if cfg.iresnet_weights:
        ext = build_extractor("iresnet", cfg)
        found.append(FrontEnd("iresnet", FaceEmbedder(ext.net), torch.randint(0, 256, (2, 112, 112, 3), generator=g,
                                                                               dtype=torch.uint8),
                              "crops", "embedding", f"aligned face crops (N, 112, 112, 3) uint8 RGB; "
                              f"{cfg.iresnet_arch}, normalisation inside the graph", ext.fingerprint))
    else:
        skipped["iresnet"] = ("no iresnet weights recorded in the run config nor given (--iresnet-weights); dlib "
                              "landmarks stand in (no ONNX form)")
    for name, weights, flag in (("vggish", cfg.vggish_weights, "--vggish-weights"),
                                ("logmel", cfg.logmel_weights, "--logmel-weights")):
        if weights:
            ext = build_extractor(name, cfg)
            found.append(FrontEnd(name, ext.net, torch.randn(2, 96, 64, generator=g), "examples", "embedding",
                                  "log-mel examples (N, 96, 64) float32: 0.96 s centred on each frame, "
                                  "vafusion.features.vggish.CentredExamples", ext.fingerprint))
        else:
            what = ("openSMILE eGeMAPS stands in (no ONNX form)" if name == "vggish" else
                    "weight-free band statistics stand in (nothing to export)")
            skipped[name] = f"no {name} weights recorded in the run config nor given ({flag}); {what}"
    return found, skipped


def export_frontends(cfg: FeaturesConfig, out: str | Path, opset: int = DEFAULT_OPSET, atol: float = 1e-4) -> dict:
    """Export every front end ``cfg`` has weights for to ``out/<name>.onnx``; write ``out/frontends.json``."""
    out = Path(out)
    found, skipped = frontends(cfg)
    done = {}
    for fe in found:
        path = out / f"{fe.name}.onnx"
        module = fe.module.eval()
        _onnx_export(module, (fe.example,), path, [fe.input], [fe.output],
                     {fe.input: {0: "n"}, fe.output: {0: "n"}}, opset)
        g = torch.Generator().manual_seed(1)
        if fe.example.dtype == torch.uint8:
            x = torch.randint(0, 256, (3, *fe.example.shape[1:]), generator=g, dtype=torch.uint8)
        else:
            x = torch.randn(3, *fe.example.shape[1:], generator=g)
        with torch.no_grad():
            ref = module(x).numpy()
        got = session(path).run([fe.output], {fe.input: x.numpy()})[0]
        scale = max(1.0, float(np.abs(ref).max()))
        diff = float(np.abs(got - ref).max())
        if not diff <= atol * scale:
            path.unlink(missing_ok=True)
            raise VafusionError(path, f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> {atol:g} x "
                                f"{scale:.3g})", "report this with the weights file; try another --opset")
        done[fe.name] = {"onnx": str(path), "input": fe.input, "output": fe.output, "expects": fe.expects,
                         "fingerprint": fe.fingerprint, "max_abs_diff": diff, "max_abs_output": scale}
    if found or skipped:
        write_json(out / "frontends.json", {"format": SIDECAR_FORMAT, "opset": opset, "exported": done,
                                            "skipped": skipped})
    return {"exported": done, "skipped": skipped}


def model_files(model: str | Path, models: list[str] | None = None,
                folds: list[int] | None = None) -> list[tuple[str, int, Path]]:
    """(model name, fold, checkpoint) for a run directory, a ``RUN/models/<model>`` folder or one ``.pt``."""
    model = Path(model)
    if model.is_file():
        from vafusion.weights import load_model

        payload = load_model(model)[3]
        extra = payload.get("extra", {})
        name = extra.get("model") or model.parent.name
        fold = extra.get("fold")
        fold = int(fold) if fold is not None else int(model.stem.removeprefix("fold") or 0)
        return [(name, fold, model)]
    if not model.is_dir():
        raise VafusionError(model, "model not found", "pass a run directory (from `vafusion cv`), "
                                                      "RUN/models/<model> or a fold<k>.pt file")
    if (model / "models").is_dir():
        dirs = [model / "models" / m for m in (models or ["fusion"])]
    else:
        dirs = [model]
    found = []
    for d in dirs:
        for p in sorted(d.glob("fold*.pt")):
            k = p.stem.removeprefix("fold")
            if k.isdigit() and (folds is None or int(k) in folds):
                found.append((d.name, int(k), p))
    if not found:
        raise VafusionError(model, f"no fold<k>.pt checkpoints for {', '.join(d.name for d in dirs)}"
                            + (f" folds {folds}" if folds else ""),
                            "train them with `vafusion cv`, or pick --models/--folds that exist")
    return found


def run_features_config(model: Path, checkpoint: Path, overrides: dict[str, str | None]) -> FeaturesConfig:
    """Front-end settings of a run: ``features`` of ``RUN/config.yaml`` if present, else the checkpoint's;
    flags override. Only that section is read, so runs from older versions with other keys still export."""
    from omegaconf import OmegaConf

    from vafusion.weights import load_model

    run_cfg = model / "config.yaml" if model.is_dir() else None
    if run_cfg is not None and run_cfg.is_file():
        try:
            stored = OmegaConf.to_container(OmegaConf.load(run_cfg)).get("features", {})
        except Exception as exc:  # noqa: BLE001 - OmegaConf/yaml raise several types for a broken file
            raise VafusionError(run_cfg, f"run config is unreadable ({exc.__class__.__name__})",
                                "restore it, or export a RUN/models/<model> folder instead") from None
    else:
        stored = load_model(checkpoint)[3].get("config", {}).get("features", {})
    known = {f.name for f in fields(FeaturesConfig)}
    feats = FeaturesConfig(**{k: v for k, v in (stored or {}).items() if k in known})
    for key, value in overrides.items():
        if value is not None:
            setattr(feats, key, value)
    return feats


def export_run(model: str | Path, out: str | Path, models: list[str] | None = None, folds: list[int] | None = None,
               opset: int = DEFAULT_OPSET, atol: float = 1e-4, with_frontends: bool = True,
               weights: dict[str, str | None] | None = None, progress: bool = True) -> dict:
    """Export the fold models of ``model`` (and the front ends) into ``out``; write ``out/export.json``."""
    from tqdm import tqdm

    model, out = Path(model), Path(out)
    _check_opset(opset)
    jobs = model_files(model, models, folds)
    t0 = time.perf_counter()
    summary: dict = {"source": str(model), "opset": opset, "atol": atol, "models": []}
    for name, fold, ckpt in tqdm(jobs, desc="export", unit="model", disable=not progress, dynamic_ncols=True):
        res = export_checkpoint(ckpt, out / name / f"fold{fold}.onnx", opset, atol)
        summary["models"].append({"model": name, "fold": fold, **res})
    if with_frontends:
        cfg = run_features_config(model, jobs[0][2], weights or {})
        summary["frontends"] = export_frontends(cfg, out / "frontends", opset, atol)
    else:
        summary["frontends"] = {"exported": {}, "skipped": {"all": "--no-frontends"}}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "export.json", summary)
    return summary
