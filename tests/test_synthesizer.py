"""MLX synthesizer against rvc==0.3.5 ``net_g.infer`` for all 12 variants (random non-vacuous weights).

Deterministic parity: the reference runs with ``torch.randn_like``/``torch.rand`` patched to zeros and ours with
``noise="none"``; each stage is compared (m_p, logs_p, z after the flow, generator output) so a regression
names its stage. Noisy runs are compared statistically (RMS) and for seed reproducibility.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np
import pytest
import torch

from rvc_mlx.checkpoint import load_checkpoint
from rvc_mlx.convert.rvc import convert_voice
from rvc_mlx.errors import InputError
from rvc_mlx.models.synthesizer import Noise, Synthesizer
from rvc_mlx.nn import conv as fastconv
from rvc_mlx.store import save
from tests.reference import rvc_models as R

MAX_ABS = 1e-4
MIN_CORR = 0.99999
SID = 3
VARIANTS = {v.name: v for v in R.VARIANTS}
LONG_FAST = ()  # variants whose 1000-frame case runs outside the slow set


@functools.lru_cache(maxsize=1)
def _models(name: str, cache_dir: str):
    """(torch reference, MLX model) for a variant, both from the same cached fp16 checkpoint."""
    variant = VARIANTS[name]
    path = R.checkpoint_path(cache_dir, variant)
    ref = R.reference_model(R.load_torch_checkpoint(path))
    out = path.with_suffix(".safetensors")
    if not out.exists():
        weights, config = convert_voice(load_checkpoint(path), str(path))
        save(out, weights, config)
    return ref, Synthesizer.load(out)


def _inputs(variant, frames, seed=0):
    feats, pitch, f0 = R.make_inputs(variant.feature_dim, frames, seed)
    return (feats, pitch, f0) if variant.f0 else (feats, None, None)


def _corr(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


def _cases():
    for name in VARIANTS:
        for frames in (1, 7, 200, 1000):
            marks = [pytest.mark.slow] if frames == 1000 and name not in LONG_FAST else []
            yield pytest.param(name, frames, id=f"{name}-{frames}", marks=marks)


@pytest.mark.parametrize("name,frames", list(_cases()))
def test_deterministic_parity_by_stage(name, frames, ref_cache):
    variant = VARIANTS[name]
    ref, ours = _models(name, str(ref_cache))
    feats, pitch, f0 = _inputs(variant, frames)
    with R.deterministic():
        audio_r, z_r, z_p_r, m_p_r, logs_p_r = R.reference_infer(ref, feats, pitch, f0, sid=SID)
    st = {k: np.array(v) for k, v in ours.stages(feats, pitch, f0, sid=SID, noise="none").items()}
    assert audio_r.shape == st["audio"].shape == (frames * ours.config.upp,)
    for stage, r in (("m_p", m_p_r), ("logs_p", logs_p_r), ("z_p", z_p_r), ("z", z_r), ("audio", audio_r)):
        o = st[stage].reshape(r.shape)
        diff = float(np.abs(o - r).max())
        assert diff <= MAX_ABS, f"{stage}: max|diff| {diff:.2e}"
        if r.size > 1:
            assert _corr(o, r) >= MIN_CORR, f"{stage}: correlation {_corr(o, r):.7f}"


@pytest.mark.parametrize("name", ["v2-40k-f0", "v1-32k-nof0"])
def test_stages_are_not_vacuous(name, ref_cache):
    """Every stage moves the output far beyond the parity tolerance: the flow changes z, the speaker and
    (f0 models) the pitch change the audio, and the audio is broadband, speech-level and DC-free."""
    variant = VARIANTS[name]
    ref, ours = _models(name, str(ref_cache))
    feats, pitch, f0 = _inputs(variant, 200)
    with R.deterministic():
        audio, z, z_p, _, _ = R.reference_infer(ref, feats, pitch, f0, sid=SID)
        other_sid = R.reference_infer(ref, feats, pitch, f0, sid=SID + 1)[0]
        if variant.f0:
            shifted = R.reference_infer(ref, feats, pitch, f0 * 1.5, sid=SID)[0]
            assert np.abs(shifted - audio).std() > 0.1 * audio.std()
    assert np.linalg.norm(z - z_p) > 0.2 * np.linalg.norm(z_p)
    assert np.abs(other_sid - audio).std() > 0.1 * audio.std()
    assert 0.1 < audio.std() < 0.6 and abs(audio.mean()) < 0.1 * audio.std()
    assert (np.abs(audio) > 0.99).mean() < 0.01
    spec = np.abs(np.fft.rfft(audio)) ** 2
    freq = np.fft.rfftfreq(audio.size, 1 / variant.sample_rate)
    assert spec[freq < 50].sum() < 0.05 * spec.sum()
    assert spec[(freq > 500) & (freq < 8000)].sum() > 0.05 * spec.sum()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v2-40k-f0", "v1-48k-nof0"])
def test_noise_seeded_and_rms_matches_reference(name, ref_cache):
    variant = VARIANTS[name]
    ref, ours = _models(name, str(ref_cache))
    feats, pitch, f0 = _inputs(variant, 400, seed=1)
    a = ours.synthesize(feats, pitch, f0, sid=SID, seed=7)
    b = ours.synthesize(feats, pitch, f0, sid=SID, seed=7)
    c = ours.synthesize(feats, pitch, f0, sid=SID, seed=8)
    det = ours.synthesize(feats, pitch, f0, sid=SID, noise="none")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).std() > 0.05 * a.std()
    assert np.abs(a - det).std() > 0.05 * a.std()
    ours_rms = np.mean([np.sqrt(np.mean(ours.synthesize(feats, pitch, f0, sid=SID, seed=s) ** 2)) for s in range(3)])
    ref_rms = []
    for s in range(3):
        torch.manual_seed(s)
        ref_rms.append(np.sqrt(np.mean(R.reference_infer(ref, feats, pitch, f0, sid=SID)[0] ** 2)))
    assert abs(ours_rms / np.mean(ref_rms) - 1) < 0.05, (ours_rms, ref_rms)


def test_explicit_noise_matches_reference_noise(ref_cache):
    """The same z_p and NSF noise draws give the reference's noisy output (noise enters where rvc adds it)."""
    name = "v2-40k-f0"
    variant = VARIANTS[name]
    ref, ours = _models(name, str(ref_cache))
    feats, pitch, f0 = _inputs(variant, 50)
    draws = []
    real = torch.randn_like

    def recording(x, *a, **k):
        draws.append(real(x, *a, **k))
        return draws[-1]

    torch.manual_seed(0)
    torch.randn_like = recording
    try:
        audio_r = R.reference_infer(ref, feats, pitch, f0, sid=SID)[0]
    finally:
        torch.randn_like = real
    z_noise, src_noise = draws  # (1, 192, T) then (1, N, 1)
    noise = Noise(z=mx.array(z_noise[0].T.numpy()[None]), source=mx.array(src_noise[0, :, 0].numpy()[None]))
    audio = np.array(ours.stages(feats, pitch, f0, sid=SID, noise=noise)["audio"])
    assert np.abs(audio - audio_r).max() <= MAX_ABS and _corr(audio, audio_r) >= MIN_CORR


