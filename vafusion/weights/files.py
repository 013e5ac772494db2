"""Reading weight files safely: what the published checkpoints are, and strict key-by-key loading.

* Loading never runs code from the file: ``torch.load(path, map_location="cpu", weights_only=True)``
  (only tensors, plain containers and, for the VGGish PCA file, numeric numpy arrays are rebuilt);
  ``.safetensors`` files are read when the optional ``safetensors`` package is installed.
* Keys are checked one by one against the architecture; any missing, unexpected or mis-shaped tensor is a
  :class:`~vafusion.errors.WeightsError` that lists the first few of each with counts. The one tolerance:
  BatchNorm ``num_batches_tracked`` counters (not weights) may be absent.
* Every problem is one line: the file, what is wrong, what to do (e.g. where the file is published).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vafusion.errors import WeightsError
from vafusion.models.iresnet import ARCH_LAYERS

_TORCHVGGISH_RELEASE = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
_ARCFACE_ZOO = (
    "the insightface arcface_torch model zoo (https://github.com/deepinsight/insightface/tree/master/"
    "recognition/arcface_torch#model-zoo: OneDrive https://1drv.ms/u/s!AswpsDO2toNKq0lWY69vN58GR6mw or "
    "Baidu https://pan.baidu.com/s/1CL-l4zWqsI1oDuEEYVhj-g code e8pw)"
)


@dataclass(frozen=True)
class Published:
    """Where a published weight file comes from and what it holds."""

    filename: str
    url: str
    facts: str
    sha256_prefix: str | None = None

    def where(self) -> str:
        """Short 'get it from' text for error messages."""
        return f"{self.filename} from {self.url}"


PUBLISHED: dict[str, Published] = {
    "vggish": Published(
        "vggish-10086976.pth",
        _TORCHVGGISH_RELEASE + "vggish-10086976.pth",
        "18 float32 tensors, 72,141,184 values: features.0.weight (64, 1, 3, 3) ... "
        "embeddings.4.weight (128, 4096)",
        "10086976",
    ),
    "vggish_pca": Published(
        "vggish_pca_params-970ea276.pth",
        _TORCHVGGISH_RELEASE + "vggish_pca_params-970ea276.pth",
        "pca_eigen_vectors (128, 128) and pca_means (128,), numpy arrays",
        "970ea276",
    ),
    "iresnet18": Published(
        "ms1mv3_arcface_r18_fp16/backbone.pth",
        _ARCFACE_ZOO,
        "187 tensors, fc.weight (512, 25088), layers (2, 2, 2, 2)",
    ),
    "iresnet34": Published(
        "ms1mv3_arcface_r34_fp16/backbone.pth",
        _ARCFACE_ZOO,
        "331 tensors, fc.weight (512, 25088), layers (3, 4, 6, 3)",
    ),
    "iresnet50": Published(
        "ms1mv3_arcface_r50_fp16/backbone.pth",
        _ARCFACE_ZOO,
        "475 tensors, fc.weight (512, 25088), layers (3, 4, 14, 3)",
    ),
    "iresnet100": Published(
        "ms1mv3_arcface_r100_fp16/backbone.pth",
        _ARCFACE_ZOO,
        "925 tensors, fc.weight (512, 25088), layers (3, 13, 30, 3)",
    ),
}

_SHOW = 5  # how many keys of each kind an error message lists


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (torch hub names end in its first 8 digits)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        what = "weights file not found" if not Path(path).exists() else f"cannot be read ({exc.strerror})"
        raise WeightsError(path, what, "pass the path of an existing weights file") from None
    return digest.hexdigest()


def _numpy_safe_globals() -> list[Any]:
    """What numeric numpy arrays need to unpickle (reconstructor, ndarray, dtype, numeric dtype classes).

    These rebuild data only; object arrays stay refused because ``ObjectDType`` is not listed. Both the
    numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) reconstructor names are accepted.
    """
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: list[Any] = [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in (
            "Float16DType",
            "Float32DType",
            "Float64DType",
            "Int8DType",
            "Int16DType",
            "Int32DType",
            "Int64DType",
            "UInt8DType",
            "UInt16DType",
            "UInt32DType",
            "UInt64DType",
            "BoolDType",
        ):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def _describe_format(head: bytes) -> str | None:
    """Problem text when the first bytes show a file that is not a checkpoint at all, else None."""
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the weights"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "is an HTML/XML page (a failed or interactive download), not the weights"
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    return "is not a PyTorch checkpoint (neither zip nor pickle format)"


def _refused(p: Path, text: str, allow_numpy: bool, get_it: str) -> WeightsError:
    """The error for a file ``torch.load(weights_only=True)`` would not unpickle: objects, or damage."""
    if "Unsupported global" in text or "Can only build" in text or "not an allowed global" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"but got (<[^>]+>)", text)
        what = found.group(1) if found else "a Python object"
        if "numpy" in what and not allow_numpy:
            pca = PUBLISHED["vggish_pca"].filename
            return WeightsError(
                p,
                "holds numpy arrays, not tensors, where model weights were expected",
                f"if this is {pca}, pass it as the PCA file; else re-save the arrays as torch tensors",
            )
        return WeightsError(
            p,
            f"holds pickled Python objects ({what}) that need code to load; refused",
            "re-save only the tensors, e.g. torch.save(model.state_dict(), path), where it was made",
        )
    return WeightsError(p, f"truncated or corrupt checkpoint ({_last_line(text)})", f"{get_it} again")


def read_weights(path: str | Path, published: str | None = None, allow_numpy: bool = False) -> dict[str, Any]:
    """Read a checkpoint into a flat ``{name: tensor}`` dict without executing code from it.

    Args:
        path: ``.pth``/``.pt``/``.ckpt`` (torch zip or legacy format) or ``.safetensors``.
        published: key of :data:`PUBLISHED` the file should be, used in messages.
        allow_numpy: also rebuild numeric numpy arrays (the VGGish PCA file stores them).

    Returns:
        The mapping; a top-level ``state_dict``/``model_state_dict`` entry (Lightning and training
        checkpoints) is unwrapped.

    Raises:
        WeightsError: missing, empty, not a checkpoint, truncated/corrupt, or holding pickled objects.
    """
    p = Path(path)
    pub = PUBLISHED.get(published) if published else None
    get_it = f"download {pub.where()}" if pub else "pass the path of a weights file"
    if not p.is_file():
        what = "weights file not found" if not p.exists() else "is not a file"
        raise WeightsError(p, what, f"{get_it} and pass its path")
    size = p.stat().st_size
    if size == 0:
        raise WeightsError(p, "weights file is empty", f"{get_it} again")

    if p.suffix == ".safetensors":
        return _read_safetensors(p, get_it)

    with open(p, "rb") as fh:
        head = fh.read(64)
    problem = _describe_format(head)
    if problem:
        raise WeightsError(p, problem, f"{get_it} (the file itself, {size} bytes now)")
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(p):
        raise WeightsError(
            p,
            f"truncated or corrupt checkpoint (zip archive without its directory, {size} bytes)",
            f"{get_it} again",
        )
    try:
        if allow_numpy:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(p, map_location="cpu", weights_only=True)
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused(p, str(exc), allow_numpy, get_it) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        detail = f"{type(exc).__name__}: {_last_line(str(exc))}"
        raise WeightsError(p, f"truncated or corrupt checkpoint ({detail})", f"{get_it} again") from None
    return _unwrap(p, obj, get_it)


def _last_line(text: str) -> str:
    """The informative last line of an exception text (torch puts the cause there), shortened."""
    line = text.strip().splitlines()[-1] if text.strip() else "no detail"
    return line[:160]


def _read_safetensors(p: Path, get_it: str) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(
            p,
            "is a .safetensors file but the safetensors package is not installed",
            "pip install safetensors, or pass the .pth file",
        ) from None
    try:
        return dict(load_file(str(p), device="cpu"))
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers/lengths
        raise WeightsError(
            p, f"truncated or corrupt safetensors file ({_last_line(str(exc))})", f"{get_it} again"
        ) from None


def _unwrap(p: Path, obj: Any, get_it: str) -> dict[str, Any]:
    """Return the state dict inside ``obj`` or raise."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        kind = type(obj).__name__ if not isinstance(obj, Mapping) else "an empty mapping"
        raise WeightsError(p, f"holds {kind}, not a state dict of tensors", f"{get_it}")
    bad = [
        str(k)
        for k, v in obj.items()
        if not isinstance(k, str) or not isinstance(v, (torch.Tensor, np.ndarray))
    ]
    if bad:
        raise WeightsError(p, f"{len(bad)} entries are not tensors (first: {', '.join(bad[:_SHOW])})", get_it)
    return dict(obj)


