"""exp, softmax, sigmoid and tanh that are fast on MLX's Linux CPU backend.

MLX's CPU ``exp`` (and ``sigmoid``/``tanh``/``softmax``, built on it) is a scalar loop in the Linux wheel: about
15 ns per element, so HuBERT's attention on 32 s of audio spends ~6 s in it. NumPy's ``exp`` is vectorised
(AVX2/AVX-512) and ~10x faster per core. On CPU, ``exp`` therefore evaluates its argument, runs NumPy's exp over
blocks of it on ``backend.cpu_count()`` threads (ufuncs release the GIL) and wraps the result as an MLX array. NumPy's
float32 exp is accurate to ~1 ulp (MLX's own: ~4e-6 relative), so this is a drop-in.

Everything else stays in MLX. Off the CPU, or with fast path ``exp`` disabled (``RVC_MLX_DISABLE=exp``), MLX's
own kernels are used. The functions here are not differentiable (inference only).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np

from ..backend import blas_sgemm, blas_threads, cpu_count, enabled, on_cpu

MIN_BLOCK = 1 << 18  # elements per thread below which one thread is faster
SCORE_BLOCK_BYTES = 64 << 20  # attention scores evaluated at a time (query rows × keys × heads)
CACHE_BLOCK = 256 << 10  # bytes of rows handled at a time by exp_shifted_ (stays in L2 between its passes)
_POOL = ThreadPoolExecutor(cpu_count())  # threads start on first use


def _use_numpy() -> bool:
    return enabled("exp") and on_cpu()


def _exp_block(src: np.ndarray, dst: np.ndarray) -> None:
    with np.errstate(over="ignore", under="ignore"):  # exp overflows to inf and underflows to 0, as mx.exp
        np.exp(src, out=dst)


def _in_threads(fn, n: int, elements: int) -> list:
    """``[fn(lo, hi), ...]`` over consecutive ranges that split ``range(n)``, one range per CPU core (fewer when
    there are under ``MIN_BLOCK`` of the ``elements`` per thread); a single range runs in the calling thread."""
    workers = max(1, min(cpu_count(), elements // MIN_BLOCK, n))
    if workers == 1:
        return [fn(0, n)]
    bounds = np.linspace(0, n, workers + 1).astype(np.int64)
    return list(_POOL.map(lambda i: fn(int(bounds[i]), int(bounds[i + 1])), range(workers)))


def numpy_exp(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst = exp(src)`` for C-contiguous float32 arrays of one shape (``dst`` may be ``src``), split over
    the CPU cores in blocks."""
    src, dst = src.reshape(-1), dst.reshape(-1)
    _in_threads(lambda lo, hi: _exp_block(src[lo:hi], dst[lo:hi]), src.size, src.size)


def exp(x: mx.array) -> mx.array:
    """Elementwise ``exp`` (float32)."""
    if not _use_numpy():
        return mx.exp(x)
    src = np.ascontiguousarray(_evaluated(x.astype(mx.float32)))
    dst = np.empty_like(src)
    numpy_exp(src, dst)
    return mx.array(dst)


def _evaluated(x: mx.array) -> np.ndarray:
    mx.eval(x)
    return np.asarray(x)


def exp_shifted(scores: mx.array, axis: int = -1) -> mx.array:
    """``exp(scores − max(scores))`` along ``axis``: softmax weights before normalisation, in (0, 1].

    On the NumPy path the exponential is taken in place in the buffer of the (private, freshly computed)
    difference, so no extra full-size array is allocated or copied."""
    shifted = scores.astype(mx.float32) - mx.max(scores, axis=axis, keepdims=True)
    if not _use_numpy():
        return mx.exp(shifted)
    view = _evaluated(shifted)
    if not (view.flags.c_contiguous and view.flags.writeable):
        return mx.array(np.exp(view))
    numpy_exp(view, view)
    return shifted


