"""int8 IResNet on ONNX Runtime that keeps the embeddings (cosine >= 0.99 to fp32 on held-out real faces).

Recipe (``RECIPE``; measured in ``benchmarks/face_encoding.py``, reasons in the research notes):

* the network is exported with every BatchNorm that follows a convolution folded into it, so each
  convolution carries its own bias and ONNX Runtime fuses ``DequantizeLinear -> Conv -> QuantizeLinear``
  into one ``QLinearConv`` (VNNI / AVX2 integer kernels);
* weights: int8, symmetric, one scale per output channel (``max |w| / 127``); bias: int32 at
  ``input scale x weight scale``;
* activations: uint8, one scale and zero point per tensor, at every quantised convolution's input and
  output, each convolution with its own quantise/dequantise pair, so everything else (the residual stream,
  the pre-convolution BatchNorm, PReLU, the additions) stays float32;
* ranges: the 0.001 % and 99.999 % percentiles of each tensor over real aligned face crops (min/max let
  a few outliers stretch the scale and cost 0.01-0.02 cosine on every face; 99.99 % clips what a face at
  the frame border needs and cost one such face 0.03);
* kept in float32: the stem convolution (3 input channels), stages 1 and 2 (``layer1``, ``layer2``: the
  112x112 to 28x28 maps, where rounding noise carried through all later blocks costs most; 34 % of the
  multiply-adds) and the embedding head. Quantising stage 2 as well is 5-15 % faster but leaves the
  worst held-out face at cosine 0.989 (mean 0.992) instead of 0.994 (mean 0.996).
"""

from __future__ import annotations

import copy
import io
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vafusion.errors import VafusionError
from vafusion.face.align import read_crop
from vafusion.io.atomic import atomic_path
from vafusion.io.onnx import session
from vafusion.models.iresnet import preprocess

