"""Temporal convolutional networks (Bai et al., 2018), non-causal, and the multi-scale TCN (eq. 5-7)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class TemporalBlock(nn.Module):
    """Two dilated 'same'-padded convolutions with weight norm, ReLU and dropout, plus a residual path.

    Non-causal padding: offline VA estimation may look at both past and future frames. Dropout drops whole
    channels (``Dropout1d``, keras-tcn's SpatialDropout1D): neighbouring frames are strongly correlated, so
    per-element dropout regularises little, and on CPU it costs more than the convolutions themselves.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        pad = (kernel_size - 1) * dilation // 2
        self.net = nn.Sequential(
            weight_norm(nn.Conv1d(c_in, c_out, kernel_size, padding=pad, dilation=dilation)),
            nn.ReLU(),
            nn.Dropout1d(dropout),
            weight_norm(nn.Conv1d(c_out, c_out, kernel_size, padding=pad, dilation=dilation)),
            nn.ReLU(),
            nn.Dropout1d(dropout),
        )
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T) -> (B, C_out, T)."""
        return self.act(self.net(x) + self.skip(x))


class TCN(nn.Module):
    """A stack of temporal blocks with one kernel size and dilations ``dilations`` (e.g. 1, 2, 4, 8)."""

    def __init__(
        self, c_in: int, channels: int, kernel_size: int, dilations: tuple[int, ...], dropout: float
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"TCN kernel size must be odd for 'same' padding, got {kernel_size}")
        layers, c = [], c_in
        for d in dilations:
            layers.append(TemporalBlock(c, channels, kernel_size, d, dropout))
            c = channels
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T) -> (B, channels, T)."""
        return self.blocks(x)

    @property
    def receptive_field(self) -> int:
        """Frames seen by one output frame."""
        rf = 1
        for blk in self.blocks:
            conv = blk.net[0]
            rf += 2 * (conv.kernel_size[0] - 1) * conv.dilation[0]
        return rf


class MultiScaleTCN(nn.Module):
    """Parallel TCNs with kernel sizes 3, 5, 7 (by default) whose outputs are concatenated (paper eq. 5-7)."""

    def __init__(
        self,
        c_in: int,
        channels: int,
        kernel_sizes: tuple[int, ...] = (3, 5, 7),
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.tcns = nn.ModuleList(TCN(c_in, channels, k, tuple(dilations), dropout) for k in kernel_sizes)
        self.out_dim = channels * len(kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C_in) -> (B, T, channels * n_scales)."""
        h = x.transpose(1, 2)
        return torch.cat([tcn(h) for tcn in self.tcns], dim=1).transpose(1, 2)
