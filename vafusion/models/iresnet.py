"""ArcFace IResNet face backbones (iresnet18/34/50/100) with insightface ``arcface_torch`` state-dict keys.

The module tree is the one of ``recognition/arcface_torch/backbones/iresnet.py`` so that the published
``backbone.pth`` files (e.g. ``ms1mv3_arcface_r50_fp16/backbone.pth``) load key for key:
``conv1, bn1, prelu, layer1..layer4`` (``IBasicBlock``: ``bn1, conv1, bn2, prelu, conv2, bn3,
downsample.{0,1}``), ``bn2, dropout, fc, features`` (``BatchNorm1d``).

Input: ``(N, 3, 112, 112)`` RGB aligned faces normalised as ``(x / 255 - 0.5) / 0.5`` (see
:func:`preprocess`). Output in eval mode: ``(N, 512)`` face embeddings.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FACE_SIZE = 112
EMBEDDING_SIZE = 512

ARCH_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
_ALIASES = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100"}


def canonical_arch(arch: str) -> str:
    """``"r50"``/``"iresnet50"`` -> ``"iresnet50"``; raises ValueError for an unknown name."""
    name = _ALIASES.get(arch.lower(), arch.lower())
    if name not in ARCH_LAYERS:
        raise ValueError(f"unknown IResNet arch {arch!r}; choose one of {sorted(ARCH_LAYERS)}")
    return name


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, plus
    the (optionally downsampled) input. The stride sits on the second convolution, as in arcface_torch."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, inplanes, H, W)`` -> ``(N, planes, H / stride, W / stride)``."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """ArcFace IResNet: ``(N, 3, 112, 112)`` -> ``(N, 512)``.

    :meth:`forward_features` gives the ``(N, 512, 7, 7)`` map after ``bn2``; :meth:`head` maps it to the
    embedding (flatten, dropout, ``fc``, ``features`` BatchNorm1d).
    """

    fc_scale = 7 * 7

    def __init__(
        self,
        layers: tuple[int, int, int, int] | list[int],
        dropout: float = 0.0,
        num_features: int = EMBEDDING_SIZE,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got {layers}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        # arcface_torch initialisation: conv ~ N(0, 0.1), BN weight 1 / bias 0, embedding-BN scale fixed at 1.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        """One stage: the first block halves the resolution (stride 2) and projects the identity."""
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        stage: list[nn.Module] = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 112, 112)`` normalised RGB -> ``(N, 512, 7, 7)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, FACE_SIZE, FACE_SIZE):
            raise ValueError(f"IResNet expects (N, 3, 112, 112), got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn2(x)

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        """``(N, 512, 7, 7)`` -> ``(N, num_features)``."""
        return self.features(self.fc(self.dropout(torch.flatten(fmap, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 112, 112)`` normalised RGB -> ``(N, 512)``."""
        return self.head(self.forward_features(x))


def iresnet(arch: str, dropout: float = 0.0, num_features: int = EMBEDDING_SIZE) -> IResNet:
    """Randomly initialised IResNet of the named depth (``iresnet18/34/50/100`` or ``r18/...``)."""
    return IResNet(ARCH_LAYERS[canonical_arch(arch)], dropout=dropout, num_features=num_features)


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Aligned faces ``(N, 112, 112, 3)`` uint8 RGB -> ``(N, 3, 112, 112)`` float32 in [-1, 1].

    The arcface_torch normalisation ``(x / 255 - 0.5) / 0.5``. Faces must already be RGB (OpenCV frames
    are BGR: reverse the last axis first).
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 images, got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or tuple(x.shape[1:]) != (FACE_SIZE, FACE_SIZE, 3):
        raise ValueError(f"preprocess expects (N, 112, 112, 3) RGB, got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).to(torch.float32)
    return ((x / 255.0 - 0.5) / 0.5).contiguous()
