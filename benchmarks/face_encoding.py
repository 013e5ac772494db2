"""Face encoding (IResNet-50, 112x112): naive vs every path vs vafusion's choice vs the peak, and accuracy.

    .venv/bin/python benchmarks/face_encoding.py             # 3 interleaved rounds, all held-out crops
    .venv/bin/python benchmarks/face_encoding.py --quick     # 2 rounds, 128 held-out crops (make bench)
    .venv/bin/python benchmarks/face_encoding.py --int8      # also the earlier whole-network static int8
    .venv/bin/python benchmarks/face_encoding.py --ceiling   # also the network's convolutions alone
    .venv/bin/python benchmarks/avx2.py benchmarks/face_encoding.py --quick   # as on an AVX2-only CPU

* crops: real aligned faces from ``../shared/testdata/videos`` (``real_crops.py``: vafusion's detector and
  aligner; disjoint sets to fit BatchNorm statistics, to calibrate int8, to test), else the demo's;
* naive: fp32, NCHW, one face at a time, ``torch.no_grad``;
* paths: torch fp32 / bf16 (fused oneDNN convolutions, ``face_fused``), ONNX Runtime fp32 and int8
  (``vafusion.features.face_int8``, calibrated on the calibration crops), each batched (``--batch``);
  bf16 is timed in full only where the CPU has native bf16 (elsewhere one face, to show emulation);
* vafusion's way: ``FaceEncoder`` with its automatic choice (remembered per machine in the user cache, as
  ``IResNetExtractor`` runs it; ``--fresh`` measures it again);
* peak per precision: bare 3x3 convolutions of IResNet-50's four stage shapes (batch 32, channels-last;
  int8: ``QLinearConv`` uint8 x int8; each repeated for ~50 ms per round, its steady rate) on every
  backend that runs that precision; the fastest is the
  precision's peak, converted to faces/s with the network's counted multiply-adds. "% of peak" is a path's
  GFLOP/s over the peak of its own precision; "% of best peak" over the fastest of all precisions.

Accuracy: a fixed-seed IResNet-50 (He-initialised, BatchNorm statistics fitted on real crops, so
activations have a trained network's scale) on held-out crops: cosine to the plain fp32 network.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import real_crops
import torch
from _common import DEMO, Section, load_text, machine, race, repeated, table
from torch import nn

from vafusion.cpu import choose_precision, cpu_info, cpu_kind
from vafusion.features.face_choice import ChoiceCache
from vafusion.features.face_encoder import FaceEncoder
from vafusion.features.face_fused import CHUNK_BYTES, _conv, pointwise_available
from vafusion.features.face_int8 import conv_probe
from vafusion.io.onnx import onnxruntime_available
from vafusion.models.iresnet import IResNet, iresnet, preprocess

BATCH = 32
N_NAIVE = 2
NAIVE = "naive (fp32 NCHW, 1 face/call)"
AUTO = "vafusion (auto)"
CEILING = "convolutions alone (ceiling, torch)"
STAGE_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))


def count_macs(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of convolutions and linear layers for one sample of ``x``'s shape."""
    total = 0

    def hook(m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(x[:1])
    for h in handles:
        h.remove()
    return total


def demo_crops(
    n: int, seed: int = 0, folder: Path = DEMO / "data" / "cropped_aligned"
) -> tuple[np.ndarray, str]:
    """``n`` aligned face crops: sampled from ``folder/<video>/*.jpg``, or rendered when there are too few."""
    import cv2

    files = sorted(Path(folder).glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    if len(files) >= n:
        pick = rng.choice(len(files), n, replace=False)
        crops = [cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB) for i in pick]
        return np.stack(crops), f"{n} crops sampled from {folder}"
    from vafusion.data.synth import render_face

    crops = [render_face(float(v), float(a), rng=rng) for v, a in rng.uniform(-1, 1, (n, 2))]
    return np.stack(crops), f"{n} rendered synthetic faces (no demo run)"


def reference_net(calibration: np.ndarray, arch: str = "iresnet50", seed: int = 0) -> IResNet:
    """A fixed-seed IResNet whose activations have a trained network's scale.

    The arcface_torch initialisation (conv weights N(0, 0.1)) with default BatchNorm statistics makes
    activations grow to ~1e26, which says nothing about rounding error; He initialisation and BatchNorm
    statistics fitted on real crops keep every layer near unit scale, as a trained network is.
    """
    torch.manual_seed(seed)
    net = iresnet(arch)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(calibration), 64):
            net(preprocess(calibration[i : i + 64]))
    return net.eval()


