"""ONNX Runtime sessions on the CPU, set up in one place for exported models and the face encoder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from vafusion.errors import VafusionError


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime (the ``onnx`` extra) is installed."""
    return importlib.util.find_spec("onnxruntime") is not None


def session(model: str | Path | bytes, threads: int = 0, spin: bool = True) -> Any:
    """An ONNX Runtime CPU session for a model file or serialised model bytes.

    Args:
        model: path of an ``.onnx`` file, or the bytes of one.
        threads: intra-op threads (0: ONNX Runtime's default).
        spin: let idle workers spin after each run. ``False`` when torch runs in turn on the same cores
            (the face encoder): spinning workers would take the cores torch needs next.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise VafusionError(
            None,
            "onnxruntime is not installed",
            "install the onnx extra: pip install 'vafusion[onnx]' (make install does)",
        ) from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        where = None if isinstance(model, bytes) else model
        raise VafusionError(
            where,
            f"ONNX Runtime cannot load the model ({str(exc).splitlines()[0][:120]})",
            "re-export it with `vafusion export`",
        ) from None
