"""1-D convolutions with CPU-fast formulations, selectable per device.

MLX's Linux CPU backend runs conv1d with dilation > 1 and conv_transpose1d with stride > 1 as scalar loops
(100-330x slower than torch, DESIGN §7). On CPU we therefore use:

* every stride-1 conv1d with more than one tap (dilated or not) as a chain of per-tap ``mx.addmm`` (one
  ``(C_in, C_out)`` matrix per tap, accumulating in place). Measured on 2 cores with OpenBLAS, 10 s at 40 kHz: the
  generator's resblocks take 9.7 s this way, against 28 s with MLX's im2col conv (plus a phase split for dilations);
* wide-kernel, many-channel stride-1 conv1d (see ``fft_size``) by overlap-save FFT: blocks of the input go to the
  frequency domain, each frequency is one complex ``(C_in, C_out)`` matrix product, and back. The work per output
  sample no longer grows with the kernel; it wins from 7 taps at 128 channels (e.g. 128 channels, 11 taps,
  dilation 5, 43200 samples: 127 ms per-tap, 67 ms FFT on 2 cores);
* strided conv_transpose1d as a polyphase stride-1 conv: the kernel is zero-padded to ``L·stride`` taps and
  rearranged once into ``stride`` phase kernels stacked on the output axis; the phase outputs are interleaved.

On Metal, MLX's own kernels are the better choice. ``set_conv_mode("auto" | "cpu" | "native")`` picks the path;
``auto`` (default) uses the CPU formulations when the default device is the CPU and fast path ``conv`` is on
(``RVC_MLX_DISABLE=conv`` turns it off).

Weights stay in the converted MLX layout ``(C_out, K, C_in)``; derived arrangements are cached on the module and
rebuilt whenever the weight array is replaced (e.g. by ``load_weights``).
"""

from __future__ import annotations

import contextlib
import math

import mlx.core as mx
import mlx.nn as nn

from ..backend import enabled, on_cpu

CONV_MODES = ("auto", "cpu", "native")
_state = {"mode": "auto", "training": False}


def set_conv_mode(mode: str) -> None:
    """Choose the convolution path: ``cpu`` (fast CPU rewrites), ``native`` (MLX kernels) or ``auto``."""
    if mode not in CONV_MODES:
        raise ValueError(f"conv mode must be one of {', '.join(CONV_MODES)}, got {mode!r}")
    _state["mode"] = mode


def get_conv_mode() -> str:
    return _state["mode"]


@contextlib.contextmanager
def training_convs():
    """Within: convs take forms whose gradients are fast on CPU (``conv1d_unfold``) and rebuild derived kernels
    from the current weights on every call (the weights change every step)."""
    before = _state["training"]
    _state["training"] = True
    try:
        yield
    finally:
        _state["training"] = before


def use_cpu_formulations() -> bool:
    """True when the CPU rewrites should be used (mode ``cpu``, or ``auto`` on a CPU default device)."""
    mode = _state["mode"]
    if mode == "auto":
        return enabled("conv") and on_cpu()
    return mode == "cpu"


# FFT convolution pays from 7 taps at 128 channels or 11 taps at 64 (measured, 2 cores: 64 channels, 7 taps is a
# tie, 32 channels always loses). Its frequency-domain weights are ``N/2+1`` complex ``(C_in, C_out)`` matrices,
# kept for the module's life (computing them per call costs a third of the conv). Above FFT_MAX_CHANNELS they
# would take 17 MB or more a conv (140 MB for the 40k decoder's first stage) for a 20 % gain on its shortest stage.
FFT_MIN_TAPS = 7
FFT_MIN_CHANNELS = 64
FFT_WIDE_CHANNELS = 128  # below this, only 11+ taps pay
FFT_WIDE_TAPS = 11
FFT_MAX_CHANNELS = 128
FFT_MIN_SIZE = 64


def fft_size(c_in: int, c_out: int, taps: int, dilation: int) -> int | None:
    """FFT length for an overlap-save conv1d, or None when per-tap products are the faster choice.

    The length is the power of two at least four times the kernel's span (so at least 3/4 of each block is
    output), and at least ``FFT_MIN_SIZE``."""
    low, high = min(c_in, c_out), max(c_in, c_out)
    if not enabled("fft") or taps < FFT_MIN_TAPS or low < FFT_MIN_CHANNELS or high > FFT_MAX_CHANNELS:
        return None
    if low < FFT_WIDE_CHANNELS and taps < FFT_WIDE_TAPS:
        return None
    span = dilation * (taps - 1) + 1
    return max(FFT_MIN_SIZE, 1 << math.ceil(math.log2(4 * span)))


