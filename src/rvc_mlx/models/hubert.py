"""HuBERT-base / ContentVec content encoder (RVC's "hubert_base.pt") in MLX.

Network (16 kHz audio in, 50 frames/s out; channels last inside)::

    audio (B, N) -> 7 Conv1d (512 ch, kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2, no bias), exact GELU;
                    layer 0 also has GroupNorm(512, 512): per-channel normalisation over time
                 -> LayerNorm(512) -> Linear(512 -> 768)
                 -> x + GELU(pos_conv(x)[:-1])   (Conv1d kernel 128, padding 64, groups 16; last frame dropped)
                 -> LayerNorm(768) -> 12 post-LN transformer layers (12 heads, FFN 3072, GELU)
                 -> optional final_proj Linear(768 -> 256)

Which layer RVC uses (checked against fairseq and transformers):

- fairseq ``HubertModel.extract_features(source, padding_mask, output_layer=L)`` runs the encoder with
  ``tgt_layer = L - 1`` and returns the output of the L-th transformer layer (1-based), i.e. *after* that layer's
  final LayerNorm (HuBERT-base is post-LN, ``layer_norm_first=False``, so no extra encoder LayerNorm follows).
- transformers ``HubertModel(..., output_hidden_states=True).hidden_states`` has 13 entries: index 0 is the
  encoder input after ``encoder.layer_norm``, index ``i`` is the output of layer ``i``. So fairseq
  ``output_layer=L`` == transformers ``hidden_states[L]``; ``hidden_states[12]`` == ``last_hidden_state``.
- RVC v1 voices: ``final_proj(extract_features(output_layer=9)[0])`` -> (T, 256).
  RVC v2 voices: ``extract_features(output_layer=12)[0]`` -> (T, 768).
- RVC passes ``padding_mask`` all False (one unpadded utterance), which changes nothing; here no mask is used.

Frame count: ``T = conv_out(N)`` with ``conv_out(n) = (n - k) // s + 1`` applied per conv layer
(≈ N / 320, 50 fps); inputs shorter than 400 samples give no frame.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..backend import cache_limit, configure_mlx, enabled, on_cpu
from ..errors import AudioError, InputError
from ..nn import fastmath
from ..nn.gelu import gelu
from ..store import load, load_into

# MLX buffer cache while extracting: the attention scores, FFN and conv temporaries of one layer stay cached
# (30 s: 0.87 GB peak active). Measured on 30 s: 1 GB vs the 0.5 GB default took 5.9-6.9 vs 7.1-8.8 s.
EXTRACT_CACHE_BYTES = 1 << 30
GROUP_NORM_EPS = 1e-5  # torch GroupNorm / fairseq Fp32GroupNorm default
V1_LAYER = 9  # RVC v1: final_proj(layer 9) -> 256-d
V2_LAYER = 12  # RVC v2: layer 12 -> 768-d
RVC_LAYERS = {"v1": (V1_LAYER, True), "v2": (V2_LAYER, False)}


@dataclass
class HubertConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple = (512,) * 7
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    has_final_proj: bool = True
    final_proj_dim: int | None = 256
    sample_rate: int = 16000
    embedder: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "HubertConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("conv_dim", "conv_kernel", "conv_stride"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def num_frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` input samples (0 when too short)."""
        n = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride):
            if n < k:
                return 0
            n = (n - k) // s + 1
        return n

    @property
    def min_samples(self) -> int:
        """Fewest input samples that give one output frame (400 for HuBERT-base)."""
        n = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            n = (n - 1) * s + k
        return n


