"""F0 estimators by name, and F0 post-processing.

Every estimator is a function ``(audio16k: np.ndarray (N,) float32, opts: F0Options) -> f0 (T,) float32 Hz``
at 100 frames per second (hop 160 at 16 kHz), 0 for unvoiced frames. ``ESTIMATORS`` maps names to them.

Estimators live in their own modules and register themselves with ``@register(name)`` when imported;
:func:`estimate` imports the module that provides a method lazily (``METHOD_MODULES``), so importing this
package stays cheap and an estimator's heavy dependencies load only when it is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError

ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {}

SAMPLE_RATE = 16000  # every estimator takes 16 kHz mono audio
HOP = 160  # and returns one f0 value per 10 ms
F0_MIN = 50.0  # Hz, RVC's pitch range (also the coarse-pitch mel range, see postprocess)
F0_MAX = 1100.0

# method name -> module (relative to this package) whose import registers it
METHOD_MODULES: dict[str, str] = {
    "rmvpe": ".rmvpe",
    "crepe": ".crepe",
    "crepe-tiny": ".crepe",
    "fcpe": ".fcpe",
    "harvest": ".dsp",
    "dio": ".dsp",
    "pm": ".dsp",
}


@dataclass(frozen=True)
class F0Options:
    """Options shared by every estimator; an estimator ignores what it does not use.

    f0_min, f0_max: search range in Hz.
    threshold: voicing threshold in the method's own units (None: the method's default, e.g. 0.03 for rmvpe).
    rmvpe_path, crepe_path, fcpe_path: converted ``.safetensors`` model files for the neural estimators.
    batch_size: frames per batch for frame-wise networks (crepe); None: the method's default.
    """

    f0_min: float = F0_MIN
    f0_max: float = F0_MAX
    threshold: float | None = None
    rmvpe_path: str | None = None
    crepe_path: str | None = None
    fcpe_path: str | None = None
    batch_size: int | None = None


def register(name: str):
    """Decorator: make an estimator available under ``name`` (used by the pipeline and the CLI)."""

    def wrap(fn):
        ESTIMATORS[name] = fn
        return fn

    return wrap


def known_methods() -> list[str]:
    """Names accepted by :func:`estimate`."""
    return sorted(set(METHOD_MODULES) | set(ESTIMATORS))


def get_estimator(method: str) -> Callable[..., np.ndarray]:
    """Return the estimator registered under ``method``, importing its module on first use."""
    if method not in ESTIMATORS and method in METHOD_MODULES:
        importlib.import_module(METHOD_MODULES[method], __name__)
    if method not in ESTIMATORS:
        raise InputError(f"unknown f0 method {method!r}; known methods: {', '.join(known_methods())}")
    return ESTIMATORS[method]


def estimate(method: str, audio16k: np.ndarray, opts: F0Options | None = None) -> np.ndarray:
    """F0 of 16 kHz mono ``audio16k`` (N,) with ``method``: returns (T,) float32 Hz at 100 fps, 0 = unvoiced."""
    fn = get_estimator(method)
    audio16k = np.asarray(audio16k, dtype=np.float32)
    if audio16k.ndim != 1:
        raise InputError(f"f0 estimation needs mono audio (N,), got shape {audio16k.shape}")
    return np.asarray(fn(audio16k, opts if opts is not None else F0Options()), dtype=np.float32)