def test_speaker_id_out_of_range(ref_cache):
    _, ours = _models("v2-40k-f0", str(ref_cache))
    feats, pitch, f0 = _inputs(VARIANTS["v2-40k-f0"], 5)
    n = ours.config.n_speakers
    for sid in (n, -1):
        with pytest.raises(InputError, match=f"speaker id {sid} is out of range"):
            ours.synthesize(feats, pitch, f0, sid=sid)
    with pytest.raises(InputError, match="features must have shape"):
        ours.synthesize(feats[:, :256], pitch, f0)
    with pytest.raises(InputError, match="uses pitch"):
        ours.synthesize(feats)


def test_native_and_cpu_convolutions_agree(ref_cache):
    """The CPU rewrites (per-tap addmm, polyphase transposed conv) and MLX's own kernels give the same audio."""
    _, ours = _models("v1-32k-f0", str(ref_cache))
    feats, pitch, f0 = _inputs(VARIANTS["v1-32k-f0"], 6)
    fastconv.set_conv_mode("cpu")
    a = np.array(ours.stages(feats, pitch, f0, sid=SID, noise="none")["audio"])
    try:
        fastconv.set_conv_mode("native")
        b = np.array(ours.stages(feats, pitch, f0, sid=SID, noise="none")["audio"])
    finally:
        fastconv.set_conv_mode("auto")
    assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("k,s", [(16, 10), (20, 8), (24, 12), (4, 2), (5, 3), (7, 1)])
