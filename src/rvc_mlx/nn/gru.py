"""Bidirectional GRU with PyTorch semantics, both directions batched and the input projection hoisted.

Parameters per direction use MLX's ``nn.GRU`` names and bias convention::

    Wx  (3H, D)   = PyTorch weight_ih   (gate order r, z, n)
    Wh  (3H, H)   = PyTorch weight_hh
    b   (3H,)     = b_ih + [b_hr, b_hz, 0]    (b_hr, b_hz can be added to the input side; b_hn cannot)
    bhn (H,)      = b_hn                      (sits inside the reset gate: n = tanh(x_n + r * (W_hn h + b_hn)))

so that with ``gx = x @ Wx.T + b`` and ``gh = h @ Wh.T``::

    r, z = sigmoid(gx[:2H] + gh[:2H]);  n = tanh(gx[2H:] + r * (gh[2H:] + bhn));  h' = (1 - z) * n + z * h

The folding is done by the converter (``fold_gru_biases``); files store ``b`` and ``bhn``, never raw PyTorch biases.
``mlx.nn.GRU`` loops in Python per direction; here one step updates both directions with one batched matmul,
and ``x @ Wx.T`` for every time step is a single gemm before the loop (DESIGN §7). On the CPU the loop itself
runs in NumPy (``_numpy_recurrence``): for one frame at a time, MLX's per-op overhead dominates. All of this is
fast path ``gru``; with it off, each direction runs step by step in MLX with the projection inside the loop.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..backend import enabled, on_cpu


def fold_gru_biases(b_ih: np.ndarray, b_hh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch ``(bias_ih, bias_hh)`` (3H each, gates r, z, n) -> MLX ``(b, bhn)``: ``b = b_ih + [b_hr, b_hz, 0]``,
    ``bhn = b_hn``. Computed in float32."""
    b_ih = np.asarray(b_ih, dtype=np.float32)
    b_hh = np.asarray(b_hh, dtype=np.float32)
    h = b_ih.shape[0] // 3
    b = b_ih.copy()
    b[: 2 * h] += b_hh[: 2 * h]
    return b, b_hh[2 * h :].copy()