RECIPE = "qdq-pc8-pct99.999-fp32stem+layer1+layer2-v1"
PERCENTILE = 99.999
KEEP_FP32 = ("conv1", "layer1", "layer2")  # top-level modules left in float32 (ONNX nodes "/layer1/...")
SAMPLES_PER_BATCH = 65536
CALIBRATION_BATCH = 8
CALIBRATION_CROPS = 256
MIN_CALIBRATION_CROPS = 16
CALIBRATION_FILE = "face_calibration.npz"
"""The calibration set ``vafusion extract`` used, kept beside the features (and copied into a run by ``cv``)
so that ``vafusion predict`` can build the same int8 model without the dataset."""
AUTO, OFF = "auto", "none"
"""``features.face_calibration`` values: crops from the dataset (or the run's stored set), or never int8."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_EMPTY = np.zeros((0, 112, 112, 3), np.uint8)
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _spaced(n: int, limit: int) -> np.ndarray:
    """``min(n, limit)`` indices evenly spaced over ``range(n)``."""
    return np.linspace(0, n - 1, min(n, limit)).round().astype(int) if n else np.zeros(0, int)


def load_calibration(path: str | Path, limit: int = CALIBRATION_CROPS) -> np.ndarray:
    """Up to ``limit`` aligned RGB crops ``(N, 112, 112, 3) uint8`` for calibrating int8: evenly spaced
    over the sorted images under a folder (searched recursively), read as ``extract`` reads crops
    (:func:`read_crop`: other sizes resized, unreadable or cut-short ones skipped), or the ``crops`` array
    of an ``.npz``."""
    path = Path(path)
    skipped: list[str] = []
    if path.suffix == ".npz" and path.is_file():
        try:
            with np.load(path) as z:
                crops = z["crops"] if "crops" in z.files else _EMPTY
        except _UNREADABLE:
            skipped, crops = [path.name], _EMPTY
        crops = crops[_spaced(len(crops), limit)]
    else:
        files = (
            sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
        )
        kept = []
        for i in _spaced(len(files), limit):
            image = read_crop(files[i])
            if image is not None:
                kept.append(image)
            else:
                skipped.append(str(files[i].relative_to(path)))
        crops = np.stack(kept) if kept else _EMPTY
    if crops.shape[1:] != (112, 112, 3) or crops.dtype != np.uint8 or len(crops) < MIN_CALIBRATION_CROPS:
        raise VafusionError(
            path,
            f"fewer than {MIN_CALIBRATION_CROPS} aligned 112x112 face crops to calibrate int8 on"
            + (f" ({len(skipped)} unreadable, e.g. {skipped[0]})" if skipped else ""),
            "give features.face_calibration a folder of aligned face crops (e.g. "
            f"DATA/cropped_aligned/VIDEO), or {OFF} to encode faces on the float path",
        )
    return np.ascontiguousarray(crops)


def calibration_mode(setting: str | Path | None) -> str:
    """``auto``, ``none`` or ``path``: what a ``features.face_calibration`` value asks for (unset, as in
    runs made before ``auto`` existed, is ``auto``)."""
    value = AUTO if setting is None else str(setting).strip().lower()
    return value if value in (AUTO, OFF) else "path"


def calibration_crops(setting: str | Path | None) -> np.ndarray | None:
    """The crops a ``features.face_calibration`` path names; ``None`` for ``none`` and for ``auto`` (which
    only ``vafusion extract`` and a run's stored set turn into crops)."""
    return load_calibration(setting) if calibration_mode(setting) == "path" else None


def save_calibration(path: Path, crops: np.ndarray, source: str) -> None:
    """Write a calibration set (compressed ``crops`` and where they came from) atomically to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, crops=np.ascontiguousarray(crops, np.uint8), source=np.array(source))


def calibration_source(path: Path) -> str | None:
    """Where a stored calibration set's crops came from (``None`` for an unreadable file)."""
    try:
        with np.load(path) as z:
            return str(z["source"]) if "source" in z.files else "unrecorded"
    except _UNREADABLE:
        return None


def export_onnx(net: nn.Module) -> bytes:
    """The (BatchNorm-folded, eval-mode) network as ONNX bytes, dynamic batch, input ``faces``."""
    blob = io.BytesIO()
    model = copy.deepcopy(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, 112, 112),),
            blob,
            input_names=["faces"],
            output_names=["embeddings"],
            dynamic_axes={"faces": {0: "n"}, "embeddings": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    return blob.getvalue()


def quantised_convs(model) -> list:
    """The Conv nodes the recipe quantises (all but those under ``KEEP_FP32``)."""
    return [
        n
        for n in model.graph.node
        if n.op_type == "Conv" and not any(n.name.startswith(f"/{k}/") for k in KEEP_FP32)
    ]


def calibrate(model, crops: np.ndarray, tensors: list[str], threads: int) -> dict[str, tuple[float, float]]:
    """``{tensor: (low, high)}``: the ``PERCENTILE`` two-sided range of each tensor over ``crops``."""
    import onnx

    probe = copy.deepcopy(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors if t not in known
    )
    sess = session(probe.SerializeToString(), threads, spin=False)
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)
    samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for i in range(0, len(crops), CALIBRATION_BATCH):
        outs = dict(
            zip(names, sess.run(None, {"faces": preprocess(crops[i : i + CALIBRATION_BATCH]).numpy()}))
        )
        for t in tensors:
            v = outs[t].ravel()
            pick = rng.integers(0, v.size, min(v.size, SAMPLES_PER_BATCH))
            samples[t].append(np.concatenate([v[pick], [v.min(), v.max()]]))
    q = PERCENTILE / 100
    out = {}
    for t, parts in samples.items():
        lo, hi = np.quantile(np.concatenate(parts), [1 - q, q])
        out[t] = (float(lo), float(hi))
    return out


