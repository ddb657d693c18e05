"""RVC's voice synthesizer (inference path of ``SynthesizerTrnMs{256,768}NSFsid[_nono]``).

features ``(T, 256|768)`` @100 fps + coarse pitch + f0 + speaker
  -> ``enc_p`` (TextEncoder: relative-position transformer) -> ``m_p, logs_p`` ``(B, T, inter)``
  -> ``z_p = m_p + exp(logs_p) · ε · 0.66666``
  -> ``flow`` in reverse (4 mean-only coupling layers, each preceded by a channel flip) -> ``z``
  -> ``dec`` (the vocoder: NSF-HiFiGAN, HiFi-GAN for no-f0 models, or Applio's MRF HiFi-GAN / RefineGAN)
  -> audio ``(T · upp,)`` at the model's sample rate.

Parameter names mirror PyTorch: ``enc_p``, ``flow.flows.{0,2,4,6}`` (odd indices are weightless flips, kept as
empty modules so the indices stay those of the checkpoint), ``dec``, ``emb_g``.

Randomness: the reference draws ``ε`` for z_p, an initial sine phase (which rvc==0.3.5 then zeroes for the
fundamental, the only harmonic RVC uses — so our default is 0 too; Applio's MRF draws one per overtone), the
source's additive noise and, for RefineGAN, AdaIN noise inside the decoder. ``noise="none"`` zeroes all of them
(deterministic mode); ``noise="default"`` draws them from ``seed``; a :class:`Noise` gives them explicitly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import InputError
from ..nn import fastmath
from ..nn.attention import RelativeMultiHeadAttention
from ..nn.conv import Conv1d
from .generator import Generator, SourceNoise, leaky_relu

VOCODERS = ("HiFi-GAN", "MRF HiFi-GAN", "RefineGAN")  # Applio's names, as in a checkpoint's ``vocoder``

Z_NOISE_SCALE = 0.66666  # rvc's noise scale on z_p at inference
EMBED_LRELU_SLOPE = 0.1
LAYER_NORM_EPS = 1e-5
ATTENTION_WINDOW = 10
PITCH_BINS = 256  # emb_pitch rows (coarse pitch 1..255, 0 unused)
FLOW_KERNEL, FLOW_DILATION, FLOW_WN_LAYERS, FLOW_COUPLINGS = 5, 1, 3, 4
# frames of left context that make the reverse flow on a window exact: the WN half-width per coupling (24)
FLOW_CONTEXT = (FLOW_KERNEL - 1) // 2 * FLOW_DILATION * FLOW_WN_LAYERS * FLOW_COUPLINGS


@dataclass
class SynthesizerConfig:
    version: str = "v2"
    sample_rate: int = 40000
    use_f0: bool = True
    feature_dim: int = 768
    n_speakers: int = 1
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    resblock_kernel_sizes: list = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list = field(default_factory=lambda: [[1, 3, 5]] * 3)
    upsample_rates: list = field(default_factory=lambda: [10, 10, 2, 2])
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: list = field(default_factory=lambda: [16, 16, 4, 4])
    gin_channels: int = 256
    vocoder: str = "HiFi-GAN"

    @classmethod
    def from_dict(cls, d: dict) -> "SynthesizerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def upp(self) -> int:
        """Output samples per 100 fps frame."""
        return math.prod(self.upsample_rates)


@dataclass
class Noise:
    """Explicit random inputs (standard normal); ``None`` means zero.

    ``z``: ``(B, T, inter_channels)`` for z_p; ``phase``: initial sine phase in cycles;
    ``source``: ``(B, T·upp)`` additive source noise (``(B, T·upp, 9)`` for MRF); ``scale``: multiplier of ``z``
    (rvc: 0.66666); ``key``: PRNG key for the decoder's own noise (RefineGAN's AdaIN), None: zero.
    """

    z: mx.array | None = None
    phase: mx.array | float | None = None
    source: mx.array | None = None
    scale: float = Z_NOISE_SCALE
    key: mx.array | None = None


class LayerNorm(nn.Module):
    """Channel LayerNorm with rvc's parameter names ``gamma``/``beta``. ``(B, T, C)``."""

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.gamma = mx.ones((channels,))
        self.beta = mx.zeros((channels,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.gamma, self.beta, self.eps)


class FFN(nn.Module):
    """conv(k) -> ReLU -> conv(k), 'same' padding. ``(B, T, C)``; ``mask (B, T, 1)`` zeroes padded frames
    before each conv and at the output (training batches; see ``Encoder``)."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.conv_1 = Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = Conv1d(filter_channels, channels, kernel_size)
        self._pad = ((kernel_size - 1) // 2, kernel_size // 2)

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        pad = [(0, 0), self._pad, (0, 0)]
        x = mx.maximum(self.conv_1(mx.pad(_masked(x, mask), pad)), 0.0)
        return _masked(self.conv_2(mx.pad(_masked(x, mask), pad)), mask)


def _masked(x: mx.array, mask: mx.array | None) -> mx.array:
    return x if mask is None else x * mask


class Encoder(nn.Module):
    """Post-LN transformer: ``x = LN(x + attn(x)); x = LN(x + ffn(x))`` per layer. ``(B, T, C)``.

    ``mask (B, T, 1)``: 1 on real frames, 0 on the padding of a training batch (None: every frame is real).
    With it, each item of a padded batch gives what it gives alone."""

    def __init__(self, hidden: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int):
        super().__init__()
        self.attn_layers = [RelativeMultiHeadAttention(hidden, n_heads, ATTENTION_WINDOW) for _ in range(n_layers)]
        self.norm_layers_1 = [LayerNorm(hidden) for _ in range(n_layers)]
        self.ffn_layers = [FFN(hidden, filter_channels, kernel_size) for _ in range(n_layers)]
        self.norm_layers_2 = [LayerNorm(hidden) for _ in range(n_layers)]

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        x = _masked(x, mask)
        for attn, n1, ffn, n2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = n1(x + attn(x, mask))
            x = n2(x + ffn(x, mask))
        return _masked(x, mask)


class TextEncoder(nn.Module):
    """features ``(B, T, feature_dim)`` (+ coarse pitch ``(B, T)``) -> ``m_p, logs_p`` ``(B, T, inter)``;
    ``mask (B, T, 1)`` for padded training batches."""

    def __init__(self, cfg: SynthesizerConfig):
        super().__init__()
        self.hidden = cfg.hidden_channels
        self.inter = cfg.inter_channels
        self.emb_phone = nn.Linear(cfg.feature_dim, cfg.hidden_channels)
        if cfg.use_f0:
            self.emb_pitch = nn.Embedding(PITCH_BINS, cfg.hidden_channels)
        self.encoder = Encoder(cfg.hidden_channels, cfg.filter_channels, cfg.n_heads, cfg.n_layers, cfg.kernel_size)
        self.proj = Conv1d(cfg.hidden_channels, 2 * cfg.inter_channels, 1)

    def __call__(self, phone: mx.array, pitch: mx.array | None = None, mask: mx.array | None = None):
        x = self.emb_phone(phone)
        if pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = leaky_relu(x * math.sqrt(self.hidden), EMBED_LRELU_SLOPE)
        stats = _masked(self.proj(self.encoder(x, mask)), mask)
        return stats[..., : self.inter], stats[..., self.inter :]


class WN(nn.Module):
    """WaveNet stack of gated tanh·sigmoid layers with a single speaker-conditioning conv. ``(B, T, hidden)``;
    ``mask (B, T, 1)`` for padded training batches."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.hidden = hidden
        self.n_layers = n_layers
        if gin_channels:
            self.cond_layer = Conv1d(gin_channels, 2 * hidden * n_layers, 1)
        self.in_layers = []
        self.res_skip_layers = []
        for i in range(n_layers):
            d = dilation_rate**i
            self.in_layers.append(Conv1d(hidden, 2 * hidden, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d))
            out = 2 * hidden if i < n_layers - 1 else hidden
            self.res_skip_layers.append(Conv1d(hidden, out, 1))

    def __call__(self, x: mx.array, g: mx.array | None, mask: mx.array | None = None) -> mx.array:
        h = self.hidden
        cond = self.cond_layer(g) if (g is not None and "cond_layer" in self) else None
        output = None
        for i, (inl, rs) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a = inl(x)
            if cond is not None:
                a = a + cond[..., 2 * h * i : 2 * h * (i + 1)]
            acts = fastmath.tanh(a[..., :h]) * fastmath.sigmoid(a[..., h:])
            r = rs(acts)
            if i < self.n_layers - 1:
                x = _masked(x + r[..., :h], mask)
                skip = r[..., h:]
            else:
                skip = r
            output = skip if output is None else output + skip
        return _masked(output, mask)


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling ``(B, T, channels)``: ``__call__`` is the reverse direction (inference),
    ``forward`` the training one; ``mask (B, T, 1)`` for padded training batches."""

    def __init__(self, channels: int, hidden: int, gin_channels: int):
        super().__init__()
        self.half = channels // 2
        self.pre = Conv1d(self.half, hidden, 1)
        self.enc = WN(hidden, FLOW_KERNEL, FLOW_DILATION, FLOW_WN_LAYERS, gin_channels)
        self.post = Conv1d(hidden, self.half, 1)

    def _mean(self, x0: mx.array, g: mx.array | None, mask: mx.array | None) -> mx.array:
        return _masked(self.post(self.enc(_masked(self.pre(x0), mask), g, mask)), mask)

    def __call__(self, x: mx.array, g: mx.array | None, mask: mx.array | None = None) -> mx.array:
        x0, x1 = x[..., : self.half], x[..., self.half :]
        return mx.concatenate([x0, _masked(x1 - self._mean(x0, g, mask), mask)], axis=-1)

    def forward(self, x: mx.array, g: mx.array | None, mask: mx.array | None = None) -> mx.array:
        x0, x1 = x[..., : self.half], x[..., self.half :]
        return mx.concatenate([x0, self._mean(x0, g, mask) + _masked(x1, mask)], axis=-1)


class Flip(nn.Module):
    """Reverse the channel order (weightless; kept so flow indices match the checkpoint)."""

    def __call__(self, x: mx.array, g: mx.array | None = None, mask: mx.array | None = None) -> mx.array:
        return x[..., ::-1]

    forward = __call__


class ResidualCouplingBlock(nn.Module):
    def __init__(self, channels: int, hidden: int, gin_channels: int):
        super().__init__()
        self.flows = []
        for _ in range(FLOW_COUPLINGS):
            self.flows += [ResidualCouplingLayer(channels, hidden, gin_channels), Flip()]

    def reverse(self, x: mx.array, g: mx.array | None, mask: mx.array | None = None) -> mx.array:
        """z_p -> z ``(B, T, channels)``."""
        for flow in reversed(self.flows):
            x = flow(x, g, mask)
        return x

    def forward(self, x: mx.array, g: mx.array | None, mask: mx.array | None = None) -> mx.array:
        """z -> z_p ``(B, T, channels)`` (training)."""
        for flow in self.flows:
            x = flow.forward(x, g, mask)
        return x


def build_decoder(config: SynthesizerConfig) -> nn.Module:
    """The vocoder named by ``config.vocoder``. Every decoder maps ``(z (B, T, inter), f0 (B, T) Hz,
    g (B, 1, gin), SourceNoise)`` to audio ``(B, T·upp, 1)`` and has ``noise_shape(t)`` / ``random_phase(key)``."""
    if config.vocoder not in VOCODERS:
        raise InputError(f"vocoder {config.vocoder!r} is not supported (choose from {', '.join(VOCODERS)})")
    if config.vocoder != "HiFi-GAN" and not config.use_f0:
        raise InputError(f"the {config.vocoder} vocoder needs an f0 model (Applio has no pitchless variant)")
    if config.vocoder == "RefineGAN":
        from .refinegan import RefineGANGenerator

        return RefineGANGenerator(config.sample_rate, config.upsample_rates, config.inter_channels, config.gin_channels)
    return Generator(
        config.inter_channels,
        config.resblock_kernel_sizes,
        config.resblock_dilation_sizes,
        config.upsample_rates,
        config.upsample_initial_channel,
        config.upsample_kernel_sizes,
        config.gin_channels,
        sample_rate=config.sample_rate if config.use_f0 else None,
        source="mrf" if config.vocoder == "MRF HiFi-GAN" else "nsf",
    )


class Synthesizer(nn.Module):
    """An RVC voice model. Build from a :class:`SynthesizerConfig`, or ``Synthesizer.load(path)``."""

    def __init__(self, config: SynthesizerConfig):
        super().__init__()
        self.config = config
        self.enc_p = TextEncoder(config)
        self.flow = ResidualCouplingBlock(config.inter_channels, config.hidden_channels, config.gin_channels)
        self.dec = build_decoder(config)
        self.emb_g = nn.Embedding(config.n_speakers, config.gin_channels)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Synthesizer":
        """Load a converted voice model (``.safetensors`` written by ``convert``)."""
        from ..backend import configure_mlx
        from ..store import load, load_into

        configure_mlx()
        weights, config = load(path, kind="voice")
        model = cls(SynthesizerConfig.from_dict(config))
        load_into(model, weights, source=str(path))
        mx.eval(model.parameters())
        return model

    # -- inputs -----------------------------------------------------------------------------------------------

    def _inputs(self, feats, pitch, f0, sid):
        cfg = self.config
        feats = mx.array(feats, dtype=mx.float32) if not isinstance(feats, mx.array) else feats.astype(mx.float32)
        if feats.ndim != 2 or feats.shape[1] != cfg.feature_dim or feats.shape[0] < 1:
            raise InputError(
                f"features must have shape (frames, {cfg.feature_dim}) for a {cfg.version} model, got {tuple(feats.shape)}"
            )
        t = feats.shape[0]
        if not 0 <= int(sid) < cfg.n_speakers:
            raise InputError(f"speaker id {sid} is out of range: this model has {cfg.n_speakers} speaker(s) (0..{cfg.n_speakers - 1})")
        if cfg.use_f0:
            if pitch is None or f0 is None:
                raise InputError("this voice model uses pitch: pass coarse pitch and f0")
            pitch = mx.array(np.asarray(pitch).astype(np.int32)) if not isinstance(pitch, mx.array) else pitch
            f0 = mx.array(f0, dtype=mx.float32) if not isinstance(f0, mx.array) else f0.astype(mx.float32)
            if pitch.shape != (t,) or f0.shape != (t,):
                raise InputError(f"pitch and f0 must have shape ({t},), got {tuple(pitch.shape)} and {tuple(f0.shape)}")
            pitch, f0 = pitch[None].astype(mx.int32), f0[None]
        else:
            pitch = f0 = None
        return feats[None], pitch, f0, mx.array([int(sid)])

    def _noise(self, noise, t: int, t_dec: int, seed: int | None) -> Noise:
        """Noise for ``t`` prior frames of which the decoder sees ``t_dec``."""
        if isinstance(noise, Noise):
            return noise
        if noise == "none":
            return Noise()
        if noise != "default":
            raise InputError(f"noise must be 'default', 'none' or a Noise, got {noise!r}")
        key = mx.random.key(seed) if seed is not None else mx.random.key(int(np.random.SeedSequence().entropy % 2**63))
        kz, ks, kp, kd = mx.random.split(key, 4)
        z = mx.random.normal((1, t, self.config.inter_channels), key=kz)
        shape = self.dec.noise_shape(t_dec)
        source = mx.random.normal(shape, key=ks) if shape else None
        return Noise(z=z, phase=self.dec.random_phase(kp), source=source, key=kd)

    # -- forward ----------------------------------------------------------------------------------------------

    def stages(self, feats, pitch=None, f0=None, sid: int = 0, noise="default", seed: int | None = None,
               skip_head: int | None = None, return_length: int | None = None) -> dict:
        """Run the network and return every stage (batch of 1, channels last):

        ``m_p, logs_p, z_p, z``: ``(1, T', inter)``; ``audio``: ``(T'' · upp,)`` float32.
        ``feats (T, feature_dim)`` @100 fps; ``pitch (T,)`` coarse 1..255; ``f0 (T,)`` Hz (0 = unvoiced).

        ``skip_head``, ``return_length`` (frames; both or neither): RVC's realtime window. The text encoder sees
        all ``T`` frames, the flow frames ``max(skip_head − FLOW_CONTEXT, 0)`` on (``T'`` of them: enough left
        context that its output from ``skip_head`` on is the full pass's), the decoder only frames
        ``skip_head .. skip_head + return_length`` (``T''``); without them ``T' = T'' = T``.
        """
        x, pitch, f0, sid = self._inputs(feats, pitch, f0, sid)
        t = x.shape[1]
        flow_head, dec_head, t_dec = 0, 0, t
        if skip_head is not None or return_length is not None:
            if skip_head is None or return_length is None or skip_head < 0 or return_length < 1 \
                    or skip_head + return_length > t:
                raise InputError(f"window skip_head={skip_head}, return_length={return_length} does not fit "
                                 f"{t} frames")
            flow_head = max(skip_head - FLOW_CONTEXT, 0)
            dec_head, t_dec = skip_head - flow_head, return_length
        g = self.emb_g(sid)[:, None, :]  # (1, 1, gin)
        m_p, logs_p = self.enc_p(x, pitch)
        m_p, logs_p = m_p[:, flow_head:], logs_p[:, flow_head:]
        nz = self._noise(noise, m_p.shape[1], t_dec, seed)
        z_p = m_p if nz.z is None else m_p + mx.exp(logs_p) * nz.z * nz.scale
        z = self.flow.reverse(z_p, g)
        if t_dec != t:
            z = z[:, dec_head : dec_head + t_dec]
            f0 = None if f0 is None else f0[:, skip_head : skip_head + t_dec]
        src = SourceNoise(phase=nz.phase, noise=nz.source, key=nz.key)
        audio = self.dec(z, f0, g, src).reshape(-1)
        return {"m_p": m_p, "logs_p": logs_p, "z_p": z_p, "z": z, "audio": audio}

    def synthesize(self, feats, pitch=None, f0=None, sid: int = 0, noise="default", seed: int | None = None) -> np.ndarray:
        """Convert features to audio ``(T·upp,)`` float32 at ``config.sample_rate``. See :meth:`stages`."""
        audio = self.stages(feats, pitch, f0, sid, noise, seed)["audio"]
        mx.eval(audio)
        return np.array(audio)
