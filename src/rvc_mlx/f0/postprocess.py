"""F0 post-processing shared by every estimator (pure numpy): pitch shift, RVC's median filter, autotune,
user F0 files, and the coarse pitch (1..255) the synthesizer embeds.

Order in RVC's pipeline (``rvc.modules.vc.pipeline.Pipeline.get_f0``): estimate -> (harvest only) median filter
-> shift -> replace the span covered by an F0 file (the file's values are *not* shifted) -> coarse. rvc-mlx's
pipeline replaces the span before autotune and shift instead (see ``rvc_mlx.pipeline.VoiceConverter.f0``).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from . import F0_MAX, F0_MIN

FRAMES_PER_SECOND = 100  # 16 kHz / hop 160
SEMITONES_PER_OCTAVE = 12
MEL_SCALE = 1127.0  # coarse pitch uses the mel scale 1127 * ln(1 + f / 700)
MEL_BREAK_HZ = 700.0
COARSE_MIN = 1  # coarse pitch 1 = unvoiced / below F0_MIN
COARSE_BINS = 255  # coarse pitch F0_MAX and above
MEDIAN_KERNEL = 3  # RVC filters harvest's f0 with a 3-tap median ...
MEDIAN_MIN_RADIUS = 3  # ... when filter_radius >= 3
A4_HZ = 440.0  # autotune reference: equal temperament, A4 = 440 Hz


def _float(f0) -> np.ndarray:
    f0 = np.asarray(f0)
    return f0 if np.issubdtype(f0.dtype, np.floating) else f0.astype(np.float64)


def shift(f0: np.ndarray, semitones: float) -> np.ndarray:
    """Transpose (T,) f0 by ``semitones`` (f0 × 2^(semitones/12)); unvoiced (0) stays 0. Keeps the float dtype."""
    f0 = _float(f0)
    return (f0 * 2.0 ** (semitones / SEMITONES_PER_OCTAVE)).astype(f0.dtype)


def median_filter(f0: np.ndarray, filter_radius: int) -> np.ndarray:
    """RVC's ``filter_radius`` option: a 3-tap median filter (``scipy.signal.medfilt(f0, 3)``: zero beyond the
    ends) when ``filter_radius >= 3``, else ``f0`` unchanged. RVC applies it to harvest's f0 only."""
    f0 = _float(f0)
    if filter_radius < MEDIAN_MIN_RADIUS or f0.size == 0:
        return f0.copy()
    padded = np.pad(f0, 1)
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0).astype(f0.dtype)


def autotune(f0: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Pull voiced frames toward the nearest equal-tempered semitone (A4 = 440 Hz, nearest in log frequency).

    ``strength`` in 0..1 blends linearly in Hz: ``f0 + (note - f0) · strength`` (1 snaps fully, 0 is a no-op).
    Unvoiced frames (f0 <= 0) stay 0.
    """
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"autotune strength must be within 0..1, got {strength}")
    f0 = _float(f0)
    out = f0.astype(np.float64)
    voiced = out > 0
    semis = np.rint(SEMITONES_PER_OCTAVE * np.log2(out[voiced] / A4_HZ))
    note = A4_HZ * 2.0 ** (semis / SEMITONES_PER_OCTAVE)
    out[voiced] += (note - out[voiced]) * strength
    return out.astype(f0.dtype)


def coarse(f0: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(T,) f0 Hz -> (T,) int32 coarse pitch in 1..255 (RVC's formula, in ``dtype``: float64 offline as rvc's
    pipeline, float32 as RVC's realtime path computes it).

    mel = 1127·ln(1 + f/700); voiced frames map (mel - mel(50 Hz))·254/(mel(1100 Hz) - mel(50 Hz)) + 1; the result
    is clipped to 1..255 and rounded half-to-even; f0 <= 0 gives 1.
    """
    f0 = np.asarray(f0, dtype=dtype)
    mel_min = MEL_SCALE * np.log(1.0 + F0_MIN / MEL_BREAK_HZ)
    mel_max = MEL_SCALE * np.log(1.0 + F0_MAX / MEL_BREAK_HZ)
    mel = (MEL_SCALE * np.log(1.0 + np.maximum(f0, 0.0) / dtype(MEL_BREAK_HZ))).astype(dtype)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - dtype(mel_min)) * dtype(COARSE_BINS - COARSE_MIN) / dtype(mel_max - mel_min) \
        + dtype(COARSE_MIN)
    return np.rint(np.clip(mel, COARSE_MIN, COARSE_BINS)).astype(np.int32)


