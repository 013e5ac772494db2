"""Cross-modal attention (paper eq. 8-10): visual frames query an audio stream."""

from __future__ import annotations

import math

import torch
from torch import nn


class CrossModalAttention(nn.Module):
    """Single-head scaled dot-product attention, Softmax(Q K^T / sqrt(d_k)) V.

    Q is projected from the visual stream, K and V from an audio stream (learned linear maps bring the
    two streams, of different widths, into one space of width ``d_model``). Audio frames that are
    invalid (no audio track, padding) are masked out as keys; a query with no valid key gets zeros.

    ``span > 0`` lets frame t attend only to audio frames within t ± span (the streams are frame-aligned).
    Without it, attention has no notion of time: nothing in Q K^T says which audio frame is "now", so a
    window's audio is blurred into one average. ``span = 0`` is the full window, the paper's literal reading.
    """

    def __init__(self, d_query: int, d_key: int, d_model: int, dropout: float = 0.0, span: int = 0) -> None:
        super().__init__()
        self.q = nn.Linear(d_query, d_model)
        self.k = nn.Linear(d_key, d_model)
        self.v = nn.Linear(d_key, d_model)
        self.drop = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(d_model)
        self.out_dim = d_model
        self.span = int(span)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query (B, T, Dq), key (B, S, Dk), key_valid (B, S) bool -> (B, T, d_model)."""
        q, k, v = self.q(query), self.k(key), self.v(key)
        scores = torch.matmul(q, k.transpose(1, 2)) * self.scale
        if self.span > 0:
            t, s = query.shape[1], key.shape[1]
            offset = torch.arange(t, device=q.device)[:, None] - torch.arange(s, device=q.device)[None, :]
            band = offset.abs() <= self.span
            key_valid = band.unsqueeze(0) & (key_valid.unsqueeze(1) if key_valid is not None else True)
        elif key_valid is not None:
            key_valid = key_valid.unsqueeze(1)
        if key_valid is not None:
            key_valid = key_valid.expand(scores.shape)
            any_valid = key_valid.any(dim=-1, keepdim=True)
            scores = scores.masked_fill(~key_valid, float("-inf"))
            scores = torch.where(any_valid, scores, torch.zeros_like(scores))
        attn = self.drop(torch.softmax(scores, dim=-1))
        out = torch.matmul(attn, v)
        if key_valid is not None:
            out = out * any_valid.to(out.dtype)
        return out
