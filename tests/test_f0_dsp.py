"""pm / harvest / dio against rvc==0.3.5's own ``Pipeline.get_f0`` (and pyworld for dio, which RVC's inference
pipeline lacks): both sides call the same libraries with the same parameters, so outputs must be identical."""

import numpy as np
import pytest

from rvc_mlx.f0 import F0Options, estimate, get_estimator
from tests.reference import pitch_reference as pr

DSP_METHODS = ["pm", "harvest", "dio"]


@pytest.mark.parametrize("name", list(pr.SIGNAL_SPECS))
@pytest.mark.parametrize("method", DSP_METHODS)
def test_dsp_matches_rvc(method, name, ref_cache):
    sig = pr.make_signal(name)
    ref = pr.cached_reference_f0(method, sig, ref_cache)
    ours = pr.our_f0(method, name)
    assert ours.dtype == np.float32
    assert len(ours) == len(ref)
    np.testing.assert_array_equal(ours, ref.astype(np.float32))
    # not vacuous: the signal has voiced and unvoiced frames
    assert 0.2 < np.mean(ref > 0) < 0.95


@pytest.mark.parametrize("method", DSP_METHODS)
def test_dsp_frame_counts(method):
    """pm is padded to N // 160 frames (RVC); harvest/dio give WORLD's 1 + N // 160."""
    audio = pr.make_signal("vibrato").audio[: 16000 + 123]
    f0 = estimate(method, audio, F0Options())
    assert len(f0) == (len(audio) // pr.HOP if method == "pm" else 1 + len(audio) // pr.HOP)


def test_dsp_range_is_honoured():
    """A 70 Hz tone is found with f0_min 50 and not with f0_min 100 (the options reach the libraries)."""
    audio, _ = pr.synthesize([pr.Note(1.0, 70.0)], 40.0, seed=9)
    for method in DSP_METHODS:
        wide = get_estimator(method)(audio, F0Options(f0_min=50, f0_max=1100))
        narrow = get_estimator(method)(audio, F0Options(f0_min=100, f0_max=1100))
        voiced = wide[20:-20] > 0
        assert voiced.mean() > 0.8, method
        assert np.median(np.abs(1200 * np.log2(wide[20:-20][voiced] / 70.0))) < 20, method
        assert not np.allclose(wide, narrow), method