class ChannelNorm(nn.Module):
    """``GroupNorm(C, C)``: each channel normalised over time (and nothing else), then scaled and shifted.

    Attribute names mirror torch's GroupNorm (``weight``, ``bias``)."""

    def __init__(self, channels: int, eps: float = GROUP_NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))

    def statistics(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """``(mean, scale)`` per channel, ``(B, 1, C)`` each, so that the output is ``(x − mean)·scale + bias``."""
        moments = fastmath.column_moments(x, SUM_BLOCK)  # threaded on CPU, float64 accumulation
        if moments is not None:
            mean, var = moments
        else:
            mean = _blocked_mean(x)
            var = _blocked_mean(mx.square(x - mean))
        return mean, mx.rsqrt(var + self.eps) * self.weight

    def __call__(self, x: mx.array, stats: tuple[mx.array, mx.array] | None = None) -> mx.array:
        """x: (B, T, C) -> (B, T, C); ``stats`` from :meth:`statistics` of the whole input (for time blocks)."""
        mean, scale = stats if stats is not None else self.statistics(x)
        return (x - mean) * scale + self.bias


POS_CONV_BLOCK = 256  # output frames per block of the blocked positional conv
ROW_BLOCK = 16384  # rows per block for the full-rate elementwise stages (bounds their temporaries)


def map_rows(fn, x: mx.array, rows: int = ROW_BLOCK) -> mx.array:
    """``fn`` (elementwise along axis 1) over blocks of ``rows`` of ``x (B, T, C)``, each evaluated before the
    next: temporaries of one block instead of the whole input."""
    if x.shape[1] <= rows:
        return fn(x)
    outs = []
    for start in range(0, x.shape[1], rows):
        y = fn(x[:, start : start + rows])
        mx.eval(y)
        outs.append(y)
    return mx.concatenate(outs, axis=1)


SUM_BLOCK = 256


def _blocked_mean(x: mx.array) -> mx.array:
    """Mean over axis 1 of (B, T, C), keepdims, summed in blocks of ``SUM_BLOCK`` then across blocks.

    A plain float32 running sum over T ≈ 131k samples (41 s at the 3.2 kHz conv-0 rate) loses ~5e-5 relative,
    which the normalisation turns into ~1e-4 feature errors; blocked summation keeps it at rounding level."""
    B, T, C = x.shape
    pad = (-T) % SUM_BLOCK
    if pad:
        x = mx.pad(x, [(0, 0), (0, pad), (0, 0)])  # zeros do not change the sum
    partial = x.reshape(B, -1, SUM_BLOCK, C).sum(axis=2)
    return partial.sum(axis=1, keepdims=True) / T


class FeatureConvLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, group_norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=False)
        if group_norm:
            self.layer_norm = ChannelNorm(out_dim)

    def activate(self, x: mx.array, stats: tuple[mx.array, mx.array] | None = None) -> mx.array:
        """The conv output's (optional) channel norm, with ``stats`` of the whole input, then GELU."""
        return gelu(self.layer_norm(x, stats) if "layer_norm" in self else x)

    def __call__(self, x: mx.array) -> mx.array:
        """x: (B, N, C_in) -> (B, (N - k) // s + 1, C_out)."""
        return self.activate(self.conv(x))


FEATURE_BLOCK = 128  # output frames (2.56 s) per block of feature convs 2..7