def shape_of(v: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in v.shape)


def _key_report(
    loaded: Mapping[str, Any], expected: Mapping[str, torch.Tensor], optional_suffixes: tuple[str, ...] = ()
) -> str | None:
    """Missing/unexpected/mis-shaped keys as one line, or None when the dict fits exactly."""
    missing = [k for k in expected if k not in loaded and not k.endswith(optional_suffixes)]
    unexpected = [k for k in loaded if k not in expected]
    mismatched = [
        f"{k} file {shape_of(loaded[k])} vs model {shape_of(expected[k])}"
        for k in expected
        if k in loaded and shape_of(loaded[k]) != shape_of(expected[k])
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f", ... {len(items) - _SHOW} more" if len(items) > _SHOW else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:_SHOW])}{more})")
    return "; ".join(parts) if parts else None


def guess_architecture(state: Mapping[str, Any]) -> str | None:
    """Name of the known architecture a state dict looks like (``vggish``, ``iresnet50``, ...), else None."""
    if "features.0.weight" in state and shape_of(state["features.0.weight"]) == (64, 1, 3, 3):
        return "vggish"
    if "pca_eigen_vectors" in state:
        return "vggish_pca"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        depth = []
        for stage in range(1, 5):
            ids = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
            depth.append(max(ids) + 1 if ids else 0)
        for name, layers in ARCH_LAYERS.items():
            if tuple(depth) == layers:
                return name
        return f"an IResNet with stage depths {tuple(depth)}"
    return None