def crop_sets(crops_dir: Path, n_test: int | None) -> tuple[dict[str, np.ndarray], str]:
    """``{"bn", "calib", "test", "timing"}`` crops and where they come from (real ones when available)."""
    sets = real_crops.load()
    if sets is not None:
        source = f"real crops of {real_crops.VIDEOS} (bn {len(sets['bn'])}, calib {len(sets['calib'])})"
    else:
        crops, source = demo_crops(128 + 256 + 128, folder=crops_dir)
        sets = {"bn": crops[:128], "calib": crops[128:384], "test": crops[384:]}
    test = sets["test"]
    if n_test is not None and n_test < len(test):
        test = test[np.linspace(0, len(test) - 1, n_test).round().astype(int)]
    return {**sets, "test": test, "timing": sets["test"][:BATCH]}, f"{source}; {len(test)} held out"


def stage_probes(kind: str, batch: int) -> dict[str, tuple[Callable[[], object], float]]:
    """``{"CxHxW": (fn, GFLOP)}``: one bare 3x3 convolution per IResNet-50 stage shape, ``batch`` faces, as
    the face path ``kind`` runs it (``face_int8.conv_probe``), each called once by ``fn``."""
    threads = torch.get_num_threads()
    return {
        f"{c}x{hw}x{hw}": (conv_probe(kind, threads, batch, c, hw), 2 * batch * c * c * 9 * hw * hw / 1e9)
        for c, hw in STAGE_SHAPES
    }


def conv_candidates(precisions: list[str], with_ort: bool) -> dict[str, tuple]:
    """``{"<precision> <backend> conv CxHxW": (fn, GFLOP)}``: bare stage-shape convolutions for the peaks,
    built as the face path's int8 probe builds them (``face_int8.conv_probe``: channels-last torch, a plain
    ONNX Runtime ``Conv``, int8 as one ``QLinearConv``), each at its steady rate (:func:`repeated`)."""
    kinds = [f"{p}/torch" for p in precisions if p != "int8"]
    if with_ort:
        kinds += ["fp32/onnxruntime", *(["int8/onnxruntime"] if "int8" in precisions else [])]
    probes = {kind: stage_probes(kind, BATCH) for kind in kinds}
    return {
        f"{kind.replace('/', ' ')} conv {shape}": repeated(*probes[kind][shape])
        for shape in probes[kinds[0]]
        for kind in kinds
    }


def distinct_convs(net: nn.Module) -> dict[tuple, tuple[nn.Conv2d, tuple[int, ...], tuple[int, ...], int]]:
    """``{(in, out, kernel, stride, side): (conv, input shape, output shape, count)}`` for one face."""
    seen: dict[tuple, list] = {}

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        key = (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], inp[0].shape[-1])
        seen.setdefault(key, [m, tuple(inp[0].shape[1:]), tuple(out.shape[1:]), 0])[3] += 1

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 3, 112, 112))
    for h in handles:
        h.remove()
    return {k: tuple(v) for k, v in seen.items()}


