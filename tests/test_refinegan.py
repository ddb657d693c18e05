"""MLX RefineGAN decoder against Applio's ``RefineGANGenerator`` (ultimate-rvc 0.6.0), built as Applio's
``Synthesizer`` builds it, with calibrated random weights (default init gives near-silent output).

Deterministic parity: the reference runs with ``torch.randn_like``/``torch.rand`` patched to zeros, ours with no
noise. Noisy parity: the same sine and AdaIN noise is injected into both (the reference's ``randn_like`` replays
ours in call order). Reference weights and outputs are cached under pytest's cache dir.
"""

from __future__ import annotations

import functools
import math

import mlx.core as mx
import numpy as np
import pytest
import torch

from rvc_mlx.convert.common import apply_rules, fuse_weight_norms
from rvc_mlx.convert.rvc import REFINEGAN_RULES
from rvc_mlx.models import refinegan as R
from rvc_mlx.models.generator import SourceNoise
from rvc_mlx.models.synthesizer import SynthesizerConfig, build_decoder
from rvc_mlx.store import load_into

MAX_ABS = 1e-4
MIN_CORR = 0.99999
CONFIGS = {24000: [10, 6, 2, 2], 32000: [10, 8, 2, 2], 40000: [10, 10, 2, 2], 48000: [12, 10, 2, 2]}
FAST = {(32000, 1), (32000, 7), (32000, 200), (24000, 7), (24000, 200), (48000, 7)}  # default set; rest slow
INTER, GIN = 192, 256
OUTPUT_STD = 0.15  # pre-tanh std the weights are calibrated to (a healthy, nearly linear tanh)
CALIBRATION_FRAMES = 40
GAINS = {"convs1": 0.6, "convs2": 0.6, "input_conv": 1.0, "downsample_blocks": 1.4, "pre_conv": 1.0,
         "mel_conv": 1.0, "cond": 0.5}  # per-output-channel weight norms (variance-preserving scale ~1)


def _reference_class():
    from ultimate_rvc.rvc.lib.algorithm.generators.refinegan import RefineGANGenerator

    return RefineGANGenerator