def fft_weight(weight: mx.array, dilation: int, n: int) -> mx.array:
    """``(C_out, K, C_in)`` -> ``(n/2+1, C_in, C_out)`` complex64: the spectrum of the kernel laid out as a causal
    filter (tap ``j`` at lag ``span−1−j·dilation``), so circular convolution of a block gives the correlation."""
    c_out, k, c_in = weight.shape
    span = dilation * (k - 1) + 1
    lags = [span - 1 - j * dilation for j in range(k)]
    h = mx.zeros((n, c_in, c_out), dtype=mx.float32)
    h[mx.array(lags)] = weight.transpose(1, 2, 0).astype(mx.float32)
    spectrum = mx.fft.rfft(h, axis=0)
    mx.eval(spectrum)
    return spectrum


def conv1d_fft(x: mx.array, spectrum: mx.array, bias: mx.array | None, span: int, out_len: int) -> mx.array:
    """Correlation of an already padded ``x (B, T_pad, C_in)`` by overlap-save: ``(B, out_len, C_out)``.

    Blocks of ``n`` samples, hopping by ``n − span + 1`` (the block's valid outputs), are transformed together;
    ``spectrum`` comes from ``fft_weight``."""
    b, t_pad, c_in = x.shape
    f, _, c_out = spectrum.shape
    n = 2 * (f - 1)
    hop = n - span + 1
    blocks = math.ceil(out_len / hop)
    need = (blocks - 1) * hop + n
    if need > t_pad:
        x = mx.pad(x, [(0, 0), (0, need - t_pad), (0, 0)])
    x = mx.contiguous(x)
    frames = mx.as_strided(x, (b, blocks, n, c_in), (x.shape[1] * c_in, hop * c_in, c_in, 1))
    frames = frames.reshape(b * blocks, n, c_in)
    spec = mx.fft.rfft(frames, axis=1).transpose(1, 0, 2)  # (f, B·blocks, C_in)
    y = mx.fft.irfft((spec @ spectrum).transpose(1, 0, 2), n=n, axis=1)  # (B·blocks, n, C_out)
    y = y[:, span - 1 :].reshape(b, blocks * hop, c_out)[:, :out_len]
    return y if bias is None else y + bias


