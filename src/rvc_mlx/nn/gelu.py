"""Exact (erf) GELU that is fast on MLX's Linux CPU backend.

MLX's CPU ``erf`` is a scalar loop in the Linux wheel (16 M elements: ~0.5 s, vs ~0.08 s for torch's GELU).
Here erf is a rational minimax approximation on [-4, 4] (beyond which float32 erf is ±1): odd degree-13
numerator over even degree-8 denominator in x, only multiply/add/divide, which ``mx.compile`` fuses into one
vectorised kernel. Max |erf error| ≈ 4e-7 and max |GELU error| ≈ 1.4e-6·max(1, |x|/10) against float64 — the
same order as float32 rounding — so it is a drop-in for PyTorch's ``gelu(approximate="none")``.

``shapeless=True`` compiles once for all input shapes (no per-length JIT for variable-length audio).
"""

from __future__ import annotations

import math

import mlx.core as mx

ERF_CLAMP = 4.0
# Rational approximation coefficients (x * P(x^2) / Q(x^2)), lowest order first.
_ERF_P = (
    -1.60960333262415e-02,
    -2.95459980854025e-03,
    -7.34990630326855e-04,
    -5.69250639462346e-05,
    -2.10102402082508e-06,
    2.77068142495902e-08,
    -2.72614225801306e-10,
)
_ERF_Q = (
    -1.42647390514189e-02,
    -7.37332916720468e-03,
    -1.68282697438203e-03,
    -2.13374055278905e-04,
    -1.45660718464996e-05,
)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _horner(coeffs, x2):
    acc = coeffs[-1]
    for c in coeffs[-2::-1]:
        acc = acc * x2 + c
    return acc


def _erf(x: mx.array) -> mx.array:
    x = mx.clip(x, -ERF_CLAMP, ERF_CLAMP)
    x2 = x * x
    return x * _horner(_ERF_P, x2) / _horner(_ERF_Q, x2)


def _gelu(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + _erf(x * _INV_SQRT2))


# erf(x) and gelu(x) = x/2 · (1 + erf(x/√2)) (exact GELU), any shape, float32.
erf = mx.compile(_erf, shapeless=True)
gelu = mx.compile(_gelu, shapeless=True)