# ---------------------------------------------------------------------------------------------- F0 files


F0_FILE_HEADER = "time,f0,voiced"  # the header of the CSV ``rvc-mlx pitch`` writes (f0.report)


def read_f0_file(path: str | os.PathLike) -> np.ndarray:
    """Read a user F0 file: one ``time_seconds,hz`` pair per line (RVC's format). Returns (K, 2) float32.

    The CSV ``rvc-mlx pitch`` writes is read too: its ``time,f0,voiced`` header line is skipped and a row's
    third column, ``voiced`` (0 or 1), unvoices the frame when 0 (Hz 0 is unvoiced in any case)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f.read().strip("\n").split("\n")]
    except OSError as e:
        raise InputError(f"{path}: cannot read F0 file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: F0 file is not text") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line or (number == 1 and line.replace(" ", "") == F0_FILE_HEADER):
            continue
        try:
            values = [float(v) for v in line.split(",")]
        except ValueError:
            values = []
        if len(values) == 3 and values[2] in (0.0, 1.0):
            values = [values[0], values[1] * values[2]]
        if len(values) != 2 or not all(np.isfinite(values)):
            raise InputError(f"{path}: line {number} is not 'time_seconds,hz' (or 'time,f0,voiced'): {line[:60]!r}")
        rows.append(values)
    if not rows:
        raise InputError(f"{path}: F0 file has no 'time_seconds,hz' lines")
    return np.asarray(rows, dtype=np.float32)


MAX_F0_FILE_FRAMES = 24 * 3600 * FRAMES_PER_SECOND  # 24 hours: a time column beyond that is a typo or damage
GRID_TOLERANCE = 1e-3  # frames: times this close to k / 100 s (k = 0, 1, 2, ...) are the 10 ms grid itself


def f0_file_curve(table: np.ndarray, source: str = "F0 file") -> np.ndarray:
    """(K, 2) (time s, Hz) -> f0 at 100 fps, as RVC: frames 0 .. round((t_max - t_min)·100 + 1) - 1, linear
    interpolation of Hz over time·100 (values before the first / after the last time are held). float64.

    When the rows are the 10 ms grid from time 0 (0.00, 0.01, 0.02, ... as ``rvc-mlx pitch`` writes), the Hz
    column is the curve: RVC's float32 ``time·100`` is not exactly k there (0.15 s gives 15.000001), which would
    blend each frame with its neighbour by ~1e-6 and keep a contour from coming back exactly."""
    table = np.asarray(table, dtype=np.float32)
    times, hz = table[:, 0], table[:, 1]
    span = (float(times.max()) - float(times.min())) * FRAMES_PER_SECOND + 1
    if not span <= MAX_F0_FILE_FRAMES:
        raise InputError(
            f"{source}: F0 file spans {span / FRAMES_PER_SECOND:.0f} s; at most {MAX_F0_FILE_FRAMES // FRAMES_PER_SECOND // 3600} "
            "hours of frames are read (check the time column)"
        )
    n = int(np.round(span))
    frames = times.astype(np.float64) * FRAMES_PER_SECOND
    if n == len(times) and np.all(np.abs(frames - np.arange(n)) < GRID_TOLERANCE):
        return hz.astype(np.float64)
    return np.interp(np.arange(n), times * FRAMES_PER_SECOND, hz)


def apply_f0_file(f0: np.ndarray, curve: np.ndarray, offset_frames: int = 0) -> np.ndarray:
    """Replace ``f0[offset : offset + len(curve)]`` by ``curve`` (cut at the end of ``f0``); returns a copy.

    RVC's pipeline calls it with ``offset_frames = x_pad · 100`` (the curve's frame 0 is the original audio's start).
    """
    out = _float(f0).copy()
    span = out[offset_frames : offset_frames + len(curve)]
    span[:] = curve[: span.shape[0]]
    return out


def from_file(path: str | os.PathLike, n_frames: int | None = None) -> np.ndarray:
    """F0 curve (100 fps, starting at time 0 of the original audio) from a user F0 file, at most ``n_frames`` long."""
    curve = f0_file_curve(read_f0_file(path), str(path))
    return curve if n_frames is None else curve[:n_frames]