def _activation_qparams(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero = int(np.clip(round(-lo / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zero, np.uint8)


class _Writer:
    """Appends quantise/dequantise nodes and their constants to a new node list."""

    def __init__(self, model) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list = []
        self.inits = {i.name: i for i in model.graph.initializer}
        # the exporter stores equal constants once and names the others through Identity nodes (e.g. the
        # all-zero biases of BatchNorms at their defaults)
        self.alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}

    def array(self, name: str) -> np.ndarray:
        """The constant ``name``, through the exporter's Identity aliases."""
        while name not in self.inits and name in self.alias:
            name = self.alias[name]
        return self.onnx.numpy_helper.to_array(self.inits[name])

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = self.onnx.numpy_helper.from_array(value, name)
        return name

    def dq(self, name: str, q: str, scale: str, zero: str, axis: int | None = None) -> str:
        kw = {} if axis is None else {"axis": axis}
        self.nodes.append(self.onnx.helper.make_node("DequantizeLinear", [q, scale, zero], [name], **kw))
        return name

    def qdq(self, tensor: str, out: str, tag: str, lo: float, hi: float) -> float:
        scale, zero = _activation_qparams(lo, hi)
        s, z = self.const(f"{tag}.scale", scale), self.const(f"{tag}.zero", zero)
        self.nodes.append(self.onnx.helper.make_node("QuantizeLinear", [tensor, s, z], [f"{tag}.q"]))
        self.dq(out, f"{tag}.q", s, z)
        return float(scale)

    def conv(self, node, ranges: dict[str, tuple[float, float]]) -> None:
        """``node`` with int8 weights, int32 bias and quantised input and output (a ``QLinearConv``)."""
        tag = node.name.strip("/").replace("/", ".")
        x, w, b = node.input[0], node.input[1], node.input[2]
        x_scale = self.qdq(x, f"{tag}.x", f"{tag}.x", *ranges[x])
        weight = self.array(w).astype(np.float32)
        w_scale = np.maximum(np.abs(weight).reshape(len(weight), -1).max(1), 1e-12) / 127.0
        shape = (-1,) + (1,) * (weight.ndim - 1)
        w_q = np.clip(np.round(weight / w_scale.reshape(shape)), -127, 127).astype(np.int8)
        zeros8 = np.zeros(len(weight), np.int8)
        self.const(f"{tag}.w", w_q)
        self.dq(f"{tag}.wf", f"{tag}.w", self.const(f"{tag}.ws", w_scale.astype(np.float32)),
                self.const(f"{tag}.wz", zeros8), axis=0)  # fmt: skip
        bias = self.array(b).astype(np.float64)
        b_scale = (x_scale * w_scale.astype(np.float64)).astype(np.float32)
        b_q = np.round(bias / b_scale).astype(np.int32)
        self.const(f"{tag}.b", b_q)
        self.dq(f"{tag}.bf", f"{tag}.b", self.const(f"{tag}.bs", b_scale),
                self.const(f"{tag}.bz", np.zeros(len(weight), np.int32)), axis=0)  # fmt: skip
        y = node.output[0]
        conv = copy.deepcopy(node)
        del conv.input[:]
        conv.input.extend([f"{tag}.x", f"{tag}.wf", f"{tag}.bf"])
        conv.output[0] = f"{tag}.y"
        self.nodes.append(conv)
        self.qdq(f"{tag}.y", y, f"{tag}.out", *ranges[y])


def quantise(model, ranges: dict[str, tuple[float, float]]):
    """A copy of ``model`` with the recipe's convolutions in QDQ int8, using the calibrated ``ranges``."""
    writer = _Writer(model)
    targets = {n.name for n in quantised_convs(model)}
    for node in model.graph.node:
        if node.name in targets and len(node.input) == 3:
            writer.conv(node, ranges)
        else:
            writer.nodes.append(node)
    nodes = writer.nodes
    while True:  # the float weights and biases that were quantised go, with Identity aliases of them
        used = {name for node in nodes for name in node.input} | {o.name for o in model.graph.output}
        kept = [n for n in nodes if n.op_type != "Identity" or n.output[0] in used]
        if len(kept) == len(nodes):
            break
        nodes = kept
    out = copy.deepcopy(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(v for k, v in writer.inits.items() if k in used)
    return out


def build_int8(folded: nn.Module, crops: np.ndarray, threads: int) -> bytes:
    """The int8 ONNX model (bytes) of a BatchNorm-folded IResNet, calibrated on aligned RGB ``crops``."""
    import onnx

    model = onnx.load_from_string(export_onnx(folded))
    convs = quantised_convs(model)
    tensors = sorted({t for n in convs for t in (n.input[0], n.output[0])})
    ranges = calibrate(model, crops, tensors, threads)
    return quantise(model, ranges).SerializeToString()


def quantised_share(net: nn.Module) -> float:
    """The share of ``net``'s multiply-adds (one face) in the convolutions the recipe quantises."""
    macs: dict[str, tuple[bool, int]] = {}

    def count(name: str, quantised: bool):
        def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            macs[name] = (quantised, out[0].numel() * module.weight[0].numel())

        return hook

    hooks = [
        m.register_forward_hook(count(name, isinstance(m, nn.Conv2d) and name.split(".")[0] not in KEEP_FP32))
        for name, m in net.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, 112, 112))
    finally:
        for h in hooks:
            h.remove()
    total = sum(n for _, n in macs.values())
    return sum(n for q, n in macs.values() if q) / total if total else 0.0


def needed_conv_gain(share: float, gain: float) -> float:
    """How much faster the quantised convolutions must run for the network to be ``gain`` x faster, when
    they hold ``share`` of the work and the rest runs as fast as on the float path (Amdahl): infinite where
    even free convolutions would not do."""
    rest = 1.0 / gain - (1.0 - share)
    return share / rest if share > 0 and rest > 0 else float("inf")


def conv_probe(
    kind: str, threads: int, batch: int, channels: int = 256, side: int = 14
) -> Callable[[], object]:
    """One bare 3x3 convolution (``channels`` in and out, ``side`` x ``side``, ``batch`` faces; default: the
    IResNet stage holding most of the quantised work) as the face path ``kind`` (``precision/backend``)
    runs it: int8 as one ``QLinearConv`` (uint8 activations, per-channel int8 weights), fp32 on ONNX
    Runtime, or a channels-last torch convolution in fp32 or bf16."""
    precision, backend = kind.split("/")
    rng = np.random.default_rng(0)
    shape = (batch, channels, side, side)
    if backend == "torch":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
        w = (
            (0.05 * torch.randn(channels, channels, 3, 3))
            .to(dtype)
            .contiguous(memory_format=torch.channels_last)
        )
        b = torch.zeros(channels, dtype=dtype)

        def run() -> object:
            with torch.inference_mode():
                return torch.nn.functional.conv2d(x, w, b, padding=1)

        return run
    from onnx import TensorProto, helper, numpy_helper

    weights = rng.integers(-127, 128, (channels, channels, 3, 3)).astype(np.int8)
    if precision == "int8":
        zeros = np.zeros(channels, np.int32)
        consts = {"xs": np.float32(0.03), "xz": np.uint8(128), "w": weights,
                  "ws": np.full(channels, 0.01, np.float32), "wz": zeros.astype(np.int8), "b": zeros,
                  "bs": np.full(channels, 3e-4, np.float32), "bz": zeros, "ys": np.float32(0.05),
                  "yz": np.uint8(128)}  # fmt: skip
        nodes = [
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x"]),
            helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
            helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0),
            helper.make_node("Conv", ["x", "wf", "bf"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
        ]
        io_type, feed = TensorProto.UINT8, rng.integers(0, 256, shape).astype(np.uint8)
        names = ("xq", "yq")
    else:
        consts = {"wf": 0.01 * weights.astype(np.float32), "bf": np.zeros(channels, np.float32)}
        nodes = [helper.make_node("Conv", ["x", "wf", "bf"], ["y"], pads=[1, 1, 1, 1])]
        io_type, feed = TensorProto.FLOAT, rng.standard_normal(shape).astype(np.float32)
        names = ("x", "y")
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info(names[0], io_type, list(shape))],
        [helper.make_tensor_value_info(names[1], io_type, list(shape))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    sess = session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                   threads, spin=False)  # fmt: skip
    return lambda: sess.run(None, {names[0]: feed})
