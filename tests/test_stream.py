"""The streaming engine (rvc_mlx.stream): its signal steps against torchaudio/librosa/torch, its lag, its bad-input
handling. Block-by-block parity with rvc-next's StreamEngine is in test_stream_parity.py."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rvc_mlx.errors import InputError
from rvc_mlx.stream import (
    Geometry,
    SincResampler,
    StreamConverter,
    StreamOptions,
    frame_rms,
    resize_align_corners,
    sola_offset,
    stream_file,
)

RATES = [(48000, 16000), (40000, 16000), (44100, 16000), (32000, 48000), (40000, 48000)]


def stub_converter(sample_rate=40000, n_speakers=1):
    """What StreamConverter reads of a VoiceConverter before it converts (enough for passthrough)."""
    config = SimpleNamespace(sample_rate=sample_rate, n_speakers=n_speakers, use_f0=True)
    return SimpleNamespace(synthesizer=SimpleNamespace(config=config), f0_models={"rmvpe": "rmvpe.safetensors"},
                           index=None)


@pytest.mark.parametrize("orig,new", RATES)
def test_sinc_resampler_matches_torchaudio(orig, new):
    import torchaudio.functional as F

    x = np.random.default_rng(0).standard_normal(14400).astype(np.float32)
    ref = F.resample(torch.from_numpy(x), orig, new).numpy()
    ours = SincResampler(orig, new)(x)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 2e-6
    # seeded fault: a different low-pass (rolloff 0.98) is far outside the tolerance
    ref_fault = F.resample(torch.from_numpy(x), orig, new, rolloff=0.98).numpy()
    assert np.abs(ours - ref_fault).max() > 1e-2


def test_frame_rms_and_resize_match_librosa_and_torch():
    import librosa

    x = np.random.default_rng(1).standard_normal(14400).astype(np.float32)
    ref = librosa.feature.rms(y=x, frame_length=1920, hop_length=480)[0]
    np.testing.assert_allclose(frame_rms(x, 1920, 480), ref, rtol=1e-6, atol=1e-7)
    env = frame_rms(x, 1920, 480)
    ref = torch.nn.functional.interpolate(torch.from_numpy(env)[None, None], size=14401, mode="linear",
                                          align_corners=True)[0, 0].numpy()
    np.testing.assert_allclose(resize_align_corners(env, 14401), ref, rtol=1e-6, atol=1e-7)


def test_sola_offset_finds_a_known_shift():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(4000).astype(np.float32)
    tail = x[1000:1400]
    assert sola_offset(x[1000 - 37 :], tail, 100) == 37
    assert sola_offset(x[1000:], tail, 100) == 0


@pytest.mark.parametrize("sr", [40000, 48000, 44100])
def test_geometry_is_rvcs(sr):
    geo = Geometry.of(StreamOptions(), sr)
    zc = sr // 100
    assert (geo.block, geo.crossfade, geo.sola_buffer, geo.sola_search, geo.extra) == (
        25 * zc, 5 * zc, 4 * zc, zc, 250 * zc)
    assert geo.ring16k == 44960 and geo.skip_head == 250 and geo.return_length == 30
    assert Geometry.of(StreamOptions(crossfade_time=0.02), sr).sola_buffer == 2 * zc  # short fades are whole


@pytest.mark.parametrize("crossfade", [0.02, 0.05, 0.1])
def test_passthrough_lag_is_crossfade_plus_10ms_minus_offset(crossfade):
    """The engine's own lag: with the voice skipped, output sample i is input sample i − lag exactly (outside
    the first block), lag = crossfade + 10 ms − SOLA offset."""
    sc = StreamConverter(stub_converter(), StreamOptions(passthrough=True, sample_rate=48000,
                                                         crossfade_time=crossfade))
    rng = np.random.default_rng(3)
    x = (0.2 * rng.standard_normal(48000 * 3)).astype(np.float32)
    y = stream_file(sc, x)
    lag = int(np.argmax([np.dot(y[24000:36000], x[24000 - k : 36000 - k]) for k in range(6000)]))
    lag_ms = 1000 * lag / 48000
    assert lag_ms == pytest.approx(sc.latency.algorithmic_ms)
    assert sc.latency.algorithmic_ms == pytest.approx(1000 * crossfade + 10 - 1000 * sc.last_offset / 48000)
    np.testing.assert_allclose(y[sc.block_size :], x[sc.block_size - lag : len(x) - lag], atol=2e-7)
    assert sc.latency.estimate_ms(5, 7) == pytest.approx(2 * 250 + 1000 * crossfade + 10 + 12)


def test_gate_zeroes_quiet_frames_without_delay():
    sc = StreamConverter(stub_converter(), StreamOptions(passthrough=True, sample_rate=40000, threshold=-40))
    t = np.arange(40000 * 3) / 40000
    x = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    x[50000:70000] *= 1e-3  # -70 dB: gated
    y = stream_file(sc, x)
    lag = round(sc.latency.engine_ms * 40)  # at most; the SOLA offset takes up to 10 ms off
    # the 10 ms frames whose 40 ms rms window lies inside the quiet part, wherever SOLA put the block
    gap = y[50000 + lag + 600 : 70000 + lag - 600 - 400]
    assert np.all(gap == 0)
    loud = y[20000:45000]
    assert np.abs(loud).max() > 0.25
    # seeded fault: without the gate the quiet part passes through
    sc = StreamConverter(stub_converter(), StreamOptions(passthrough=True, sample_rate=40000))
    assert np.abs(stream_file(sc, x)[50000 + lag + 600 : 70000 + lag - 1000]).max() > 1e-4


def test_bad_blocks_and_settings_are_one_line():
    sc = StreamConverter(stub_converter(), StreamOptions(passthrough=True, sample_rate=48000))
    cases = [np.zeros(100, np.float32), np.zeros(sc.block_size, np.int16), np.zeros((sc.block_size, 2), np.float32)]
    for block in cases:
        with pytest.raises(InputError) as e:
            sc.process(block)
        assert "\n" not in str(e.value)
    block = np.full(sc.block_size, 0.1, np.float32)
    block[::7] = np.nan
    out = sc.process(block)
    assert np.isfinite(out).all() and sc.stats.bad_samples == len(block[::7])
    assert np.isnan(block[0])  # the caller's block is not modified
    bad = [dict(sample_rate=22050), dict(sample_rate=8000), dict(f0_method="crepe"), dict(block_time=2.0),
           dict(crossfade_time=0.0), dict(threshold=5.0), dict(pitch=float("nan")), dict(index_rate=1.5)]
    for kwargs in bad:
        with pytest.raises(InputError) as e:
            StreamConverter(stub_converter(), StreamOptions(passthrough=True, **kwargs))
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="speaker id 3"):
        StreamConverter(stub_converter(n_speakers=2), StreamOptions(sid=3))
    no_rmvpe = stub_converter()
    no_rmvpe.f0_models = {}
    with pytest.raises(InputError, match="RMVPE"):
        StreamConverter(no_rmvpe, StreamOptions())


def test_stats_summary_counts_blocks():
    sc = StreamConverter(stub_converter(), StreamOptions(passthrough=True, sample_rate=48000))
    stream_file(sc, np.zeros(sc.block_size * 5 - 10, np.float32))
    s = sc.stats.summary()
    assert s["blocks"] == 5 and s["drops"] == 0 and 0 <= s["p50_ms"] <= s["p95_ms"] <= s["max_ms"]
    assert s["rtf_p95"] == pytest.approx(s["p95_ms"] / 250)
