"""The networks of RVC training: the voice synthesizer with its posterior encoder (``enc_q``), and the
multi-period discriminator. Parameter names mirror rvc's ``SynthesizerTrnMs{256,768}NSFsid[_nono]`` and
``MultiPeriodDiscriminator[V2]``.

Training forward (channels last, batch ``B`` padded to its longest item; masks ``(B, T, 1)``)::

    spec (B, T, bins) -> enc_q -> z = (m_q + ε · exp(logs_q)) · mask      (posterior, ε ~ N(0, 1))
    z -> flow (forward) -> z_p                                          (KL against enc_p's m_p, logs_p)
    z -> random segment of ``segment_frames`` per item -> dec -> y_hat (B, segment_frames · upp, 1)

Weight norm: the reference trains the direction ``v`` and the norm ``g`` of each weight-normed conv, not the
weight. Training parameters (:func:`training_params`) therefore hold ``<conv>.weight_g`` / ``<conv>.weight_v``
for the convs listed in ``WEIGHT_NORMED`` (in MLX layout: ``v`` as the weight, ``g`` shaped to broadcast against
it, e.g. ``(O, 1, 1)``, or ``(1, 1, I)`` for a transposed conv whose torch norm dim is its input channels);
:func:`fused_params` turns them into the ``weight`` the modules compute with, inside the differentiated function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..models.generator import LRELU_SLOPE, SourceNoise, leaky_relu
from ..models.synthesizer import WN, Synthesizer, SynthesizerConfig
from ..nn.conv import Conv1d

ENC_Q_KERNEL, ENC_Q_DILATION, ENC_Q_LAYERS = 5, 1, 16
PERIODS = {"v1": (2, 3, 5, 7, 11, 17), "v2": (2, 3, 5, 7, 11, 17, 23, 37)}  # MultiPeriodDiscriminator[V2]
PERIOD_KERNEL, PERIOD_STRIDE = 5, 3

# Convs the reference wraps in weight_norm (every discriminator conv; in the generator the WaveNets of enc_q and
# the flow, the decoder's upsampling convs and resblocks). Names are those of the weight tensor.
WEIGHT_NORMED = [
    re.compile(p)
    for p in (
        r"(enc_q\.enc|flow\.flows\.\d+\.enc)\.((in_layers|res_skip_layers)\.\d+|cond_layer)\.weight",
        r"dec\.ups\.\d+\.weight",
        r"dec\.resblocks\.\d+\.convs[12]\.\d+\.weight",
        r"discriminators\.\d+\.(convs\.\d+|conv_post)\.weight",
    )
]
TRANSPOSED = re.compile(r"dec\.ups\.\d+\.weight")  # torch norm dim 0 = input channels = MLX axis 2


def is_weight_normed(name: str) -> bool:
    return any(p.fullmatch(name) for p in WEIGHT_NORMED)


def norm_axes(name: str, ndim: int) -> tuple[int, ...]:
    """Axes the weight norm of weight ``name`` (MLX layout) is taken over: all but the torch ``dim``."""
    kept = 2 if TRANSPOSED.fullmatch(name) else 0
    return tuple(a for a in range(ndim) if a != kept)


def training_params(model: nn.Module) -> dict[str, mx.array]:
    """The model's parameters as trained (flat names): weight-normed convs as ``weight_g``/``weight_v``
    (``v = weight``, ``g = ‖weight‖``: an exact re-parametrisation of the current weights)."""
    out = {}
    for name, w in tree_flatten(model.parameters()):
        if is_weight_normed(name):
            out[name + "_g"] = mx.sqrt(mx.sum(mx.square(w), axis=norm_axes(name, w.ndim), keepdims=True))
            out[name + "_v"] = w
        else:
            out[name] = w
    return out


def fused_params(params: dict[str, mx.array]) -> dict[str, mx.array]:
    """Training parameters -> module weights: ``weight = g · v / ‖v‖`` for every ``weight_g``/``weight_v`` pair."""
    out = {}
    for name, value in params.items():
        if name.endswith(".weight_g"):
            continue
        if name.endswith(".weight_v"):
            base = name[: -len("_v")]
            axes = norm_axes(base, value.ndim)
            value = params[base + "_g"] * value * mx.rsqrt(mx.sum(mx.square(value), axis=axes, keepdims=True))
            name = base
        out[name] = value
    return out


def load_params(model: nn.Module, params: dict[str, mx.array]) -> None:
    """Put training parameters into ``model`` (fused weights)."""
    model.update(tree_unflatten(list(fused_params(params).items())))


def sequence_mask(lengths: mx.array, length: int) -> mx.array:
    """``(B,)`` lengths -> ``(B, length, 1)`` float32 mask: 1 on frames ``< lengths[b]``."""
    return (mx.arange(length)[None, :] < lengths[:, None]).astype(mx.float32)[..., None]


def slice_segments(x: mx.array, starts: mx.array, size: int) -> mx.array:
    """``x (B, T, ...)`` -> ``(B, size, ...)``: item ``b`` from frame ``starts[b]`` on."""
    idx = starts[:, None] + mx.arange(size)[None, :]  # (B, size)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return mx.take_along_axis(x, idx, axis=1)


class PosteriorEncoder(nn.Module):
    """Linear spectrogram ``(B, T, spec_channels)`` -> ``z, m_q, logs_q`` ``(B, T, inter)`` (rvc's ``enc_q``)."""

    def __init__(self, spec_channels: int, inter: int, hidden: int, gin_channels: int):
        super().__init__()
        self.inter = inter
        self.pre = Conv1d(spec_channels, hidden, 1)
        self.enc = WN(hidden, ENC_Q_KERNEL, ENC_Q_DILATION, ENC_Q_LAYERS, gin_channels)
        self.proj = Conv1d(hidden, 2 * inter, 1)

    def __call__(self, spec: mx.array, mask: mx.array, g: mx.array | None, eps: mx.array | None):
        x = self.enc(self.pre(spec) * mask, g, mask)
        stats = self.proj(x) * mask
        m, logs = stats[..., : self.inter], stats[..., self.inter :]
        z = m if eps is None else m + eps * mx.exp(logs)
        return z * mask, m, logs


@dataclass
class Batch:
    """One training batch, padded to its longest item (frames at 100 fps; the reference's collate).

    ``phone (B, T, feature_dim)``, ``pitch (B, T)`` int coarse 1..255, ``pitchf (B, T)`` Hz (f0 models; None
    otherwise), ``phone_lengths (B,)``, ``spec (B, T, 1025)``, ``spec_lengths (B,)``, ``wave (B, T·hop)``,
    ``sid (B,)``."""

    phone: mx.array
    phone_lengths: mx.array
    pitch: mx.array | None
    pitchf: mx.array | None
    spec: mx.array
    spec_lengths: mx.array
    wave: mx.array
    sid: mx.array


@dataclass
class TrainNoise:
    """The random inputs of one training forward: ``eps (B, T, inter)`` standard normal for the posterior
    sample (None: zero), ``starts (B,)`` int first frame of each item's decoded segment, ``source (B, L)``
    standard-normal NSF source noise (None: zero)."""

    eps: mx.array | None
    starts: mx.array
    source: mx.array | None = None


class TrainingSynthesizer(Synthesizer):
    """The synthesizer with the posterior encoder ``enc_q`` (what ``f0G*.pth`` pretrains hold).
    ``spec_channels``: linear-spectrogram bins (513 at 32 kHz, 1025 at 40/48 kHz; ``SpectrogramConfig.bins``)."""

    def __init__(self, config: SynthesizerConfig, segment_frames: int, spec_channels: int):
        super().__init__(config)
        self.segment_frames = segment_frames
        self.enc_q = PosteriorEncoder(spec_channels, config.inter_channels, config.hidden_channels,
                                      config.gin_channels)

    def draw_noise(self, batch: Batch, key: mx.array) -> TrainNoise:
        """Random inputs as the reference draws them: ε for z, a uniform segment start within each item's
        length (``floor(u · (length − segment + 1))``), and the source noise."""
        k_eps, k_start, k_src = mx.random.split(key, 3)
        b, t = batch.spec.shape[:2]
        eps = mx.random.normal((b, t, self.config.inter_channels), key=k_eps)
        span = mx.maximum(batch.spec_lengths - self.segment_frames + 1, 1).astype(mx.float32)
        starts = mx.floor(mx.random.uniform(shape=(b,), key=k_start) * span).astype(mx.int32)
        shape = self.dec.noise_shape(self.segment_frames)
        source = None if shape is None else mx.random.normal((b,) + shape[1:], key=k_src)
        return TrainNoise(eps, starts, source)

    def forward_train(self, batch: Batch, noise: TrainNoise) -> dict[str, mx.array]:
        """``y_hat (B, segment·upp, 1)`` and the latents the losses need (``z_p, m_p, logs_p, logs_q``
        ``(B, T, inter)``, ``y_mask (B, T, 1)``), plus ``starts``."""
        g = self.emb_g(batch.sid)[:, None, :]
        x_mask = sequence_mask(batch.phone_lengths, batch.phone.shape[1])
        m_p, logs_p = self.enc_p(batch.phone, batch.pitch, x_mask)
        y_mask = sequence_mask(batch.spec_lengths, batch.spec.shape[1])
        z, m_q, logs_q = self.enc_q(batch.spec, y_mask, g, noise.eps)
        z_p = self.flow.forward(z, g, y_mask)
        z_slice = slice_segments(z, noise.starts, self.segment_frames)
        f0 = None
        if self.config.use_f0:
            f0 = mx.stop_gradient(slice_segments(batch.pitchf, noise.starts, self.segment_frames))
        y_hat = self.dec(z_slice, f0, g, SourceNoise(noise=noise.source))
        return {"y_hat": y_hat, "z_p": z_p, "m_p": m_p, "logs_p": logs_p, "m_q": m_q, "logs_q": logs_q,
                "y_mask": y_mask, "starts": noise.starts}


def _reflect_right(x: mx.array, n: int) -> mx.array:
    """Reflect-pad ``x (B, T)`` by ``n < T`` samples at the end (torch ``F.pad(..., 'reflect')``)."""
    if n == 0:
        return x
    return mx.concatenate([x, x[:, -2 : -2 - n : -1]], axis=1)


def _conv_stack(convs: list, post: Conv1d, x: mx.array) -> tuple[mx.array, list]:
    """Convs each followed by LeakyReLU, then ``post``: the output and every intermediate (the feature maps)."""
    fmap = []
    for conv in convs:
        x = leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = post(x)
    fmap.append(x)
    return x, fmap


class DiscriminatorS(nn.Module):
    """The scale discriminator on raw audio ``(B, T, 1)``: grouped strided convs. -> score ``(B, N)``, fmaps."""

    def __init__(self):
        super().__init__()
        spec = [(1, 16, 15, 1, 1), (16, 64, 41, 4, 4), (64, 256, 41, 4, 16), (256, 1024, 41, 4, 64),
                (1024, 1024, 41, 4, 256), (1024, 1024, 5, 1, 1)]
        self.convs = [Conv1d(i, o, k, stride=s, padding=(k - 1) // 2, groups=gr) for i, o, k, s, gr in spec]
        self.conv_post = Conv1d(1024, 1, 3, padding=1)

    def __call__(self, x: mx.array):
        x, fmap = _conv_stack(self.convs, self.conv_post, x)
        return x.reshape(x.shape[0], -1), fmap


class DiscriminatorP(nn.Module):
    """A period discriminator: audio ``(B, T, 1)`` folded to ``period`` columns, each column convolved in time
    (the reference's ``(k, 1)`` Conv2d is a Conv1d per column). fmaps are ``(B·period, T', C)``; the score
    ``(B, N)`` is in the reference's flatten order (time-major, then column)."""

    def __init__(self, period: int):
        super().__init__()
        self.period = period
        pad = (PERIOD_KERNEL - 1) // 2
        chans = [(1, 32), (32, 128), (128, 512), (512, 1024)]
        self.convs = [Conv1d(i, o, PERIOD_KERNEL, stride=PERIOD_STRIDE, padding=pad) for i, o in chans]
        self.convs.append(Conv1d(1024, 1024, PERIOD_KERNEL, padding=pad))
        self.conv_post = Conv1d(1024, 1, 3, padding=1)

    def __call__(self, x: mx.array):
        b, t = x.shape[0], x.shape[1]
        p = self.period
        x = _reflect_right(x[..., 0], (-t) % p)
        x = x.reshape(b, -1, p).transpose(0, 2, 1).reshape(b * p, -1, 1)  # one row per column
        x, fmap = _conv_stack(self.convs, self.conv_post, x)
        score = x.reshape(b, p, -1).transpose(0, 2, 1).reshape(b, -1)
        return score, fmap


class MultiPeriodDiscriminator(nn.Module):
    """rvc's ``MultiPeriodDiscriminator`` (v1: periods 2..17) / ``...V2`` (v2: 2..37): a scale discriminator and
    one per period. ``(y, y_hat)`` ``(B, T, 1)`` each -> per discriminator: real and generated scores, fmaps."""

    def __init__(self, version: str):
        super().__init__()
        self.discriminators = [DiscriminatorS()] + [DiscriminatorP(p) for p in PERIODS[version]]

    def __call__(self, y: mx.array, y_hat: mx.array):
        b = y.shape[0]
        d_r, d_g, f_r, f_g = [], [], [], []
        for disc in self.discriminators:
            score, fmap = disc(mx.concatenate([y, y_hat], axis=0))  # real and generated in one pass
            rows = b * getattr(disc, "period", 1)  # fmap rows of the real half
            d_r.append(score[:b])
            d_g.append(score[b:])
            f_r.append([f[:rows] for f in fmap])
            f_g.append([f[rows:] for f in fmap])
        return d_r, d_g, f_r, f_g