class GRUDirection(nn.Module):
    """Parameters of one direction (names as ``mlx.nn.GRU``; see module docstring)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.Wx = mx.zeros((3 * hidden_size, input_size))
        self.Wh = mx.zeros((3 * hidden_size, hidden_size))
        self.b = mx.zeros((3 * hidden_size,))
        self.bhn = mx.zeros((hidden_size,))


class BiGRU(nn.Module):
    """One bidirectional GRU layer, batch first: (B, T, D) -> (B, T, 2H) = [forward, backward] on the last axis.

    Parameter names mirror PyTorch's suffixes: ``l0`` (forward) and ``l0_reverse`` (backward).
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.l0 = GRUDirection(input_size, hidden_size)
        self.l0_reverse = GRUDirection(input_size, hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        bsz, t, _ = x.shape
        h_dim = self.hidden_size
        fwd, bwd = self.l0, self.l0_reverse
        if t and not enabled("gru"):
            return mx.concatenate([_unbatched(x, fwd), _unbatched(x[:, ::-1], bwd)[:, ::-1]], axis=-1)
        # (2, T, B, 3H): input projections of both directions (biases included) for all steps in one gemm each,
        # the backward direction already reversed in time so step s reads gx[:, s] for both
        flat = x.reshape(-1, x.shape[-1])
        gx_f = mx.addmm(fwd.b, flat, fwd.Wx.T).reshape(bsz, t, 3 * h_dim)
        gx_b = mx.addmm(bwd.b, flat, bwd.Wx.T).reshape(bsz, t, 3 * h_dim)[:, ::-1]
        gx = mx.contiguous(mx.stack([gx_f, gx_b]).transpose(0, 2, 1, 3))
        wh = mx.contiguous(mx.stack([fwd.Wh.T, bwd.Wh.T]))  # (2, H, 3H)
        bhn = mx.stack([fwd.bhn, bwd.bhn])[:, None, :]  # (2, 1, H)
        if t and on_cpu():
            return _numpy_recurrence(gx, wh, bhn)
        h = mx.zeros((2, bsz, h_dim), dtype=x.dtype)
        outs_f, outs_b = [], []
        for step in range(t):
            h = _step(gx[:, step], h, wh, bhn)
            outs_f.append(h[0])
            outs_b.append(h[1])
        if t == 0:
            return mx.zeros((bsz, 0, 2 * h_dim), dtype=x.dtype)
        return mx.concatenate([mx.stack(outs_f, axis=1), mx.stack(outs_b[::-1], axis=1)], axis=-1)


def _gates(g: mx.array, gh: mx.array, h: mx.array, bhn: mx.array) -> mx.array:
    h_dim = h.shape[-1]
    rz = mx.sigmoid(g[..., : 2 * h_dim] + gh[..., : 2 * h_dim])
    r, z = rz[..., :h_dim], rz[..., h_dim:]
    n = mx.tanh(g[..., 2 * h_dim :] + r * (gh[..., 2 * h_dim :] + bhn))
    return n + z * (h - n)  # == (1 - z) * n + z * h


_gates_compiled = mx.compile(_gates)


def _numpy_recurrence(gx: mx.array, wh: mx.array, bhn: mx.array) -> mx.array:
    """The recurrence of :class:`BiGRU` in NumPy (CPU): the same float32 arithmetic, but a step costs a few
    microseconds instead of the ~150 us of building and running MLX ops for two (1, 768) vectors (3232 steps of
    RMVPE at 32 s: 243 ms vs 885 ms; torch 475 ms). gx: (2, T, B, 3H); wh: (2, H, 3H); bhn: (2, 1, H)
    -> (B, T, 2H)."""
    mx.eval(gx, wh, bhn)
    gx, wh, bhn = np.asarray(gx), np.asarray(wh), np.asarray(bhn)
    _, t, bsz, h3 = gx.shape
    h_dim = h3 // 3
    h = np.zeros((2, bsz, h_dim), dtype=np.float32)
    out = np.empty((t, 2, bsz, h_dim), dtype=np.float32)
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative gates: sigmoid 0, as MLX
        for step in range(t):
            g = gx[:, step]
            gh = np.matmul(h, wh)
            rz = 1.0 / (1.0 + np.exp(-(g[..., : 2 * h_dim] + gh[..., : 2 * h_dim])))
            n = np.tanh(g[..., 2 * h_dim :] + rz[..., :h_dim] * (gh[..., 2 * h_dim :] + bhn))
            h = n + rz[..., h_dim:] * (h - n)
            out[step] = h
    fwd, bwd = out[:, 0].transpose(1, 0, 2), out[::-1, 1].transpose(1, 0, 2)  # (B, T, H) each
    return mx.array(np.concatenate([fwd, bwd], axis=-1))


def _unbatched(x: mx.array, d: GRUDirection) -> mx.array:
    """One direction step by step, projecting each input inside the loop (the plain formulation, fast path
    ``gru`` off). (B, T, D) -> (B, T, H)."""
    h = mx.zeros((x.shape[0], d.Wh.shape[1]), dtype=x.dtype)
    outs = []
    for step in range(x.shape[1]):
        h = _gates(mx.addmm(d.b, x[:, step], d.Wx.T), h @ d.Wh.T, h, d.bhn)
        outs.append(h)
    return mx.stack(outs, axis=1)


def _step(g: mx.array, h: mx.array, wh: mx.array, bhn: mx.array) -> mx.array:
    """One step of both directions. g: (2, B, 3H) input gates; h: (2, B, H); wh: (2, H, 3H); bhn: (2, 1, H)."""
    return _gates_compiled(g, h @ wh, h, bhn)
