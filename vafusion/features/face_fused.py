"""IResNet inference as a flat list of fused oneDNN convolutions: the torch face path's engine.

With AMX the convolutions of IResNet-50 run near the CPU's peak, so the work between them (a BatchNorm
before each block's first convolution, PReLU, the residual addition, the head's BatchNorms) decides the
speed. Every rewrite here is exact in real arithmetic; only rounding differs from the plain network:

* each BatchNorm that follows a convolution is folded into it (:func:`fold_batchnorms`);
* a block's ``bn1`` precedes ``conv1``, whose zero padding sees the BatchNorm's shift, so its scale goes
  into ``conv1``'s input channels, its shift into ``conv1``'s bias for interior pixels, and the one-pixel
  border, where the padding would have seen the shift, gets a precomputed correction;
* the residual addition is oneDNN's binary post-op of ``conv2`` (``torch.ops.mkldnn._convolution_pointwise``,
  the kernel ``torch.compile`` uses; plain ``conv2d`` + ``add_`` where this torch lacks it);
* PReLU runs on the channels-last memory viewed as ``(pixels, channels)``, 2-3x faster than on 4-D;
* ``bn2`` and the ``features`` BatchNorm1d fold into ``fc`` (in float64), whose columns are permuted to
  the channels-last order, so the head is one float32 matrix product on a view;
* each layer runs on as many faces at once as keep its output within :data:`CHUNK_BYTES`, under glibc's
  32 MB mmap threshold: a larger block is mapped fresh from the kernel and page-faulted at every layer
  (bf16, batch 32 in one call: 924-1,215 page faults per face, 0 in chunks).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vafusion.models.iresnet import FACE_SIZE

ENGINE = "fused-1"
"""Names this way of running the torch path (part of the remembered face-path choice's key)."""

MMAP_THRESHOLD = 32 << 20
"""glibc's largest ``M_MMAP_THRESHOLD`` on 64-bit: blocks above it are always fresh mappings."""

CHUNK_BYTES = 16 << 20
"""Largest activation a layer may produce per call. Under the mmap threshold; and a full-resolution
(112x112x64) layer on fewer faces at once keeps its PReLU and additions nearer the cache, while the deep
layers still see whole batches. Measured on a 2-core Xeon with AMX, bf16, batch 32 (faces/s, medians of
5-9 interleaved rounds): 2 MB 117, 4 MB 130, 8 MB 131-136, 16 MB 133-141, 24 MB 129, 32 MB 137 (page
faults); fp32 24.3-24.7 for every budget."""

_CL = torch.channels_last


def _affine(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` in float64 with ``bn(x) == scale * x + shift`` per channel (eval mode)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


def pointwise_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch runs oneDNN's fused convolution op in ``dtype`` here (tried on a tiny input)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return False
    conv = _Conv(torch.ones(2, 2, 1, 1, dtype=dtype), torch.zeros(2, dtype=dtype), 1, 0)
    x = torch.ones(1, 2, 2, 2, dtype=dtype).contiguous(memory_format=_CL)
    try:
        with torch.inference_mode():
            return bool((conv(x, x, fused=True) == 3).all())
    except RuntimeError:
        return False


@dataclass
class _Conv:
    """One convolution with its bias, in the path's dtype and layout."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    padding: int

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
        """``conv(x) + bias (+ add)``: one oneDNN call where ``fused``."""
        pad, stride = [self.padding] * 2, [self.stride] * 2
        if fused:
            op = torch.ops.mkldnn._convolution_pointwise
            if add is None:
                return op(x, self.weight, self.bias, pad, stride, [1, 1], 1, "none", [], None)
            args = (pad, stride, [1, 1], 1, "add", None, None, [], None)
            return op.binary(x, add, self.weight, self.bias, *args)
        y = F.conv2d(x, self.weight, self.bias, stride, pad)
        return y if add is None else y.add_(add)


def _conv(conv: nn.Conv2d, dtype: torch.dtype) -> _Conv:
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return _Conv(
        conv.weight.detach().to(dtype).contiguous(memory_format=_CL),
        bias.detach().to(dtype),
        conv.stride[0],
        conv.padding[0],
    )


def _prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """PReLU of a channels-last ``(N, C, H, W)`` tensor through its ``(N*H*W, C)`` view."""
    n, c, h, w = x.shape
    flat = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    return F.prelu(flat, slope).view(n, h, w, c).permute(0, 3, 1, 2)


def fold_batchnorms(net: nn.Module) -> nn.Module:
    """A copy of an eval-mode IResNet with every BatchNorm that follows a convolution folded into it.

    The stem's ``conv1 -> bn1``, each block's ``conv1 -> bn2``, ``conv2 -> bn3`` and the ``downsample``
    pair fold exactly; a block's ``bn1`` precedes its convolution (whose zero padding would see the
    BatchNorm shift) and stays.
    """
    out = copy.deepcopy(net).eval()
    if hasattr(out, "layer1") and isinstance(getattr(out, "bn1", None), nn.BatchNorm2d):
        out.conv1 = fuse_conv_bn_eval(out.conv1, out.bn1)
        out.bn1 = nn.Identity()
    for block in out.modules():
        if hasattr(block, "conv1") and hasattr(block, "bn2") and hasattr(block, "bn3"):
            block.conv1 = fuse_conv_bn_eval(block.conv1, block.bn2)
            block.bn2 = nn.Identity()
            block.conv2 = fuse_conv_bn_eval(block.conv2, block.bn3)
            block.bn3 = nn.Identity()
            ds = getattr(block, "downsample", None)
            if isinstance(ds, nn.Sequential) and len(ds) == 2:
                block.downsample = nn.Sequential(fuse_conv_bn_eval(ds[0], ds[1]))
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class _Block:
    """An IBasicBlock of a :func:`fold_batchnorms` network with ``bn1`` folded into ``conv1`` too (plus the
    border correction) and the residual addition fused into ``conv2``."""

    def __init__(self, block: nn.Module, size: int, dtype: torch.dtype) -> None:
        c1 = block.conv1
        if c1.kernel_size != (3, 3) or c1.padding != (1, 1) or c1.stride != (1, 1):
            raise ValueError("an IBasicBlock's conv1 must be 3x3, padding 1, stride 1")
        scale, shift = _affine(block.bn1)
        w, b = c1.weight.detach().double(), c1.bias.detach().double()
        interior = b + (w * shift[None, :, None, None]).sum((1, 2, 3))
        field = F.conv2d(shift[None, :, None, None].expand(1, -1, size, size), w, b, padding=1)[0]
        border = (field - interior[:, None, None]).to(dtype)
        self.conv1 = _Conv(
            (w * scale[None, :, None, None]).to(dtype).contiguous(memory_format=_CL),
            interior.to(dtype),
            1,
            1,
        )
        self.rows = border[None, :, [0, -1], :].contiguous(memory_format=_CL)
        self.cols = border[None, :, 1:-1, :][..., [0, -1]].contiguous(memory_format=_CL)
        self.slope = block.prelu.weight.detach().to(dtype)
        self.conv2 = _conv(block.conv2, dtype)
        self.downsample = None if block.downsample is None else _conv(block.downsample[0], dtype)
        self.activation = c1.out_channels * size * size
        self.out_size = size // block.stride

    def __call__(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        y = self.conv1(x, fused=fused)
        y[:, :, 0 :: y.shape[2] - 1, :].add_(self.rows)
        y[:, :, 1:-1, 0 :: y.shape[3] - 1].add_(self.cols)
        y = _prelu(y, self.slope)
        identity = x if self.downsample is None else self.downsample(x, fused=fused)
        return self.conv2(y, identity, fused=fused)


class FusedIResNet:
    """An eval-mode IResNet as fused oneDNN calls: ``(N, 3, 112, 112)`` float32 -> ``(N, 512)`` float32.

    ``dtype`` is the body's (float32 or bfloat16); the head is float32. ``fused=False`` (or a torch
    without oneDNN's fused op) runs the same folded network with plain ``conv2d`` and additions. Each layer
    runs on as many faces at once as keep its largest activation within ``chunk_bytes``.
    """

    def __init__(
        self,
        net: nn.Module,
        dtype: torch.dtype = torch.float32,
        fused: bool | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if chunk_bytes >= MMAP_THRESHOLD:
            raise ValueError(f"chunk_bytes must stay under glibc's mmap threshold ({MMAP_THRESHOLD} bytes)")
        net = fold_batchnorms(net)
        self.dtype = dtype
        self.fused = pointwise_available(dtype) if fused is None else fused
        self.chunk_bytes = chunk_bytes
        self.stem = _conv(net.conv1, dtype)
        self.stem_slope = net.prelu.weight.detach().to(dtype)
        itemsize = torch.finfo(dtype).bits // 8
        self.steps: list[tuple[int, Callable[[torch.Tensor, bool], torch.Tensor]]] = [
            (net.conv1.out_channels * FACE_SIZE * FACE_SIZE * itemsize, self._stem)
        ]
        size = FACE_SIZE
        with torch.no_grad():
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
                for block in layer:
                    fused_block = _Block(block, size, dtype)
                    self.steps.append((fused_block.activation * itemsize, fused_block))
                    size = fused_block.out_size
            self.head_weight, self.head_bias = _fold_head(net, size)

    def _stem(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=_CL)
        return _prelu(self.stem(x, fused=fused), self.stem_slope)

    def plan(self, n: int) -> list[tuple[int, list[Callable[[torch.Tensor, bool], torch.Tensor]]]]:
        """Consecutive layers grouped by the faces per call they run at, for a batch of ``n``."""
        groups: list[tuple[int, list]] = []
        for nbytes, step in self.steps:
            parts = math.ceil(n / max(1, self.chunk_bytes // nbytes))
            per_call = math.ceil(n / parts)
            if groups and groups[-1][0] == per_call:
                groups[-1][1].append(step)
            else:
                groups.append((per_call, [step]))
        return groups

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, FACE_SIZE, FACE_SIZE):
            raise ValueError(f"IResNet expects (N, 3, {FACE_SIZE}, {FACE_SIZE}), got {tuple(x.shape)}")
        n = len(x)
        if n == 0:
            return torch.zeros(0, self.head_weight.shape[0])
        for per_call, steps in self.plan(n):
            outs = []
            for i in range(0, n, per_call):
                y = x[i : i + per_call]
                for step in steps:
                    y = step(y, self.fused)
                outs.append(y)
            x = outs[0] if len(outs) == 1 else torch.cat(outs)
        fmap = x.permute(0, 2, 3, 1).reshape(n, -1).float()
        return torch.addmm(self.head_bias, fmap, self.head_weight.t())


def _fold_head(net: nn.Module, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``features(fc(flatten(bn2(map))))`` as one ``(weight, bias)`` in float32, with ``fc``'s columns in
    the channels-last order ``(h, w, c)``."""
    scale, shift = _affine(net.bn2)
    out_scale, out_shift = _affine(net.features)
    channels = scale.numel()
    w = net.fc.weight.detach().double().view(-1, channels, size, size)
    bias = net.fc.bias.detach().double() + (w * shift[None, :, None, None]).sum((1, 2, 3))
    w = w * scale[None, :, None, None]
    weight = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1) * out_scale[:, None]
    return weight.float().contiguous(), (bias * out_scale + out_shift).float()
