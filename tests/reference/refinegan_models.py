"""Applio's RefineGAN decoder (ultimate-rvc 0.6.0) with calibrated random weights, as the reference for
``rvc_mlx.models.refinegan``.

* ``build_reference(sr)``: the torch ``RefineGANGenerator`` built as Applio's ``Synthesizer`` builds it, with
  seeded weights scaled so activations are speech-like (default init gives near-silent output, std ~2e-4) and
  ``conv_post`` calibrated to a pre-tanh std of ``OUTPUT_STD``; AdaIN scales random (they only act with noise).
* ``reference(sr, cache_dir)``: (torch model, converted MLX weights); the state dict is cached.
* ``inputs(frames)``: z, f0 (a glide with unvoiced gaps) and g in torch layout.
* ``deterministic()``: torch's random draws patched to zeros.

Test-only code; torch is imported here and never by the runtime.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np
import torch

from rvc_mlx.convert.common import apply_rules, fuse_weight_norms
from rvc_mlx.convert.rvc import REFINEGAN_RULES

INTER, GIN = 192, 256
CONFIGS = {24000: [10, 6, 2, 2], 32000: [10, 8, 2, 2], 40000: [10, 10, 2, 2], 48000: [12, 10, 2, 2]}
OUTPUT_STD = 0.15  # pre-tanh std the weights are calibrated to (a healthy, nearly linear tanh)
CALIBRATION_FRAMES = 40
GAINS = {"convs1": 0.6, "convs2": 0.6, "input_conv": 1.0, "downsample_blocks": 1.4, "pre_conv": 1.0,
         "mel_conv": 1.0, "cond": 0.5}  # per-output-channel weight norms (variance-preserving scale ~1)


def reference_class():
    from ultimate_rvc.rvc.lib.algorithm.generators.refinegan import RefineGANGenerator

    return RefineGANGenerator


def build_reference(sr: int) -> torch.nn.Module:
    """Applio's construction (synthesizers.py) with seeded weights scaled for speech-like activations."""
    rates = CONFIGS[sr]
    torch.manual_seed(sr)
    net = reference_class()(
        sample_rate=sr, downsample_rates=rates[::-1], upsample_rates=rates, start_channels=16, num_mels=INTER
    ).eval()
    gen = torch.Generator().manual_seed(sr + 1)
    with torch.no_grad():
        for name, module in net.named_modules():
            if not isinstance(module, torch.nn.Conv1d):
                continue
            gain = next((v for k, v in GAINS.items() if k in name), 1.0)
            jitter = 1 + 0.2 * (torch.rand(module.out_channels, generator=gen) * 2 - 1)
            if hasattr(module, "parametrizations"):  # weight norm: g sets each output channel's norm
                p = module.parametrizations.weight
                p.original1.copy_(torch.randn(p.original1.shape, generator=gen))
                p.original0.copy_((gain * jitter).reshape(p.original0.shape))
            else:
                w = torch.randn(module.weight.shape, generator=gen)
                w = w / w.flatten(1).norm(dim=1)[:, None, None] * (gain * jitter)[:, None, None]
                module.weight.copy_(w)
            if module.bias is not None:
                module.bias.copy_(0.02 * torch.randn(module.bias.shape, generator=gen))
        for name, param in net.named_parameters():
            if name.endswith(("0.weight", "2.weight")) and ".blocks." in name and param.ndim == 1:  # AdaIN
                param.copy_(0.05 + 0.25 * torch.rand(param.shape, generator=gen))
        net.m_source.merge[0].weight.fill_(2.0)
        # Calibrate conv_post (linear, no bias) so the pre-tanh output has OUTPUT_STD.
        z, f0, g = inputs(CALIBRATION_FRAMES, seed=99)
        captured = {}
        hook = net.conv_post.register_forward_hook(lambda m, i, o: captured.setdefault("y", o))
        with deterministic():
            net(z, f0, g)
        hook.remove()
        net.conv_post.parametrizations.weight.original0.mul_(OUTPUT_STD / captured["y"].std())
    return net


class deterministic:
    """Patch torch's random draws to zeros (RefineGAN's only randomness: sine noise, AdaIN noise, initial phase)."""

    def __enter__(self):
        self.saved = torch.randn_like, torch.rand
        torch.randn_like = lambda x, *a, **k: torch.zeros_like(x)
        torch.rand = lambda *a, **k: torch.zeros(*a, **{k_: v for k_, v in k.items() if k_ != "generator"})

    def __exit__(self, *exc):
        torch.randn_like, torch.rand = self.saved


def inputs(frames: int, seed: int = 0):
    """z ``(1, 192, T)``, f0 ``(1, T)`` Hz (a glide with unvoiced gaps), g ``(1, 256, 1)``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((1, INTER, frames)).astype(np.float32)
    t = np.arange(frames)
    f0 = 140 + 60 * np.sin(2 * np.pi * t / 90) + 10 * rng.standard_normal(frames)
    if frames > 7:
        f0[(t % 50) >= 42] = 0.0  # unvoiced stretches
    elif frames == 7:
        f0[5] = 0.0
    g = rng.standard_normal((1, GIN, 1)).astype(np.float32)
    return torch.from_numpy(z), torch.from_numpy(f0.astype(np.float32))[None], torch.from_numpy(g)


def convert(state: dict) -> dict[str, mx.array]:
    """The project's converter pieces on a decoder state dict -> our parameter names."""
    state = {"dec." + k: v.detach().numpy() for k, v in state.items()}
    weights = apply_rules(fuse_weight_norms(state), REFINEGAN_RULES, [], "refinegan test")
    return {k[len("dec.") :]: mx.array(v) for k, v in weights.items()}


@functools.lru_cache(maxsize=None)
def reference(sr: int, cache_dir: str):
    """(torch model, converted weights) for a rate; the state dict is cached (building it takes seconds)."""
    path = f"{cache_dir}/refinegan-{sr}.pt"
    net = None
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        net = build_reference(sr)
        state = net.state_dict()
        torch.save(state, path)
    if net is None:
        rates = CONFIGS[sr]
        net = reference_class()(
            sample_rate=sr, downsample_rates=rates[::-1], upsample_rates=rates, start_channels=16, num_mels=INTER
        ).eval()
        net.load_state_dict(state)
    return net, convert(state)


