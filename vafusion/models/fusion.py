"""The paper's network: per-branch multi-scale TCNs, visual-query cross-modal attention, regression head.

A branch is one feature stream (visual, vggish, logmel, or their offline stand-ins). The first branch is
the query stream; every other branch is attended to by it (eq. 9-10). With one branch the network is the
single-modality model of the same design (TCN -> head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vafusion.models.components.cross_attention import CrossModalAttention
from vafusion.models.components.tcn import MultiScaleTCN
from vafusion.schema import AT_LEAST_0, AT_LEAST_1, DILATIONS, DROPOUT, ODD_SIZES, setting

OUTPUTS = 2
"""Valence and arousal."""


@dataclass
class BranchSpec:
    """One input stream: its role (``visual``, ``vggish``, ``logmel``) and feature width."""

    name: str
    dim: int


@dataclass
class FusionConfig:
    """The network's hyperparameters, the one schema for them (``model.*`` in the experiment config).

    The paper leaves widths, dilations and regularisation open; these defaults and the reasons for them are
    in docs/model.md. ``attn_span`` > 0 limits each visual frame's attention to audio frames within that
    many frames; 0 is the paper's literal full-window attention.
    """

    tcn_channels: int = setting(32, AT_LEAST_1)
    kernel_sizes: list[int] = setting([3, 5, 7], ODD_SIZES)
    dilations: list[int] = setting([1, 2, 4, 8], DILATIONS)
    tcn_dropout: float = setting(0.1, DROPOUT)
    attn_dim: int = setting(128, AT_LEAST_1)
    attn_dropout: float = setting(0.1, DROPOUT)
    attn_span: int = setting(15, AT_LEAST_0)
    head_hidden: int = setting(128, AT_LEAST_1)
    head_dropout: float = setting(0.3, DROPOUT)


class Branch(nn.Module):
    """Input stem of one stream: a learned stand-in for missing frames, then the multi-scale TCN."""

    def __init__(self, spec: BranchSpec, cfg: FusionConfig) -> None:
        super().__init__()
        self.missing = nn.Parameter(torch.zeros(spec.dim))
        self.tcn = MultiScaleTCN(
            spec.dim, cfg.tcn_channels, tuple(cfg.kernel_sizes), tuple(cfg.dilations), cfg.tcn_dropout
        )
        self.out_dim = self.tcn.out_dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), valid (B, T) -> (B, T, out_dim); invalid frames (no face/audio) become ``missing``."""
        x = torch.where(valid.unsqueeze(-1), x, self.missing.to(x.dtype))
        return self.tcn(x)


class FusionNet(nn.Module):
    """[F_v, Attn(F_v, F_a1), Attn(F_v, F_a2), ...] -> LayerNorm -> Linear -> GELU -> Dropout -> Linear.

    ``branches`` lists the input streams, the query stream first. ``forward`` takes a dict of per-branch
    features and validity masks, so callers never depend on
    branch order.
    """

    def __init__(self, cfg: FusionConfig, branches: list[BranchSpec]) -> None:
        super().__init__()
        if not branches:
            raise ValueError("FusionNet needs at least one branch")
        self.cfg = cfg
        self.specs = list(branches)
        self.names = [b.name for b in branches]
        self.branches = nn.ModuleDict({b.name: Branch(b, cfg) for b in branches})
        q_dim = self.branches[self.names[0]].out_dim
        self.attn = nn.ModuleDict(
            {
                name: CrossModalAttention(
                    q_dim, self.branches[name].out_dim, cfg.attn_dim, cfg.attn_dropout, cfg.attn_span
                )
                for name in self.names[1:]
            }
        )
        d = q_dim + cfg.attn_dim * len(self.attn)
        self.head = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, cfg.head_hidden),
            nn.GELU(),
            nn.Dropout(cfg.head_dropout),
            nn.Linear(cfg.head_hidden, OUTPUTS),
        )

    def forward_features(
        self, feats: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Per-branch (B, T, D_b) features and (B, T) masks -> fused (B, T, D_fused)."""
        h = {n: self.branches[n](feats[n], valid[n]) for n in self.names}
        query = h[self.names[0]]
        parts = [query] + [self.attn[n](query, h[n], valid[n]) for n in self.names[1:]]
        return torch.cat(parts, dim=-1)

    def forward(self, feats: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (B, T, 2): valence, arousal."""
        return self.head(self.forward_features(feats, valid))
