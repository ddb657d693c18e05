"""RVC's decoder: NSF-HiFiGAN (f0 models) or plain HiFi-GAN (no-f0 models), one class with an optional source.
Applio's MRF HiFi-GAN is the same network with another source (``source="mrf"``) and a bias on ``conv_post``.

Channels-last throughout: latent ``(B, T, inter_channels)`` at the frame rate -> audio ``(B, T·upp, 1)`` where
``upp = prod(upsample_rates)`` (samples per 100 fps frame, e.g. 400 at 40 kHz).

Sources (f0 -> excitation ``(B, T·upp, 1)``):

* ``nsf`` (rvc==0.3.5 ``SineGen``, one harmonic): phase = cumulative sum of ``f0/sr`` per sample (frame values
  held for ``upp`` samples), sine amplitude 0.1, unvoiced samples replaced by noise of std 0.1/3 and voiced ones
  get additive noise of std 0.003; ``source = tanh(Linear(1→1)(sine))``.
* ``mrf`` (Applio ``SineGenerator`` with 8 overtones): f0 nearest-upsampled to the sample rate, harmonics
  ``f0·1..9``, per-sample phase sum with a random initial phase on harmonics 2..9, the same amplitudes and noise;
  ``source = tanh(Linear(9→1)(sines))``. The same per-sample source (one harmonic) drives RefineGAN.

Phases are accumulated in float64 (torch's CPU cumsum accumulates in double too), so long files do not drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..backend import enabled, lane_blas, lanes
from ..nn.conv import Conv1d, ConvTranspose1d

LRELU_SLOPE = 0.1  # inside the upsampling stages and resblocks
POST_LRELU_SLOPE = 0.01  # F.leaky_relu default, before conv_post
SINE_AMP = 0.1
NOISE_STD = 0.003  # additive noise on voiced samples
UNVOICED_NOISE_STD = SINE_AMP / 3
VOICED_THRESHOLD = 0.0
TILE_FRAMES = 250  # longest decoder tile (frames of 10 ms) when fast path ``tile`` is on


@dataclass
class SourceNoise:
    """Random inputs of the NSF source. ``None`` fields are drawn by the caller's policy (see Synthesizer).

    ``phase``: initial phase in cycles: of the fundamental (scalar or ``(B,)``, ``nsf``), or of each harmonic
    ``(B, H)`` (per-sample sources; Applio keeps the fundamental's at 0).
    ``noise``: standard-normal additive noise ``(B, T·upp)`` or ``(B, T·upp, H)``.
    ``key``: PRNG key for noise drawn inside the decoder (RefineGAN's AdaIN); ``None``: that noise is zero.
    """

    phase: mx.array | float | None = None
    noise: mx.array | None = None
    key: mx.array | None = None


def leaky_relu(x: mx.array, slope: float) -> mx.array:
    return mx.maximum(x, slope * x)


def sine_phase(f0: mx.array, upp: int, sample_rate: int, phase: mx.array | float | None = None) -> mx.array:
    """Phase in cycles, wrapped to [0, 1), of the NSF sine. ``f0 (B, T)`` Hz -> ``(B, T·upp)`` float32.

    Sample ``k`` of frame ``f`` has phase ``upp·Σ_{f'<f} rad[f'] + (k+1)·rad[f]`` with ``rad = (f0/sr) mod 1``
    (rvc's cumulative sum of the per-sample increments; its wrap bookkeeping only adds whole cycles).
    An initial phase is added to frame 0's increment, as rvc does with its ``rand_ini``.
    """
    rad = mx.remainder(f0.astype(mx.float32) / sample_rate, 1.0)
    if phase is not None:
        first = rad[:, :1] + mx.array(phase, dtype=mx.float32).reshape(-1, 1)
        rad = mx.concatenate([first, rad[:, 1:]], axis=1)
    # float64 lives on the CPU stream only; this is O(samples) work either way.
    with mx.stream(mx.cpu):
        rad64 = rad.astype(mx.float64)
        start = mx.cumsum(rad64, axis=1, inclusive=False) * upp  # (B, T)
        start = start - mx.floor(start)
        k = mx.arange(1, upp + 1, dtype=mx.float64)
        ph = start[:, :, None] + k[None, None, :] * rad64[:, :, None]  # (B, T, upp)
        ph = ph - mx.floor(ph)
        ph = ph.reshape(ph.shape[0], -1).astype(mx.float32)
    return ph


def wrapped_cumsum(rad: mx.array, axis: int = 1) -> mx.array:
    """Running sum of ``rad`` (cycles) along ``axis``, wrapped to [0, 1): accumulated in float64, returned as float32."""
    with mx.stream(mx.cpu):  # float64 lives on the CPU stream only; this is O(samples) work either way
        ph = mx.cumsum(rad.astype(mx.float64), axis=axis)
        return (ph - mx.floor(ph)).astype(mx.float32)


def harmonic_sines(f0: mx.array, sample_rate: int, harmonics: int, noise: SourceNoise) -> mx.array:
    """Applio's per-sample harmonic source before the merge: ``f0 (B, L)`` Hz at the sample rate ->
    ``(B, L, harmonics)`` float32 (sines of amplitude 0.1 on voiced samples, plus noise).

    Harmonic ``h`` has ``rad = (f0·(h+1)/sr) mod 1``; its phase is the running sum of ``rad`` plus the initial phase
    ``noise.phase[:, h]`` (added to the first sample, so it offsets every sample)."""
    f0 = f0.astype(mx.float32)
    f0_h = f0[..., None] * mx.arange(1, harmonics + 1, dtype=mx.float32)  # (B, L, H)
    rad = mx.remainder(f0_h / sample_rate, 1.0)
    ph = wrapped_cumsum(rad)
    if noise.phase is not None:
        ph = ph + mx.array(noise.phase, dtype=mx.float32).reshape(-1, 1, harmonics)
    sines = mx.sin(ph * 2 * math.pi) * SINE_AMP
    uv = (f0 > VOICED_THRESHOLD).astype(mx.float32)[..., None]
    sines = sines * uv
    if noise.noise is not None:
        n = noise.noise.reshape(sines.shape)
        sines = sines + (uv * NOISE_STD + (1 - uv) * UNVOICED_NOISE_STD) * n
    return sines


class HarmonicSource(nn.Module):
    """Per-sample harmonic source merged to one channel: f0 ``(B, L)`` at the sample rate -> ``(B, L, 1)``.
    Parameters ``l_linear`` (Linear ``harmonics→1``; MRF has a bias, RefineGAN's ``merge`` has none)."""

    def __init__(self, sample_rate: int, harmonics: int, bias: bool = True):
        super().__init__()
        self.sample_rate = sample_rate
        self.harmonics = harmonics
        self.l_linear = nn.Linear(harmonics, 1, bias=bias)

    def __call__(self, f0: mx.array, noise: SourceNoise) -> mx.array:
        return mx.tanh(self.l_linear(harmonic_sines(f0, self.sample_rate, self.harmonics, noise)))


class SourceModuleHnNSF(nn.Module):
    """f0 ``(B, T)`` -> excitation ``(B, T·upp, 1)``; parameters ``l_linear`` (Linear 1→1)."""

    def __init__(self, sample_rate: int):
        super().__init__()
        self.sample_rate = sample_rate
        self.l_linear = nn.Linear(1, 1)

    def __call__(self, f0: mx.array, upp: int, noise: SourceNoise) -> mx.array:
        ph = sine_phase(f0, upp, self.sample_rate, noise.phase)
        sine = mx.sin(ph * 2 * math.pi) * SINE_AMP
        uv = mx.repeat((f0 > VOICED_THRESHOLD).astype(mx.float32), upp, axis=1)
        sine = sine * uv
        if noise.noise is not None:
            amp = uv * NOISE_STD + (1 - uv) * UNVOICED_NOISE_STD
            sine = sine + amp * noise.noise
        return mx.tanh(self.l_linear(sine[..., None]))


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock1: three (dilated conv, conv) pairs with residuals. ``(B, T, C)`` -> same."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.convs1 = [
            Conv1d(channels, channels, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d) for d in dilations
        ]
        self.convs2 = [Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations]

    def reach(self) -> int:
        """Samples of context the block needs on each side."""
        return sum(c.dilation * (c.weight.shape[1] - 1) // 2 for c in self.convs1 + self.convs2)

    def __call__(self, x: mx.array) -> mx.array:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c2(leaky_relu(c1(leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            x = xt + x
        return x


SOURCES = ("nsf", "mrf")
MRF_HARMONICS = 9  # Applio's HiFiGANMRFGenerator: harmonic_num=8 overtones + the fundamental


class Generator(nn.Module):
    """HiFi-GAN decoder, with a source when ``sample_rate`` is given (f0 models): ``nsf`` (RVC) or ``mrf``
    (Applio's MRF HiFi-GAN: per-sample 9-harmonic source, ``conv_post`` with bias).

    Parameter names mirror rvc's ``GeneratorNSF``/``Generator``: conv_pre, cond, ups, noise_convs, resblocks,
    conv_post, m_source.l_linear (MRF checkpoints are renamed to these at conversion).
    """

    def __init__(
        self,
        initial_channel: int,
        resblock_kernel_sizes: list[int],
        resblock_dilation_sizes: list[list[int]],
        upsample_rates: list[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: list[int],
        gin_channels: int,
        sample_rate: int | None = None,
        source: str = "nsf",
    ):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})")
        self.source = source
        self.num_kernels = len(resblock_kernel_sizes)
        self.upp = math.prod(upsample_rates)
        self.use_source = sample_rate is not None
        self.conv_pre = Conv1d(initial_channel, upsample_initial_channel, 7, padding=3)
        if gin_channels:
            self.cond = Conv1d(gin_channels, upsample_initial_channel, 1)
        self.ups = []
        self.noise_convs = []
        self.resblocks = []
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            c_in = upsample_initial_channel // (2**i)
            c_out = upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(ConvTranspose1d(c_in, c_out, k, stride=u, padding=(k - u) // 2))
            if self.use_source:
                if i + 1 < len(upsample_rates):
                    s = math.prod(upsample_rates[i + 1 :])
                    self.noise_convs.append(Conv1d(1, c_out, 2 * s, stride=s, padding=s // 2))
                else:
                    self.noise_convs.append(Conv1d(1, c_out, 1))
            for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(c_out, rk, rd))
        self.conv_post = Conv1d(c_out, 1, 7, padding=3, bias=source == "mrf")
        if self.use_source:
            self.m_source = (
                SourceModuleHnNSF(sample_rate) if source == "nsf" else HarmonicSource(sample_rate, MRF_HARMONICS)
            )

    def receptive_radius(self) -> float:
        """How far (in frames) an output sample can see into the input latent, on either side: the sum of every
        conv's reach along the chain, each converted from its own sample rate to frames. Tiles of the latent with
        at least this much context on each side decode exactly as the whole sequence does."""
        reach = self.conv_pre.weight.shape[1] // 2  # frames
        rate = 1  # samples per frame at the current stage
        for i, up in enumerate(self.ups):
            reach += (up.weight.shape[1] / up.stride + 1) / rate  # transposed conv, in its input's samples
            rate *= up.stride
            if self.use_source:
                reach += self.noise_convs[i].weight.shape[1] / self.upp
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            reach += max(block.reach() for block in blocks) / rate
        return reach + self.conv_post.weight.shape[1] // 2 / rate

    def __call__(
        self, x: mx.array, f0: mx.array | None = None, g: mx.array | None = None, noise: SourceNoise | None = None
    ) -> mx.array:
        """``x (B, T, inter)``, ``f0 (B, T)`` Hz (f0 models), ``g (B, 1, gin)`` -> audio ``(B, T·upp, 1)``.

        With fast path ``tile`` on, long inputs are decoded in tiles of ``TILE_FRAMES`` frames, each with
        ``halo()`` frames of real context on both sides (cut off afterwards): the same result as one pass, with
        temporaries sized by the tile instead of the input. The NSF source is computed once for the whole input
        (its phase is a running sum)."""
        har = None
        if self.use_source:
            if f0 is None:
                raise ValueError("this generator needs f0")
            har = self.excitation(f0, noise or SourceNoise())
        t, halo = x.shape[1], self.halo()
        streams = lanes()
        spans = tile_spans(t, halo, len(streams)) if enabled("tile") else [(0, t)]
        if len(spans) == 1:
            return self.decode([x], [har], g)[0]
        outs = []
        with lane_blas(streams):
            for first in range(0, len(spans), len(streams)):
                group = spans[first : first + len(streams)]
                reach = [(max(start - halo, 0), min(end + halo, t)) for start, end in group]
                tiles = [x[:, lo:hi] for lo, hi in reach]
                tile_hars = [None if har is None else har[:, lo * self.upp : hi * self.upp] for lo, hi in reach]
                ys = self.decode(tiles, tile_hars, g, streams[: len(group)])
                for y, (start, end), (lo, _), stream in zip(ys, group, reach, streams):
                    with mx.stream(stream):
                        outs.append(y[:, (start - lo) * self.upp : (end - lo) * self.upp])
                mx.eval(outs[-len(group) :])
        mx.clear_cache()  # tile temporaries are not needed by the next stage
        return mx.concatenate(outs, axis=1)

    def excitation(self, f0: mx.array, noise: SourceNoise) -> mx.array:
        """f0 ``(B, T)`` Hz at the frame rate -> source ``(B, T·upp, 1)``."""
        if self.source == "nsf":
            return self.m_source(f0, self.upp, noise)
        return self.m_source(mx.repeat(f0, self.upp, axis=1), noise)  # nearest upsampling, as Applio's MRF

    def noise_shape(self, t: int) -> tuple[int, ...] | None:
        """Shape of the additive source noise for ``t`` frames (batch of 1), None without a source."""
        if not self.use_source:
            return None
        return (1, t * self.upp) if self.source == "nsf" else (1, t * self.upp, MRF_HARMONICS)

    def random_phase(self, key: mx.array) -> mx.array | None:
        """Initial phases drawn the way the reference does: none for RVC's NSF (rvc zeroes the fundamental's),
        uniform for MRF's overtones 2..9 (the fundamental's stays 0)."""
        if self.source == "nsf" or not self.use_source:
            return None
        phase = mx.random.uniform(shape=(1, MRF_HARMONICS), key=key)
        return mx.concatenate([mx.zeros((1, 1)), phase[:, 1:]], axis=1)

    def halo(self) -> int:
        """Frames of context each tile gets on both sides: the receptive radius rounded up, plus one."""
        return math.ceil(self.receptive_radius()) + 1

    def decode(
        self, xs: list[mx.array], hars: list[mx.array | None], g: mx.array | None, streams: list | None = None
    ) -> list[mx.array]:
        """Independent passes over tiles ``xs[i] (B, T_i, inter)`` with their sources ``hars[i] (B, T_i·upp, 1)``
        -> audio ``(B, T_i·upp, 1)`` each. Tile ``i`` is built on ``streams[i]`` (default: the default stream);
        all tiles are evaluated together, stage by stage."""
        streams = streams or [mx.default_stream(mx.default_device())] * len(xs)

        def each(fn, *columns):
            out = []
            for stream, args in zip(streams, zip(*columns)):
                with mx.stream(stream):
                    out.append(fn(*args))
            return out

        xs = each(self._pre, xs, [g] * len(xs))
        for i in range(len(self.ups)):
            xs = each(lambda x, har: self._stage(i, x, har), xs, hars)
            # Evaluate stage by stage: one lazy graph over all stages keeps many stage-sized temporaries alive
            # (measured 4 GB peak for 10 s at 40 kHz).
            mx.eval(xs)
        return each(self._post, xs)

    def _pre(self, x: mx.array, g: mx.array | None) -> mx.array:
        x = self.conv_pre(x)
        return x + self.cond(g) if g is not None and "cond" in self else x

    def _stage(self, i: int, x: mx.array, har: mx.array | None) -> mx.array:
        """Upsampling stage ``i``: transposed conv, plus the source's contribution, then the mean of the resblocks."""
        x = self.ups[i](leaky_relu(x, LRELU_SLOPE))
        if har is not None:
            x = x + self.noise_convs[i](har)
        blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
        xs = blocks[0](x)
        for block in blocks[1:]:
            xs = xs + block(x)
        return xs / self.num_kernels

    def _post(self, x: mx.array) -> mx.array:
        return mx.tanh(self.conv_post(leaky_relu(x, POST_LRELU_SLOPE)))


def tile_spans(t: int, halo: int, lanes: int = 1) -> list[tuple[int, int]]:
    """Split ``t`` frames into tiles ``[(start, end), ...]`` (each gets ``halo`` frames of context on both sides).

    One lane: tiles of ``TILE_FRAMES`` (the last one shorter), or a single pass when the input is not much longer.
    Several lanes: a multiple of ``lanes`` tiles of equal length, at most ``TILE_FRAMES`` each, as long as each
    tile is at least four halos long (shorter tiles would spend most of their time on context)."""
    if lanes > 1 and t >= lanes * 4 * halo:
        count = lanes * math.ceil(t / (lanes * TILE_FRAMES))
        step = math.ceil(t / count)
    elif t > TILE_FRAMES + 2 * halo:
        step = TILE_FRAMES
    else:
        return [(0, t)]
    return [(start, min(start + step, t)) for start in range(0, t, step)]