def test_conv_transpose_formulations(k, s):
    torch.manual_seed(k * s)
    layer = torch.nn.ConvTranspose1d(6, 5, k, s, padding=(k - s) // 2)
    x = torch.randn(2, 6, 11)
    ref = layer(x).detach().numpy().transpose(0, 2, 1)
    ours = fastconv.ConvTranspose1d(6, 5, k, s, (k - s) // 2)
    ours.weight = mx.array(layer.weight.detach().numpy().transpose(1, 2, 0))
    ours.bias = mx.array(layer.bias.detach().numpy())
    try:
        for mode in ("cpu", "native"):
            fastconv.set_conv_mode(mode)
            assert np.abs(np.array(ours(mx.array(x.numpy().transpose(0, 2, 1)))) - ref).max() < 1e-5, mode
    finally:
        fastconv.set_conv_mode("auto")


@pytest.mark.parametrize("d", [1, 3, 5])
def test_dilated_conv_formulations(d):
    torch.manual_seed(d)
    layer = torch.nn.Conv1d(6, 5, 7, dilation=d, padding=3 * d)
    x = torch.randn(1, 6, 40)
    ref = layer(x).detach().numpy().transpose(0, 2, 1)
    ours = fastconv.Conv1d(6, 5, 7, padding=3 * d, dilation=d)
    ours.weight = mx.array(layer.weight.detach().numpy().transpose(0, 2, 1))
    ours.bias = mx.array(layer.bias.detach().numpy())
    try:
        for mode in ("cpu", "native"):
            fastconv.set_conv_mode(mode)
            assert np.abs(np.array(ours(mx.array(x.numpy().transpose(0, 2, 1)))) - ref).max() < 1e-5, mode
    finally:
        fastconv.set_conv_mode("auto")


@pytest.mark.parametrize(
    "name", ["v2-40k-f0", pytest.param("v2-48k-f0", marks=pytest.mark.slow), pytest.param("v1-32k-nof0", marks=pytest.mark.slow)]
)
def test_tiled_decoder_matches_reference(name, ref_cache, monkeypatch):
    """Decoding in tiles (fast path ``tile``) with the computed halo equals the reference on 200 frames cut into
    40-frame tiles; with too little context the tile seams show (so the comparison can fail)."""
    from rvc_mlx.models import generator

    variant = VARIANTS[name]
    ref, ours = _models(name, str(ref_cache))
    feats, pitch, f0 = _inputs(variant, 200, seed=5)
    with R.deterministic():
        audio_r = R.reference_infer(ref, feats, pitch, f0, sid=SID)[0]
    monkeypatch.setattr(generator, "TILE_FRAMES", 40)
    tiled = np.array(ours.stages(feats, pitch, f0, sid=SID, noise="none")["audio"])
    assert np.abs(tiled - audio_r).max() <= MAX_ABS and _corr(tiled, audio_r) >= MIN_CORR
    monkeypatch.setattr(type(ours.dec), "halo", lambda self: 2)
    seams = np.array(ours.stages(feats, pitch, f0, sid=SID, noise="none")["audio"])
    assert np.abs(seams - audio_r).max() > 10 * MAX_ABS


def test_tiled_decoder_memory_does_not_grow_with_length():
    """With tiles, the decoder's peak MLX memory for 3x the frames stays within 1.25x (beyond the output and source);
    without them it grows with the input (so the measurement can tell). Both tiled lengths make full tiles on
    one or two lanes."""
    from mlx.utils import tree_map

    from rvc_mlx import backend
    from rvc_mlx.models.generator import Generator

    gen = Generator(192, [3, 7], [[1, 3, 5]] * 2, [10, 10, 2, 2], 64, [16, 16, 4, 4], 0, sample_rate=40000)
    gen.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.1, gen.parameters()))
    mx.eval(gen.parameters())

    def peak(frames: int, tiled: bool) -> float:
        backend.set_enabled("tile", tiled)
        try:
            z = mx.random.normal((1, frames, 192))
            f0 = mx.full((1, frames), 150.0)
            mx.eval(z, f0)
            mx.clear_cache()
            mx.reset_peak_memory()
            base = mx.get_active_memory()
            y = gen(z, f0)
            mx.eval(y)
            # beyond three signal-length buffers: the output, its concatenation and the NSF source (computed once
            # for the whole input, one sample per output sample); without the source the ratio sat at 1.25
            return (mx.get_peak_memory() - base - 3 * y.nbytes) / 1e6
        finally:
            backend.set_enabled("tile", None)

    short, long = peak(1600, True), peak(4800, True)
    print(f"tiled peak {short:.1f} vs {long:.1f} MB")
    assert long <= 1.25 * short, (short, long)
    assert peak(4000, False) > 2 * peak(1000, False)


