"""Signal-processing f0 estimators with RVC's parameters: ``pm`` (Praat), ``harvest`` and ``dio`` (WORLD).

- ``pm``: Praat's autocorrelation pitch (``to_pitch_ac``) with a 10 ms step, voicing threshold 0.6 and the f0 range,
  then zero-padded (split between both ends) to ``N // 160`` frames — exactly rvc==0.3.5's ``get_f0``.
- ``harvest``: ``pyworld.harvest`` (10 ms frames, f0 range) refined by ``pyworld.stonemask``, as rvc==0.3.5.
  RVC's extra 3-tap median filter for harvest (``filter_radius >= 3``) is post-processing:
  ``rvc_mlx.f0.postprocess.median_filter``.
- ``dio``: ``pyworld.dio`` + ``stonemask`` with the same frames and range (RVC's training-time f0 extractor;
  rvc==0.3.5's inference pipeline has no dio).

harvest and dio return ``1 + N // 160`` frames (WORLD's count); 0 = unvoiced.
"""

from __future__ import annotations

import numpy as np

from . import HOP, SAMPLE_RATE, register

FRAME_PERIOD_MS = 1000.0 * HOP / SAMPLE_RATE  # 10 ms
PM_VOICING_THRESHOLD = 0.6  # RVC's to_pitch_ac voicing_threshold


@register("pm")
def pm(audio16k: np.ndarray, opts) -> np.ndarray:
    """Praat autocorrelation f0, padded to ``N // 160`` frames as RVC does."""
    import parselmouth

    x = np.asarray(audio16k, dtype=np.float64)
    p_len = len(x) // HOP
    f0 = (
        parselmouth.Sound(x, SAMPLE_RATE)
        .to_pitch_ac(
            time_step=FRAME_PERIOD_MS / 1000,
            voicing_threshold=PM_VOICING_THRESHOLD,
            pitch_floor=opts.f0_min,
            pitch_ceiling=opts.f0_max,
        )
        .selected_array["frequency"]
    )
    before = (p_len - len(f0) + 1) // 2
    after = p_len - len(f0) - before
    if before > 0 or after > 0:
        f0 = np.pad(f0, (max(before, 0), max(after, 0)))
    return f0.astype(np.float32)


def _world(x: np.ndarray, opts, method: str) -> np.ndarray:
    import pyworld

    x = np.asarray(x, dtype=np.float64)
    analyse = pyworld.harvest if method == "harvest" else pyworld.dio
    f0, t = analyse(x, fs=SAMPLE_RATE, f0_ceil=opts.f0_max, f0_floor=opts.f0_min, frame_period=FRAME_PERIOD_MS)
    return pyworld.stonemask(x, f0, t, SAMPLE_RATE).astype(np.float32)


@register("harvest")
def harvest(audio16k: np.ndarray, opts) -> np.ndarray:
    """WORLD harvest + stonemask at 10 ms in ``[f0_min, f0_max]``."""
    return _world(audio16k, opts, "harvest")


@register("dio")
def dio(audio16k: np.ndarray, opts) -> np.ndarray:
    """WORLD dio + stonemask at 10 ms in ``[f0_min, f0_max]``."""
    return _world(audio16k, opts, "dio")
