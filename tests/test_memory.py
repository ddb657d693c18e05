"""Memory does not grow with input length beyond the output (issue 7): the length-proportional pipeline steps work
in blocks and equal their whole-signal definitions, and chunked RMVPE's peak MLX memory is the same for a long and
a short input. The end-to-end peak RSS (1 vs 10 minutes) is measured by ``benchmarks/memory.py``.
"""

from __future__ import annotations

import tracemalloc

import mlx.core as mx
import numpy as np
import pytest
import torch
from scipy import signal

from rvc_mlx import pipeline
from rvc_mlx.models import rmvpe as rmvpe_model

from .reference.hubert_models import speech_like  # (n_samples, seed)
from .reference.rmvpe_models import cached_rmvpe

SMALL_BLOCK = 4096  # blocks this small make every blocked step run over many blocks in these tests


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(pipeline, "BLOCK", SMALL_BLOCK)


def _noise(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (rng.standard_normal(n) * np.abs(np.sin(2 * np.pi * 0.37 * t)) * 0.3).astype(np.float32)


def _traced_peak(fn, *args):
    """(result, peak bytes numpy allocated while ``fn(*args)`` ran)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn(*args)
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------- blocked steps are exact


@pytest.mark.parametrize("n", [19, 1700, 16000 * 3 + 5, 3 * SMALL_BLOCK])
def test_blocked_high_pass_is_filtfilt(small_blocks, n):
    x = _noise(n, seed=n)
    b, a = signal.butter(N=pipeline.HIGH_PASS_ORDER, Wn=pipeline.HIGH_PASS_HZ, btype="high", fs=16000)
    got = pipeline.high_pass(x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, signal.filtfilt(b, a, x))


@pytest.mark.parametrize("n,pad", [(1700, 16000), (16001, 16000), (50000, 16000), (5, 3)])
def test_reflect_pad32(n, pad):
    x = _noise(n, 1).astype(np.float64)
    np.testing.assert_array_equal(pipeline.reflect_pad32(x, pad), np.pad(x, (pad, pad), mode="reflect").astype(np.float32))


def _cut_points_whole(audio):
    """rvc==0.3.5's cut-point search, literally: moving |x| sums over the WHOLE reflect-padded signal."""
    window, query, center = 160, 16000 * 6, 16000 * 38
    pad = np.pad(audio, (window // 2, window // 2), mode="reflect")
    if pad.shape[0] <= 16000 * 41:
        return []
    audio_sum = np.zeros_like(audio)
    for i in range(window):
        audio_sum += np.abs(pad[i : i - window])
    return [t - query + int(np.argmin(audio_sum[t - query : t + query])) for t in range(center, audio.shape[0], center)]


@pytest.mark.parametrize("seconds", [40.99, 41.0, 52.0, 76.0 + 1 / 16000, 44.0 + 38, 38 * 2 + 0.01, 38 * 3 + 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cut_points_search_only_near_cuts_but_equal_the_whole_search(seconds, dtype):
    audio = _noise(int(16000 * seconds), seed=3).astype(dtype)
    audio[16000 * 30 : 16000 * 90 : 997] = 0  # isolated exact zeros: ties and near-ties in the sums
    want = _cut_points_whole(audio)
    assert pipeline.cut_points(audio) == want
    assert len(want) == (0 if seconds < 41 else int((len(audio) - 1) // (16000 * 38)))


def test_rms_envelope_is_librosa_rms(small_blocks):
    import librosa

    for sr, n in ((16000, 16000 * 7 + 123), (40000, 40000 * 3), (48000, 1000)):
        x = _noise(n, seed=sr).astype(np.float64)
        want = librosa.feature.rms(y=x, frame_length=sr // 2 * 2, hop_length=sr // 2)[0]
        got = pipeline.rms_envelope(x, sr)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=3e-7)  # librosa returns float32


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.9])
def test_blocked_rms_mix_is_rvc_change_rms(small_blocks, rate):
    from rvc.modules.vc.pipeline import change_rms

    source = pipeline.high_pass(_noise(16000 * 5 + 77, seed=5))
    out = speech_like(40000 * 5 + 3, 9) * np.linspace(0.05, 1.0, 40000 * 5 + 3).astype(np.float32)
    want = change_rms(source, 16000, out.copy(), 40000, rate)
    got = pipeline.rms_mix(source, out, 40000, rate)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-8)
    assert np.abs(want - out).max() > 0.01  # the mix changes the signal
    # in place, from the input's envelope: the same numbers
    inplace = out.copy()
    assert pipeline.rms_mix_envelope(pipeline.rms_envelope(source, 16000), inplace, 40000, rate) is inplace
    np.testing.assert_array_equal(inplace, got)


# ------------------------------------------------------------------------------------- temporaries are bounded


def test_blocked_steps_allocate_no_length_proportional_temporaries(small_blocks):
    """numpy's traced peak while each step runs, on 8x longer input (50 s vs 400 s at 16 kHz, 1 vs 10 cut
    points): the same (rms mix, in place; cut points) or grown by the result only (high-pass: one float64 array)."""
    short, long = 16000 * 50, 16000 * 400
    peaks = {}
    for n in (short, long):
        x = _noise(n, seed=1)
        _, peaks["high_pass", n] = _traced_peak(pipeline.high_pass, x)
        env = np.full(1 + n // 20000, 0.1)
        _, peaks["rms_mix", n] = _traced_peak(pipeline.rms_mix_envelope, env, x.copy(), 40000, 0.25)
        points, peaks["cut_points", n] = _traced_peak(pipeline.cut_points, x)
        assert len(points) == (1 if n == short else 10)
    block_bytes = SMALL_BLOCK * 8
    print(peaks)
    for n in (short, long):  # high-pass: the float64 result plus a few blocks
        assert n * 8 <= peaks["high_pass", n] <= n * 8 + 8 * block_bytes, (n, peaks["high_pass", n])
    # rms mix and cut points: a few blocks / a few query windows, whatever the length
    assert peaks["rms_mix", long] <= peaks["rms_mix", short] + block_bytes
    assert peaks["rms_mix", long] <= 12 * block_bytes
    assert peaks["cut_points", long] <= 1.1 * peaks["cut_points", short]
    assert peaks["cut_points", long] < long  # < 1 byte per sample (the whole-signal search holds 3 float arrays)


# ------------------------------------------------------------------------------------- chunked RMVPE


@pytest.fixture(scope="module")
def rmvpe(ref_cache, tmp_path_factory):
    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.convert.rmvpe import convert_rmvpe
    from rvc_mlx.store import save

    src = cached_rmvpe(ref_cache)
    weights, config = convert_rmvpe(load_checkpoint(src), str(src))
    path = tmp_path_factory.mktemp("rmvpe-mem") / "rmvpe.safetensors"
    save(path, weights, config)
    return rmvpe_model.Rmvpe.load(path)


def _mlx_peak(fn, *args, **kwargs) -> int:
    mx.clear_cache()
    mx.reset_peak_memory()
    fn(*args, **kwargs)
    peak = mx.get_peak_memory()
    mx.clear_cache()
    return peak


def test_chunked_rmvpe_peak_memory_does_not_grow_with_length(rmvpe):
    """Peak MLX memory above the weights (a 32-frame input's peak) of chunked F0 over 4 vs 24 chunks: the same
    within the allocator's size-class noise (measured: 21-26 MB each); the unchunked computation of the longer input
    needs several times more (measured: ~100 MB), so the check can fail."""
    chunk, context = 64, 32  # windows of 128 frames: cheap; the production sizes only scale this
    frames = {"short": 4 * chunk, "long": 24 * chunk}
    audio = {k: speech_like((n - 1) * 160, 4) for k, n in frames.items()}
    base = _mlx_peak(rmvpe.f0, speech_like(31 * 160, 4))
    act = {k: _mlx_peak(rmvpe.f0, a, chunk=chunk, context=context) - base for k, a in audio.items()}
    whole = _mlx_peak(rmvpe.f0, audio["long"], chunk=1 << 20) - base
    print({k: v / 2**20 for k, v in act.items()}, "whole long:", whole / 2**20, "MB above", base / 2**20, "MB")
    assert act["short"] > 0
    # 8 MB slack: with CPU lanes, the order in which two lanes' blocks are freed varies from run to run
    assert act["long"] <= 1.15 * act["short"] + (8 << 20)
    assert whole >= 3 * act["long"]


# ------------------------------------------------------------------------------------- crepe, block by block


def test_crepe_block_by_block_equals_the_whole_input_at_once():
    """crepe_f0 frames, runs and Viterbi-decodes one decode block at a time: the same as framing the whole input,
    running the network over every frame and decoding the (T, 360) probabilities per block."""
    from rvc_mlx.f0 import F0Options
    from rvc_mlx.f0 import crepe as crepe_f0

    audio = speech_like(16000 * 6 + 77, 3)  # 601 frames: blocks of 256, 256 and 89
    opts = F0Options(batch_size=256)
    model = crepe_f0.load_crepe(None, "tiny")
    probs = crepe_f0.crepe_probabilities(model, crepe_f0.frame_audio(audio))
    f0, pd = crepe_f0.decode_viterbi(probs, opts.f0_min, opts.f0_max, opts.batch_size)
    want = crepe_f0.rvc_postprocess(f0, pd)
    got = crepe_f0.crepe_f0(audio, opts, "tiny")
    np.testing.assert_array_equal(got, want)
    assert 0.1 < np.mean(want > 0) < 0.95
