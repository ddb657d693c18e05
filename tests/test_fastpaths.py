"""The CPU fast paths' switches and the NumPy-backed transcendental functions (nn.fastmath)."""

import mlx.core as mx
import numpy as np
import pytest

from rvc_mlx import backend
from rvc_mlx.nn import fastmath


@pytest.fixture
def exp_path(request):
    backend.set_enabled("exp", request.param)
    yield request.param
    backend.set_enabled("exp", None)


def test_switches_env_and_override(monkeypatch):
    monkeypatch.setenv(backend.DISABLE_ENV, "exp, tile")
    assert not backend.enabled("exp") and not backend.enabled("tile") and backend.enabled("conv")
    backend.set_enabled("exp", True)
    try:
        assert backend.enabled("exp")
    finally:
        backend.set_enabled("exp", None)
    assert not backend.enabled("exp")
    monkeypatch.setenv(backend.DISABLE_ENV, "all")
    assert not any(backend.enabled(name) for name in backend.FAST_PATHS)
    with pytest.raises(KeyError, match="unknown fast path"):
        backend.enabled("warp")


@pytest.mark.parametrize("exp_path", [True, False], indirect=True)
def test_functions_match_float64(exp_path):
    rng = np.random.default_rng(0)
    # large enough that the NumPy path splits over threads; includes overflow/underflow territory
    x = np.concatenate([rng.normal(0, 4, fastmath.MIN_BLOCK * 3), [-200.0, -90.0, 0.0, 90.0, 200.0]]).astype(np.float32)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        want_exp = np.exp(x64)
    got = np.array(fastmath.exp(mx.array(x)))
    finite = np.isfinite(want_exp.astype(np.float32))
    rel = np.abs(got[finite] - want_exp[finite]) / np.maximum(want_exp[finite], 1e-30)
    assert rel[want_exp[finite] > 1e-30].max() < 5e-6
    assert np.isinf(got[~finite]).all()
    sig = np.array(fastmath.sigmoid(mx.array(x)))
    assert np.abs(sig - 1 / (1 + np.exp(-np.clip(x64, -500, 500)))).max() < 2e-7
    th = np.array(fastmath.tanh(mx.array(x)))
    assert np.abs(th - np.tanh(x64)).max() < 3e-7
    assert np.isfinite(sig).all() and np.isfinite(th).all()


@pytest.mark.parametrize("exp_path", [True, False], indirect=True)
def test_softmax_matches_float64(exp_path):
    rng = np.random.default_rng(1)
    s = rng.normal(0, 3, size=(2, 700, 700))
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    sm = np.array(fastmath.softmax(mx.array(s.astype(np.float32))))
    assert (np.abs(sm - w) / np.maximum(w, 1e-6)).max() < 5e-6  # float32 rounding of the scores themselves


ATTENTION_PATHS = {"threaded tasks": (True, True), "MLX query blocks": (True, False), "MLX kernel": (False, False)}


@pytest.mark.parametrize("path", list(ATTENTION_PATHS))
def test_attention_matches_float64_on_every_path(path, monkeypatch):
    """Packed heads ``(B, T, H·d)``; more queries than keys, and ragged last blocks on the two blocked paths."""
    numpy_path, tasks = ATTENTION_PATHS[path]
    if tasks and backend.blas_sgemm() is None:
        pytest.skip("no preloaded BLAS")
    backend.set_enabled("exp", numpy_path)
    if not tasks:
        monkeypatch.setattr(fastmath, "blas_sgemm", lambda: None)
    monkeypatch.setattr(fastmath, "ATTENTION_ROWS", 96)
    monkeypatch.setattr(fastmath, "SCORE_BLOCK_BYTES", 4 * 3 * 600 * 64)  # 64 query rows a block
    monkeypatch.setattr(fastmath, "MIN_BLOCK", 1 << 12)  # tasks split over threads at this size
    rng = np.random.default_rng(1)
    heads, d, scale = 3, 16, 0.7
    q = rng.normal(size=(2, 700, heads * d)).astype(np.float32)
    k, v = (rng.normal(size=(2, 600, heads * d)).astype(np.float32) for _ in range(2))
    try:
        got = np.array(fastmath.attention(mx.array(q), mx.array(k), mx.array(v), heads, scale))
    finally:
        backend.set_enabled("exp", None)

    def split(x):
        return x.astype(np.float64).reshape(2, -1, heads, d).transpose(0, 2, 1, 3)

    s = split(q) @ split(k).transpose(0, 1, 3, 2) * scale
    w = np.exp(s - s.max(-1, keepdims=True))
    want = ((w / w.sum(-1, keepdims=True)) @ split(v)).transpose(0, 2, 1, 3).reshape(q.shape)
    assert np.abs(got - want).max() < 1e-5  # float32 rounding: the MLX kernel 5.8e-6, ours 2.2e-6
    wrong = np.array(fastmath.attention(mx.array(q), mx.array(k), mx.array(v), heads, scale * 1.01))
    assert np.abs(wrong - want).max() > 1e-3  # a 1 % change of the scale is far outside it


