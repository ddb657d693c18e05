"""RMVPE pitch estimator (RVC's ``rvc.lib.rmvpe``) in MLX.

16 kHz audio -> log-mel (128 HTK bands, 30–8000 Hz, hop 160) -> E2E: a U-Net over (time, mel) with residual conv
blocks -> Conv2d 16->3 -> BiGRU(384->2x256) -> Linear(512->360) -> sigmoid = *salience* over 360 pitch bins of
20 cents -> decoded to f0 Hz at 100 frames/s.

Layout: channels-last ``(B, H=time, W=mel, C)`` throughout the U-Net (PyTorch uses ``(B, C, time, mel)``).
Parameter names mirror PyTorch's (``unet.encoder.layers.0.conv.1.conv.3.weight``), so the converter
(``rvc_mlx.convert.rmvpe``) only transposes conv kernels and folds the GRU biases.

At load, every Conv2d/ConvTranspose2d that feeds a BatchNorm is fused with it (inference BatchNorm is an
affine map per channel) and the gemm/polyphase weight matrices are precomputed (``E2E.fuse``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..backend import configure_mlx
from ..errors import AudioError, FormatError
from ..nn.conv2d import conv2d, conv_transpose2d_s2, gemm_weight, polyphase_weight_s2
from ..nn.gru import BiGRU as _BiGRULayer

BN_EPS = 1e-5
LOG_CLAMP = 1e-5  # log(max(mel, LOG_CLAMP))
FRAME_MULTIPLE = 32  # the U-Net halves time 5 times
N_CLASSES = 360  # 20-cent pitch bins
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (relative to 10 Hz)
F0_REF_HZ = 10.0  # cents are relative to 10 Hz; f0 == 10 Hz means "no pitch"
LOCAL_AVERAGE_RADIUS = 4  # salience-weighted mean over argmax ± 4 bins
# Long input runs in windows so memory does not grow with its length (``chunk_windows``; measured in
# tests/test_memory.py and benchmarks/memory.py): CHUNK_FRAMES kept frames per window, CONTEXT_FRAMES either side.
CHUNK_FRAMES = 4096
CONTEXT_FRAMES = 512


@dataclass
class RmvpeConfig:
    n_mels: int = 128
    sample_rate: int = 16000
    hop: int = 160
    n_fft: int = 1024
    win_length: int = 1024
    mel_fmin: float = 30.0
    mel_fmax: float = 8000.0
    threshold: float = 0.03
    pad_mode: str = "constant"  # how the log-mel is padded to a multiple of 32 frames: constant (0) | reflect
    en_de_layers: int = 5
    inter_layers: int = 4
    n_blocks: int = 4
    en_out_channels: int = 16
    in_channels: int = 1
    gru_hidden: int = 256
    n_classes: int = N_CLASSES

    @classmethod
    def from_dict(cls, d: dict) -> "RmvpeConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------- mel front end


def hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK-mel filterbank with Slaney area normalisation (``librosa.filters.mel(htk=True)``).

    Returns (n_mels, n_fft // 2 + 1) float32. Filter i rises from band edge i to i+1 and falls to i+2, where the
    n_mels + 2 edges are equally spaced on the HTK mel scale; each filter is scaled by 2 / (bandwidth in Hz).
    """
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz_htk(np.linspace(hz_to_mel_htk(fmin), hz_to_mel_htk(fmax), n_mels + 2))
    widths = np.diff(edges)
    dist = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, n_bins)
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    fb = np.maximum(0.0, np.minimum(rising, falling))
    fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return fb.astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(n)``)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