def conv_runner(conv: nn.Conv2d, shape: tuple, out_shape: tuple, batch: int, dtype: torch.dtype):
    """``conv`` alone on ``batch`` faces, run as the fused path runs it: oneDNN's fused op with bias (where
    this torch has it), channels-last, in the chunks :meth:`FusedIResNet.plan` gives a layer of that output
    size."""
    itemsize = torch.finfo(dtype).bits // 8
    parts = math.ceil(batch / max(1, CHUNK_BYTES // (math.prod(out_shape) * itemsize)))
    per_call = math.ceil(batch / parts)
    layer, fused = _conv(conv, dtype), pointwise_available(dtype)
    x = torch.randn(batch, *shape).to(dtype).contiguous(memory_format=torch.channels_last)
    chunks = [x[i : i + per_call] for i in range(0, batch, per_call)]

    def run() -> None:
        with torch.inference_mode():
            for chunk in chunks:
                layer(chunk, fused=fused)

    return run


def conv_ceiling(net: nn.Module, precision: str, batch: int) -> Callable[[], None]:
    """Every convolution of ``net`` alone, each at its own shape and run as the fused path runs it
    (:func:`conv_runner`), one after the other: what the network would cost if everything between its
    convolutions (PReLU, border corrections, additions) were free. Its % of peak is the most that fusing
    those can give."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    runs = [(conv_runner(m, i, o, batch, dtype), n) for m, i, o, n in distinct_convs(net).values()]

    def run() -> None:
        for fn, n in runs:
            for _ in range(n):
                fn()

    return run


def build_paths(net: nn.Module, calib: np.ndarray, batch: int) -> tuple[dict[str, FaceEncoder], dict]:
    """Every path this machine runs, forced (no race), and the seconds each took to build."""
    info = cpu_info()
    wanted = [("fp32", "torch")]
    if choose_precision(info) == "bf16":
        wanted.append(("bf16", "torch"))
    if onnxruntime_available():
        wanted += [("fp32", "onnxruntime"), ("int8", "onnxruntime")]
    paths, build_s = {}, {}
    for prec, backend in wanted:
        t0 = time.perf_counter()
        paths[f"{prec} {backend}"] = FaceEncoder(net, batch, prec, backend, calibration=calib)
        build_s[f"{prec} {backend}"] = time.perf_counter() - t0
    return paths, build_s


def naive_encoder(net: nn.Module):
    """fp32, NCHW, one face per call, ``no_grad``: what a first implementation does."""

    def run(crops: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([net(preprocess(crops[i : i + 1])).numpy() for i in range(len(crops))])

    return run


def static_int8_encoder(net: nn.Module, calibration: np.ndarray):
    """The earlier recipe, for comparison: ONNX Runtime's ``quantize_static`` of the whole network (QDQ,
    per-channel weights, MinMax activations, every op it can quantise)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(
                {"faces": preprocess(calibration[i : i + 32]).numpy()} for i in range(0, len(calibration), 32)
            )

        def get_next(self) -> dict | None:
            return next(self.it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a warning per BatchNorm it leaves in float
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
            model = copy.deepcopy(net).eval()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (torch.zeros(2, 3, 112, 112),),
                    str(src),
                    input_names=["faces"],
                    output_names=["emb"],
                    dynamic_axes={"faces": {0: "n"}, "emb": {0: "n"}},
                    opset_version=17,
                    dynamo=False,
                )
                quant_pre_process(str(src), str(pre))
                quantize_static(
                    str(pre),
                    str(dst),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.log_severity_level = 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])
    finally:
        root.setLevel(level)

    def run(crops: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                sess.run(None, {"faces": preprocess(crops[i : i + BATCH]).numpy()})[0]
                for i in range(0, len(crops), BATCH)
            ]
        )

    return run


def accuracy(out: np.ndarray, ref: np.ndarray) -> dict:
    """Max |difference|, that relative to max |reference|, and the lowest / mean cosine similarity."""
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    diff = float(np.abs(out - ref).max())
    return {
        "max_abs": diff,
        "max_rel": diff / float(np.abs(ref).max()),
        "cos_min": float(cos.min()),
        "cos_mean": float(cos.mean()),
    }


def _static_int8(net: nn.Module, sets: dict, ref: np.ndarray, rounds: int, fp32) -> dict:
    t0 = time.perf_counter()
    enc = static_int8_encoder(net, sets["calib"][:128])
    build_s = time.perf_counter() - t0
    timing = sets["timing"]
    r = race(
        {"static int8": (lambda: enc(timing), len(timing)), "fp32": (lambda: fp32(timing), len(timing))},
        rounds,
    )
    return {
        "faces_per_s": r.median("static int8"),
        "x_fp32_torch": r.ratio("static int8", "fp32"),
        "build_s": build_s,
        "load": r.load_range(),
        **accuracy(enc(sets["test"]), ref),
    }