def test_blas_sgemm_on_strided_views():
    gemm = backend.blas_sgemm()
    if gemm is None:
        pytest.skip("no preloaded BLAS")
    rng = np.random.default_rng(3)
    a, b = (rng.normal(size=(50, 96)).astype(np.float32) for _ in range(2))
    out = np.zeros((50, 96), np.float32)
    gemm(a[:, 32:64], b[:, 32:64], out[:, 16:66], trans_b=True, alpha=0.5)  # a head's columns of packed arrays
    assert np.abs(out[:, 16:66] - 0.5 * a[:, 32:64] @ b[:, 32:64].T).max() < 1e-5
    assert not out[:, :16].any() and not out[:, 66:].any()
    gemm(a[:, :40], b[:40, :30], out[:, :30])
    assert np.abs(out[:, :30] - a[:, :40] @ b[:40, :30]).max() < 1e-5
    with pytest.raises(ValueError, match="does not give"):
        gemm(a[:, :40], b[:30, :30], out[:, :30])
    with pytest.raises(ValueError, match="unit column stride"):
        gemm(a[:, ::2], b[:48, :30], out[:, :30])


def test_exp_shifted_leaves_its_input_alone():
    backend.set_enabled("exp", True)
    try:
        s = mx.array(np.random.default_rng(2).normal(size=(4, 300_000)).astype(np.float32))
        before = np.array(s)
        e = fastmath.exp_shifted(s)
        assert np.array_equal(np.array(s), before)
        want = np.exp(before.astype(np.float64) - before.max(-1, keepdims=True))
        assert np.abs(np.array(e) - want).max() < 1e-6
    finally:
        backend.set_enabled("exp", None)


@pytest.mark.parametrize("exp_path", [True, False], indirect=True)
def test_exp_shifted_in_place_matches_float64(exp_path):
    """``exp_shifted_`` (threaded, cache-sized row pieces, in the array's own buffer) equals exp(s − max(s))."""
    rng = np.random.default_rng(3)
    s = rng.normal(0, 6, size=(2, 3, 333, 1001)).astype(np.float32)  # several threads and row pieces, ragged
    want = np.exp(s.astype(np.float64) - s.max(-1, keepdims=True))
    fresh = mx.array(s) * 1.0
    got = fastmath.exp_shifted_(fresh)
    assert np.abs(np.array(got) - want).max() < 1e-6
    if exp_path:
        assert got is fresh  # in place: no second full-size buffer


def test_column_moments_match_float64():
    """Threaded per-channel mean/variance (HuBERT's channel norm) against float64, on a long input with an offset
    mean (where a float32 running sum would drift); None off the NumPy path."""
    rng = np.random.default_rng(4)
    x = (rng.normal(3.0, 0.5, size=(1, 131_075, 8)) + np.arange(8) * 10).astype(np.float32)
    backend.set_enabled("exp", True)
    try:
        mean, var = fastmath.column_moments(mx.array(x), 256)
    finally:
        backend.set_enabled("exp", None)
    x64 = x.astype(np.float64)
    assert np.abs(np.array(mean) - x64.mean(axis=1, keepdims=True)).max() < 1e-5
    np.testing.assert_allclose(np.array(var), x64.var(axis=1, keepdims=True), rtol=1e-5)
    backend.set_enabled("exp", False)
    try:
        assert fastmath.column_moments(mx.array(x), 256) is None
    finally:
        backend.set_enabled("exp", None)


