"""VITS-style multi-head self-attention with relative positions (RVC's TextEncoder).

Channels-last ``(B, T, C)``. Keys and values get learned relative-position embeddings ``emb_rel_k/emb_rel_v``
of shape ``(1, 2·window+1, head_dim)`` shared by all heads; offsets beyond ``±window`` contribute nothing
(the reference pads the tables with zeros). Parameter names mirror rvc's ``attentions.MultiHeadAttention``.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from . import fastmath
from .conv import Conv1d

MASKED_SCORE = -1e4  # score of a padded query/key pair (rvc's masked_fill value)


def _band_index(length: int, window: int) -> mx.array:
    """``(T, T)`` index into a ``2·window+2``-column table: ``j − i + window`` inside the band, else the last
    (zero) column."""
    i = mx.arange(length)[:, None]
    j = mx.arange(length)[None, :]
    rel = j - i + window
    return mx.where(mx.abs(j - i) <= window, rel, 2 * window + 1)


def _diag_index(length: int, window: int) -> mx.array:
    """``(T, 2·window+1)`` index into a ``T+1``-column matrix: ``i + o`` for offsets ``o ∈ [−w, w]`` inside
    ``[0, T)``, else column ``T`` (zero)."""
    i = mx.arange(length)[:, None]
    o = mx.arange(-window, window + 1)[None, :]
    col = i + o
    return mx.where((col >= 0) & (col < length), col, length)


class RelativeMultiHeadAttention(nn.Module):
    """Self-attention ``(B, T, C) -> (B, T, C)`` with 1x1-conv projections conv_q/k/v/o."""

    def __init__(self, channels: int, n_heads: int, window_size: int = 10):
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = Conv1d(channels, channels, 1)
        self.conv_k = Conv1d(channels, channels, 1)
        self.conv_v = Conv1d(channels, channels, 1)
        self.conv_o = Conv1d(channels, channels, 1)
        n_rel = 2 * window_size + 1
        self.emb_rel_k = mx.zeros((1, n_rel, self.k_channels))
        self.emb_rel_v = mx.zeros((1, n_rel, self.k_channels))

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        """``mask (B, T, 1)`` (1 = a real frame, 0 = padding; training batches): padded query/key pairs get
        the score ``MASKED_SCORE``, as the reference's ``masked_fill``."""
        b, t, c = x.shape
        h, d, w = self.n_heads, self.k_channels, self.window_size

        def heads(y):  # (B, T, C) -> (B, H, T, d)
            return y.reshape(b, t, h, d).transpose(0, 2, 1, 3)

        q = heads(self.conv_q(x)) / math.sqrt(d)
        k = heads(self.conv_k(x))
        v = heads(self.conv_v(x))
        scores = q @ k.transpose(0, 1, 3, 2)  # (B, H, T, T)
        rel = q @ self.emb_rel_k[0].T  # (B, H, T, 2w+1)
        rel = mx.concatenate([rel, mx.zeros((b, h, t, 1), dtype=rel.dtype)], axis=-1)
        band = mx.broadcast_to(_band_index(t, w), (b, h, t, t))
        scores = scores + mx.take_along_axis(rel, band, axis=-1)
        if mask is not None:
            m = mask[..., 0]
            pair = (m[:, None, :, None] * m[:, None, None, :]) > 0
            scores = mx.where(pair, scores, MASKED_SCORE)
        e = fastmath.exp_shifted_(scores)  # softmax = e / total, divided after the products
        out, total = fastmath.weighted_sum(e, v)
        e_pad = mx.concatenate([e, mx.zeros((b, h, t, 1), dtype=e.dtype)], axis=-1)
        diag = mx.broadcast_to(_diag_index(t, w), (b, h, t, 2 * w + 1))
        out = (out + mx.take_along_axis(e_pad, diag, axis=-1) @ self.emb_rel_v[0]) / total
        out = out.transpose(0, 2, 1, 3).reshape(b, t, c)
        return self.conv_o(out)
