"""``vafusion export``: a run's fold models and its front ends as ONNX, each checked against PyTorch.

Layout written by :func:`export_run`::

    OUT/<model>/fold<k>.onnx, fold<k>.json   each fold model and its sidecar (:mod:`.onnx_net`)
    OUT/frontends/<name>.onnx  IResNet (uint8 crops -> 512-d), VGGish / VGG log-mel encoder (log-mel -> 128-d)
    OUT/frontends/frontends.json  what each front end expects and which were skipped, with the reason
    OUT/export.json            summary of the whole export
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vafusion.errors import OutputError, VafusionError
from vafusion.features.extractors import FeaturesConfig, build_extractor
from vafusion.features.face_int8 import OFF
from vafusion.inference.bundle import find_checkpoints, run_config
from vafusion.inference.onnx_net import (
    DEFAULT_OPSET,
    SIDECAR_FORMAT,
    check_opset,
    export_checkpoint,
    onnx_export,
)
from vafusion.io.atomic import write_json
from vafusion.io.onnx import session
from vafusion.models.registry import model_names
from vafusion.weights import load_checkpoint


class FaceEmbedder(nn.Module):
    """IResNet with its preprocessing inside: aligned RGB crops ``(N, 112, 112, 3)`` uint8 -> ``(N, 512)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 RGB crops -> embeddings, with arcface_torch's ``(x / 255 - 0.5) / 0.5``."""
        x = crops.permute(0, 3, 1, 2).to(torch.float32)
        return self.net((x / 255.0 - 0.5) / 0.5)


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
    """Front ends whose weights ``cfg`` names, built as the extractors build them; the skipped ones, why."""
    found, skipped = [], {}
    g = torch.Generator().manual_seed(0)
    if cfg.iresnet_weights:  # the graph is float32: so is its fingerprint; no calibration, no race
        ext = build_extractor(
            "iresnet", dataclasses.replace(cfg, face_precision="fp32", face_calibration=OFF)
        )
        found.append(
            FrontEnd(
                "iresnet",
                FaceEmbedder(ext.net),
                torch.randint(0, 256, (2, 112, 112, 3), generator=g, dtype=torch.uint8),
                "crops",
                "embedding",
                f"aligned face crops (N, 112, 112, 3) uint8 RGB; "
                f"{cfg.iresnet_arch}, normalisation inside the graph",
                ext.fingerprint,
            )
        )
    else:
        skipped["iresnet"] = (
            "no iresnet weights recorded in the run config nor given (--iresnet-weights); dlib "
            "landmarks stand in (no ONNX form)"
        )
    for name, weights, flag in (
        ("vggish", cfg.vggish_weights, "--vggish-weights"),
        ("logmel", cfg.logmel_weights, "--logmel-weights"),
    ):
        if weights:
            ext = build_extractor(name, cfg)
            found.append(
                FrontEnd(
                    name,
                    ext.net,
                    torch.randn(2, 96, 64, generator=g),
                    "examples",
                    "embedding",
                    "log-mel examples (N, 96, 64) float32: 0.96 s centred on each frame, "
                    "vafusion.features.logmel.CentredExamples",
                    ext.fingerprint,
                )
            )
        else:
            what = (
                "openSMILE eGeMAPS stands in (no ONNX form)"
                if name == "vggish"
                else "weight-free band statistics stand in (nothing to export)"
            )
            skipped[name] = f"no {name} weights recorded in the run config nor given ({flag}); {what}"
    return found, skipped


