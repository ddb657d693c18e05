"""F0 post-processing against rvc==0.3.5's ``Pipeline.get_f0`` (shift, harvest median filter, F0 file, coarse
pitch) with the estimator stubbed to return a known f0, and against numbers where RVC has no counterpart."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.signal

from rvc_mlx.errors import InputError
from rvc_mlx.f0 import METHOD_MODULES, F0Options, estimate, get_estimator, known_methods
from rvc_mlx.f0.postprocess import (
    apply_f0_file,
    autotune,
    coarse,
    f0_file_curve,
    from_file,
    median_filter,
    read_f0_file,
    shift,
)

X_PAD = 1  # seconds; RVC's fp32 config


def speechy_f0(n: int, seed: int) -> np.ndarray:
    """f0 track with voiced runs (40–1300 Hz, beyond both coarse limits), unvoiced gaps, and isolated spikes."""
    rng = np.random.default_rng(seed)
    f0 = np.exp(np.cumsum(rng.normal(0, 0.03, n)) + np.log(rng.uniform(80, 400)))
    f0 = np.clip(f0, 40, 1300)
    f0[rng.random(n) < 0.25] = 0.0
    spikes = rng.random(n) < 0.03
    f0[spikes] *= 2.0
    f0[:3] = [0.0, 45.0, 1200.0]
    return f0


@pytest.fixture(scope="module")
def rvc_pipeline():
    from rvc.modules.vc.pipeline import Pipeline

    config = SimpleNamespace(x_pad=X_PAD, x_query=6, x_center=38, x_max=41, is_half=False, device="cpu")
    return Pipeline(40000, config)


def rvc_get_f0(pipeline, monkeypatch, f0, method, key=0, filter_radius=3, inp_f0=None):
    """Run rvc's get_f0 with the estimator replaced by a stub returning ``f0`` (float64, as rvc's estimators)."""
    import rvc.modules.vc.pipeline as P

    x = np.zeros(160 * (len(f0) - 1), np.float32)
    if method == "harvest":
        monkeypatch.setattr(P, "cache_harvest_f0", lambda *a, **k: f0.astype(np.float64).copy())
    else:
        pipeline.model_rmvpe = SimpleNamespace(infer_from_audio=lambda audio, thred: f0.astype(np.float64).copy())
    return pipeline.get_f0("input.wav", x, len(f0), key, method, filter_radius, inp_f0)


@pytest.mark.parametrize("key", [0, 12, -7, 5])
def test_shift_and_coarse_match_rvc(rvc_pipeline, monkeypatch, key):
    f0 = speechy_f0(3000, key + 100)
    want_coarse, want_f0 = rvc_get_f0(rvc_pipeline, monkeypatch, f0, "rmvpe", key=key)
    got_f0 = shift(f0, key)
    np.testing.assert_allclose(got_f0, want_f0, rtol=1e-15)
    got = coarse(got_f0)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want_coarse)
    assert got.min() == 1 and got.max() == 255 and len(np.unique(got)) > 100


def test_coarse_from_float32_f0_matches_rvc_formula(rvc_pipeline, monkeypatch):
    f0 = speechy_f0(2000, 7).astype(np.float32)  # estimators here return float32
    want, _ = rvc_get_f0(rvc_pipeline, monkeypatch, f0, "rmvpe")
    np.testing.assert_array_equal(coarse(f0), want)


def test_coarse_known_values():
    # 50 Hz -> 1, 1100 Hz -> 255, unvoiced -> 1, beyond the range clipped; rint rounds half to even
    np.testing.assert_array_equal(coarse(np.array([0.0, 50.0, 1100.0, 20.0, 5000.0])), [1, 1, 255, 1, 255])
    mel = lambda f: 1127 * np.log(1 + f / 700)  # noqa: E731
    lo, hi = mel(50.0), mel(1100.0)
    f_at = lambda c: 700 * (np.exp(((c - 1) * (hi - lo) / 254 + lo) / 1127) - 1)  # noqa: E731
    assert coarse(np.array([f_at(100.0)]))[0] == 100
    assert coarse(np.array([f_at(100.4)]))[0] == 100 and coarse(np.array([f_at(100.6)]))[0] == 101


def test_harvest_median_filter_matches_rvc(rvc_pipeline, monkeypatch):
    f0 = speechy_f0(1500, 3)
    for radius in (3, 2):
        want_coarse, want_f0 = rvc_get_f0(rvc_pipeline, monkeypatch, f0, "harvest", key=2, filter_radius=radius)
        got_f0 = shift(median_filter(f0, radius), 2)
        np.testing.assert_allclose(got_f0, want_f0, rtol=1e-15)
        np.testing.assert_array_equal(coarse(got_f0), want_coarse)
    np.testing.assert_array_equal(median_filter(f0, 3), scipy.signal.medfilt(f0, 3))
    assert np.abs(median_filter(f0, 3) - f0).max() > 100  # the spikes are removed
    np.testing.assert_array_equal(median_filter(f0, 2), f0)


@pytest.mark.parametrize(
    "rows",
    [
        [(0.0, 220.0), (0.5, 330.0), (1.234, 110.0), (2.0, 0.0), (2.5, 440.0)],
        [(0.25, 200.0), (0.3, 210.0), (0.31, 300.0), (0.8, 150.0)],  # starts after 0: value held
        [(0.0, 150.0), (40.0, 300.0)],  # longer than the audio: cut
    ],
)
def test_f0_file_replaces_span_like_rvc(rvc_pipeline, monkeypatch, tmp_path, rows):
    path = tmp_path / "f0.csv"
    path.write_text("\n".join(f"{t},{hz}" for t, hz in rows) + "\n")
    f0 = speechy_f0(1200, 9)  # 12 s of padded audio
    inp = np.array([[float(v) for v in line.split(",")] for line in path.read_text().strip("\n").split("\n")],
                   dtype="float32")
    want_coarse, want_f0 = rvc_get_f0(rvc_pipeline, monkeypatch, f0, "rmvpe", key=3, inp_f0=inp)
    table = read_f0_file(path)
    np.testing.assert_array_equal(table, inp)
    got_f0 = apply_f0_file(shift(f0, 3), f0_file_curve(table), offset_frames=X_PAD * 100)
    np.testing.assert_allclose(got_f0, want_f0, rtol=1e-15)
    np.testing.assert_array_equal(coarse(got_f0), want_coarse)
    curve = from_file(path)
    assert len(curve) == int(np.round((inp[:, 0].max() - inp[:, 0].min()) * 100 + 1))
    np.testing.assert_array_equal(from_file(path, n_frames=7), curve[:7])
    np.testing.assert_array_equal(got_f0[100 : 100 + len(curve)][: len(got_f0) - 100], curve[: len(got_f0) - 100])


def test_f0_file_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("0.0,100\nhello,world\n")
    with pytest.raises(InputError, match="line 2"):
        read_f0_file(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no"):
        read_f0_file(empty)
    with pytest.raises(InputError, match="cannot read"):
        read_f0_file(tmp_path / "missing.csv")


def test_autotune():
    f0 = np.array([0.0, 440.0, 452.0, 427.0, 261.0, 100.0, 466.16], dtype=np.float32)
    snapped = autotune(f0, 1.0)
    # 452 Hz is +46.8 cents above A4 -> A4; 427 Hz is -52 cents -> G#4 (415.30 Hz); 261 -> C4 (261.63); 100 -> G2
    np.testing.assert_allclose(snapped, [0.0, 440.0, 440.0, 415.3047, 261.6256, 97.99886, 466.1638], rtol=1e-5)
    half = autotune(f0, 0.5)
    np.testing.assert_allclose(half, (f0 + snapped) / 2, rtol=1e-6)
    np.testing.assert_array_equal(autotune(f0, 0.0), f0)
    assert snapped.dtype == np.float32
    with pytest.raises(InputError):
        autotune(f0, 1.5)


def test_shift_octave_and_unvoiced():
    f0 = np.array([0.0, 110.0, 220.0], np.float32)
    np.testing.assert_allclose(shift(f0, 12), [0.0, 220.0, 440.0], rtol=1e-7)
    np.testing.assert_allclose(shift(f0, -12), [0.0, 55.0, 110.0], rtol=1e-7)
    assert shift(f0, 3).dtype == np.float32


def test_registry_lists_methods_and_rejects_unknown():
    assert {"rmvpe", "crepe", "fcpe", "harvest", "dio", "pm"} <= set(known_methods())
    for method in METHOD_MODULES:  # every listed module registers the method it is listed for
        assert callable(get_estimator(method))
    with pytest.raises(InputError, match="known methods: .*rmvpe"):
        estimate("yin", np.zeros(16000, np.float32), F0Options())
    with pytest.raises(InputError, match="mono"):
        estimate("rmvpe", np.zeros((2, 16000), np.float32), F0Options(rmvpe_path="x"))


def test_f0_file_on_the_10ms_grid_is_its_hz_column_exactly(tmp_path):
    """rows 0.00, 0.01, ... (what rvc-mlx pitch writes) come back bit for bit; RVC's float32 time·100 would make
    e.g. frame 15 (0.15 s -> 15.000001) a blend of frames 14 and 15."""
    hz = np.random.default_rng(3).uniform(60, 900, 4000).astype(np.float32)
    hz[::5] = 0
    path = tmp_path / "grid.csv"
    path.write_text("".join(f"{i / 100:.2f},{float(v)!r}\n" for i, v in enumerate(hz)))
    curve = from_file(path)
    assert curve.dtype == np.float64 and len(curve) == len(hz)
    np.testing.assert_array_equal(curve, hz)


def test_f0_file_reads_the_pitch_csv(tmp_path):
    """The header of rvc-mlx pitch's CSV is skipped; voiced 0 unvoices a frame; other third columns are errors."""
    path = tmp_path / "pitch.csv"
    path.write_text("time,f0,voiced\n0.00,0,0\n0.01,220.5,1\n0.02,221,0\n0.03,222.25,1\n")
    np.testing.assert_array_equal(read_f0_file(path), np.float32([[0, 0], [0.01, 220.5], [0.02, 0], [0.03, 222.25]]))
    np.testing.assert_array_equal(from_file(path), [0, 220.5, 0, 222.25])
    for bad in ("time,f0,voiced\n0.00,220,0.5\n", "0.00,220\ntime,f0,voiced\n", "time,hz\n0.00,220\n"):
        path.write_text(bad)
        with pytest.raises(InputError, match="line"):
            read_f0_file(path)
