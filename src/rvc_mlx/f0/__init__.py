"""F0 estimators by name, and F0 post-processing.

Every estimator is a function ``(audio16k: np.ndarray (N,) float32, opts: F0Options) -> f0 (T,) float32 Hz``
at 100 frames per second (hop 160 at 16 kHz), 0 for unvoiced frames. ``ESTIMATORS`` maps names to them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {}


def register(name: str):
    """Decorator: make an estimator available under ``name`` (used by the pipeline and the CLI)."""

    def wrap(fn):
        ESTIMATORS[name] = fn
        return fn

    return wrap
