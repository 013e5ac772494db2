"""The paper's front ends from their published files: VGGish (+ PCA), the VGG log-mel encoder, IResNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vafusion.errors import WeightsError
from vafusion.models.iresnet import IResNet, canonical_arch, iresnet
from vafusion.models.vggish import EMBEDDING_SIZE, VGGish, VGGLogMelEncoder
from vafusion.weights.files import (
    PUBLISHED,
    check_and_load,
    guess_architecture,
    read_weights,
    shape_of,
    strip_prefix,
)


def load_vggish(weights: str | Path, pca: str | Path | None = None, final_relu: bool = True) -> VGGish:
    """Published VGGish (``vggish-10086976.pth``) in eval mode.

    Forward maps log-mel examples ``(N, 96, 64)`` (:func:`vafusion.vggish_examples`) to ``(N, 128)`` raw
    embeddings; with ``pca`` (``vggish_pca_params-970ea276.pth``) it applies the AudioSet post-processing
    (PCA, clip, 8-bit quantisation, as float), as torchvggish does. ``model.embed`` gives the raw ones.
    """
    path = Path(weights)
    state = read_weights(path, "vggish")
    model = check_and_load(VGGish(final_relu=final_relu), state, path, "vggish")
    if pca is not None:
        eigen, means = load_vggish_pca(pca)
        model.set_pca(eigen, means)
    return model  # type: ignore[return-value]


def load_vggish_pca(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pca_eigen_vectors (128, 128), pca_means (128,))`` float32 from the published PCA file."""
    p = Path(path)
    state = read_weights(p, "vggish_pca", allow_numpy=True)
    pub = PUBLISHED["vggish_pca"]
    missing = [k for k in ("pca_eigen_vectors", "pca_means") if k not in state]
    if missing:
        looks = guess_architecture(state)
        hint = f"; the file looks like {looks} weights" if looks else ""
        raise WeightsError(
            p, f"not the VGGish PCA file: missing {', '.join(missing)}{hint}", f"pass {pub.where()}"
        )
    eigen = torch.as_tensor(np.asarray(state["pca_eigen_vectors"]), dtype=torch.float32)
    means = torch.as_tensor(np.asarray(state["pca_means"]), dtype=torch.float32)
    if shape_of(eigen) != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.numel() != EMBEDDING_SIZE:
        raise WeightsError(
            p,
            f"PCA shapes {shape_of(eigen)} and {shape_of(means)}, expected (128, 128) and (128,)",
            f"pass {pub.where()}",
        )
    return eigen, means.reshape(EMBEDDING_SIZE)


def load_vgg_logmel(weights: str | Path) -> VGGLogMelEncoder:
    """The paper's VGG log-mel encoder initialised from a VGGish-layout checkpoint (the published
    ``vggish-10086976.pth`` or a fine-tuned copy saved with ``state_dict()``), in eval mode."""
    path = Path(weights)
    state = read_weights(path, "vggish")
    return check_and_load(VGGLogMelEncoder(), state, path, "vggish")  # type: ignore[return-value]


def load_iresnet(arch: str, weights: str | Path) -> IResNet:
    """ArcFace IResNet of depth ``arch`` (``iresnet18/34/50/100`` or ``r18/...``) from an arcface_torch
    ``backbone.pth`` or a fine-tuned checkpoint of it, in eval mode.

    ``module.``/``backbone.`` (and similar) key prefixes and a ``state_dict`` wrapper are removed first;
    the rest must match key for key (BatchNorm ``num_batches_tracked`` counters may be absent).
    """
    name = canonical_arch(arch)
    path = Path(weights)
    state = read_weights(path, name)
    model = iresnet(name)
    state = strip_prefix(state, model.state_dict())
    return check_and_load(model, state, path, name, optional_suffixes=("num_batches_tracked",))  # type: ignore[return-value]