def peaks(res, convs: dict) -> dict[str, tuple[float, str]]:
    """``{precision: (GFLOP/s, fastest convolution)}`` from the raced bare convolutions."""
    out: dict[str, tuple[float, str]] = {}
    for name in convs:
        prec, rate = name.split()[0], res.median(name)
        if rate > out.get(prec, (0.0, ""))[0]:
            out[prec] = (rate, name)
    return out


def measure(
    net: nn.Module, sets: dict, batch: int, rounds: int, cache: ChoiceCache | None, ceiling: bool = False
) -> dict:
    """Build every path and vafusion's choice, race them with naive and the bare convolutions (and, with
    ``ceiling``, the network's convolutions alone in the chosen precision)."""
    paths, build_s = build_paths(net, sets["calib"], batch)
    t0 = time.perf_counter()
    auto = FaceEncoder(net, batch, key=("bench", "iresnet50"), calibration=sets["calib"], cache=cache)
    choose_s = time.perf_counter() - t0
    timing, naive = sets["timing"][:batch], naive_encoder(net)
    cands = {NAIVE: (lambda: naive(timing[:N_NAIVE]), N_NAIVE)}
    cands.update({k: (lambda p=p: p(timing), len(timing)) for k, p in paths.items()})
    cands[AUTO] = (lambda: auto(timing), len(timing))
    if ceiling:
        prec = auto.path.precision if auto.path.precision != "int8" else "fp32"
        cands[f"{prec} {CEILING}"] = (conv_ceiling(net, prec, len(timing)), len(timing))
    convs = conv_candidates(sorted({k.split()[0] for k in paths}), onnxruntime_available())
    res = race({**cands, **convs}, rounds)
    emulated = None
    if "bf16 torch" not in paths:
        slow = FaceEncoder(net, 1, "bf16", "torch")
        t1 = time.perf_counter()
        slow(timing[:1])
        emulated = 1 / (time.perf_counter() - t1)
    return {
        "paths": paths,
        "auto": auto,
        "res": res,
        "convs": convs,
        "cands": cands,
        "build_s": build_s,
        "choose_s": choose_s,
        "emulated": emulated,
    }


def run(
    rounds: int = 3,
    with_int8: bool = False,
    crops_dir: Path = DEMO / "data" / "cropped_aligned",
    batch: int = BATCH,
    fresh: bool = False,
    ceiling: bool = False,
) -> Section:
    """Everything above; returns the RESULTS.md section. ``with_int8`` adds the earlier static int8;
    ``fresh`` makes vafusion choose again in a temporary cache instead of the user's; ``ceiling`` races
    the network's convolutions alone (:func:`conv_ceiling`) too."""
    sets, source = crop_sets(crops_dir, None if rounds >= 3 else 128)
    net = reference_net(sets["bn"])
    gflop_face = 2 * count_macs(net, torch.zeros(1, 3, 112, 112)) / 1e9
    cache = ChoiceCache(Path(tempfile.mkdtemp()) / "face_paths.json") if fresh else None
    m = measure(net, sets, batch, rounds, cache, ceiling)
    with torch.no_grad():
        test = sets["test"]
        ref = np.concatenate([net(preprocess(test[i : i + 64])).numpy() for i in range(0, len(test), 64)])
    acc = {k: accuracy(p(test), ref) for k, p in m["paths"].items()}
    static = _static_int8(net, sets, ref, rounds, m["paths"]["fp32 torch"]) if with_int8 else None
    return section(m, acc, peaks(m["res"], m["convs"]), gflop_face, static, rounds, source, batch)


