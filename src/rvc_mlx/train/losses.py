"""RVC's training losses and spectrograms (rvc ``lib/train/losses.py``, ``mel_processing.py``), in MLX and
differentiable. Channels last: spectrograms are ``(B, frames, bins)``.

Generator: ``mel L1 · 45 + KL · 1 + feature matching · 2 + LSGAN``; discriminator: LSGAN on real and generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..models.fcpe import slaney_mel_filterbank

MAG_EPS = 1e-6  # added to |X|² before the square root (the reference's spectrogram)
LOG_CLIP = 1e-5  # mel magnitudes are clipped here before the log
C_MEL, C_KL, C_FM = 45.0, 1.0, 2.0
RATE_TABLE = {32000: (1024, 320, 80), 40000: (2048, 400, 125), 48000: (2048, 480, 128)}  # n_fft, hop, mels


@dataclass(frozen=True)
class SpectrogramConfig:
    """RVC's ``data`` section (n_fft = win: 1024 at 32 kHz, 2048 at 40 and 48 kHz)."""

    sample_rate: int
    hop: int
    n_mels: int
    n_fft: int = 2048
    win: int = 2048
    fmin: float = 0.0
    fmax: float | None = None

    @classmethod
    def for_rate(cls, sample_rate: int) -> "SpectrogramConfig":
        """RVC's configs: 32k n_fft 1024, hop 320, 80 mels; 40k 2048, 400, 125; 48k 2048, 480, 128."""
        if sample_rate not in RATE_TABLE:
            raise ValueError(f"no RVC training config for {sample_rate} Hz (32000, 40000 or 48000)")
        n_fft, hop, n_mels = RATE_TABLE[sample_rate]
        return cls(sample_rate, hop, n_mels, n_fft=n_fft, win=n_fft)

    @property
    def bins(self) -> int:
        """Linear spectrogram channels (the posterior encoder's input)."""
        return self.n_fft // 2 + 1

    def mel_basis(self) -> mx.array:
        """``(n_fft/2+1, n_mels)`` Slaney mel filters (librosa's default), transposed for ``spec @ basis``."""
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        basis = slaney_mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin, fmax)
        return mx.array(np.ascontiguousarray(basis.T, dtype=np.float32))


def _reflect(x: mx.array, n: int) -> mx.array:
    """Reflect-pad ``x (B, T)`` by ``n`` samples on both sides."""
    return mx.concatenate([x[:, n:0:-1], x, x[:, -2 : -2 - n : -1]], axis=1)


def spectrogram(y: mx.array, cfg: SpectrogramConfig) -> mx.array:
    """Linear magnitude spectrogram ``y (B, T)`` -> ``(B, frames, n_fft/2+1)``: reflect padding of
    ``(n_fft − hop)/2`` per side, periodic Hann window, no centring, ``sqrt(|X|² + 1e-6)``."""
    pad = (cfg.n_fft - cfg.hop) // 2
    x = _reflect(y.astype(mx.float32), pad)
    frames = (x.shape[1] - cfg.n_fft) // cfg.hop + 1
    idx = mx.arange(frames)[:, None] * cfg.hop + mx.arange(cfg.n_fft)[None, :]
    n = mx.arange(cfg.win, dtype=mx.float32)
    window = 0.5 - 0.5 * mx.cos(2 * math.pi * n / cfg.win)
    if cfg.win < cfg.n_fft:  # torch centres a shorter window in the frame
        left = (cfg.n_fft - cfg.win) // 2
        window = mx.pad(window, [(left, cfg.n_fft - cfg.win - left)])
    spec = mx.fft.rfft(x[:, idx] * window, axis=-1)
    return mx.sqrt(mx.square(mx.real(spec)) + mx.square(mx.imag(spec)) + MAG_EPS)


def spec_to_mel(spec: mx.array, basis: mx.array) -> mx.array:
    """``(B, frames, bins)`` magnitudes -> log mel ``(B, frames, n_mels)``."""
    return mx.log(mx.maximum(spec @ basis, LOG_CLIP))


def mel_spectrogram(y: mx.array, cfg: SpectrogramConfig, basis: mx.array) -> mx.array:
    """Audio ``(B, T)`` -> log mel ``(B, frames, n_mels)`` (the reference's ``mel_spectrogram_torch``)."""
    return spec_to_mel(spectrogram(y, cfg), basis)


def feature_loss(fmap_r: list, fmap_g: list) -> mx.array:
    """2 · Σ mean |real − generated| over every feature map; the real maps are constants."""
    loss = mx.array(0.0)
    for dr, dg in zip(fmap_r, fmap_g):
        for r, g in zip(dr, dg):
            loss = loss + mx.mean(mx.abs(mx.stop_gradient(r) - g))
    return loss * C_FM


def discriminator_loss(d_real: list, d_gen: list) -> tuple[mx.array, list, list]:
    """LSGAN: Σ mean (1 − D(y))² + mean D(ŷ)². Returns the sum and the per-discriminator terms."""
    r_losses = [mx.mean(mx.square(1 - r)) for r in d_real]
    g_losses = [mx.mean(mx.square(g)) for g in d_gen]
    return sum(r_losses[1:], r_losses[0]) + sum(g_losses[1:], g_losses[0]), r_losses, g_losses


def generator_loss(d_gen: list) -> tuple[mx.array, list]:
    """LSGAN: Σ mean (1 − D(ŷ))²."""
    losses = [mx.mean(mx.square(1 - g)) for g in d_gen]
    return sum(losses[1:], losses[0]), losses


def kl_loss(z_p: mx.array, logs_q: mx.array, m_p: mx.array, logs_p: mx.array, mask: mx.array) -> mx.array:
    """KL between the posterior sample mapped by the flow and the prior, summed over channels and real frames,
    divided by the number of real frames. ``(B, T, C)`` each, ``mask (B, T, 1)``."""
    kl = logs_p - logs_q - 0.5 + 0.5 * mx.square(z_p - m_p) * mx.exp(-2.0 * logs_p)
    return mx.sum(kl * mask) / mx.sum(mask)
