"""Applio's RefineGAN vocoder (Applio >= 3.3.0): latent ``(B, T, inter)`` + f0 ``(B, T)`` -> audio ``(B, T·upp, 1)``.

A U-Net over time. The f0 path turns a per-sample sine source into skip connections at every rate::

    f0 --linear interp to the sample rate--> HarmonicSource (1 harmonic, merge without bias) --> pre_conv (1->16)
    4x: leaky 0.2 -> keep as skip -> Kaiser-sinc decimate by r (r = upsample_rates reversed) -> conv (C -> 2C)

and ends at the frame rate with 256 channels. ``mel_conv(z) + cond(g)`` (256) is concatenated with it (512), then
each of the 4 stages does leaky 0.2 -> linear upsample by ``upsample_rates[i]`` -> concatenate the skip of the
same rate -> ParallelResBlock (``input_conv`` then the mean of three AdaIN/ResBlock/AdaIN branches with kernels
3, 7, 11). Finally leaky 0.2 -> ``conv_post`` (no bias) -> tanh.

Randomness: the source's additive noise (``SourceNoise.noise``, shape ``noise_shape(t)``) and 24 AdaIN Gaussian
draws (6 per stage, taken from ``SourceNoise.key`` in call order; no key: zero). The source's initial phase is
always 0 (Applio zeroes the fundamental's).

Parameter names are Applio's minus ``dec.`` (``m_source.merge.0`` is renamed ``m_source.l_linear`` at conversion).
Interpolation and the decimator follow torch's ``F.interpolate(mode="linear")`` and torchaudio's
``resample(sinc_interp_kaiser)``, including their float32 index arithmetic.
"""

from __future__ import annotations

import functools
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..backend import enabled, lane_blas, lanes
from ..nn.conv import Conv1d
from .generator import HarmonicSource, SourceNoise, leaky_relu

LRELU_SLOPE = 0.2
STAGES = 4  # the channel plan below only fits 4 upsample rates
START_CHANNELS = 16  # pre_conv output; doubled by each downsample block (16 -> 256)
UPSAMPLE_INITIAL_CHANNEL = 512
CONV_KERNEL = 7  # pre_conv, downsample blocks, mel_conv, input_conv, conv_post
RESBLOCK_KERNELS = (3, 7, 11)
RESBLOCK_DILATIONS = (1, 3, 5)
ADAIN_PER_STAGE = 2 * len(RESBLOCK_KERNELS)
ADAIN_DRAWS = STAGES * ADAIN_PER_STAGE

# torchaudio.functional.resample arguments used by Applio's f0 path.
SINC_ZERO_CROSSINGS = 64  # lowpass_filter_width
SINC_ROLLOFF = 0.9475937167399596
KAISER_BETA = 14.769656459379492
# ParallelResBlocks run in time tiles of at most this many values (8 MB at float32; 1-8 MB measured within noise,
# 16 MB+ slower), cut on a multiple of the CPU lanes: cache-sized temporaries, tiles evaluated in parallel.
TILE_VALUES = 1 << 21
# Decimator GEMM blocking: outputs per block (the Toeplitz matrices are (chunk, block), chunk = block·r samples).
DECIMATE_BLOCK = 64


# -- resampling helpers -------------------------------------------------------------------------------------------


