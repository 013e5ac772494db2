"""Face encoding (IResNet-50, 112x112): naive vs vafusion's way vs this CPU's convolution peak, and accuracy.

    .venv/bin/python benchmarks/face_encoding.py             # 3 interleaved rounds
    .venv/bin/python benchmarks/face_encoding.py --quick     # 2 rounds
    .venv/bin/python benchmarks/face_encoding.py --int8      # also ONNX Runtime static int8 (minutes more)

* naive: fp32, NCHW, one face at a time, ``torch.no_grad``;
* candidates: torch channels-last fp32 / bf16 (BatchNorms folded, batched, ``inference_mode``) and ONNX
  Runtime fp32; bf16 is timed in full only where the CPU has native bf16 (elsewhere one face, to show the
  cost of emulation);
* vafusion's way: ``FaceEncoder`` with its automatic choice, exactly what ``IResNetExtractor`` runs;
* peak: bare 3x3 convolutions of IResNet-50's four stage shapes (batch 32, channels-last) in every
  precision/backend above; the fastest GFLOP/s is this CPU's peak, converted to faces/s with the
  network's own multiply-accumulate count (counted, not assumed).

Accuracy uses a fixed-seed IResNet-50 (He-initialised, BatchNorm statistics fitted on 128 demo crops so
activations have trained-network scale) on 32 other demo crops: max |difference| and cosine to the fp32
reference.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import DEMO, Section, load_text, machine, race, table
from torch import nn

from vafusion.cpu import choose_precision, cpu_info, torch_threads
from vafusion.features.face_encoder import _CHOSEN, FaceEncoder
from vafusion.io.onnx import onnxruntime_available
from vafusion.models.iresnet import IResNet, iresnet, preprocess

BATCH = 32
N_CALIB, N_TEST, N_NAIVE = 128, 32, 2
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


def _onnx_conv(c: int, hw: int, threads: int):
    """A bare 3x3 convolution as an ONNX Runtime session and its input."""
    import onnxruntime as ort

    conv = nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
    blob = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            conv,
            (torch.zeros(BATCH, c, hw, hw),),
            blob,
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            dynamo=False,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(blob.getvalue(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((BATCH, c, hw, hw)).astype(np.float32)
    return lambda: sess.run(None, {"x": x})


def conv_candidates(precisions: list[str], with_ort: bool) -> dict[str, tuple]:
    """``{name: (fn, GFLOP)}`` bare stage-shape convolutions for the peak."""
    out = {}
    for c, hw in STAGE_SHAPES:
        gflop = 2 * BATCH * c * c * 9 * hw * hw / 1e9
        for prec in precisions:
            dtype = torch.bfloat16 if prec == "bf16" else torch.float32
            conv = (
                nn.Conv2d(c, c, 3, padding=1, bias=False)
                .eval()
                .to(dtype)
                .to(memory_format=torch.channels_last)
            )
            x = torch.randn(BATCH, c, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)

            def run(conv=conv, x=x) -> None:
                with torch.inference_mode():
                    conv(x)

            out[f"torch {prec} conv {c}x{hw}x{hw}"] = (run, gflop)
        if with_ort:
            out[f"onnxruntime fp32 conv {c}x{hw}x{hw}"] = (_onnx_conv(c, hw, torch.get_num_threads()), gflop)
    return out


def naive_encoder(net: nn.Module):
    """fp32, NCHW, one face per call, ``no_grad``: what a first implementation does."""

    def run(crops: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([net(preprocess(crops[i : i + 1])).numpy() for i in range(len(crops))])

    return run


def int8_encoder(net: nn.Module, calibration: np.ndarray):
    """ONNX Runtime static int8 (QDQ, per-channel weights, MinMax activations) of the whole network."""
    import tempfile

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


def _one_thread(encoder, crops: np.ndarray) -> np.ndarray:
    with torch_threads(1):
        return encoder(crops)


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


def run(
    rounds: int = 3, with_int8: bool = False, crops_dir: Path = DEMO / "data" / "cropped_aligned"
) -> Section:
    """Everything above; returns the RESULTS.md section."""
    info = cpu_info()
    crops, source = demo_crops(N_CALIB + N_TEST + BATCH, folder=crops_dir)
    calib, test, timing = crops[:N_CALIB], crops[N_CALIB : N_CALIB + N_TEST], crops[N_CALIB + N_TEST :]
    net = reference_net(calib)
    macs = count_macs(net, torch.zeros(1, 3, 112, 112))
    gflop_face = 2 * macs / 1e9
    native_bf16 = choose_precision(info) == "bf16"
    has_ort = onnxruntime_available()

    _CHOSEN.clear()  # time the automatic choice afresh, as a new process makes it
    t0 = time.perf_counter()
    auto = FaceEncoder(net, BATCH, key=("bench", "iresnet50"))
    choose_s = time.perf_counter() - t0

    paths = {"torch fp32": FaceEncoder(net, BATCH, "fp32", "torch")}
    if has_ort:
        paths["onnxruntime fp32"] = FaceEncoder(net, BATCH, "fp32", "onnxruntime")
    if native_bf16:
        paths["torch bf16"] = FaceEncoder(net, BATCH, "bf16", "torch")
    naive = naive_encoder(net)
    n_naive = N_NAIVE

    cands = {"naive (fp32 NCHW, 1 face/call)": (lambda: naive(timing[:n_naive]), n_naive)}
    cands.update({f"{k} batch {BATCH}": (lambda p=p: p(timing), BATCH) for k, p in paths.items()})
    cands["vafusion (auto)"] = (lambda: auto(timing), BATCH)
    if auto.path.backend == "torch" and torch.get_num_threads() > 1:
        cands["vafusion (auto), 1 thread"] = (lambda: _one_thread(auto, timing), BATCH)
    precs = ["fp32"] + (["bf16"] if native_bf16 else [])
    convs = conv_candidates(precs, has_ort)
    res = race({**cands, **convs}, rounds)

    emulated = None
    if not native_bf16:
        slow = FaceEncoder(net, 1, "bf16", "torch")
        t1 = time.perf_counter()
        slow(timing[:1])
        emulated = 1 / (time.perf_counter() - t1)

    with torch.no_grad():
        ref = net(preprocess(test)).numpy()
    acc = {k: accuracy(p(test), ref) for k, p in paths.items()}
    acc["vafusion (auto)"] = accuracy(auto(test), ref)
    int8 = None
    if with_int8:
        t2 = time.perf_counter()
        enc8 = int8_encoder(net, calib)
        build_s = time.perf_counter() - t2
        r8 = race(
            {
                "onnxruntime int8": (lambda: enc8(timing), BATCH),
                "torch fp32": (lambda: paths["torch fp32"](timing), BATCH),
            },
            rounds,
        )
        int8 = {
            "faces_per_s": r8.median("onnxruntime int8"),
            "x_fp32": r8.ratio("onnxruntime int8", "torch fp32"),
            "build_s": build_s,
            "load": r8.load_range(),
            **accuracy(enc8(test), ref),
        }

    conv_rates = {k: res.median(k) for k in convs}
    peak_name = max(conv_rates, key=conv_rates.get)
    peak = conv_rates[peak_name]
    fp32_peak = max(v for k, v in conv_rates.items() if " fp32 " in k)
    peak_faces = peak / gflop_face
    naive_key = next(iter(cands))
    rows = []
    for name in cands:
        f = res.median(name)
        pct = (
            ["—", "—"]
            if name.endswith("1 thread")
            else [f"{100 * f / peak_faces:.0f} %", f"{100 * f * gflop_face / fp32_peak:.0f} %"]
        )
        rows.append([name, f"{f:.2f}", f"{res.ratio(name, naive_key):.2f}x", *pct])
    if emulated is not None:
        rows.append(["torch bf16 without native bf16 (1 face)", f"{emulated:.3f}", "—", "—", "—"])
    speed = res.median("vafusion (auto)")
    headline = (
        f"**{speed:.1f} faces/s = {res.ratio('vafusion (auto)', naive_key):.1f} × naive = "
        f"{100 * speed / peak_faces:.0f} % of peak** ({auto.path.precision}, {auto.path.backend}; "
        f"peak {peak:.0f} GFLOP/s = {peak_faces:.1f} faces/s from `{peak_name}`; {res.load_range()})"
    )
    conv_rows = [[k, f"{v:.0f}"] for k, v in conv_rates.items()]
    acc_rows = [
        [k, f"{a['max_abs']:.2e}", f"{a['max_rel']:.2e}", f"{a['cos_min']:.6f}", f"{a['cos_mean']:.6f}"]
        for k, a in acc.items()
    ]
    if int8:
        acc_rows.append(
            [
                "onnxruntime int8 (static, QDQ)",
                f"{int8['max_abs']:.2e}",
                f"{int8['max_rel']:.2e}",
                f"{int8['cos_min']:.6f}",
                f"{int8['cos_mean']:.6f}",
            ]
        )
    md = [
        headline,
        "",
        f"CPU: {info.summary()}. IResNet-50 costs {gflop_face:.2f} GFLOP per face (counted). Medians of "
        f"{rounds} interleaved rounds; ratios are within-round medians. Timing crops: {source}.",
        "",
        table(["path", "faces/s", "× naive", "% of peak", "% of fp32 conv peak"], rows),
        "",
        f"Choice: {auto.path.reason} (took {choose_s:.1f} s, once per process). Peaks are measured with "
        f"{torch.get_num_threads()} torch threads, so the 1-thread row has no % of peak.",
        "",
        "Pure-convolution peak (3x3, stride 1, batch 32, channels-last), GFLOP/s:",
        "",
        table(["convolution", "GFLOP/s"], conv_rows),
        "",
        f"Accuracy against the fp32 reference ({N_TEST} demo crops, fixed-seed IResNet-50 with fitted "
        "BatchNorm "
        "statistics; embeddings have max |value| "
        f"{np.abs(ref).max():.2f}, std {ref.std():.2f}):",
        "",
        table(["path", "max abs diff", "relative to max |ref|", "min cosine", "mean cosine"], acc_rows),
    ]
    if int8:
        md += [
            "",
            f"ONNX Runtime static int8: {int8['faces_per_s']:.2f} faces/s = "
            f"{int8['x_fp32']:.2f} × torch fp32 "
            f"({int8['load']}); quantising took {int8['build_s']:.0f} s. Not used: see the accuracy row.",
        ]
    data = {
        "gflop_per_face": gflop_face,
        "rounds": rounds,
        "rates": res.rates,
        "loads": res.loads,
        "peak_gflops": peak,
        "peak_source": peak_name,
        "fp32_peak_gflops": fp32_peak,
        "vafusion": {
            "faces_per_s": speed,
            "x_naive": res.ratio("vafusion (auto)", naive_key),
            "pct_peak": 100 * speed / peak_faces,
            "precision": auto.path.precision,
            "backend": auto.path.backend,
            "reason": auto.path.reason,
            "choose_s": choose_s,
        },
        "bf16_emulated_faces_per_s": emulated,
        "accuracy": acc,
        "int8": int8,
        "load_end": load_text(),
    }
    return Section("Face encoding (IResNet-50, 112×112)", "\n".join(md), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 3")
    parser.add_argument("--int8", action="store_true", help="also quantise to int8 with ONNX Runtime (slow)")
    parser.add_argument(
        "--crops",
        type=Path,
        default=DEMO / "data" / "cropped_aligned",
        help="folder of <video>/<frame>.jpg crops (default: the demo's)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()['cpu']}")
    sec = run(2 if args.quick else 3, args.int8, args.crops)
    print(sec.markdown)


if __name__ == "__main__":
    main()