class FeatureEncoder(nn.Module):
    """Seven strided convs. The first runs over the whole input (its channel norm needs statistics over all of
    time); the rest run block by block on windows of its output: output frame ``j`` of convs 2..7 depends on
    rows ``[j·stride, j·stride + field)`` of conv 1's output, so the blocks are exact and the full-rate
    temporaries (GELU output, im2col) are those of one block, whatever the input length."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        dims = (1,) + tuple(cfg.conv_dim)
        self.conv_layers = [
            FeatureConvLayer(dims[i], dims[i + 1], k, s, group_norm=(i == 0))
            for i, (k, s) in enumerate(zip(cfg.conv_kernel, cfg.conv_stride))
        ]
        self.stride, self.field = 1, 1  # of convs 2..7, in rows of conv 1's output
        for k, s in zip(cfg.conv_kernel[1:], cfg.conv_stride[1:]):
            self.field += (k - 1) * self.stride
            self.stride *= s

    def __call__(self, audio: mx.array) -> mx.array:
        """audio: (B, N) -> (B, T, 512)."""
        first, rest = self.conv_layers[0], self.conv_layers[1:]
        x = first.conv(audio[:, :, None])
        stats = first.layer_norm.statistics(x)  # layer 0 always has the channel norm
        mx.eval(x, stats)
        frames = max(0, (x.shape[1] - self.field) // self.stride + 1)
        blocks = []
        for start in range(0, frames, FEATURE_BLOCK):
            stop = min(start + FEATURE_BLOCK, frames)
            y = first.activate(x[:, start * self.stride : (stop - 1) * self.stride + self.field], stats)
            for layer in rest:
                y = layer(y)
            mx.eval(y)
            blocks.append(y)
        return mx.concatenate(blocks, axis=1) if blocks else x[:, :0]


class FeatureProjection(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, T, 512) -> (B, T, 768)."""
        return self.projection(self.layer_norm(x))


class PositionalConvEmbedding(nn.Module):
    """Grouped conv with 'same' padding for an even kernel: pad k/2 both sides, drop the extra last frame.

    With fast path ``conv`` on the CPU the grouped conv runs as one batched gemm per block of ``POS_CONV_BLOCK``
    output frames: windows ``(groups, rows, k·C/groups)`` times per-group matrices ``(groups, k·C/groups, C/groups)``.
    MLX's own grouped conv builds an im2col of the whole input (630 MB for 32 s) and is ~2x slower."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.groups = cfg.num_conv_pos_embedding_groups
        self.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2, groups=self.groups)
        self.num_pad_remove = 1 if k % 2 == 0 else 0
        self._gemm = (None, None)  # (weight it was built from, (groups, k·C_g, C_g) matrices)

    def _matrices(self) -> mx.array:
        w = self.conv.weight  # (C_out, k, C_in / groups)
        if self._gemm[0] is not w:
            c_out, k, c_g = w.shape
            m = w.reshape(self.groups, c_out // self.groups, k * c_g).transpose(0, 2, 1)
            self._gemm = (w, mx.contiguous(m))
            mx.eval(self._gemm[1])
        return self._gemm[1]

    def _grouped_conv(self, x: mx.array) -> mx.array:
        """(B, T, C) -> (B, T + 1, C) for an even kernel: exactly ``self.conv(x)``."""
        b, t, c = x.shape
        k = self.conv.weight.shape[1]
        g, c_g = self.groups, c // self.groups
        xp = mx.pad(x, [(0, 0), (k // 2, k // 2), (0, 0)])
        n_out = t + 2 * (k // 2) - k + 1
        mats = self._matrices()
        outs = []
        for start in range(0, n_out, POS_CONV_BLOCK):
            rows = min(POS_CONV_BLOCK, n_out - start)
            seg = mx.contiguous(xp[:, start : start + rows + k - 1])
            win = mx.as_strided(seg, (b, rows, k, g, c_g), (seg.shape[1] * c, c, c, c_g, 1))
            win = win.transpose(0, 3, 1, 2, 4).reshape(b, g, rows, k * c_g)
            y = (win @ mats).transpose(0, 2, 1, 3).reshape(b, rows, c) + self.conv.bias
            mx.eval(y)
            outs.append(y)
        return mx.concatenate(outs, axis=1)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, T, C) -> (B, T, C)."""
        if enabled("conv") and on_cpu():
            y = map_rows(gelu, self._grouped_conv(x))
        else:
            y = gelu(self.conv(x))  # GELU before the slice: one compiled kernel variant (contiguous input)
        if self.num_pad_remove:
            y = y[:, : -self.num_pad_remove]
        return y