def _linear_weights(t_in: int, t_out: int, scale: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's linear interpolation (align_corners=False) from ``t_in`` to ``t_out`` samples: source indices
    ``i0, i1`` ``(t_out,)`` and weights ``(t_out, 2)`` float32, with torch's float32 index arithmetic:
    ``src = max(fma(scale, j + 0.5, −0.5), 0)`` (its CPU kernel is compiled with FMA contraction; the product is
    exact in float64, so one rounding to float32 reproduces it)."""
    j = np.arange(t_out, dtype=np.float64)
    src = ((j + 0.5) * np.float64(scale) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), t_in - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    i1 = i0 + (i0 < t_in - 1)
    return i0.astype(np.int32), i1.astype(np.int32), np.stack([np.float32(1.0) - lam1, lam1], axis=1)


def interpolate_f0(f0: mx.array, t_out: int) -> mx.array:
    """``F.interpolate(f0[:, None], size=t_out, mode="linear")``: ``(B, T)`` -> ``(B, t_out)`` float32, bit for bit
    (torch mixes as ``fma(x0, w0, x1·w1)``; emulated in float64). Exactness matters here: the sine phase is a
    running sum over every sample."""
    x = np.asarray(f0, dtype=np.float32)
    i0, i1, w = _linear_weights(x.shape[1], t_out, np.float32(x.shape[1]) / np.float32(t_out))
    y = x[:, i0].astype(np.float64) * w[:, 0] + (x[:, i1] * w[:, 1]).astype(np.float32)
    return mx.array(y.astype(np.float32))


def upsample_linear(x: mx.array, rate: int) -> mx.array:
    """``nn.Upsample(scale_factor=rate, mode="linear")`` on ``(B, T, C)`` -> ``(B, T·rate, C)`` (torch's weights;
    the mix ``x0·w0 + x1·w1`` in float32, within an ulp of torch's fused one)."""
    t_out = x.shape[1] * rate
    i0, i1, w = _linear_weights(x.shape[1], t_out, np.float32(1.0 / rate))
    w0 = mx.array(w[:, 0]).reshape(1, t_out, 1)
    w1 = mx.array(w[:, 1]).reshape(1, t_out, 1)
    return mx.take(x, mx.array(i0), axis=1) * w0 + mx.take(x, mx.array(i1), axis=1) * w1


@functools.lru_cache(maxsize=None)
def kaiser_sinc_kernel(rate: int) -> tuple[np.ndarray, int]:
    """torchaudio's ``sinc_interp_kaiser`` kernel for decimation by ``rate`` (orig=rate, new=1) -> ``(taps, width)``.

    ``taps`` has ``2·width + rate`` float32 values; positions ``t`` are computed in float32 as torchaudio does,
    the Kaiser window (Bessel I0) in float64 and rounded (torch evaluates it in float32; ~1 ulp apart)."""
    base = SINC_ROLLOFF  # min(orig, new) · rolloff with new = 1
    width = math.ceil(SINC_ZERO_CROSSINGS * rate / base)
    t = np.arange(-width, width + rate, dtype=np.float32) / np.float32(rate)
    t = np.clip(t * np.float32(base), -SINC_ZERO_CROSSINGS, SINC_ZERO_CROSSINGS).astype(np.float32)
    u = (t / np.float32(SINC_ZERO_CROSSINGS)).astype(np.float64)
    window = (np.i0(KAISER_BETA * np.sqrt(1.0 - u * u)) / np.i0(KAISER_BETA)).astype(np.float32)
    tp = (t * np.float32(math.pi)).astype(np.float32)
    safe = np.where(tp == 0, np.float32(1.0), tp)
    sinc = np.where(tp == 0, np.float32(1.0), (np.sin(safe.astype(np.float64)) / safe).astype(np.float32))
    taps = sinc * (window * np.float32(base / rate))
    return taps.astype(np.float32), width


@functools.lru_cache(maxsize=None)
def _toeplitz_blocks(rate: int, block: int) -> tuple[mx.array, int]:
    """The decimator as block-Toeplitz matrices ``(n, chunk, block)`` (``chunk = block·rate``): output ``o`` of a
    block is ``Σ_i chunk[b + i] @ M[i][:, o]`` with ``M[i][s, o] = taps[i·chunk + s − o·rate]``."""
    taps, _ = kaiser_sinc_kernel(rate)
    chunk = block * rate
    n = math.ceil(((block - 1) * rate + len(taps)) / chunk)
    m = np.zeros((n * chunk, block), dtype=np.float32)
    for o in range(block):
        m[o * rate : o * rate + len(taps), o] = taps
    return mx.array(m.reshape(n, chunk, block)), n


def decimate(x: mx.array, rate: int) -> mx.array:
    """``torchaudio.functional.resample(x, rate, 1, lowpass_filter_width=64, rolloff=SINC_ROLLOFF,
    resampling_method="sinc_interp_kaiser", beta=KAISER_BETA)`` along axis 1: ``(B, L, C)`` -> ``(B, ceil(L/r), C)``.

    torchaudio zero-pads by ``width`` and runs a stride-``r`` conv over every channel. Here each channel's signal
    is cut into chunks of ``block·r`` samples and every block of ``block`` outputs is a sum of a few
    chunk @ Toeplitz products: a handful of large GEMMs instead of a 1-channel strided conv."""
    b, length, c = x.shape
    _, width = kaiser_sinc_kernel(rate)
    mats, n = _toeplitz_blocks(rate, DECIMATE_BLOCK)
    chunk = DECIMATE_BLOCK * rate
    out_len = math.ceil(length / rate)
    blocks = math.ceil(out_len / DECIMATE_BLOCK)
    total = (blocks + n - 1) * chunk
    xc = x.transpose(0, 2, 1).reshape(b * c, length)  # one row per channel
    xc = mx.pad(xc, [(0, 0), (width, total - width - length)])
    xc = xc.reshape(b * c, blocks + n - 1, chunk)
    y = None
    for i in range(n):
        part = xc[:, i : i + blocks] @ mats[i]  # (B·C, blocks, block)
        y = part if y is None else y + part
    y = y.reshape(b, c, blocks * DECIMATE_BLOCK)[:, :, :out_len]
    return y.transpose(0, 2, 1)


# -- network ------------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Three (dilated conv, conv) pairs with residuals, leaky 0.2 before each conv. ``(B, T, C)`` -> same."""

    def __init__(self, channels: int, kernel_size: int, dilations=RESBLOCK_DILATIONS):
        super().__init__()
        self.convs1 = [
            Conv1d(channels, channels, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d) for d in dilations
        ]
        self.convs2 = [Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations]

    def __call__(self, x: mx.array) -> mx.array:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(leaky_relu(c1(leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class AdaIN(nn.Module):
    """Applio's "AdaIN": leaky 0.2 of ``x + noise·weight`` (per-channel ``weight (C,)``). ``(B, T, C)`` -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = mx.full((channels,), 1e-4)

    def __call__(self, x: mx.array, noise: mx.array | None) -> mx.array:
        if noise is not None:
            x = x + noise * self.weight
        return leaky_relu(x, LRELU_SLOPE)


class ParallelResBlock(nn.Module):
    """``input_conv`` (C_in -> C, kernel 7), then the mean of three AdaIN -> ResBlock(k) -> AdaIN branches.
    ``(B, T, C_in)`` -> ``(B, T, C)``; ``noises``: the 6 AdaIN standard-normal draws ``(B, T, C)`` in call order
    (or None: no noise)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.input_conv = Conv1d(in_channels, channels, CONV_KERNEL, padding=CONV_KERNEL // 2)
        self.blocks = [[AdaIN(channels), ResBlock(channels, k), AdaIN(channels)] for k in RESBLOCK_KERNELS]

    def reach(self) -> int:
        """Samples of input context an output sample depends on, on each side."""
        res = max(sum(c.dilation * (c.weight.shape[1] - 1) // 2 for c in b[1].convs1 + b[1].convs2) for b in self.blocks)
        return self.input_conv.weight.shape[1] // 2 + res

    def __call__(self, x: mx.array, noises: list | None = None) -> mx.array:
        x = self.input_conv(x)
        noises = noises or [None] * ADAIN_PER_STAGE
        total = None
        for j, (pre, res, post) in enumerate(self.blocks):
            y = post(res(pre(x, noises[2 * j])), noises[2 * j + 1])
            total = y if total is None else total + y
        return total / len(self.blocks)

    def tiled(self, x: mx.array, noises: list | None = None) -> mx.array:
        """The same result computed in time tiles with ``reach()`` samples of real context on both sides (cut
        off afterwards), groups of tiles evaluated in parallel on the CPU lanes."""
        t, halo = x.shape[1], self.reach()
        streams = lanes()
        spans = tile_spans(t, max(TILE_VALUES // self.input_conv.weight.shape[0], 4 * halo), len(streams), 4 * halo)
        if len(spans) == 1:
            return self(x, noises)
        outs = []
        with lane_blas(streams):
            for first in range(0, len(spans), len(streams)):
                group = spans[first : first + len(streams)]
                for (start, end), stream in zip(group, streams):
                    lo, hi = max(start - halo, 0), min(end + halo, t)
                    with mx.stream(stream):
                        tile_noise = None if noises is None else [n[:, lo:hi] for n in noises]
                        outs.append(self(x[:, lo:hi], tile_noise)[:, start - lo : end - lo])
                mx.eval(outs[-len(group) :])
        return mx.concatenate(outs, axis=1)


def tile_spans(t: int, longest: int, lanes: int = 1, shortest: int = 1) -> list[tuple[int, int]]:
    """``t`` samples cut into a multiple of ``lanes`` tiles of equal length, at most ``longest`` each, or a single
    tile when the lanes' tiles would be shorter than ``shortest`` (mostly context then): ``[(start, end), ...]``."""
    if t <= longest and (lanes == 1 or t < lanes * shortest):
        return [(0, t)]
    count = lanes * math.ceil(t / (lanes * longest))
    step = math.ceil(t / count)
    return [(start, min(start + step, t)) for start in range(0, t, step)]


def adain_keys(key: mx.array) -> list[mx.array]:
    """The 24 AdaIN keys in the reference's call order (stage, branch, before/after); draw ``i`` is
    ``mx.random.normal((B, L, C), key=keys[i])`` with that stage's output shape."""
    return list(mx.random.split(key, ADAIN_DRAWS))


class RefineGANGenerator(nn.Module):
    """Applio's RefineGAN decoder. ``upsample_rates`` must have 4 entries with ``prod == sample_rate / 100``.

    Parameters: ``m_source.l_linear``, ``pre_conv``, ``downsample_blocks.{0..3}``, ``mel_conv``, ``cond``,
    ``upsample_conv_blocks.{0..3}`` (``input_conv``, ``blocks.{j}.{0,2}.weight``, ``blocks.{j}.1.convs{1,2}.{k}``),
    ``conv_post``."""

    def __init__(self, sample_rate: int, upsample_rates: list[int], inter_channels: int = 192, gin_channels: int = 256):
        super().__init__()
        if len(upsample_rates) != STAGES:
            raise ValueError(f"RefineGAN needs exactly {STAGES} upsample rates, got {list(upsample_rates)}")
        self.sample_rate = sample_rate
        self.upsample_rates = [int(r) for r in upsample_rates]
        self.upp = math.prod(self.upsample_rates)
        self.m_source = HarmonicSource(sample_rate, 1, bias=False)
        pad = CONV_KERNEL // 2
        self.pre_conv = Conv1d(1, START_CHANNELS, CONV_KERNEL, padding=pad)
        self.downsample_blocks = [
            Conv1d(START_CHANNELS * 2**i, START_CHANNELS * 2 ** (i + 1), CONV_KERNEL, padding=pad)
            for i in range(STAGES)
        ]
        half = UPSAMPLE_INITIAL_CHANNEL // 2
        self.mel_conv = Conv1d(inter_channels, half, CONV_KERNEL, padding=pad)
        if gin_channels:
            self.cond = Conv1d(gin_channels, half, 1)
        channels = UPSAMPLE_INITIAL_CHANNEL
        self.upsample_conv_blocks = []
        for _ in self.upsample_rates:
            self.upsample_conv_blocks.append(ParallelResBlock(channels + channels // 4, channels // 2))
            channels //= 2
        self.conv_post = Conv1d(channels, 1, CONV_KERNEL, padding=pad, bias=False)

    def noise_shape(self, t: int) -> tuple[int, ...]:
        """Shape of the source's additive standard-normal noise for ``t`` frames (batch of 1)."""
        return (1, t * self.upp, 1)

    def random_phase(self, key: mx.array) -> None:
        """No random phase: Applio zeroes the initial phase of its only harmonic."""
        return None

    def __call__(
        self, x: mx.array, f0: mx.array, g: mx.array | None = None, noise: SourceNoise | None = None
    ) -> mx.array:
        """``x (B, T, inter)``, ``f0 (B, T)`` Hz at 100 fps, ``g (B, 1, gin)`` -> audio ``(B, T·upp, 1)``."""
        noise = noise or SourceNoise()
        t = x.shape[1]
        f0_up = interpolate_f0(f0, t * self.upp)
        skips = self.f0_path(self.m_source(f0_up, SourceNoise(noise=noise.noise)))
        h = self.mel_conv(x)
        if g is not None and "cond" in self:
            h = h + self.cond(g)
        h = mx.concatenate([h, skips.pop()], axis=-1)
        keys = None if noise.key is None else adain_keys(noise.key)
        for i, (rate, block) in enumerate(zip(self.upsample_rates, self.upsample_conv_blocks)):
            h = upsample_linear(leaky_relu(h, LRELU_SLOPE), rate)
            h = mx.concatenate([h, skips.pop()], axis=-1)
            noises = None
            if keys is not None:
                shape = (h.shape[0], h.shape[1], block.input_conv.weight.shape[0])
                noises = [mx.random.normal(shape, key=k) for k in keys[i * ADAIN_PER_STAGE : (i + 1) * ADAIN_PER_STAGE]]
                mx.eval(noises)
            h = block.tiled(h, noises) if enabled("tile") else block(h, noises)
            mx.eval(h)  # stage by stage: one lazy graph would keep every stage's temporaries alive
        return mx.tanh(self.conv_post(leaky_relu(h, LRELU_SLOPE)))

    def f0_path(self, source: mx.array) -> list[mx.array]:
        """Source ``(B, T·upp, 1)`` -> skips at rates ``upp, upp/r4, ...`` (channels 16..128), followed by the
        frame-rate features ``(B, T, 256)`` last."""
        h = self.pre_conv(source)
        skips = []
        for rate, block in zip(reversed(self.upsample_rates), self.downsample_blocks):
            h = leaky_relu(h, LRELU_SLOPE)
            skips.append(h)
            h = block(decimate(h, rate))
        mx.eval(skips, h)
        return skips + [h]