def _build_reference(sr: int) -> torch.nn.Module:
    """Applio's construction (synthesizers.py) with seeded weights scaled for speech-like activations."""
    rates = CONFIGS[sr]
    torch.manual_seed(sr)
    net = _reference_class()(
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
        z, f0, g = _inputs(CALIBRATION_FRAMES, seed=99)
        captured = {}
        hook = net.conv_post.register_forward_hook(lambda m, i, o: captured.setdefault("y", o))
        with _deterministic():
            net(z, f0, g)
        hook.remove()
        net.conv_post.parametrizations.weight.original0.mul_(OUTPUT_STD / captured["y"].std())
    return net


class _deterministic:
    """Patch torch's random draws to zeros (RefineGAN's only randomness: sine noise, AdaIN noise, initial phase)."""

    def __enter__(self):
        self.saved = torch.randn_like, torch.rand
        torch.randn_like = lambda x, *a, **k: torch.zeros_like(x)
        torch.rand = lambda *a, **k: torch.zeros(*a, **{k_: v for k_, v in k.items() if k_ != "generator"})

    def __exit__(self, *exc):
        torch.randn_like, torch.rand = self.saved


def _inputs(frames: int, seed: int = 0):
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


def _ours(sr: int, weights: dict) -> R.RefineGANGenerator:
    config = SynthesizerConfig(sample_rate=sr, upsample_rates=CONFIGS[sr], vocoder="RefineGAN", use_f0=True)
    model = build_decoder(config)
    load_into(model, weights, f"refinegan {sr}")
    return model


@functools.lru_cache(maxsize=None)
def _reference(sr: int, cache_dir: str):
    """(torch model, converted weights) for a rate; the state dict is cached (building it takes seconds)."""
    path = f"{cache_dir}/refinegan-{sr}.pt"
    net = None
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        net = _build_reference(sr)
        state = net.state_dict()
        torch.save(state, path)
    if net is None:
        rates = CONFIGS[sr]
        net = _reference_class()(
            sample_rate=sr, downsample_rates=rates[::-1], upsample_rates=rates, start_channels=16, num_mels=INTER
        ).eval()
        net.load_state_dict(state)
    return net, convert(state)


def _reference_output(sr: int, frames: int, cache_dir: str) -> np.ndarray:
    path = f"{cache_dir}/refinegan-{sr}-{frames}.npy"
    try:
        return np.load(path)
    except FileNotFoundError:
        pass
    net, _ = _reference(sr, cache_dir)
    with torch.no_grad(), _deterministic():
        y = net(*_inputs(frames)).numpy()[0, 0]
    np.save(path, y)
    return y


def _run(model, frames: int, noise: SourceNoise | None = None) -> np.ndarray:
    z, f0, g = _inputs(frames)
    y = model(mx.array(z.numpy().transpose(0, 2, 1)), mx.array(f0.numpy()), mx.array(g.numpy().transpose(0, 2, 1)),
              noise)
    return np.array(y)[0, :, 0]


def _corr(a, b) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def _cases():
    for sr in CONFIGS:
        for frames in (1, 7, 200, 1000):
            marks = [] if (sr, frames) in FAST else [pytest.mark.slow]
            yield pytest.param(sr, frames, id=f"{sr // 1000}k-{frames}", marks=marks)


@pytest.mark.parametrize("sr,frames", list(_cases()))
def test_deterministic_parity(sr, frames, ref_cache):
    ref = _reference_output(sr, frames, str(ref_cache))
    _, weights = _reference(sr, str(ref_cache))
    ours = _run(_ours(sr, weights), frames)
    assert ours.shape == ref.shape == (frames * math.prod(CONFIGS[sr]),)
    err = float(np.abs(ours - ref).max())
    corr = _corr(ours, ref) if frames > 1 else 1.0
    print(f"RefineGAN {sr} x {frames}: max-abs {err:.2e} corr {corr:.8f} std {ref.std():.3f}")
    assert 0.03 < ref.std() < 0.5  # calibrated weights: not near-silent, not saturated
    assert err <= MAX_ABS
    assert corr >= MIN_CORR


def test_seeded_fault_is_caught(ref_cache):
    """A small perturbation of one conv (stage 1's input_conv) moves the output far beyond the tolerance."""
    sr, frames = 32000, 200
    ref = _reference_output(sr, frames, str(ref_cache))
    _, weights = _reference(sr, str(ref_cache))
    faulty = dict(weights)
    name = "upsample_conv_blocks.1.input_conv.weight"
    w = np.array(faulty[name])
    w[5, 3, 17] += 0.05 * np.abs(w).max()
    faulty[name] = mx.array(w)
    ours = _run(_ours(sr, faulty), frames)
    err, corr = float(np.abs(ours - ref).max()), _corr(ours, ref)
    print(f"seeded fault: max-abs {err:.2e} corr {corr:.6f}")
    assert err > 20 * MAX_ABS


def test_noisy_parity(ref_cache):
    """Sine and AdaIN noise on: the reference's randn_like replays ours (sine noise first, then the 24 AdaIN draws
    in call order); the noise moves the output far beyond the tolerance."""
    sr, frames = 32000, 60
    net, weights = _reference(sr, str(ref_cache))
    model = _ours(sr, weights)
    key = mx.random.key(7)
    source = mx.random.normal(model.noise_shape(frames), key=mx.random.key(8))
    noise = SourceNoise(noise=source, key=key)
    # Our AdaIN draws: shapes (B, L_i, C_i) per stage, in call order.
    draws = []
    keys = R.adain_keys(key)
    length = frames
    channels = R.UPSAMPLE_INITIAL_CHANNEL
    for i, rate in enumerate(CONFIGS[sr]):
        length, channels = length * rate, channels // 2
        for k in keys[i * R.ADAIN_PER_STAGE : (i + 1) * R.ADAIN_PER_STAGE]:
            draws.append(np.array(mx.random.normal((1, length, channels), key=k)).transpose(0, 2, 1))
    replay = [np.array(source)] + draws
    shapes = []

    def randn_like(x, *a, **k):
        n = torch.from_numpy(np.ascontiguousarray(replay[len(shapes)]))
        shapes.append(tuple(x.shape))
        assert n.shape == x.shape
        return n

    saved = torch.randn_like, torch.rand
    torch.randn_like = randn_like
    torch.rand = lambda *a, **k: torch.zeros(*a)
    try:
        with torch.no_grad():
            ref = net(*_inputs(frames)).numpy()[0, 0]
    finally:
        torch.randn_like, torch.rand = saved
    assert len(shapes) == 1 + R.ADAIN_DRAWS
    ours = _run(model, frames, noise)
    quiet = _run(model, frames)
    err, moved = float(np.abs(ours - ref).max()), float(np.abs(quiet - ref).max())
    print(f"noisy parity: max-abs {err:.2e} corr {_corr(ours, ref):.8f}; noise moves output by {moved:.3f}")
    assert err <= MAX_ABS and _corr(ours, ref) >= MIN_CORR
    assert moved > 50 * MAX_ABS


def test_decimator_matches_torchaudio():
    """The block-Toeplitz decimator against torchaudio.functional.resample, every ratio the configs use."""
    import torchaudio.functional as AF

    rng = np.random.default_rng(3)
    for rate in (2, 6, 8, 10, 12):
        x = rng.standard_normal((2, 3, 37 * rate)).astype(np.float32)
        ref = AF.resample(torch.from_numpy(x), rate, 1, lowpass_filter_width=R.SINC_ZERO_CROSSINGS,
                          rolloff=R.SINC_ROLLOFF, resampling_method="sinc_interp_kaiser", beta=R.KAISER_BETA).numpy()
        ours = np.array(R.decimate(mx.array(x.transpose(0, 2, 1)), rate)).transpose(0, 2, 1)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-5, rate


def test_interpolation_matches_torch():
    """f0 interpolation is bit-exact; the hidden upsampling is within an ulp-level bound."""
    rng = np.random.default_rng(4)
    f0 = (100 + 200 * rng.random((1, 1000))).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(f0)[:, None], size=320000, mode="linear").numpy()[:, 0]
    assert np.array_equal(np.array(R.interpolate_f0(mx.array(f0), 320000)), ref)
    for rate in (2, 6, 8, 10, 12):
        x = rng.standard_normal((1, 4, 500)).astype(np.float32)
        ref = torch.nn.Upsample(scale_factor=rate, mode="linear")(torch.from_numpy(x)).numpy()
        ours = np.array(R.upsample_linear(mx.array(x.transpose(0, 2, 1)), rate)).transpose(0, 2, 1)
        assert np.abs(ours - ref).max() < 1e-6, rate