@pytest.mark.parametrize("c_in,c_out,k,d,batch", [(128, 128, 11, 5, 1), (64, 64, 11, 1, 2), (128, 128, 7, 3, 3)])
def test_fft_conv_formulation(c_in, c_out, k, d, batch):
    """Wide-kernel, many-channel convs take the overlap-save FFT path on CPU; it matches torch's conv1d."""
    torch.manual_seed(k * d)
    layer = torch.nn.Conv1d(c_in, c_out, k, dilation=d, padding=d * (k - 1) // 2)
    x = torch.randn(batch, c_in, 1237)
    ref = layer(x).detach().numpy().transpose(0, 2, 1)
    ours = fastconv.Conv1d(c_in, c_out, k, padding=d * (k - 1) // 2, dilation=d)
    ours.weight = mx.array(layer.weight.detach().numpy().transpose(0, 2, 1))
    ours.bias = mx.array(layer.bias.detach().numpy())
    assert fastconv.fft_size(c_in, c_out, k, d) is not None
    try:
        fastconv.set_conv_mode("cpu")
        got = np.array(ours(mx.array(x.numpy().transpose(0, 2, 1))))
        assert isinstance(ours._cpu_weight(), mx.array)  # the spectrum, not tap matrices
    finally:
        fastconv.set_conv_mode("auto")
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())


def test_fft_size_keeps_taps_where_they_win():
    assert fastconv.fft_size(128, 128, 3, 1) is None  # few taps
    assert fastconv.fft_size(32, 32, 11, 5) is None  # few channels
    assert fastconv.fft_size(64, 64, 7, 1) is None  # a tie at 64 channels, 7 taps
    assert fastconv.fft_size(256, 256, 11, 1) is None  # spectra too large
    assert fastconv.fft_size(128, 128, 11, 5) == 256  # span 51 -> at least 4x
    assert fastconv.fft_size(128, 128, 7, 1) == 64  # the minimum


def test_decoder_lanes_match_one_stream():
    """Tiles decoded side by side on one CPU stream per core (fast path ``lanes``) give the one-pass result, and
    the BLAS thread count is restored afterwards."""
    from mlx.utils import tree_map

    from rvc_mlx import backend
    from rvc_mlx.models.generator import Generator, tile_spans

    gen = Generator(192, [3, 7], [[1, 3, 5]] * 2, [10, 10, 2, 2], 64, [16, 16, 4, 4], 0, sample_rate=40000)
    gen.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.1, gen.parameters()))
    z, f0 = mx.random.normal((1, 300, 192)), mx.full((1, 300), 150.0)
    outs = {}
    for lanes, tile in ((False, False), (True, True)):
        backend.set_enabled("lanes", lanes)
        backend.set_enabled("tile", tile)
        try:
            outs[lanes] = np.array(gen(z, f0))
            streams = backend.lanes()
        finally:
            backend.set_enabled("lanes", None)
            backend.set_enabled("tile", None)
    if backend.cpu_count() > 1 and backend._blas_thread_control():
        assert len(streams) == backend.cpu_count()
        assert len(tile_spans(300, gen.halo(), len(streams))) % len(streams) == 0
        get, _ = backend._blas_thread_control()
        assert get() == backend.cpu_count() or get() > 1
    assert np.abs(outs[True] - outs[False]).max() <= 1e-5
