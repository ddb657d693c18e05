"""End-to-end parity with rvc==0.3.5's Pipeline (same random-weight models, noise zeroed in both).

Most cases use the ``pm`` F0 method (Praat, the same library in both), because the NSF sine phase accumulates:
one flipped voicing decision of a neural estimator decorrelates all later audio; RMVPE gets its own case.
"""

import numpy as np
import pytest

from rvc_mlx.pipeline import ConversionOptions, VoiceConverter, cut_points, plan_pieces
from tests.reference import hubert_models
from tests.reference.rvc_pipeline import ReferenceModels, reference_convert

MIN_CORRELATION = 0.9999
SR16 = 16000


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


def _clip(seconds: float, seed: int) -> np.ndarray:
    """Speech-like audio with a strongly varying loudness (so the rms mix visibly matters)."""
    n = int(SR16 * seconds) + 7
    t = np.arange(n) / SR16
    envelope = np.linspace(0.15, 1.0, n) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.8 * t))
    return (hubert_models.speech_like(n, seed=seed) * envelope).astype(np.float32)


def _ours(models, voice, audio, index=None, rmvpe=True, **opts):
    path, _, _ = models.voice(voice)
    vc = VoiceConverter.load(path, hubert=models.hubert_path, rmvpe=models.rmvpe_path if rmvpe else None,
                             index=index)
    options = ConversionOptions(deterministic=True, **{"f0_method": "pm", **opts})
    return vc.convert(audio, SR16, options)


def _compare(ours, ref):
    (a, sr_a), (b, sr_b) = ours, ref
    assert sr_a == sr_b
    assert a.shape == b.shape, (a.shape, b.shape)
    b = b.astype(np.float64) / 32768.0
    corr = float(np.corrcoef(a, b)[0, 1])
    return corr, float(np.max(np.abs(a - b)))


CASES = {
    # name: (voice, options, use index)
    "v2-f0-defaults": ("v2-40k-f0", {}, False),
    "v2-f0-index-rms1": ("v2-40k-f0", {"rms_mix_rate": 1.0}, True),
    "v2-f0-index-protect05-pitch12": ("v2-40k-f0", {"protect": 0.5, "pitch": 12}, True),
    "v1-f0-index": ("v1-40k-f0", {"protect": 0.33}, True),
    "v2-nof0-index": ("v2-40k-nof0", {}, True),
    "v1-nof0-rms1": ("v1-32k-nof0", {"rms_mix_rate": 1.0}, False),
    "v2-48k-f0-rmvpe-resample": ("v2-48k-f0", {"f0_method": "rmvpe", "resample_sr": 44100}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_matches_reference(models, case):
    voice, opts, use_index = CASES[case]
    dim = 256 if voice.startswith("v1") else 768
    index = models.index(dim) if use_index else None
    audio = _clip(3.3, seed=3)
    ours = _ours(models, voice, audio, index=index, **opts)
    ref = reference_convert(models, voice, audio, index=index, **opts)
    corr, diff = _compare(ours, ref)
    print(f"{case}: corr={corr:.7f} max|diff|={diff:.2e} len={ours[0].shape[0]}")
    assert corr >= MIN_CORRELATION, (corr, diff)


@pytest.mark.parametrize("option,value,base", [
    ("index_rate", 0.75, 0.0),
    ("protect", 0.33, 0.5),
    ("rms_mix_rate", 0.25, 1.0),
    ("pitch", 12, 0),
])
def test_each_option_moves_the_output(models, option, value, base):
    """Guard against vacuous parity: every option under test changes the output far beyond the tolerance."""
    audio = _clip(3.3, seed=3)
    index = models.index(768)
    a, _ = _ours(models, "v2-40k-f0", audio, index=index, **{option: value})
    b, _ = _ours(models, "v2-40k-f0", audio, index=index, **{option: base})
    corr = float(np.corrcoef(a, b)[0, 1])
    # at least twice the parity tolerance (and ~1000x the observed parity mismatch, 1 - corr < 1e-7)
    assert 1 - corr > 2 * (1 - MIN_CORRELATION), (option, corr)


@pytest.mark.slow
def test_long_input_is_cut_into_pieces_and_matches(models):
    audio = hubert_models.speech_like(SR16 * 52 + 3, seed=5)
    assert len(plan_pieces(audio)) == 2 and len(cut_points(audio)) == 1
    index = models.index(768)
    ours = _ours(models, "v2-40k-f0", audio, index=index)
    ref = reference_convert(models, "v2-40k-f0", audio, index=index)
    corr, diff = _compare(ours, ref)
    print(f"long: corr={corr:.7f} max|diff|={diff:.2e}")
    assert corr >= MIN_CORRELATION