def exp_shifted_(scores: mx.array) -> mx.array:
    """``exp_shifted(scores)`` along the last axis, computed in place in ``scores``' own buffer on the NumPy path:
    for a freshly computed array nothing else refers to (e.g. attention scores straight from a matmul).

    Rows are split over the CPU cores; each thread takes its rows' maxima, subtracts them and exponentiates, so
    the whole softmax numerator is one threaded pass instead of MLX's single-threaded max and subtraction."""
    if not _use_numpy():
        return exp_shifted(scores)
    view = _evaluated(scores)
    if scores.dtype != mx.float32 or not (view.flags.c_contiguous and view.flags.writeable):
        return exp_shifted(scores)
    rows = view.reshape(-1, view.shape[-1])
    step = max(1, CACHE_BLOCK // (4 * rows.shape[1]))

    def block(lo: int, hi: int) -> None:  # in cache-sized pieces: max, subtract and exp in one trip through memory
        for start in range(lo, hi, step):
            part = rows[start : min(start + step, hi)]
            part -= part.max(axis=-1, keepdims=True)
            _exp_block(part, part)

    _in_threads(block, rows.shape[0], rows.size)
    return scores


def column_moments(x: mx.array, block: int) -> tuple[mx.array, mx.array] | None:
    """Per-column mean and (biased) variance of ``x (B, T, C)`` over axis 1, ``(B, 1, C)`` float32 each, or None
    off the NumPy path. Rows are split over the CPU cores; each thread sums ``block`` rows at a time in float32 and
    accumulates in float64, and the variance is a second pass over the deviations (no full-size temporaries)."""
    if not _use_numpy():
        return None
    values = _evaluated(x.astype(mx.float32))
    b, t, c = values.shape

    def pass_over(fn) -> np.ndarray:
        def part(lo: int, hi: int) -> np.ndarray:
            acc = np.zeros((b, c), dtype=np.float64)
            for start in range(lo, hi, block):
                acc += fn(values[:, start : min(start + block, hi)])
            return acc

        return sum(_in_threads(part, t, values.size))

    mean = pass_over(lambda rows: rows.sum(axis=1)) / t
    centre = mean.astype(np.float32)[:, None, :]
    var = pass_over(lambda rows: np.square(rows - centre).sum(axis=1)) / t
    return mx.array(mean[:, None, :].astype(np.float32)), mx.array(var[:, None, :].astype(np.float32))


def softmax(x: mx.array, axis: int = -1) -> mx.array:
    if not _use_numpy():
        return mx.softmax(x, axis=axis)
    e = exp_shifted(x, axis)
    return e / mx.sum(e, axis=axis, keepdims=True)


def weighted_sum(e: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
    """``(e @ v, Σ_j e)`` for unnormalised weights ``e (…, T, S)`` and values ``v (…, S, d)``; the row sums
    come out of the same matrix product (a column of ones appended to ``v``), saving a pass over ``e``."""
    ones = mx.ones(v.shape[:-1] + (1,), dtype=v.dtype)
    out = e @ mx.concatenate([v, ones], axis=-1)
    return out[..., :-1], out[..., -1:]


def sigmoid(x: mx.array) -> mx.array:
    """``1 / (1 + exp(−x))``, computed from ``exp(−|x|)`` so nothing overflows."""
    if not _use_numpy():
        return mx.sigmoid(x)
    e = exp(-mx.abs(x))
    return mx.where(x >= 0, 1.0, e) / (1.0 + e)


def tanh(x: mx.array) -> mx.array:
    """``sign(x) · (1 − e) / (1 + e)`` with ``e = exp(−2|x|)`` (absolute error ~1e-7 near 0)."""
    if not _use_numpy():
        return mx.tanh(x)
    e = exp(-2.0 * mx.abs(x))
    return mx.where(x >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)


ATTENTION_ROWS = 128  # query rows per task of the threaded attention: one head's (rows, keys) scores stay in L2


def attention(q: mx.array, k: mx.array, v: mx.array, heads: int, scale: float) -> mx.array:
    """Unmasked scaled dot-product attention over packed heads: ``(B, T, H·d), (B, S, H·d) x2 -> (B, T, H·d)``
    (head ``h`` is columns ``[h·d, (h+1)·d)``, as the projections give them).

    On the NumPy path with a preloaded BLAS (``backend.blas_sgemm``) it is flash-style: one task per (head,
    ``ATTENTION_ROWS`` queries), split over the CPU cores with one BLAS thread each; a task's scores are
    computed, exponentiated, summed and multiplied by the values while they sit in cache, straight from and into
    the packed layout (no head transposes, no T² array). Without that BLAS the queries go in blocks through MLX
    products and the threaded NumPy numerator (:func:`_attention_blocks`); off the NumPy path MLX's own kernel."""
    gemm = blas_sgemm() if _use_numpy() else None
    if gemm is None:
        b, t, c = q.shape

        def split(y):  # (B, T, H·d) -> (B, H, T, d)
            return y.reshape(b, y.shape[1], heads, c // heads).transpose(0, 2, 1, 3)

        if _use_numpy():
            out = _attention_blocks(split(q), split(k), split(v), scale)
        else:
            out = mx.fast.scaled_dot_product_attention(split(q), split(k), split(v), scale=scale)
        return out.transpose(0, 2, 1, 3).reshape(b, t, c)
    qn, kn, vn = (np.ascontiguousarray(_evaluated(x.astype(mx.float32))) for x in (q, k, v))
    out = np.empty(qn.shape, np.float32)
    _attention_tasks(gemm, qn, kn, vn, out, heads, scale)
    return mx.array(out)


def _attention_tasks(gemm, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, heads: int,
                     scale: float) -> None:
    """``out = softmax(scale · q kᵀ) v`` per batch item and head, in packed ``(B, T, H·d)`` NumPy arrays."""
    b, t, c = q.shape
    keys, d = k.shape[1], c // heads
    tasks = [(i, h * d, r) for i in range(b) for h in range(heads) for r in range(0, t, ATTENTION_ROWS)]

    def run(lo: int, hi: int) -> None:
        buffer = np.empty((ATTENTION_ROWS, keys), np.float32)
        for i, col, start in tasks[lo:hi]:
            rows, cols = slice(start, min(start + ATTENTION_ROWS, t)), slice(col, col + d)
            scores = buffer[: rows.stop - start]
            gemm(q[i, rows, cols], k[i, :, cols], scores, trans_b=True, alpha=scale)
            scores -= scores.max(axis=1, keepdims=True)
            _exp_block(scores, scores)
            total = scores.sum(axis=1, keepdims=True)
            head_out = out[i, rows, cols]
            gemm(scores, v[i, :, cols], head_out)
            head_out /= total

    with blas_threads(1):
        _in_threads(run, len(tasks), b * heads * t * keys)


def _attention_blocks(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """``(B, H, T, d) x3 -> (B, H, T, d)``: the queries go in blocks whose scores fill about
    ``SCORE_BLOCK_BYTES``, each evaluated before the next, so the scores held at once stay bounded instead of
    growing with T² (324 MB at 52 s of audio)."""
    b, h, t, _ = q.shape
    keys = k.transpose(0, 1, 3, 2)
    rows = max(1, SCORE_BLOCK_BYTES // (4 * b * h * k.shape[2]))
    outs = []
    for start in range(0, t, rows):
        out, total = weighted_sum(exp_shifted_((q[:, :, start : start + rows] * scale) @ keys), v)
        outs.append(out / total)
        mx.eval(outs[-1])
    return mx.concatenate(outs, axis=2) if len(outs) > 1 else outs[0]
