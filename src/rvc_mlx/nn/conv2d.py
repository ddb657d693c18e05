"""2-D convolutions that are fast on MLX's Linux CPU backend, with MLX's native kernels selectable.

MLX's CPU conv2d runs a generic single-threaded im2col that is slow at few channels, and every strided
``conv_transpose2d`` falls to scalar loops (DESIGN §7). The formulations here turn both into one sgemm:

* :func:`conv2d` (stride 1, dilation 1): channels-last im2col (one strided view of the padded input holding the
  ``kh·kw`` shifted windows, copied once) times a ``(kh·kw·C_in, C_out)`` matrix.
* :func:`conv_transpose2d_s2` (kernel 3, stride 2, padding 1, output_padding 1 — RMVPE's decoder): polyphase.
  Output row ``2m`` only sees kernel row 1 at input row ``m``; row ``2m+1`` sees kernel row 2 at ``m`` and kernel
  row 0 at ``m+1`` (zero past the end: that is exactly what ``output_padding`` computes). So the four output
  phases are one stride-1 2×2 conv of the end-padded input with ``4·C_out`` outputs, then interleaved.

``impl`` selects the formulation: ``"gemm"`` (the above), ``"native"`` (``mx.conv2d`` / ``mx.conv_transpose2d``)
or ``"auto"`` (gemm on the CPU, native on a GPU, where MLX's own kernels are the better choice).
All tensors are channels-last: inputs ``(B, H, W, C_in)``, weights ``(C_out, kh, kw, C_in)``.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..backend import enabled, lane_blas, lanes, on_cpu

IMPLS = ("auto", "gemm", "native")
IM2COL_BLOCK_BYTES = 4 << 20  # im2col is built in row blocks of about this size (see _gemm_conv)
MIN_GEMM_ROWS = 1024  # but at least this many im2col rows a block (few rows make a slow gemm)
LANE_MIN_BYTES = 4 << 20  # smaller im2cols are not split over CPU lanes (the split costs more than it saves)


def use_gemm(impl: str = "auto") -> bool:
    """Whether ``impl`` resolves to the gemm formulations on the current default device."""
    if impl not in IMPLS:
        raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return enabled("conv") and on_cpu()
    return impl == "gemm"


def gemm_weight(weight: mx.array) -> mx.array:
    """``(C_out, kh, kw, C_in)`` -> the ``(kh·kw·C_in, C_out)`` matrix :func:`conv2d` multiplies by.

    Precompute it once per layer (``conv2d(..., gemm_w=...)``) to avoid a transpose per call."""
    c_out = weight.shape[0]
    return weight.reshape(c_out, -1).T


def _padded(x: mx.array, ph: int, pw: int) -> mx.array:
    # pad always (even by 0) so the strided views below are taken over a fresh row-contiguous buffer
    return mx.pad(x, [(0, 0), (ph, ph), (pw, pw), (0, 0)])


def _im2col_rows(xp: mx.array, kh: int, kw: int, r0: int, r1: int) -> mx.array:
    """Output rows [r0, r1) of the im2col of the padded ``xp`` (B, Hp, Wp, C): (B·(r1-r0)·W', kh·kw·C),
    tap-major and channel-minor (matches ``gemm_weight``). One strided view, materialised in a single copy."""
    b, hp, wp, c = xp.shape
    wo = wp - kw + 1
    view = mx.as_strided(
        xp, (b, r1 - r0, wo, kh, kw, c), (hp * wp * c, wp * c, c, wp * c, c, 1), offset=r0 * wp * c
    )
    return view.reshape(-1, kh * kw * c)


def _gemm_conv(xp: mx.array, kh: int, kw: int, matrix: mx.array, bias: mx.array | None) -> mx.array:
    """Valid stride-1 conv of the padded ``xp`` as im2col @ ``matrix``, in row blocks whose im2col stays below
    ``IM2COL_BLOCK_BYTES`` (bounded memory on long inputs; exact: output rows are independent). With CPU lanes
    (fast path ``lanes``), large convs get at least one block per lane, and each group of blocks runs side by side,
    one block per lane. Returns (B, H', W', N)."""
    b, hp, wp, c = xp.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    row_bytes = b * wo * kh * kw * c * xp.dtype.size
    rows = min(ho, max(IM2COL_BLOCK_BYTES // max(row_bytes, 1), math.ceil(MIN_GEMM_ROWS / (b * wo))))
    streams = lanes() if ho * row_bytes >= LANE_MIN_BYTES else lanes()[:1]
    rows = min(rows, math.ceil(ho / len(streams)))

    def block(r0: int, r1: int) -> mx.array:
        cols = _im2col_rows(xp, kh, kw, r0, r1)
        y = mx.addmm(bias, cols, matrix) if bias is not None else cols @ matrix
        return y.reshape(b, r1 - r0, wo, -1)

    if rows == ho:
        return block(0, ho)
    spans = [(r0, min(ho, r0 + rows)) for r0 in range(0, ho, rows)]
    outs = []
    with lane_blas(streams):
        for first in range(0, len(spans), len(streams)):
            group = []
            for (r0, r1), stream in zip(spans[first : first + len(streams)], streams):
                with mx.stream(stream):
                    group.append(block(r0, r1))
            # evaluate group by group; lazily, all blocks' im2cols could be alive at once
            mx.eval(group)
            outs += group
    return mx.concatenate(outs, axis=1)


def conv2d(
    x: mx.array,
    weight: mx.array,
    bias: mx.array | None = None,
    padding: int | tuple[int, int] = 0,
    impl: str = "auto",
    gemm_w: mx.array | None = None,
) -> mx.array:
    """Stride-1, dilation-1 2-D convolution (PyTorch ``Conv2d`` semantics, channels-last).

    x: (B, H, W, C_in); weight: (C_out, kh, kw, C_in); bias: (C_out,) or None; padding: symmetric zero padding.
    gemm_w: optional precomputed :func:`gemm_weight` of ``weight``. Returns (B, H', W', C_out).
    """
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    if not use_gemm(impl):
        y = mx.conv2d(x, weight, padding=(ph, pw))
        return y if bias is None else y + bias
    c_out, kh, kw, c_in = weight.shape
    matrix = gemm_w if gemm_w is not None else gemm_weight(weight)
    if kh == 1 and kw == 1 and ph == 0 and pw == 0:  # 1x1: a plain matmul over pixels
        y = x.reshape(-1, c_in)
        y = mx.addmm(bias, y, matrix) if bias is not None else y @ matrix
        return y.reshape(*x.shape[:3], c_out)
    return _gemm_conv(_padded(x, ph, pw), kh, kw, matrix, bias)


# Polyphase map for kernel 3, stride 2, padding 1: (phase p = output index parity, input offset d in {0, 1})
# -> kernel tap (None: that phase does not see that offset).
# out[2m] = w[1]·x[m]; out[2m+1] = w[2]·x[m] + w[0]·x[m+1].
_S2_TAP = {(0, 0): 1, (0, 1): None, (1, 0): 2, (1, 1): 0}


def polyphase_weight_s2(weight: mx.array) -> mx.array:
    """Rearrange a kernel-3 ``conv_transpose2d`` weight ``(C_out, 3, 3, C_in)`` (MLX layout of a PyTorch
    ``ConvTranspose2d``) into the ``(4·C_in, 4·C_out)`` gemm matrix used by :func:`conv_transpose2d_s2`.

    Rows: input offset (dy, dx) major, C_in minor (the 2×2 im2col order). Columns: phase (py, px) major, C_out minor.
    """
    c_out, kh, kw, c_in = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"polyphase stride-2 conv_transpose2d needs a 3x3 kernel, got {kh}x{kw}")
    zero = mx.zeros((c_in, c_out), dtype=weight.dtype)
    rows = []
    for dy in (0, 1):
        for dx in (0, 1):
            cols = []
            for py in (0, 1):
                for px in (0, 1):
                    ty, tx = _S2_TAP[(py, dy)], _S2_TAP[(px, dx)]
                    cols.append(zero if ty is None or tx is None else weight[:, ty, tx, :].T)
            rows.append(mx.concatenate(cols, axis=1))
    return mx.concatenate(rows, axis=0)


def conv_transpose2d_s2(
    x: mx.array,
    weight: mx.array,
    impl: str = "auto",
    poly_w: mx.array | None = None,
) -> mx.array:
    """PyTorch ``ConvTranspose2d(kernel 3, stride 2, padding 1, output_padding 1, bias=False)``, channels-last.

    x: (B, H, W, C_in); weight: (C_out, 3, 3, C_in); poly_w: optional precomputed :func:`polyphase_weight_s2`.
    Returns (B, 2H, 2W, C_out); the last row/column (from ``output_padding``) is computed, not zero-filled.
    """
    if not use_gemm(impl):
        return mx.conv_transpose2d(x, weight, stride=2, padding=1, output_padding=1)
    b, h, w, c_in = x.shape
    c_out = weight.shape[0]
    pw_ = poly_w if poly_w is not None else polyphase_weight_s2(weight)
    xp = mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])  # the zero row/column output_padding reads
    y = _gemm_conv(xp, 2, 2, pw_, None).reshape(b, h, w, 2, 2, c_out)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c_out)