def export_frontends(
    cfg: FeaturesConfig, out: str | Path, opset: int = DEFAULT_OPSET, atol: float = 1e-4
) -> dict:
    """Export every front end ``cfg`` has weights for to ``out/<name>.onnx``; write ``out/frontends.json``."""
    out = Path(out)
    found, skipped = frontends(cfg)
    done = {}
    for fe in found:
        path = out / f"{fe.name}.onnx"
        module = fe.module.eval()
        onnx_export(
            module,
            (fe.example,),
            path,
            [fe.input],
            [fe.output],
            {fe.input: {0: "n"}, fe.output: {0: "n"}},
            opset,
        )
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
            raise VafusionError(
                path,
                f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> {atol:g} x {scale:.3g})",
                "report this with the weights file; try another --opset",
            )
        done[fe.name] = {
            "onnx": str(path),
            "input": fe.input,
            "output": fe.output,
            "expects": fe.expects,
            "fingerprint": fe.fingerprint,
            "max_abs_diff": diff,
            "max_abs_output": scale,
        }
    if found or skipped:
        write_json(
            out / "frontends.json",
            {"format": SIDECAR_FORMAT, "opset": opset, "exported": done, "skipped": skipped},
        )
    return {"exported": done, "skipped": skipped}


def export_run(
    model: str | Path,
    out: str | Path,
    models: list[str] | None = None,
    folds: list[int] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    with_frontends: bool = True,
    weights: dict[str, str | None] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Export the fold models of ``model`` (and the front ends) into ``out``; write ``out/export.json``.

    An earlier export in ``out`` is refused unless ``overwrite``; then its files are removed first, so the
    folder holds exactly what the new ``export.json`` lists.

    ``model`` is a run directory (``models`` picks which of its models, default fusion), a
    ``RUN/models/<model>`` folder or one ``fold<k>.pt``; ``weights`` (``features`` keys such as
    ``iresnet_weights``) override the front-end files the run's config records.
    """
    model, out = Path(model), Path(out)
    check_opset(opset)
    known = model_names(trainable=True)
    for which in models or []:
        if which not in known:
            raise VafusionError(
                None, f"unknown model {which!r}", f"--models takes a comma list of {', '.join(known)}"
            )
    jobs = [job for which in (models or ["fusion"]) for job in find_checkpoints(model, which, folds)]
    clear_earlier_export(out, overwrite)
    t0 = time.perf_counter()
    summary: dict = {"source": str(model), "opset": opset, "atol": atol, "models": []}
    for name, fold, ckpt in tqdm(jobs, desc="export", unit="model", disable=not progress, dynamic_ncols=True):
        res = export_checkpoint(ckpt, out / name / f"fold{fold}.onnx", opset, atol)
        summary["models"].append({"model": name, "fold": fold, **res})
    if with_frontends:
        overrides = [f"features.{k}={v}" for k, v in (weights or {}).items() if v is not None]
        stored = load_checkpoint(jobs[0][2]).config
        cfg = run_config(model / "config.yaml" if model.is_dir() else None, stored, overrides).features
        summary["frontends"] = export_frontends(cfg, out / "frontends", opset, atol)
    else:
        summary["frontends"] = {"exported": {}, "skipped": {"all": "--no-frontends"}}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "export.json", summary)
    return summary


def clear_earlier_export(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds an earlier export (its ``export.json``), or with ``overwrite`` remove the
    files that export listed (and nothing else)."""
    summary_path = out / "export.json"
    if not summary_path.is_file():
        return
    if not overwrite:
        raise OutputError(
            summary_path,
            "exists (an earlier export)",
            "pass --overwrite to replace that export, or choose another --out",
        )
    try:
        earlier = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        earlier = {}
    files = []  # rebuilt from the layout under ``out``: the recorded paths may be relative to another cwd
    for m in earlier.get("models", []):
        graph = out / str(m.get("model")) / f"fold{m.get('fold')}.onnx"
        files += [graph, graph.with_suffix(".json")]
    exported = earlier.get("frontends", {}).get("exported", {})
    files += [out / "frontends" / f"{name}.onnx" for name in exported]
    files += [out / "frontends" / "frontends.json"] if exported else []
    for path in files:
        if path.resolve().is_relative_to(out.resolve()):
            path.unlink(missing_ok=True)
    summary_path.unlink()