class MelSpectrogram:
    """Log-mel of 16 kHz audio, as RVC's ``MelSpectrogram(center=True)``: reflect-pad n_fft/2 both sides, frames
    every ``hop`` samples, periodic Hann window, |rfft|, mel filterbank, ``log(max(x, 1e-5))``."""

    def __init__(self, cfg: RmvpeConfig):
        if cfg.win_length != cfg.n_fft:
            raise FormatError(f"rmvpe: win_length {cfg.win_length} != n_fft {cfg.n_fft} is not supported")
        self.n_fft = cfg.n_fft
        self.hop = cfg.hop
        self.window = mx.array(hann_window(cfg.win_length))
        self.mel_basis = mx.array(
            mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.mel_fmin, cfg.mel_fmax).T
        )  # (n_bins, n_mels)

    def n_frames(self, n_samples: int) -> int:
        return n_samples // self.hop + 1

    def pad(self, audio: np.ndarray) -> np.ndarray:
        """audio (N,) float32 with N > n_fft / 2 -> reflect-padded (N + n_fft,) float32 (the STFT's centring)."""
        audio = np.asarray(audio, dtype=np.float32)
        pad = self.n_fft // 2
        if audio.ndim != 1 or audio.shape[0] <= pad:
            raise AudioError(f"rmvpe needs mono audio longer than {pad} samples at 16 kHz, got shape {audio.shape}")
        return np.pad(audio, (pad, pad), mode="reflect")

    def frames(self, padded: np.ndarray, start: int, stop: int) -> mx.array:
        """Log-mel frames ``start..stop`` (stop - start, n_mels) of ``padded = self.pad(audio)``; frame j reads
        ``padded[j * hop : j * hop + n_fft]``, so any frame range gives the same values as the whole."""
        t = stop - start
        segment = mx.array(padded[start * self.hop : (stop - 1) * self.hop + self.n_fft])
        frames = mx.as_strided(segment, (t, self.n_fft), (self.hop, 1)) * self.window
        magnitude = mx.abs(mx.fft.rfft(frames, axis=-1))  # (t, n_bins)
        return mx.log(mx.maximum(magnitude @ self.mel_basis, LOG_CLAMP))

    def __call__(self, audio: np.ndarray) -> mx.array:
        """audio (N,) float32 with N > n_fft / 2 -> log-mel (T, n_mels), T = N // hop + 1."""
        padded = self.pad(audio)
        return self.frames(padded, 0, self.n_frames(padded.shape[0] - self.n_fft))


# ---------------------------------------------------------------------------------------------- layers


class BatchNorm(nn.Module):
    """Inference BatchNorm over the last axis (PyTorch ``BatchNorm2d`` parameter names, eps 1e-5)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))
        self.running_mean = mx.zeros((channels,))
        self.running_var = mx.ones((channels,))

    def affine(self) -> tuple[mx.array, mx.array]:
        """(scale, shift) with ``bn(x) == x * scale + shift``."""
        scale = self.weight * mx.rsqrt(self.running_var + BN_EPS)
        return scale, self.bias - self.running_mean * scale

    def __call__(self, x: mx.array) -> mx.array:
        scale, shift = self.affine()
        return x * scale + shift


class Conv2d(nn.Module):
    """Stride-1 Conv2d; weight (O, kh, kw, I) channels-last."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int, bias: bool):
        super().__init__()
        self.padding = padding
        self.weight = mx.zeros((out_ch, kernel, kernel, in_ch))
        if bias:
            self.bias = mx.zeros((out_ch,))

    def __call__(self, x: mx.array) -> mx.array:
        return conv2d(x, self.weight, self.get("bias"), self.padding)


class ConvTranspose2d(nn.Module):
    """ConvTranspose2d(kernel 3, stride 2, padding 1, output_padding 1, no bias); weight (O, 3, 3, I)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.weight = mx.zeros((out_ch, 3, 3, in_ch))

    def __call__(self, x: mx.array) -> mx.array:
        return conv_transpose2d_s2(x, self.weight)


class ReLU(nn.Module):
    def __call__(self, x: mx.array) -> mx.array:
        return nn.relu(x)


class _FusedConv:
    """A conv (or transposed conv) with its BatchNorm folded in: precomputed gemm matrix, weight and bias."""

    def __init__(self, weight: mx.array, bias: mx.array, transposed: bool = False, padding: int = 1):
        self.weight, self.bias, self.transposed, self.padding = weight, bias, transposed, padding
        self.matrix = polyphase_weight_s2(weight) if transposed else gemm_weight(weight)
        mx.eval(self.weight, self.bias, self.matrix)

    def __call__(self, x: mx.array) -> mx.array:
        if self.transposed:
            return conv_transpose2d_s2(x, self.weight, poly_w=self.matrix) + self.bias
        return conv2d(x, self.weight, self.bias, self.padding, gemm_w=self.matrix)


def _fold(conv_weight: mx.array, bn: BatchNorm, conv_bias: mx.array | None = None) -> tuple[mx.array, mx.array]:
    scale, shift = bn.affine()
    bias = shift if conv_bias is None else conv_bias * scale + shift
    return conv_weight * scale[:, None, None, None], bias


class ConvBlockRes(nn.Module):
    """(conv3x3 -> BN -> ReLU) x2 plus a residual (1x1 conv with bias when the channel count changes)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = [
            Conv2d(in_ch, out_ch, 3, 1, bias=False),
            BatchNorm(out_ch),
            ReLU(),
            Conv2d(out_ch, out_ch, 3, 1, bias=False),
            BatchNorm(out_ch),
            ReLU(),
        ]
        if in_ch != out_ch:
            self.shortcut = Conv2d(in_ch, out_ch, 1, 0, bias=True)
        self._fused1 = self._fused2 = None  # plain attributes (not parameters), set by fuse()

    def fuse(self) -> None:
        c = self.conv
        self._fused1 = _FusedConv(*_fold(c[0].weight, c[1]))
        self._fused2 = _FusedConv(*_fold(c[3].weight, c[4]))

    def __call__(self, x: mx.array) -> mx.array:
        res = self.shortcut(x) if "shortcut" in self else x
        if self._fused1 is not None:
            y = nn.relu(self._fused1(x))
            return nn.relu(self._fused2(y)) + res
        y = x
        for layer in self.conv:
            y = layer(y)
        return y + res


class ResEncoderBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, pool: bool):
        super().__init__()
        self.conv = [ConvBlockRes(in_ch if i == 0 else out_ch, out_ch) for i in range(n_blocks)]
        self.pool = pool

    def __call__(self, x: mx.array):
        for block in self.conv:
            x = block(x)
        if not self.pool:
            return x
        b, h, w, c = x.shape  # 2x2 average pooling (h, w are even: time padded to 32, 128 mel bands)
        return x, x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Encoder(nn.Module):
    def __init__(self, in_ch: int, n_encoders: int, n_blocks: int, out_ch: int):
        super().__init__()
        self.bn = BatchNorm(in_ch)
        self.layers = []
        for _ in range(n_encoders):
            self.layers.append(ResEncoderBlock(in_ch, out_ch, n_blocks, pool=True))
            in_ch, out_ch = out_ch, out_ch * 2
        self.out_channels = out_ch

    def __call__(self, x: mx.array):
        skips = []
        x = self.bn(x)
        for layer in self.layers:
            skip, x = layer(x)
            skips.append(skip)
        return x, skips


class Intermediate(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_inters: int, n_blocks: int):
        super().__init__()
        self.layers = [
            ResEncoderBlock(in_ch if i == 0 else out_ch, out_ch, n_blocks, pool=False) for i in range(n_inters)
        ]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class ResDecoderBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_blocks: int):
        super().__init__()
        self.conv1 = [ConvTranspose2d(in_ch, out_ch), BatchNorm(out_ch), ReLU()]
        self.conv2 = [ConvBlockRes(out_ch * 2 if i == 0 else out_ch, out_ch) for i in range(n_blocks)]
        self._fused = None

    def fuse(self) -> None:
        self._fused = _FusedConv(*_fold(self.conv1[0].weight, self.conv1[1]), transposed=True)

    def __call__(self, x: mx.array, skip: mx.array) -> mx.array:
        if self._fused is not None:
            x = nn.relu(self._fused(x))
        else:
            for layer in self.conv1:
                x = layer(x)
        x = mx.concatenate([x, skip], axis=-1)
        for block in self.conv2:
            x = block(x)
        return x