def conv1d_unfold(x: mx.array, weight: mx.array, stride: int = 1, padding: int = 0, dilation: int = 1,
                  groups: int = 1) -> mx.array:
    """``mx.conv1d`` as slices and one matrix product (im2col): ``x (B, T, C_in)``, ``weight (C_out, K,
    C_in/groups)`` -> ``(B, T_out, C_out)``.

    For training on CPU: the gradients of this form are matrix products and slice updates, 2-8x faster than MLX's
    CPU conv gradients (measured, 2 cores: a strided 32->128 conv 2.3 s -> 0.3 s)."""
    b, _, c_in = x.shape
    c_out, k, c_group = weight.shape
    if padding:
        x = mx.pad(x, [(0, 0), (padding, padding), (0, 0)])
    t_out = (x.shape[1] - dilation * (k - 1) - 1) // stride + 1
    cols = mx.stack([x[:, j * dilation : j * dilation + stride * (t_out - 1) + 1 : stride] for j in range(k)], axis=2)
    if groups == 1:
        return (cols.reshape(b * t_out, k * c_in) @ weight.reshape(c_out, k * c_in).T).reshape(b, t_out, c_out)
    cols = cols.reshape(b * t_out, k, groups, c_group).transpose(2, 0, 1, 3).reshape(groups, b * t_out, k * c_group)
    w = weight.reshape(groups, c_out // groups, k * c_group).transpose(0, 2, 1)
    return (cols @ w).transpose(1, 0, 2).reshape(b, t_out, c_out)


def _tap_matrices(weight: mx.array) -> list[mx.array]:
    """``(C_out, K, C_in)`` -> K contiguous ``(C_in, C_out)`` matrices."""
    taps = [mx.contiguous(weight[:, j, :].T) for j in range(weight.shape[1])]
    mx.eval(taps)
    return taps


def conv1d_taps(x: mx.array, taps: list[mx.array], bias: mx.array | None, dilation: int, out_len: int) -> mx.array:
    """Correlation of an already padded ``x (B, T_pad, C_in)`` with per-tap matrices: ``(B, out_len, C_out)``."""
    acc = None
    for j, w in enumerate(taps):
        xs = x[:, j * dilation : j * dilation + out_len, :]
        if acc is None:
            acc = xs @ w if bias is None else mx.addmm(bias, xs, w)
        else:
            acc = mx.addmm(acc, xs, w)
    return acc


class Conv1d(nn.Module):
    """``torch.nn.Conv1d`` on channels-last input. ``weight``: ``(C_out, K, C_in / groups)``; input/output
    ``(B, T, C)``. Grouped convs (the discriminators') always take MLX's own kernel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        groups: int = 1,
    ):
        super().__init__()
        self.weight = mx.zeros((out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self._cpu = (None, None, None)  # (weight it was built from, FFT size or None, tap matrices or spectrum)

    def _cpu_weight(self) -> list[mx.array] | mx.array:
        """The CPU arrangement of the weight: the FFT spectrum when ``fft_size`` says FFT pays, else tap matrices."""
        c_out, k, c_in = self.weight.shape
        n = fft_size(c_in, c_out, k, self.dilation)
        if self._cpu[0] is not self.weight or self._cpu[1] != n:
            arranged = _tap_matrices(self.weight) if n is None else fft_weight(self.weight, self.dilation, n)
            self._cpu = (self.weight, n, arranged)
        return self._cpu[2]

    def __call__(self, x: mx.array) -> mx.array:
        bias = self.get("bias")
        k = self.weight.shape[1]
        if _state["training"] and use_cpu_formulations():
            y = conv1d_unfold(x, self.weight, self.stride, self.padding, self.dilation, self.groups)
            return y if bias is None else y + bias
        if self.stride == 1 and k > 1 and self.groups == 1 and use_cpu_formulations():
            span = self.dilation * (k - 1) + 1
            out_len = x.shape[1] + 2 * self.padding - span + 1
            if self.padding:
                x = mx.pad(x, [(0, 0), (self.padding, self.padding), (0, 0)])
            arranged = self._cpu_weight()
            if isinstance(arranged, list):
                return conv1d_taps(x, arranged, bias, self.dilation, out_len)
            return conv1d_fft(x, arranged, bias, span, out_len)
        y = mx.conv1d(x, self.weight, stride=self.stride, padding=self.padding, dilation=self.dilation,
                      groups=self.groups)
        return y if bias is None else y + bias


def polyphase_kernel(weight: mx.array, stride: int, padding: int) -> tuple[mx.array, int, int]:
    """Rearrange a transposed-conv kernel ``(C_out, K, C_in)`` into a stride-1 conv kernel.

    Output sample ``n = q·s + r`` of a transposed conv is ``Σ_m x[q − m] · W[r + p + m·s]``. Phase ``r`` uses
    taps ``m ∈ [m_lo, m_hi]``; stacking the ``s`` phases on the output axis gives one ``(s·C_out, L, C_in)`` kernel
    (``L = m_hi − m_lo + 1``, missing taps zero) applied to ``x`` left-padded by ``m_hi``.

    Returns ``(kernel, L, m_hi)``.
    """
    c_out, k, c_in = weight.shape
    s, p = stride, padding
    m_hi = (k - 1 - p) // s
    m_lo = -((s - 1 + p) // s)
    n_taps = m_hi - m_lo + 1
    zero = mx.zeros((c_out, c_in), dtype=weight.dtype)
    phases = []
    for r in range(s):
        taps = []
        for t in range(n_taps):
            j = r + p + (m_hi - t) * s
            taps.append(weight[:, j, :] if 0 <= j < k else zero)
        phases.append(mx.stack(taps, axis=1))  # (C_out, L, C_in)
    kernel = mx.concatenate(phases, axis=0)  # (s·C_out, L, C_in), phase-major
    return kernel, n_taps, m_hi


class ConvTranspose1d(nn.Module):
    """``torch.nn.ConvTranspose1d`` on channels-last input. ``weight``: ``(C_out, K, C_in)`` (converted layout);
    input ``(B, T, C_in)`` -> output ``(B, (T−1)·stride − 2·padding + K, C_out)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stride = stride
        self.padding = padding
        self._poly = (None, None)  # (weight it was built from, (tap matrices, n_taps, m_hi))

    def _poly_cache(self):
        if self._poly[0] is not self.weight:
            kernel, n_taps, m_hi = polyphase_kernel(self.weight, self.stride, self.padding)
            mx.eval(kernel)
            self._poly = (self.weight, (kernel, n_taps, m_hi))
        return self._poly[1]

    def __call__(self, x: mx.array) -> mx.array:
        bias = self.get("bias")
        c_out, k, _ = self.weight.shape
        s, p = self.stride, self.padding
        if s > 1 and use_cpu_formulations():
            if _state["training"]:  # the kernel changes every step: rearranged inside the differentiated graph
                kernel, n_taps, m_hi = polyphase_kernel(self.weight, s, p)
            else:
                kernel, n_taps, m_hi = self._poly_cache()
            b, t, _ = x.shape
            out_len = (t - 1) * s - 2 * p + k
            t_q = math.ceil(out_len / s)
            right = t_q + n_taps - 1 - m_hi - t
            x = mx.pad(x, [(0, 0), (m_hi, max(right, 0)), (0, 0)])
            y = (conv1d_unfold(x, kernel) if _state["training"] else mx.conv1d(x, kernel))[:, :t_q, :]
            # (B, t_q, s·C_out), phase-major channels
            y = y.reshape(b, t_q * s, c_out)[:, :out_len, :]
            return y if bias is None else y + bias
        y = mx.conv_transpose1d(x, self.weight, stride=s, padding=p)
        return y if bias is None else y + bias