class Attention(nn.Module):
    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dims // num_heads) ** -0.5
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, T, C) -> (B, T, C); full (unmasked) self-attention."""
        o = fastmath.attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads, self.scale)
        return self.out_proj(o)


class FeedForward(nn.Module):
    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(dims, hidden)
        self.output_dense = nn.Linear(hidden, dims)

    def __call__(self, x: mx.array) -> mx.array:
        return self.output_dense(gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: ``x = LN(x + attn(x)); x = LN(x + ffn(x))``."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.attention = Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.intermediate_size)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = [EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]

    def __call__(self, x: mx.array, output_layer: int | None = None) -> list[mx.array]:
        """(B, T, C) -> hidden states ``[h0, h1, ..., h_L]`` where ``h0`` is the input to layer 1 and ``h_i`` the
        output of layer ``i``; stops after ``output_layer`` (default: all layers)."""
        x = self.layer_norm(x + self.pos_conv_embed(x))
        states = [x]
        for layer in self.layers[: output_layer if output_layer is not None else len(self.layers)]:
            x = layer(x)
            mx.eval(x)
            states.append(x)
        return states


class Hubert(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        configure_mlx()
        self.config = cfg
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = Encoder(cfg)
        if cfg.has_final_proj:
            self.final_proj = nn.Linear(cfg.hidden_size, cfg.final_proj_dim)

    @classmethod
    def load(cls, path) -> "Hubert":
        """Load a converted ``kind: hubert`` file strictly."""
        weights, config = load(path, kind="hubert")
        model = cls(HubertConfig.from_dict(config))
        load_into(model, weights, source=str(Path(path)))
        model.eval()
        return model

    def hidden_states(self, audio: mx.array, output_layer: int | None = None) -> list[mx.array]:
        """audio: (B, N) float32 at 16 kHz -> ``[h0 .. h_L]``, each (B, T, hidden) (transformers'
        ``hidden_states`` indexing; see the module docstring)."""
        x = self.feature_extractor(audio)
        x = self.feature_projection(x)
        return self.encoder(x, output_layer)

    def __call__(self, audio: mx.array, layer: int | None = None, final_proj: bool = False) -> mx.array:
        """audio: (B, N) -> (B, T, C): output of transformer ``layer`` (1-based, default last), optionally
        through ``final_proj``."""
        n_layers = self.config.num_hidden_layers
        layer = n_layers if layer is None else layer
        if not 1 <= layer <= n_layers:
            raise InputError(f"HuBERT layer must be 1..{n_layers}, got {layer}")
        x = self.hidden_states(audio, layer)[layer]
        if final_proj:
            if "final_proj" not in self:
                raise InputError("this HuBERT model has no final_proj (needed for RVC v1 voices)")
            x = self.final_proj(x)
        return x

    def extract(self, audio, layer: int = V2_LAYER, final_proj: bool = False) -> mx.array:
        """audio: (N,) float32 mono 16 kHz (numpy or mx) -> features (T, C) at 50 fps, evaluated.

        ``layer`` has fairseq ``output_layer`` semantics (== transformers ``hidden_states[layer]``)."""
        audio = mx.array(audio, dtype=mx.float32)
        if audio.ndim != 1:
            raise AudioError(f"HuBERT expects mono audio of shape (N,), got shape {tuple(audio.shape)}")
        if audio.shape[0] < self.config.min_samples:
            raise AudioError(
                f"audio too short for HuBERT: {audio.shape[0]} samples at 16 kHz, need at least "
                f"{self.config.min_samples}"
            )
        with cache_limit(EXTRACT_CACHE_BYTES):
            out = self(audio[None], layer, final_proj)[0]
            mx.eval(out)
        return out

    def extract_rvc(self, audio, version: str) -> mx.array:
        """RVC features: v1 -> final_proj(layer 9) (T, 256); v2 -> layer 12 (T, 768)."""
        if version not in RVC_LAYERS:
            raise InputError(f"RVC version must be 'v1' or 'v2', got {version!r}")
        layer, proj = RVC_LAYERS[version]
        return self.extract(audio, layer, proj)