def check_and_load(
    model: nn.Module, state: Mapping[str, Any], path: Path, want: str, optional_suffixes: tuple[str, ...] = ()
) -> nn.Module:
    """Strictly load ``state`` into ``model`` (eval mode) or raise a WeightsError naming what differs."""
    expected = model.state_dict()
    report = _key_report(state, expected, optional_suffixes)
    if report:
        looks = guess_architecture(state)
        hint = f"; the file looks like {looks} weights" if looks and looks != want else ""
        pub = PUBLISHED.get(want)
        fix = f"pass {pub.where()}" if pub else "pass a matching file"
        raise WeightsError(path, f"not {want} weights: {report}{hint}", fix)
    tensors = {k: torch.as_tensor(v) for k, v in state.items()}
    for key in expected:
        if key not in tensors:  # an absent optional BatchNorm counter
            tensors[key] = expected[key]
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def strip_prefix(state: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a wrapper prefix (``module.``, ``backbone.``, ``module.backbone.``, ``model.`` ...).

    The prefix chosen is the one under which most architecture keys are found; with a non-empty prefix,
    keys outside it (e.g. a classifier head of a fine-tuned checkpoint) are left out.
    """
    anchors = ("conv1.weight", "fc.weight", "features.running_var")
    candidates = {""}
    for key in state:
        for anchor in anchors:
            if key.endswith(anchor):
                prefix = key[: -len(anchor)]
                if prefix == "" or prefix.endswith("."):
                    candidates.add(prefix)
    best = max(sorted(candidates), key=lambda pre: sum(pre + k in state for k in expected))
    if not best:
        return dict(state)
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}
