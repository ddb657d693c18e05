"""CPU backend setup, done once before the first ``import mlx.core``.

The Linux ``mlx[cpu]`` wheel links reference BLAS (sgemm ~40x slower than OpenBLAS). Loading an optimized BLAS
globally before MLX makes MLX's ``cblas_sgemm`` resolve to it. Candidates, first that loads wins:

1. ``$RVC_MLX_BLAS`` (a path to a shared library, or ``none`` to disable the preload);
2. ``cmeel-openblas`` (AVX-512 build; only on CPUs that report ``avx512f``);
3. ``ngsolve-openblas`` (multi-arch build; needs ``libgfortran.so.5``);
4. the system's ``libopenblas.so.0`` (e.g. Debian ``libopenblas0-pthread``).

If torch is used in the same process, import torch first (its own BLAS must load before this one).

OpenBLAS's idle worker threads spin for ~2^28 cycles (~0.1 s) after each call before they sleep. On a few cores
that spinning steals the CPU from whatever runs next (the threaded NumPy softmax after an attention matmul ran
2.4x slower), so the preload sets ``OPENBLAS_THREAD_TIMEOUT`` (unless already set) to sleep at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import platform
import sys

BLAS_ENV = "RVC_MLX_BLAS"
BLAS_THREAD_TIMEOUT = "4"  # OpenBLAS's minimum: idle workers wait 2^4 cycles, then sleep
_state = {"blas": None, "done": False}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _site_candidates(pattern: str) -> list[str]:
    found = []
    for base in sys.path:
        if base and os.path.isdir(base):
            found += sorted(glob.glob(os.path.join(base, pattern)))
    return found


def blas_candidates() -> list[str]:
    """Shared libraries to try, best first."""
    env = os.environ.get(BLAS_ENV)
    if env:
        return [] if env.lower() == "none" else [env]
    paths = []
    if "avx512f" in _cpu_flags():
        paths += _site_candidates("cmeel.prefix/lib/libopenblas.so.0")
    paths += _site_candidates("ngsolve_openblas/libopenblas*.so")
    paths += ["libopenblas.so.0", "libopenblas.so"]
    return paths


def preload_blas() -> str | None:
    """Load the first usable optimized BLAS with RTLD_GLOBAL; return its path (None when none loaded).

    Must run before ``mlx.core`` is imported; later calls are no-ops. Only acts on Linux.
    """
    if _state["done"]:
        return _state["blas"]
    _state["done"] = True
    tune_malloc()
    if platform.system() != "Linux" or "mlx.core" in sys.modules or not enabled("blas"):
        return None
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_THREAD_TIMEOUT)  # read when the library loads
    for path in blas_candidates():
        try:
            ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
        except OSError:
            continue
        _state["blas"] = path
        return path
    if os.environ.get(BLAS_ENV, "").lower() != "none":
        print(
            "rvc-mlx: no optimized BLAS found; matrix products will be slow "
            "(install libopenblas0-pthread or set RVC_MLX_BLAS)",
            file=sys.stderr,
        )
    return None


def blas_in_use() -> str | None:
    return _state["blas"]


# glibc serves every allocation above its mmap threshold (128 KB, rising to 32 MB) with a fresh mmap and unmaps it
# on free, so each large temporary that MLX's buffer cache or NumPy lets go costs a page fault and a zeroing per
# 4 KB when the next one is made: ~190 k faults and 0.7 s of system time per 36 s HuBERT pass, even warm. Serving
# them from the heap and keeping freed memory there (up to ``MALLOC_KEEP_BYTES`` at its top) reuses the pages.
MALLOC_KEEP_BYTES = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters


def tune_malloc() -> bool:
    """Fast path ``malloc``: glibc's allocator keeps large freed buffers for reuse instead of returning them to
    the OS at once. Linux with glibc only; True when it was applied. Called by ``preload_blas``."""
    if platform.system() != "Linux" or not enabled("malloc") or _state.get("malloc") is not None:
        return bool(_state.get("malloc"))
    _state["malloc"] = False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state["malloc"] = bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES))
    return _state["malloc"]


# -- fast-path switches -------------------------------------------------------------------------------------------
# Every CPU fast path can be turned off on its own, e.g. ``RVC_MLX_DISABLE=exp,tile`` (or ``set_enabled``), to
# measure what it buys or to rule it out when results look wrong. All are numerically equivalent to the plain path.
FAST_PATHS = {
    "blas": "optimized BLAS loaded before MLX on Linux (this module; also $RVC_MLX_BLAS=none)",
    "malloc": "glibc keeps large freed buffers for reuse: no mmap, page faults and zeroing per temporary (Linux)",
    "cache": "MLX buffer cache kept up to cache_limit_bytes(), $RVC_MLX_CACHE_GB (no page fault per large temporary)",
    "conv": "CPU conv rewrites: per-tap addmm conv1d, polyphase conv_transpose1d, im2col conv2d (nn.conv, nn.conv2d)",
    "exp": "NumPy on CPU (nn.fastmath): vectorised exp for softmax/sigmoid/tanh (MLX's CPU exp is scalar), "
    "threaded softmax numerators and channel statistics",
    "tile": "the decoder runs in time tiles with an exact halo (bounded memory, cache-sized temporaries)",
    "gru": "bidirectional GRU with both directions batched and the input projection hoisted (nn.gru)",
    "fft": "overlap-save FFT for wide-kernel convs with 64-128 channels (nn.conv.fft_size), when ``conv`` is on",
    "lanes": "independent pieces (decoder tiles, conv2d row blocks) run at once on one CPU stream per core, one "
    "BLAS thread each",
}
DISABLE_ENV = "RVC_MLX_DISABLE"
_overrides: dict[str, bool] = {}


def enabled(name: str) -> bool:
    """Whether fast path ``name`` (a key of ``FAST_PATHS``) is on: ``set_enabled`` wins, then ``$RVC_MLX_DISABLE``."""
    if name not in FAST_PATHS:
        raise KeyError(f"unknown fast path {name!r}; known: {', '.join(FAST_PATHS)}")
    if name in _overrides:
        return _overrides[name]
    disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",")}
    return name not in disabled and "all" not in disabled


def set_enabled(name: str, on: bool | None) -> None:
    """Turn fast path ``name`` on or off for this process (``None``: back to the environment's choice)."""
    enabled(name)  # validates the name
    if on is None:
        _overrides.pop(name, None)
    else:
        _overrides[name] = bool(on)


def on_cpu() -> bool:
    """True when MLX's default device is the CPU (the CPU fast paths apply)."""
    import mlx.core as mx

    return mx.default_device() == mx.cpu


# Without the malloc fast path every large temporary MLX lets go is page-faulted in again, so its cache holds 0.5 GB
# (measured on 30 s end to end, v2 40k, rmvpe, index: 1 GB vs 4 GB cost 3 % in time and halved peak RSS, 3.1 vs
# 6.2 GB; with CPU lanes 0.5 GB vs 1 GB took 58 vs 62 s and peaked at 3.4 vs 3.8 GB, the peak is in synthesis where
# the cache sits on top of the decoder's tiles). With it glibc's heap keeps those pages itself and 0.1 GB is
# enough: 30 s end to end, 4 interleaved pairs, took 28.5 vs 28.2 s and peaked at 2.52 vs 2.84 GB (-11 %).
# ``$RVC_MLX_CACHE_GB`` overrides both.
CACHE_GB, CACHE_GB_WITH_MALLOC = 0.5, 0.1


def cache_limit_bytes() -> int:
    """MLX's buffer cache limit outside the stages that raise it (``cache_limit``)."""
    gb = os.environ.get("RVC_MLX_CACHE_GB") or (CACHE_GB_WITH_MALLOC if _state.get("malloc") else CACHE_GB)
    return int(float(gb) * (1 << 30))


@contextlib.contextmanager
def cache_limit(limit: int):
    """While inside: MLX's buffer cache may hold up to ``limit`` bytes (fast path ``cache``), for a stage whose
    large temporaries would otherwise be returned to the OS and page-faulted in again every layer. On exit the
    cache is emptied and the default limit restored, so the next stage starts from what it needs."""
    import mlx.core as mx

    default = cache_limit_bytes()
    if not enabled("cache") or limit <= default:
        yield
        return
    mx.set_cache_limit(limit)
    try:
        yield
    finally:
        mx.set_cache_limit(default)
        mx.clear_cache()


def configure_mlx() -> None:
    """Keep freed buffers cached (avoids page-faulting every large temporary on CPU)."""
    import mlx.core as mx

    if enabled("cache"):
        mx.set_cache_limit(cache_limit_bytes())


# -- CPU lanes ----------------------------------------------------------------------------------------------------
# MLX runs each CPU stream's ops on that stream's own thread, but its elementwise ops, reductions and copies are
# single-threaded; only BLAS uses more cores. Independent pieces of work (e.g. decoder tiles) evaluated together on
# one stream per core, with BLAS cut to one thread meanwhile, keep every core busy for the whole graph.
_lane_streams: list = []


def _blas_thread_control():
    """``(get, set)`` for the preloaded OpenBLAS's thread count, or None when it cannot be controlled."""
    if _state["blas"] is None:
        return None
    if "threads" not in _state:
        lib = ctypes.CDLL(_state["blas"])
        get, set_ = (getattr(lib, f"openblas_{op}_num_threads", None) for op in ("get", "set"))
        _state["threads"] = (get, set_) if get and set_ else None
    return _state["threads"]


CPUS_ENV = "RVC_MLX_CPUS"  # cores one process may use (set per worker by parallel batches: cores / workers)


def cpu_count() -> int:
    """Cores this process may use: its affinity mask, capped by ``$RVC_MLX_CPUS`` when that is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = os.environ.get(CPUS_ENV, "")
    return max(1, min(cores, int(limit))) if limit.isdigit() and int(limit) > 0 else cores


def set_blas_threads(n: int) -> bool:
    """Use ``n`` threads in the preloaded OpenBLAS from now on; False when its thread count cannot be set."""
    control = _blas_thread_control()
    if control is None:
        return False
    control[1](max(1, int(n)))
    return True


def lanes() -> list:
    """Streams to spread independent work over: one per core on CPU when fast path ``lanes`` is on and the BLAS
    thread count can be controlled (see ``lane_blas``); otherwise just the default stream."""
    import mlx.core as mx

    default = [mx.default_stream(mx.default_device())]
    if not (enabled("lanes") and on_cpu() and cpu_count() > 1 and _blas_thread_control()):
        return default
    while len(_lane_streams) < cpu_count():
        _lane_streams.append(mx.new_stream(mx.cpu))
    return _lane_streams[: cpu_count()]


@contextlib.contextmanager
def blas_threads(n: int):
    """While inside: the preloaded OpenBLAS uses ``n`` threads (a no-op when its thread count cannot be set)."""
    control = _blas_thread_control()
    if control is None:
        yield
        return
    get, set_ = control
    before = get()
    set_(max(1, int(n)))
    try:
        yield
    finally:
        set_(before)


def lane_blas(streams: list):
    """While work on ``streams`` (from ``lanes()``) is evaluated: one BLAS thread per lane, if there are several."""
    return blas_threads(1) if len(streams) > 1 else contextlib.nullcontext()


_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS = 101, 111, 112


def blas_sgemm():
    """``gemm(a, b, c, trans_b=False, alpha=1.0)``: ``c = alpha · a @ b`` (``b.T`` with ``trans_b``) straight in
    the preloaded BLAS, for float32 NumPy matrices (views with unit column stride, e.g. one head's columns of a
    packed ``(T, H·d)`` array) — or None when no BLAS was preloaded. The call releases the GIL, so NumPy-side
    work can run one product per thread (with ``blas_threads(1)``)."""
    if _state["blas"] is None:
        return None
    if "sgemm" not in _state:
        _state["sgemm"] = _load_sgemm(ctypes.CDLL(_state["blas"]))
    return _state["sgemm"]


def _load_sgemm(lib):
    fn = getattr(lib, "cblas_sgemm", None)
    if fn is None:
        return None
    c_int, ptr = ctypes.c_int, ctypes.c_void_p
    fn.restype = None
    fn.argtypes = [c_int] * 6 + [ctypes.c_float, ptr, c_int, ptr, c_int, ctypes.c_float, ptr, c_int]

    def gemm(a, b, c, trans_b: bool = False, alpha: float = 1.0) -> None:
        (m, k), n = a.shape, c.shape[1]
        if not all(x.dtype == "float32" and x.strides[1] == 4 for x in (a, b, c)) or c.shape[0] != m:
            raise ValueError("gemm: float32 matrices with unit column stride and matching shapes")
        if (b.shape[::-1] if trans_b else b.shape) != (k, n):
            raise ValueError(f"gemm: {a.shape} @ {b.shape}{'.T' if trans_b else ''} does not give {c.shape}")
        fn(_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS if trans_b else _CBLAS_NO_TRANS, m, n, k, alpha,
           a.ctypes.data, a.strides[0] // 4, b.ctypes.data, b.strides[0] // 4, 0.0, c.ctypes.data, c.strides[0] // 4)

    return gemm
