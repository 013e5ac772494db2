"""Fusion models as ONNX graphs: export with a parity check, the JSON sidecar, and running them.

Layout of one exported model (``vafusion export``)::

    OUT/<model>/fold<k>.onnx   feats_<role> (B, T, D) float32, valid_<role> (B, T) bool -> va (B, T, 2)
    OUT/<model>/fold<k>.json   sidecar: streams, normaliser mean/std, window/hop, input names, parity check

An ONNX-only consumer normalises each stream with the sidecar's mean/std (``(x - mean) / std`` on valid
frames, 0 elsewhere), runs windows of ``window`` frames every ``hop`` frames and averages the overlaps
with a triangular weight, as :func:`vafusion.models.windows.sliding_predict` does; :class:`OnnxNet` plugs
straight into that function. The graphs have dynamic batch and time axes and use opset 17 or later.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from vafusion.errors import OutputError, VafusionError
from vafusion.io.atomic import atomic_path, write_json
from vafusion.io.onnx import session
from vafusion.models.checkpoint import Checkpoint
from vafusion.models.fusion import FusionNet
from vafusion.models.normaliser import Normaliser
from vafusion.weights import load_checkpoint, sha256

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


def _plain(net: FusionNet) -> FusionNet:
    """An eval-mode copy with weight-norm parametrisations folded into plain weights (a smaller graph).

    The copy is rebuilt from the config, not ``deepcopy``-ed: parametrised modules share their generated
    class with a deep copy, and removing the parametrisation from one would break the other.
    """
    fresh = FusionNet(net.cfg, net.specs)
    fresh.load_state_dict(net.state_dict())
    net = fresh.eval()
    for module in net.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return net


def check_opset(opset: int) -> None:
    """Refuse opsets older than the attention masks and LayerNorm need."""
    if opset < MIN_OPSET:
        raise VafusionError(
            None,
            f"ONNX opset {opset} is too old for the attention masks and LayerNorm",
            f"use --opset {MIN_OPSET} or later",
        )


def onnx_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """Trace ``module`` to ``path`` atomically with the TorchScript-based exporter (no onnxscript needed)."""
    check_opset(opset)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def _fusion_example(net: FusionNet, batch: int, length: int, seed: int) -> list[torch.Tensor]:
    """Random features with masked frames: a random 30 % of every stream, the whole last stream of item 0,
    and the trailing frames of the query stream (as in the padding of a short sequence)."""
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for k, spec in enumerate(net.specs):
        dim = spec.dim
        valid = torch.rand(batch, length, generator=g) > 0.3
        if k == len(net.names) - 1 and len(net.names) > 1:
            valid[0] = False
        if k == 0:
            valid[:, -max(1, length // 5) :] = False
        tensors += [torch.randn(batch, length, dim, generator=g), valid]
    return tensors


def parity(
    net: FusionNet,
    onnx_path: str | Path,
    shapes: tuple[tuple[int, int], ...] = ((1, 1), (2, 37), (3, 300)),
    seed: int = 0,
) -> float:
    """Largest |ONNX Runtime - PyTorch| on random inputs with masked frames, at several (batch, time)."""
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
    onnx_export(plain, tuple(_fusion_example(net, 2, 16, 0)), Path(path), inputs, [OUTPUT], dynamic, opset)
    return inputs


def sidecar(ckpt: Checkpoint, source: Path, opset: int, max_abs_diff: float) -> dict:
    """Everything an ONNX-only consumer needs besides the graph."""
    net, norm = ckpt.net, ckpt.normaliser
    return {
        "format": SIDECAR_FORMAT,
        "model": ckpt.model or ckpt.extra.get("model"),
        "fold": ckpt.fold,
        "source": str(source),
        "source_sha256": sha256(source),
        "opset": opset,
        "roles": list(net.names),
        "streams": {r: ckpt.streams[r] for r in net.names},
        "inputs": [
            {"name": n, "role": b.name, "dtype": dt, "shape": shape}
            for b in net.specs
            for n, dt, shape in (
                (feats_input(b.name), "float32", ["batch", "time", b.dim]),
                (valid_input(b.name), "bool", ["batch", "time"]),
            )
        ],
        "output": {
            "name": OUTPUT,
            "dtype": "float32",
            "shape": ["batch", "time", 2],
            "columns": ["valence", "arousal"],
        },
        "normaliser": {
            r: {"mean": norm.mean[r].astype(float).tolist(), "std": norm.std[r].astype(float).tolist()}
            for r in net.names
        },
        "normalise": "x = (features - mean) / std on valid frames, 0 on invalid frames",
        "window": int(ckpt.window),
        "hop": int(ckpt.hop),
        "averaging": "overlapping windows averaged with a triangular weight, min(i + 1, w - i) for row i",
        "parity": {
            "max_abs_diff": max_abs_diff,
            "reference": "PyTorch float32 on CPU",
            "inputs": "random features, ~30 % masked frames, a fully masked stream, time 1, 37 and 300",
        },
    }


def export_checkpoint(
    model_path: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, atol: float = 1e-4
) -> dict:
    """Export one ``fold<k>.pt`` to ``out`` (``.onnx``) with its ``.json`` sidecar; fail if off by > atol."""
    model_path, out = Path(model_path), Path(out)
    ckpt = load_checkpoint(model_path)
    export_fusion(ckpt.net, out, opset)
    diff = parity(ckpt.net, out)
    if not diff <= atol:
        out.unlink(missing_ok=True)
        raise VafusionError(
            model_path,
            f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> {atol:g})",
            "report this with the model file; try another --opset",
        )
    write_json(out.with_suffix(".json"), sidecar(ckpt, model_path, opset, diff))
    return {"onnx": str(out), "sidecar": str(out.with_suffix(".json")), "max_abs_diff": diff}


def onnx_runner(
    checkpoint: str | Path, onnx_path: str | Path, threads: int = 0, atol: float = 1e-4
) -> OnnxNet:
    """ONNX Runtime runner for ``checkpoint``, cached at ``onnx_path`` (e.g. ``RUN/onnx/fusion/fold0.onnx``,
    the layout of ``vafusion export --model RUN --out RUN/onnx``).

    The cached graph is reused when its sidecar records this checkpoint's SHA-256; otherwise (missing,
    unreadable or from another checkpoint) the checkpoint is exported there first, parity-checked.
    """
    checkpoint, onnx_path = Path(checkpoint), Path(onnx_path)
    side = onnx_path.with_suffix(".json")
    try:
        current = onnx_path.is_file() and read_sidecar(side).get("source_sha256") == sha256(checkpoint)
    except VafusionError:
        current = False
    if not current:
        export_checkpoint(checkpoint, onnx_path, atol=atol)
    return OnnxNet(onnx_path, threads)


def onnx_in_run(run: Path, which: str, fold: int, checkpoint: Path, threads: int = 0) -> OnnxNet:
    """:func:`onnx_runner` with the graph cached in ``RUN/onnx/<which>/fold<k>.onnx`` (``--backend onnx``);
    a run folder that cannot be written says how to get the graphs there once."""
    cache = run / "onnx"
    try:
        return onnx_runner(checkpoint, cache / which / f"fold{fold}.onnx", threads)
    except OutputError as exc:
        raise OutputError(
            exc.path,
            f"{exc.problem} (--backend onnx keeps its graphs in {cache})",
            f"copy the run folder somewhere writable, or run `vafusion export --model {run} --out {cache}` "
            "once where it can write, or use --backend torch",
        ) from None


class OnnxNet:
    """An exported fusion model run by ONNX Runtime behind ``FusionNet``'s call: dicts of ``(B, T, D)`` /
    ``(B, T)`` tensors in, ``(B, T, 2)`` tensor out, so that
    :func:`~vafusion.models.windows.sliding_predict` takes it."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.meta = read_sidecar(self.path.with_suffix(".json"))
        self.names: list[str] = list(self.meta["roles"])
        self.session = session(self.path, threads)
        got = [i.name for i in self.session.get_inputs()]
        want = [n for r in self.names for n in (feats_input(r), valid_input(r))]
        if got != want:
            raise VafusionError(
                self.path,
                f"graph inputs {got} do not match its sidecar {want}",
                "export the model and its .json together with `vafusion export`",
            )

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
        raise VafusionError(
            path,
            "ONNX sidecar missing",
            "export with `vafusion export`, which writes fold<k>.json beside fold<k>.onnx",
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VafusionError(
            path, f"ONNX sidecar is unreadable ({exc.__class__.__name__})", "re-export with `vafusion export`"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise VafusionError(path, "not a vafusion ONNX sidecar", "re-export with `vafusion export`")
    return meta


def load_onnx(path: str | Path, threads: int = 0) -> tuple[OnnxNet, Normaliser, dict[str, str], dict]:
    """The ONNX counterpart of ``load_checkpoint``: (runner, normaliser, streams, sidecar)."""
    path = Path(path)
    if not path.is_file():
        raise VafusionError(
            path, "ONNX model not found", "export one with `vafusion export --model RUN --out DIR`"
        )
    net = OnnxNet(path, threads)
    norm = Normaliser(
        {r: np.asarray(v["mean"], np.float32) for r, v in net.meta["normaliser"].items()},
        {r: np.asarray(v["std"], np.float32) for r, v in net.meta["normaliser"].items()},
    )
    return net, norm, dict(net.meta["streams"]), net.meta