class Decoder(nn.Module):
    def __init__(self, in_ch: int, n_decoders: int, n_blocks: int):
        super().__init__()
        self.layers = []
        for _ in range(n_decoders):
            self.layers.append(ResDecoderBlock(in_ch, in_ch // 2, n_blocks))
            in_ch //= 2

    def __call__(self, x: mx.array, skips: list[mx.array]) -> mx.array:
        for i, layer in enumerate(self.layers):
            x = layer(x, skips[-1 - i])
        return x


class DeepUnet(nn.Module):
    def __init__(self, cfg: RmvpeConfig):
        super().__init__()
        self.encoder = Encoder(cfg.in_channels, cfg.en_de_layers, cfg.n_blocks, cfg.en_out_channels)
        top = self.encoder.out_channels  # 512 for RMVPE
        self.intermediate = Intermediate(top // 2, top, cfg.inter_layers, cfg.n_blocks)
        self.decoder = Decoder(top, cfg.en_de_layers, cfg.n_blocks)

    def __call__(self, x: mx.array) -> mx.array:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class BiGRU(nn.Module):
    """Holds the GRU as ``gru`` so names match PyTorch's ``fc.0.gru.*``."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.gru = _BiGRULayer(input_size, hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.gru(x)


class E2E(nn.Module):
    """log-mel (B, T, n_mels), T a multiple of 32 -> salience (B, T, 360) in [0, 1]."""

    def __init__(self, cfg: RmvpeConfig):
        super().__init__()
        self.unet = DeepUnet(cfg)
        self.cnn = Conv2d(cfg.en_out_channels, 3, 3, 1, bias=True)
        self.fc = [BiGRU(3 * cfg.n_mels, cfg.gru_hidden), nn.Linear(2 * cfg.gru_hidden, cfg.n_classes)]

    def fuse(self) -> None:
        """Fold every BatchNorm that follows a conv into it and precompute gemm weights (call after loading)."""
        for _, module in self.named_modules():
            if isinstance(module, (ConvBlockRes, ResDecoderBlock)):
                module.fuse()

    def __call__(self, mel: mx.array) -> mx.array:
        b, t, f = mel.shape
        x = self.cnn(self.unet(mel[..., None]))  # (B, T, n_mels, 3)
        x = x.transpose(0, 1, 3, 2).reshape(b, t, 3 * f)  # PyTorch's channel-major flatten
        return mx.sigmoid(self.fc[1](self.fc[0](x)))


# ---------------------------------------------------------------------------------------------- decode


def decode(salience: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    """Salience (T, 360) -> f0 (T,) float64 Hz, 0 where unvoiced.

    cents = salience-weighted mean of bin cents over argmax ± 4 bins (bins outside 0..359 weigh 0);
    frames whose max salience is ≤ ``threshold`` are unvoiced; f0 = 10 · 2^(cents / 1200).
    """
    salience = np.asarray(salience, dtype=np.float32)
    t, n = salience.shape
    r = LOCAL_AVERAGE_RADIUS
    cents_of_bin = np.pad(CENTS_PER_BIN * np.arange(n) + CENTS_OFFSET, (r, r))
    padded = np.pad(salience, ((0, 0), (r, r)))
    window = np.argmax(salience, axis=1)[:, None] + np.arange(2 * r + 1)[None, :]  # indices into padded
    weights = np.take_along_axis(padded, window, axis=1)
    cents = np.sum(weights * cents_of_bin[window], axis=1) / np.sum(weights, axis=1)
    cents[salience.max(axis=1, initial=0.0) <= threshold] = 0.0
    f0 = F0_REF_HZ * 2.0 ** (cents / 1200.0)
    f0[f0 == F0_REF_HZ] = 0.0
    return f0


# ---------------------------------------------------------------------------------------------- public model


def _pad_frames(mel: mx.array, n_pad: int, mode: str) -> mx.array:
    """Pad (T, n_mels) at the end by n_pad frames: zeros (rvc==0.3.5) or reflection (Applio)."""
    if n_pad == 0:
        return mel
    if mode == "constant":
        return mx.pad(mel, [(0, n_pad), (0, 0)])
    if mode == "reflect":
        t = mel.shape[0]
        idx = np.arange(t, t + n_pad)
        period = max(2 * (t - 1), 1)
        idx = np.abs((idx % period + period) % period)
        idx = np.where(idx >= t, period - idx, idx)
        return mx.concatenate([mel, mel[mx.array(idx)]], axis=0)
    raise FormatError(f"rmvpe: unknown pad_mode {mode!r} (constant | reflect)")


class Rmvpe:
    """RMVPE loaded from a converted ``.safetensors`` file.

    ``salience(audio16k) -> (T, 360)``, ``f0(audio16k) -> (T,)`` Hz at 100 fps, T = len(audio) // 160 + 1.
    """

    def __init__(self, model: E2E, config: RmvpeConfig):
        self.model = model
        self.config = config
        self.mel = MelSpectrogram(config)

    @classmethod
    def load(cls, path: str | os.PathLike, pad_mode: str | None = None) -> "Rmvpe":
        """Load a converted RMVPE; ``pad_mode`` ("constant" | "reflect") overrides the file's frame padding."""
        from ..store import load

        weights, config = load(path, kind="rmvpe")
        return cls.from_weights(weights, config, pad_mode, source=str(path))

    @classmethod
    def from_weights(cls, weights: dict, config: dict, pad_mode: str | None = None, source: str = "rmvpe") -> "Rmvpe":
        """Build from converted ``weights`` (MLX layout, numpy or mx arrays) and ``config`` (see ``convert_rmvpe``)."""
        from ..store import load_into

        configure_mlx()
        cfg = RmvpeConfig.from_dict(config)
        if pad_mode is not None:
            cfg = dataclasses.replace(cfg, pad_mode=pad_mode)
        if cfg.pad_mode not in ("constant", "reflect"):
            raise FormatError(f"{source}: unknown rmvpe pad_mode {cfg.pad_mode!r} (constant | reflect)")
        model = E2E(cfg)
        load_into(model, {k: mx.array(v) for k, v in weights.items()}, source)
        model.fuse()
        return cls(model, cfg)

    def log_mel(self, audio16k: np.ndarray) -> mx.array:
        """(N,) -> (T, 128) log-mel."""
        return self.mel(audio16k)

    def salience_from_mel(self, mel: mx.array) -> mx.array:
        """(T, 128) log-mel -> (T, 360) salience (pads to a multiple of 32 frames internally)."""
        t = mel.shape[0]
        n_pad = -t % FRAME_MULTIPLE
        x = _pad_frames(mel, n_pad, self.config.pad_mode)
        return self.model(x[None])[0, :t]

    def salience_chunks(self, audio16k: np.ndarray, chunk: int = CHUNK_FRAMES, context: int = CONTEXT_FRAMES):
        """Yield ``(start, salience (n, 360) float32)`` for consecutive frame ranges covering the whole input.

        Audio of at most ``chunk`` frames is one piece, computed exactly as the whole. Longer audio is processed
        in windows (``chunk_windows``): each window's log-mel runs through the network on its own (so memory is
        bounded by the window, not the input), and only its central ``chunk`` frames are kept.
        """
        padded = self.mel.pad(audio16k)
        n_frames = self.mel.n_frames(padded.shape[0] - self.mel.n_fft)
        for w_start, w_stop, start, stop in chunk_windows(n_frames, chunk, context):
            mel = self.mel.frames(padded, w_start, w_stop)
            out = self.salience_from_mel(mel)[start - w_start : stop - w_start]
            mx.eval(out)
            yield start, np.array(out)
            del mel, out

    def salience(self, audio16k: np.ndarray, chunk: int = CHUNK_FRAMES, context: int = CONTEXT_FRAMES) -> np.ndarray:
        """16 kHz mono audio (N,) -> salience (T, 360) float32, T = N // 160 + 1 (long input in chunks)."""
        return np.concatenate([s for _, s in self.salience_chunks(audio16k, chunk, context)])

    def f0(self, audio16k: np.ndarray, threshold: float | None = None, chunk: int = CHUNK_FRAMES,
           context: int = CONTEXT_FRAMES) -> np.ndarray:
        """16 kHz mono audio (N,) -> f0 (T,) float32 Hz at 100 fps, 0 for unvoiced frames (decoded per chunk:
        the decode is frame by frame, so only one chunk's salience is held at a time)."""
        thr = self.config.threshold if threshold is None else threshold
        parts = [decode(s, thr).astype(np.float32) for _, s in self.salience_chunks(audio16k, chunk, context)]
        return np.concatenate(parts)


def chunk_windows(n_frames: int, chunk: int = CHUNK_FRAMES, context: int = CONTEXT_FRAMES):
    """``[(window_start, window_stop, keep_start, keep_stop)]`` in frames for ``n_frames`` frames.

    ``n_frames <= chunk``: one window, the whole input. Otherwise the kept ranges are consecutive ``chunk``-frame
    pieces (the last one shorter), each computed in a window reaching ``context`` frames further on both sides
    (clipped to the input). ``chunk`` and ``context`` are multiples of ``FRAME_MULTIPLE``, so every window starts
    on the U-Net's pooling grid of the whole input, and the last window ends with the same frame padding as the
    whole input would: the only differences from the unchunked result come from the limited context (the conv
    stack's zero padding at inner window edges and the GRU starting from a zero state), which decay with
    ``context``.
    """
    if chunk % FRAME_MULTIPLE or context % FRAME_MULTIPLE or chunk <= 0 or context < 0:
        raise ValueError(f"chunk ({chunk}) and context ({context}) must be multiples of {FRAME_MULTIPLE}, chunk > 0")
    if n_frames <= chunk:
        return [(0, n_frames, 0, n_frames)]
    return [(max(0, s - context), min(n_frames, s + chunk + context), s, min(n_frames, s + chunk))
            for s in range(0, n_frames, chunk)]
