"""The VGGish network (AudioSet) and the paper's VGG-style log-mel encoder, with torchvggish's keys.

Inputs are 0.96 s log-mel examples ``(N, 96, 64)`` made by :mod:`vafusion.features.logmel`. The PCA
post-processing of the AudioSet release (PCA with whitening, clip to [-2, 2], 8-bit quantisation) runs in
``forward`` when PCA parameters are attached, as torchvggish's ``postprocess=True`` does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames
NUM_MEL_BANDS = 64
EMBEDDING_SIZE = 128
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0


def _vgg_features() -> nn.Sequential:
    """VGGish convolution stack; module indices match torchvggish (``features.0`` ... ``features.13``)."""
    layers: list[nn.Module] = []
    channels = 1
    for spec in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool"):
        if spec == "pool":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(spec), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(spec)
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """VGGish: log-mel example ``(N, 96, 64)`` or ``(N, 1, 96, 64)`` -> embedding ``(N, 128)``.

    State-dict keys are torchvggish's: ``features.{0,3,6,8,11,13}.{weight,bias}`` (3x3 convs 1-64-128-256-
    256-512-512 with 2x2 max-pools) and ``embeddings.{0,2,4}.{weight,bias}`` (12288-4096-4096-128). The conv
    output ``(N, 512, 6, 4)`` is flattened in (time, band, channel) order, as TensorFlow's NHWC flatten that
    the published weights were trained with. torchvggish keeps a ReLU after the last layer
    (``final_relu=True``, the default, matching the published PyTorch port); the later TensorFlow release
    dropped it.

    PCA parameters (not part of the state dict) are attached with :meth:`set_pca`; from then on ``forward``
    gives the AudioSet-release 8-bit embeddings (:meth:`postprocess` of the raw ones, as float), as
    torchvggish's ``VGGish(postprocess=True)`` does. :meth:`embed` always gives the raw embeddings.
    """

    pca_eigen_vectors: torch.Tensor | None
    pca_means: torch.Tensor | None

    def __init__(self, final_relu: bool = True) -> None:
        super().__init__()
        self.features = _vgg_features()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_SIZE),
            nn.ReLU(inplace=True) if final_relu else nn.Identity(),
        )
        self.register_buffer("pca_eigen_vectors", None, persistent=False)
        self.register_buffer("pca_means", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 96, 64)`` or ``(N, 1, 96, 64)`` log-mel -> ``(N, 128)``: raw, or post-processed with PCA."""
        raw = self.embed(x)
        return raw if self.pca_eigen_vectors is None else self.postprocess(raw)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 96, 64)`` or ``(N, 1, 96, 64)`` log-mel -> raw embeddings ``(N, 128)`` (no PCA)."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, EXAMPLE_FRAMES, NUM_MEL_BANDS):
            raise ValueError(f"VGGish expects (N, 96, 64) or (N, 1, 96, 64), got {tuple(x.shape)}")
        x = self.features(x)  # (N, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (N, 6 * 4 * 512) in NHWC order
        return self.embeddings(x)

    def set_pca(self, eigen_vectors: torch.Tensor | np.ndarray, means: torch.Tensor | np.ndarray) -> None:
        """Attach the AudioSet PCA: ``eigen_vectors (128, 128)`` (rows are components), ``means (128,)``."""
        ev = torch.as_tensor(np.asarray(eigen_vectors), dtype=torch.float32)
        mu = torch.as_tensor(np.asarray(means), dtype=torch.float32).reshape(-1)
        if tuple(ev.shape) != (EMBEDDING_SIZE, EMBEDDING_SIZE) or tuple(mu.shape) != (EMBEDDING_SIZE,):
            raise ValueError(f"PCA needs (128, 128) and (128,), got {tuple(ev.shape)} and {tuple(mu.shape)}")
        device = self.embeddings[0].weight.device
        self.pca_eigen_vectors = ev.to(device)
        self.pca_means = mu.to(device)

    def postprocess(self, embeddings: torch.Tensor) -> torch.Tensor:
        """AudioSet release post-processing ``(N, 128) -> (N, 128)``: PCA (with whitening), clip to
        [-2, 2], quantise to 8 bits; values are the integers 0..255 as float."""
        if self.pca_eigen_vectors is None or self.pca_means is None:
            raise RuntimeError("no PCA parameters: use vafusion.load_vggish(weights, pca=path)")
        if embeddings.dim() != 2 or embeddings.shape[1] != EMBEDDING_SIZE:
            raise ValueError(f"postprocess expects (N, 128), got {tuple(embeddings.shape)}")
        projected = (embeddings - self.pca_means) @ self.pca_eigen_vectors.T
        clipped = projected.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


class VGGLogMelEncoder(VGGish):
    """The paper's log-mel encoder (eq. 3-4: ``S = LogMel(A)``, ``F_lm = VGG(S)``) -> 128-d per example.

    It is deliberately the VGGish architecture, so the published VGGish checkpoint initialises it
    (:func:`vafusion.weights.load_vgg_logmel`) and it can then be fine-tuned; no PCA is applied. Any leading
    batch shape is accepted: ``(..., 96, 64)`` -> ``(..., 128)``, e.g. ``(B, T, 96, 64)`` -> ``(B, T, 128)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., 96, 64)`` log-mel examples -> ``(..., 128)``."""
        if x.dim() < 3 or tuple(x.shape[-2:]) != (EXAMPLE_FRAMES, NUM_MEL_BANDS):
            raise ValueError(f"VGGLogMelEncoder expects (..., 96, 64), got {tuple(x.shape)}")
        lead = x.shape[:-2]
        out = self.embed(x.reshape(-1, EXAMPLE_FRAMES, NUM_MEL_BANDS))
        return out.reshape(*lead, EMBEDDING_SIZE)