def section(
    m: dict, acc: dict, pk: dict, gflop_face: float, static, rounds: int, source: str, batch: int
) -> Section:  # long: the report
    """The markdown and raw figures."""
    res, auto = m["res"], m["auto"]
    best_peak = max(v[0] for v in pk.values())
    chosen = f"{auto.path.precision} {auto.path.backend}"
    rows = []
    for name in m["cands"]:
        f = res.median(name)
        prec = chosen.split()[0] if name == AUTO else name.split()[0]
        peak = pk.get(prec, pk.get("fp32"))[0]
        a = acc.get(chosen if name == AUTO else name)
        cos = [f"{a['cos_min']:.4f}", f"{a['cos_mean']:.4f}"] if a else ["—", "—"]
        rows.append(
            [
                name,
                f"{f:.2f}",
                f"{res.ratio(name, NAIVE):.2f}x",
                f"{100 * f * gflop_face / peak:.0f} %",
                f"{100 * f * gflop_face / best_peak:.0f} %",
                *cos,
            ]
        )
    if m["emulated"] is not None:
        rows.append(
            ["bf16 torch without native bf16 (1 face)", f"{m['emulated']:.3f}", "—", "—", "—", "—", "—"]
        )
    speed = res.median(AUTO)
    own_peak, own_conv = pk.get(auto.path.precision, pk["fp32"])
    headline = (
        f"**{speed:.1f} faces/s = {res.ratio(AUTO, NAIVE):.1f} × naive = "
        f"{100 * speed * gflop_face / own_peak:.0f} % of peak** ({chosen}, batch {batch}; "
        f"{auto.path.precision} peak {own_peak:.0f} GFLOP/s = {own_peak / gflop_face:.1f} faces/s from "
        f"`{own_conv}`; {res.load_range()})"
    )
    info = cpu_info()
    md = [
        headline,
        "",
        f"CPU: {info.summary()}; kind {cpu_kind(info)}. IResNet-50 costs {gflop_face:.2f} GFLOP per face "
        f"(counted). Medians of {rounds} interleaved rounds, batch {batch}; ratios are within-round medians. "
        f"Crops: {source}.",
        "",
        table(
            [
                "path",
                "faces/s",
                "× naive",
                "% of its precision's peak",
                "% of best peak",
                "min cosine",
                "mean cosine",
            ],
            rows,
        ),
        "",
        f"Choice: {auto.path.reason} (took {m['choose_s']:.1f} s). Building the paths took "
        + ", ".join(f"{k} {v:.1f} s" for k, v in m["build_s"].items())
        + " (int8: calibration and quantisation, or the user cache).",
        "",
        "Peaks (bare 3x3 convolutions, batch 32), GFLOP/s:",
        "",
        table(["convolution", "GFLOP/s"], [[k, f"{res.median(k):.0f}"] for k in m["convs"]]),
    ]
    if static:
        md += [
            "",
            f"Earlier whole-network static int8 (ORT quantize_static, MinMax): {static['faces_per_s']:.2f} "
            f"faces/s = {static['x_fp32_torch']:.2f} × fp32 torch, cosine min {static['cos_min']:.4f} mean "
            f"{static['cos_mean']:.4f} ({static['load']}; quantising took {static['build_s']:.0f} s).",
        ]
    data = {
        "gflop_per_face": gflop_face,
        "rounds": rounds,
        "batch": batch,
        "rates": res.rates,
        "loads": res.loads,
        "peaks_gflops": {k: v[0] for k, v in pk.items()},
        "peak_sources": {k: v[1] for k, v in pk.items()},
        "vafusion": {
            "faces_per_s": speed,
            "x_naive": res.ratio(AUTO, NAIVE),
            "pct_peak": 100 * speed * gflop_face / own_peak,
            "pct_best_peak": 100 * speed * gflop_face / best_peak,
            "precision": auto.path.precision,
            "backend": auto.path.backend,
            "reason": auto.path.reason,
            "choose_s": m["choose_s"],
        },
        "build_s": m["build_s"],
        "bf16_emulated_faces_per_s": m["emulated"],
        "accuracy": acc,
        "static_int8": static,
        "load_end": load_text(),
    }
    return Section("Face encoding (IResNet-50, 112×112)", "\n".join(md), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds and 128 held-out crops instead of 3 and all"
    )
    parser.add_argument(
        "--int8", action="store_true", help="also the earlier whole-network static int8 (slow)"
    )
    parser.add_argument("--fresh", action="store_true", help="let vafusion choose again (temporary cache)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"faces per call (default {BATCH})")
    parser.add_argument(
        "--crops",
        type=Path,
        default=DEMO / "data" / "cropped_aligned",
        help="folder of <video>/<frame>.jpg crops when the test videos are absent (default: the demo's)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also race the network's convolutions alone, each at its own shape (the most fusing the "
        "layers between them could give)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()['cpu']}")
    sec = run(2 if args.quick else 3, args.int8, args.crops, args.batch, args.fresh, args.ceiling)
    print(sec.markdown)


if __name__ == "__main__":
    main()
