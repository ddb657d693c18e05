"""MLX RefineGAN decoder against Applio's ``RefineGANGenerator`` (ultimate-rvc 0.6.0), built as Applio's
``Synthesizer`` builds it, with calibrated random weights (default init gives near-silent output).

Deterministic parity: the reference runs with ``torch.randn_like``/``torch.rand`` patched to zeros, ours with no
noise. Noisy parity: the same sine and AdaIN noise is injected into both (the reference's ``randn_like`` replays
ours in call order). Reference weights and outputs are cached under pytest's cache dir.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
import torch

from rvc_mlx.models import refinegan as R
from rvc_mlx.models.generator import SourceNoise
from rvc_mlx.models.synthesizer import SynthesizerConfig, build_decoder
from rvc_mlx.store import load_into
from tests.reference.refinegan_models import CONFIGS, deterministic, inputs, reference

MAX_ABS = 1e-4
MIN_CORR = 0.99999
FAST = {(32000, 1), (32000, 7), (32000, 200), (24000, 7), (24000, 200), (48000, 7)}  # default set; rest slow


def _ours(sr: int, weights: dict) -> R.RefineGANGenerator:
    config = SynthesizerConfig(sample_rate=sr, upsample_rates=CONFIGS[sr], vocoder="RefineGAN", use_f0=True)
    model = build_decoder(config)
    load_into(model, weights, f"refinegan {sr}")
    return model


def _reference_output(sr: int, frames: int, cache_dir: str) -> np.ndarray:
    path = f"{cache_dir}/refinegan-{sr}-{frames}.npy"
    try:
        return np.load(path)
    except FileNotFoundError:
        pass
    net, _ = reference(sr, cache_dir)
    with torch.no_grad(), deterministic():
        y = net(*inputs(frames)).numpy()[0, 0]
    np.save(path, y)
    return y


def _run(model, frames: int, noise: SourceNoise | None = None) -> np.ndarray:
    z, f0, g = inputs(frames)
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
    _, weights = reference(sr, str(ref_cache))
    ours = _run(_ours(sr, weights), frames)
    assert ours.shape == ref.shape == (frames * math.prod(CONFIGS[sr]),)
    err = float(np.abs(ours - ref).max())
    corr = _corr(ours, ref) if frames > 1 else 1.0
    print(f"RefineGAN {sr} x {frames}: max-abs {err:.2e} corr {corr:.8f} std {ref.std():.3f}")
    assert 0.03 < ref.std() < 0.5  # calibrated weights: not near-silent, not saturated
    assert err <= MAX_ABS
    assert corr >= MIN_CORR


def test_seeded_fault_is_caught(ref_cache):
    """One conv off (stage 1's input_conv with one of its 128 output channels' taps reversed, a layout-bug-sized
    fault) moves the output far beyond the tolerance."""
    sr, frames = 32000, 200
    ref = _reference_output(sr, frames, str(ref_cache))
    _, weights = reference(sr, str(ref_cache))
    faulty = dict(weights)
    name = "upsample_conv_blocks.1.input_conv.weight"
    w = np.array(faulty[name])
    w[5] = w[5, ::-1]
    faulty[name] = mx.array(w)
    ours = _run(_ours(sr, faulty), frames)
    err, corr = float(np.abs(ours - ref).max()), _corr(ours, ref)
    print(f"seeded fault: max-abs {err:.2e} corr {corr:.6f}")
    assert err > 20 * MAX_ABS


def test_noisy_parity(ref_cache):
    """Sine and AdaIN noise on: the reference's randn_like replays ours (sine noise first, then the 24 AdaIN draws
    in call order); the noise moves the output far beyond the tolerance."""
    sr, frames = 32000, 60
    net, weights = reference(sr, str(ref_cache))
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
            ref = net(*inputs(frames)).numpy()[0, 0]
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
