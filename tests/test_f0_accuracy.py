"""Raw pitch accuracy on synthetic signals with known f0, ours vs the reference implementation of each method.

Raw pitch accuracy (RPA) = fraction of truly voiced frames (away from note edges) estimated voiced and within
50 cents. Ours must be within 1 point of the reference, and the real-weight networks above a floor.
(rmvpe is not here: no real RMVPE weights are available, and random weights have no accuracy.)
"""

import numpy as np
import pytest

from tests.reference import pitch_reference as pr

# CREPE full is heavy: scored on two signals (steady tones 60-1000 Hz, glides); everything else on all signals
SIGNALS = {m: list(pr.SIGNAL_SPECS) for m in ("crepe-tiny", "fcpe", "harvest", "dio", "pm")}
SIGNALS["crepe"] = ["steady", "glide"]
FLOOR = {"crepe": 0.95, "crepe-tiny": 0.9, "fcpe": 0.9}  # real-weight networks on clean-ish harmonic signals
METHODS = [pytest.param("crepe", marks=pytest.mark.slow), "crepe-tiny", "fcpe", "harvest", "dio", "pm"]


def accuracy(method, ref_cache):
    ours, ref = [], []
    for name in SIGNALS[method]:
        sig = pr.make_signal(name)
        ours.append((pr.our_f0(method, name), sig))
        ref.append((pr.cached_reference_f0(method, sig, ref_cache), sig))

    def pooled(pairs):
        hits = sum(pr.raw_pitch_accuracy(f0, sig) * sig.scored.sum() for f0, sig in pairs)
        return hits / sum(sig.scored.sum() for _, sig in pairs)

    return pooled(ours), pooled(ref)


@pytest.mark.parametrize("method", METHODS)
def test_raw_pitch_accuracy(method, ref_cache):
    ours, ref = accuracy(method, ref_cache)
    print(f"{method}: RPA ours {ours:.4f}, reference {ref:.4f}")
    assert ours >= ref - 0.01
    assert ours >= FLOOR.get(method, 0.0)


def test_accuracy_metric_is_not_vacuous():
    """The metric punishes octave errors and unvoiced frames, and the hard signals separate the methods."""
    sig = pr.make_signal("vibrato")
    assert pr.raw_pitch_accuracy(sig.f0, sig) == 1.0
    assert pr.raw_pitch_accuracy(sig.f0 * 2, sig) == 0.0
    assert pr.raw_pitch_accuracy(np.zeros_like(sig.f0), sig) == 0.0
    assert pr.raw_pitch_accuracy(sig.f0 * 2 ** (45 / 1200), sig) == 1.0
    assert pr.raw_pitch_accuracy(sig.f0 * 2 ** (55 / 1200), sig) == 0.0
    hard = pr.make_signal("no-fundamental")
    assert pr.raw_pitch_accuracy(pr.our_f0("dio", "no-fundamental"), hard) < 0.5