def test_gru_switch_matches_torch_both_ways():
    import torch

    from rvc_mlx.nn.gru import BiGRU, fold_gru_biases

    torch.manual_seed(3)
    d, h, t = 20, 12, 29
    ref = torch.nn.GRU(d, h, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
        x = torch.randn(2, t, d)
        want = ref(x)[0].numpy()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    gru = BiGRU(d, h)
    for suffix, direction in (("_l0", gru.l0), ("_l0_reverse", gru.l0_reverse)):
        direction.Wx, direction.Wh = mx.array(sd["weight_ih" + suffix]), mx.array(sd["weight_hh" + suffix])
        b, bhn = fold_gru_biases(sd["bias_ih" + suffix], sd["bias_hh" + suffix])
        direction.b, direction.bhn = mx.array(b), mx.array(bhn)
    outs = {}
    for on in (True, False):
        backend.set_enabled("gru", on)
        try:
            outs[on] = np.array(gru(mx.array(x.numpy())))
        finally:
            backend.set_enabled("gru", None)
        assert np.abs(outs[on] - want).max() < 1e-5
    assert np.abs(outs[True] - outs[False]).max() < 1e-5


def test_cache_limit_default_follows_the_malloc_fast_path(monkeypatch):
    """glibc's heap keeps freed pages when the malloc fast path is on, so MLX's own cache is smaller then;
    ``$RVC_MLX_CACHE_GB`` wins either way."""
    monkeypatch.delenv("RVC_MLX_CACHE_GB", raising=False)
    monkeypatch.setitem(backend._state, "malloc", True)
    assert backend.cache_limit_bytes() == int(backend.CACHE_GB_WITH_MALLOC * (1 << 30))
    monkeypatch.setitem(backend._state, "malloc", False)
    assert backend.cache_limit_bytes() == int(backend.CACHE_GB * (1 << 30)) > int(0.1 * (1 << 30))
    monkeypatch.setenv("RVC_MLX_CACHE_GB", "2")
    assert backend.cache_limit_bytes() == 2 << 30


def test_stage_cache_limit_is_scoped():
    """Inside ``cache_limit`` freed buffers up to the stage's limit stay cached; on exit the cache is emptied and
    the default limit is back (a larger cache than the default would otherwise follow into the next stage)."""
    backend.configure_mlx()
    mx.clear_cache()
    default = backend.cache_limit_bytes()
    big = default + (256 << 20)
    with backend.cache_limit(big):
        x = mx.zeros(((default + (128 << 20)) // 4,)) + 1  # above the default limit, below big
        mx.eval(x)
        del x
        assert mx.get_cache_memory() > default
    assert mx.get_cache_memory() == 0
    assert mx.set_cache_limit(default) == default
    backend.set_enabled("cache", False)
    try:
        with backend.cache_limit(big):
            assert mx.set_cache_limit(default) == default
    finally:
        backend.set_enabled("cache", None)


def test_blas_preload_sets_the_thread_timeout_unless_given():
    import subprocess
    import sys

    code = "import os, rvc_mlx.backend as b; b.preload_blas(); print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == backend.BLAS_THREAD_TIMEOUT
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OPENBLAS_THREAD_TIMEOUT": "12"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "12"


FAULT_PROBE = """
import resource, rvc_mlx, rvc_mlx.backend as b, mlx.core as mx
mx.set_cache_limit(0)  # MLX hands every freed buffer back to malloc
faults = []
for _ in range(4):  # a large temporary made, filled and freed, four times over
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = mx.ones((16 << 20,)); mx.eval(x); del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(b._state.get("malloc"), max(faults[1:]))
"""


@pytest.mark.skipif(__import__("platform").system() != "Linux", reason="glibc's allocator")
def test_malloc_fast_path_reuses_freed_buffers_without_page_faults():
    """64 MB made and freed repeatedly: with the fast path only the first one faults its pages in (16 k of 4 KB);
    without it (``RVC_MLX_DISABLE=malloc``) each one is a fresh mapping and faults all over again."""
    import os
    import subprocess
    import sys

    def probe(disable: str) -> tuple[str, int]:
        env = {**os.environ, backend.DISABLE_ENV: disable}
        out = subprocess.run([sys.executable, "-c", FAULT_PROBE], env=env, capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        return applied, int(faults)

    pages = (64 << 20) // 4096
    applied, faults = probe("malloc")
    assert applied == "None" and faults >= pages // 2
    applied, faults = probe("")
    assert applied == "True" and faults < pages // 20
