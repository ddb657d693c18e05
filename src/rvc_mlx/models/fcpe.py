"""FCPE pitch estimator (torchfcpe's ``CFNaiveMelPE``, bundled model ``fcpe_c_v001``) in MLX, with its mel front end.

Front end (torchfcpe ``Wav2MelModule``): 16 kHz audio reflect-padded by ``(win - hop) // 2`` on the left and
``(win - hop + 1) // 2`` on the right, STFT without centring (periodic Hann 1024, hop 160), magnitude
``sqrt(re² + im² + 1e-9)``, Slaney mel filterbank (librosa's default: 128 bands, 0–8000 Hz, Slaney area
normalisation), ``log(max(x, 1e-5))``; the frame count is then forced to ``1 + N // 160`` by repeating the last frame.

Network: ``input_stack`` (Conv1d 128→512 k3, GroupNorm(4), LeakyReLU(0.01), Conv1d 512→512 k3), six conformer
convolution blocks ``x + conv_module(x)`` (LayerNorm, pointwise 512→2048, GLU, depthwise k31, SiLU, pointwise
1024→512; the bundled model is ``conv_only``: no attention), LayerNorm, Linear 512→360, sigmoid.
Decoding (``local_argmax``): salience-weighted mean of the cent table over the 9 bins around the argmax (indices
clipped to the table), frames whose maximum salience is ≤ threshold are unvoiced; f0 = 10·2^(cents/1200).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np

LOCAL_HALF_WIDTH = 4  # local argmax window: argmax ± 4 bins
STFT_EPS = 1e-9
GROUPNORM_GROUPS = 4
GROUPNORM_EPS = 1e-5
LAYERNORM_EPS = 1e-5
LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU default
# Long input runs in windows (``FCPE.salience_chunks``): CHUNK_FRAMES kept frames per window and CONTEXT_FRAMES
# either side, more than the network's receptive radius (``receptive_radius() + 1`` = 92 frames for the bundled
# model), so chunking changes only the rounding of the GroupNorm statistics.
CHUNK_FRAMES = 8192
CONTEXT_FRAMES = 96


@dataclass
class FcpeConfig:
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 1024
    win_size: int = 1024
    hop_size: int = 160
    mel_fmin: float = 0.0
    mel_fmax: float = 8000.0
    clip_val: float = 1e-5
    out_dims: int = 360
    hidden_dims: int = 512
    n_layers: int = 6
    kernel_size: int = 31  # depthwise conv of the conformer conv module
    expansion_factor: int = 2
    f0_min: float = 32.7
    f0_max: float = 1975.5

    @classmethod
    def from_dict(cls, d: dict) -> "FcpeConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------------------------
# mel front end (numpy)


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 triangular filters on the Slaney mel scale with Slaney (area)
    normalisation — the same matrix as ``librosa.filters.mel`` with its defaults."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:n_mels] / fdiff[:n_mels, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


def periodic_hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def log_mel(audio16k: np.ndarray, config: FcpeConfig, mel_basis: np.ndarray | None = None) -> np.ndarray:
    """(N,) float32 audio -> (1 + N // hop, n_mels) float32 log-mel, as torchfcpe's ``Wav2MelModule``."""
    c = config
    y = np.asarray(audio16k, dtype=np.float32)
    n = len(y)
    pad_left = (c.win_size - c.hop_size) // 2
    pad_right = max((c.win_size - c.hop_size + 1) // 2, c.win_size - n - pad_left)
    y = np.pad(y, (pad_left, pad_right), mode="reflect" if pad_right < n else "constant")
    n_stft = (len(y) - c.n_fft) // c.hop_size + 1
    frames = np.lib.stride_tricks.sliding_window_view(y, c.n_fft)[:: c.hop_size][:n_stft]
    window = np.zeros(c.n_fft, dtype=np.float32)
    offset = (c.n_fft - c.win_size) // 2  # torch.stft centres a shorter window inside n_fft
    window[offset : offset + c.win_size] = periodic_hann(c.win_size)
    spec = np.fft.rfft(frames * window, axis=1)
    mag = np.sqrt(spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2 + np.float32(STFT_EPS))
    if mel_basis is None:
        mel_basis = slaney_mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.mel_fmin, c.mel_fmax)
    mel = np.log(np.maximum(mag.astype(np.float32) @ mel_basis.T, np.float32(c.clip_val)))
    n_frames = n // c.hop_size + 1
    if n_frames > len(mel):
        mel = np.concatenate([mel, np.repeat(mel[-1:], n_frames - len(mel), axis=0)])
    return mel[:n_frames].astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# network


class Conv1d(nn.Module):
    """``torch.nn.Conv1d`` (stride 1, groups 1) on ``(B, T, C)``. weight ``(C_out, K, C_in)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        self.bias = mx.zeros((out_channels,))
        self.padding = padding

    def __call__(self, x: mx.array) -> mx.array:
        if self.weight.shape[1] == 1:  # pointwise: a matmul
            return mx.addmm(self.bias, x, self.weight[:, 0, :].T)
        return mx.conv1d(x, self.weight, padding=self.padding) + self.bias


class DepthwiseConv(nn.Module):
    """Depthwise ``Conv1d`` (groups = channels, 'same' padding). weight ``(C, K, 1)``.

    Computed as K shifted multiply-adds: MLX's grouped conv1d is ~5x slower on the CPU (measured)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.weight = mx.zeros((channels, kernel_size, 1))
        self.bias = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        k = self.weight.shape[1]
        pad = k // 2  # torchfcpe pads both sides by k // 2
        t = x.shape[1] + 2 * pad - k + 1
        xp = mx.pad(x, [(0, 0), (pad, pad), (0, 0)])
        w = self.weight[:, :, 0].T  # (K, C)
        acc = xp[:, 0:t, :] * w[0] + self.bias
        for j in range(1, k):
            acc = acc + xp[:, j : j + t, :] * w[j]
        return acc


class Depthwise(nn.Module):
    """torchfcpe's ``DepthWiseConv1d`` wrapper (holds ``conv``)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = DepthwiseConv(channels, kernel_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x)


class Stateless(nn.Module):
    """A parameterless step in a ``Sequential`` (keeps torch's indices in the parameter names)."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn

    def __call__(self, x: mx.array) -> mx.array:
        return self._fn(x)


def _glu(x: mx.array) -> mx.array:
    a, b = mx.split(x, 2, axis=-1)
    return a * mx.sigmoid(b)


def _identity(x: mx.array) -> mx.array:
    return x


class ConformerConvModule(nn.Module):
    """LayerNorm, pointwise (dim → 2·inner), GLU, depthwise k, SiLU, pointwise (inner → dim). (B, T, dim)."""

    def __init__(self, dim: int, expansion_factor: int, kernel_size: int):
        super().__init__()
        inner = dim * expansion_factor
        self.net = [
            nn.LayerNorm(dim, eps=LAYERNORM_EPS),
            Stateless(_identity),  # torch: Transpose to channels-first
            Conv1d(dim, inner * 2, 1),
            Stateless(_glu),
            Depthwise(inner, kernel_size),
            Stateless(nn.silu),
            Conv1d(inner, dim, 1),
        ]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.net:
            x = layer(x)
        return x


class EncoderLayer(nn.Module):
    def __init__(self, config: FcpeConfig):
        super().__init__()
        self.conformer = ConformerConvModule(config.hidden_dims, config.expansion_factor, config.kernel_size)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.conformer(x)


class Encoder(nn.Module):
    def __init__(self, config: FcpeConfig):
        super().__init__()
        self.encoder_layers = [EncoderLayer(config) for _ in range(config.n_layers)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.encoder_layers:
            x = layer(x)
        return x


class FCPE(nn.Module):
    """log-mel (B, T, n_mels) -> salience (B, T, out_dims) in [0, 1]."""

    def __init__(self, config: FcpeConfig):
        super().__init__()
        self.config = config
        h = config.hidden_dims
        self.input_stack = [
            Conv1d(config.n_mels, h, 3, padding=1),
            nn.GroupNorm(GROUPNORM_GROUPS, h, eps=GROUPNORM_EPS, pytorch_compatible=True),
            Stateless(lambda x: nn.leaky_relu(x, LEAKY_SLOPE)),
            Conv1d(h, h, 3, padding=1),
        ]
        self.net = Encoder(config)
        self.norm = nn.LayerNorm(h, eps=LAYERNORM_EPS)
        self.output_proj = nn.Linear(h, config.out_dims)
        self.cent_table = mx.zeros((config.out_dims,))

    def __call__(self, mel: mx.array) -> mx.array:
        x = mel
        for layer in self.input_stack:
            x = layer(x)
        x = self.norm(self.net(x))
        return mx.sigmoid(self.output_proj(x))

    def receptive_radius(self) -> int:
        """Frames either side that one output frame depends on, after the GroupNorm: conv k3 (1), then
        ``n_layers`` depthwise convs (kernel // 2 each). The first conv (k3, 1 frame) comes before it."""
        c = self.config
        return 1 + c.n_layers * (c.kernel_size // 2)

    def group_statistics(self, mel: np.ndarray, block: int = CHUNK_FRAMES) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance (G,) float64 of the GroupNorm's input (the first conv of ``mel`` (T, n_mels)) over
        the whole input, accumulated ``block`` frames at a time."""
        conv, gn = self.input_stack[0], self.input_stack[1]
        t = mel.shape[0]
        g = gn.num_groups
        total = np.zeros(g)
        total_sq = np.zeros(g)
        for s in range(0, t, block):
            lo, hi = max(0, s - 1), min(t, s + block + 1)  # one frame of context for the k3 conv
            x = conv(mx.array(mel[lo:hi])[None])[0, s - lo : s - lo + min(block, t - s)]
            x = np.array(x, dtype=np.float64).reshape(x.shape[0], g, -1)
            total += x.sum(axis=(0, 2))
            total_sq += np.square(x).sum(axis=(0, 2))
        n = t * (conv.weight.shape[0] // g)
        mean = total / n
        return mean, np.maximum(total_sq / n - mean**2, 0.0)

    def forward_normalised(self, mel: mx.array, mean: np.ndarray, var: np.ndarray) -> mx.array:
        """The network on (B, T, n_mels) with the GroupNorm's statistics given (``group_statistics``)."""
        conv, gn = self.input_stack[0], self.input_stack[1]
        x = conv(mel)
        b, t, c = x.shape
        g = gn.num_groups
        scale = mx.array(1.0 / np.sqrt(var + gn.eps), dtype=mx.float32)[:, None]
        x = ((x.reshape(b, t, g, c // g) - mx.array(mean, dtype=mx.float32)[:, None]) * scale).reshape(b, t, c)
        x = gn.weight * x + gn.bias
        for layer in self.input_stack[2:]:
            x = layer(x)
        x = self.norm(self.net(x))
        return mx.sigmoid(self.output_proj(x))

    def salience_chunks(self, mel: np.ndarray, chunk: int = CHUNK_FRAMES, context: int = CONTEXT_FRAMES):
        """Yield ``(start, salience (n, out_dims) float32)`` covering ``mel`` (T, n_mels) float32.

        At most ``chunk`` frames: the whole network at once (exactly ``self(mel)``). Longer: the GroupNorm
        statistics of the whole input first, then windows of ``chunk`` frames plus ``context`` either side; with
        ``context >= receptive_radius()`` the kept frames see exactly the inputs they see in the whole."""
        t = mel.shape[0]
        if t <= chunk:
            y = self(mx.array(mel)[None])
            mx.eval(y)
            yield 0, np.array(y[0], dtype=np.float32)
            return
        mean, var = self.group_statistics(mel, chunk)
        for s in range(0, t, chunk):
            lo, hi = max(0, s - context), min(t, s + chunk + context)
            y = self.forward_normalised(mx.array(mel[lo:hi])[None], mean, var)[0, s - lo : s - lo + min(chunk, t - s)]
            mx.eval(y)
            yield s, np.array(y, dtype=np.float32)
            del y


def decode_local_argmax(salience: np.ndarray, cent_table: np.ndarray, threshold: float) -> np.ndarray:
    """salience (T, D), cent_table (D,) -> f0 (T,) Hz; 0 where the maximum salience ≤ threshold."""
    y = np.asarray(salience, dtype=np.float32)
    d = y.shape[-1]
    idx = np.argmax(y, axis=-1)
    window = np.clip(idx[:, None] + np.arange(-LOCAL_HALF_WIDTH, LOCAL_HALF_WIDTH + 1)[None, :], 0, d - 1)
    y_l = np.take_along_axis(y, window, axis=-1)
    c_l = np.asarray(cent_table, dtype=np.float32)[window]
    cents = (c_l * y_l).sum(axis=-1) / y_l.sum(axis=-1)
    f0 = (10.0 * 2.0 ** (cents.astype(np.float64) / 1200.0)).astype(np.float32)
    confident = y.max(axis=-1)
    f0[confident <= threshold] = 0.0
    return f0
