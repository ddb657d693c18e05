"""Training step 2 (rvc_mlx.train.features) against independent references with random weights:

- content features: transformers ``HubertModel`` (tests/reference/hubert_models.py) run with RVC's
  ``extract_feature_print.py`` steps written out here (soundfile read, float32, channel mean, no normalisation,
  v1 = final_proj(hidden_states[9]), v2 = hidden_states[12]);
- F0: rvc==0.3.5's ``rvc.lib.rmvpe.RMVPE.infer_from_audio(x, thred=0.03)`` (RVC's training call) and, for pm,
  Praat with RVC's ``extract_f0_print.py`` settings; coarse pitch with RVC's ``coarse_f0`` written out here.

The base models are given as users have them (fairseq ``hubert_base.pt``, ``rmvpe.pt``); the converted copies are
cached under the reference cache (``RVC_MLX_HOME``).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from rvc_mlx.errors import RvcMlxError
from rvc_mlx.train import features as F
from tests.reference import hubert_models as H
from tests.reference.rmvpe_models import cached_rmvpe, speech_like

# segment name -> (seconds, seed); odd lengths exercise HuBERT's and RMVPE's frame counts
SEGMENTS = {"0_0": (1.23, 1), "0_1": (2.0, 2), "1_0": (0.77, 3)}
FEATURE_CORR = 0.9999
FEATURE_MAX_ABS = 1e-4  # measured 1.1e-5..1.5e-5 (v2) on features of std ~1.0
CENTS_TOL = 1.0
VOICING_AGREEMENT = 0.99
THRESHOLD = 0.03


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def home(ref_cache):
    """Where ``resolve_base_model`` caches the converted base models (kept between runs)."""
    path = ref_cache / "train_features_home"
    path.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("RVC_MLX_HOME", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def hubert_pt(ref_cache, home):
    return H.ensure_reference(ref_cache) / H.FAIRSEQ_FILE


@pytest.fixture(scope="module")
def rmvpe_pt(ref_cache, home):
    return cached_rmvpe(ref_cache)


@pytest.fixture(scope="module")
def torch_hubert(hubert_pt):
    return H.load_reference_model(hubert_pt.parent)


@pytest.fixture(scope="module")
def torch_rmvpe(rmvpe_pt):
    from rvc.lib.rmvpe import RMVPE

    return RMVPE(str(rmvpe_pt), is_half=False, device="cpu")


def make_exp(root, segments=SEGMENTS):
    """An experiment folder with float32 16 kHz segments in ``1_16k_wavs`` (as the prepare step writes)."""
    exp = root / "exp"
    (exp / F.WAVS_16K).mkdir(parents=True)
    for name, (seconds, seed) in segments.items():
        sf.write(str(exp / F.WAVS_16K / f"{name}.wav"), speech_like(seconds, seed), 16000, subtype="FLOAT")
    return exp


@pytest.fixture(scope="module")
def v2_exp(tmp_path_factory, hubert_pt, rmvpe_pt):
    exp = make_exp(tmp_path_factory.mktemp("v2"))
    calls = []
    report = F.extract_features(exp, hubert_pt, "v2", rmvpe_path=rmvpe_pt,
                                progress=lambda stage, frac: calls.append((stage, frac)))
    return exp, report, calls


# ------------------------------------------------------------------------------------------------ reference


def rvc_read(path) -> torch.Tensor:
    """RVC's ``readwave``: soundfile, float32, channel mean, shape (1, N); ``normalize`` is False for ContentVec."""
    wav, sr = sf.read(str(path))
    assert sr == 16000
    x = torch.from_numpy(wav).float()
    if x.dim() == 2:
        x = x.mean(-1)
    return x.view(1, -1)


@torch.no_grad()
def rvc_features(torch_hubert, path, version) -> np.ndarray:
    model, final_proj = torch_hubert
    hs = model(rvc_read(path), output_hidden_states=True).hidden_states
    out = final_proj(hs[9]) if version == "v1" else hs[12]
    return out.squeeze(0).float().numpy()


def rvc_coarse(f0) -> np.ndarray:
    """RVC's ``FeatureInput.coarse_f0`` (f0_bin 256, 50..1100 Hz)."""
    mel_min, mel_max = 1127 * np.log(1 + 50.0 / 700), 1127 * np.log(1 + 1100.0 / 700)
    mel = 1127 * np.log(1 + np.asarray(f0, dtype=np.float64) / 700)
    mel[mel > 0] = (mel[mel > 0] - mel_min) * 254 / (mel_max - mel_min) + 1
    mel[mel <= 1] = 1
    mel[mel > 255] = 255
    return np.rint(mel).astype(int)


def compare_features(got, want):
    """(correlation, max |got - want|) of two (T, C) arrays of equal shape."""
    assert got.shape == want.shape, (got.shape, want.shape)
    corr = float(np.corrcoef(got.ravel(), want.ravel())[0, 1])
    return corr, float(np.abs(got - want).max())


def cents(a, b):
    return np.abs(1200.0 * np.log2(a / b))


# ------------------------------------------------------------------------------------------------ tests


def test_layout_and_names_are_rvcs(v2_exp):
    exp, report, calls = v2_exp
    names = sorted(SEGMENTS)
    assert sorted(p.name for p in (exp / "3_feature768").iterdir()) == [f"{n}.npy" for n in names]
    assert sorted(p.name for p in (exp / "2a_f0").iterdir()) == [f"{n}.wav.npy" for n in names]
    assert sorted(p.name for p in (exp / "2b-f0nsf").iterdir()) == [f"{n}.wav.npy" for n in names]
    assert sorted(p.name for p in exp.iterdir()) == ["1_16k_wavs", "2a_f0", "2b-f0nsf", "3_feature768"]
    assert (report.segments, report.features_written, report.f0_written) == (3, 3, 3)
    assert (report.features_skipped, report.f0_skipped, report.nan_features) == (0, 0, [])
    assert calls == [("features", (i + 1) / 3) for i in range(3)]
    for n in names:
        feats = np.load(exp / "3_feature768" / f"{n}.npy")
        assert feats.dtype == np.float32 and feats.ndim == 2 and feats.shape[1] == 768
        n_samples = sf.info(str(exp / "1_16k_wavs" / f"{n}.wav")).frames
        f0 = np.load(exp / "2b-f0nsf" / f"{n}.wav.npy")
        pitch = np.load(exp / "2a_f0" / f"{n}.wav.npy")
        # raw lengths as RVC writes them: rmvpe N // 160 + 1 frames (100 fps), HuBERT ~N / 320 (50 fps)
        assert f0.shape == pitch.shape == (n_samples // 160 + 1,)
        assert feats.shape[0] == _hubert_frames(n_samples)
        assert np.issubdtype(pitch.dtype, np.integer) and 1 <= pitch.min() and pitch.max() <= 255


def _hubert_frames(n):
    for k, s in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
        n = (n - k) // s + 1
    return n


def test_v2_features_match_reference(v2_exp, torch_hubert):
    exp, _, _ = v2_exp
    for n in SEGMENTS:
        want = rvc_features(torch_hubert, exp / "1_16k_wavs" / f"{n}.wav", "v2")
        corr, max_abs = compare_features(np.load(exp / "3_feature768" / f"{n}.npy"), want)
        print(f"v2 {n}: corr {corr:.8f} max-abs {max_abs:.2e} (feature std {want.std():.3f})")
        assert corr >= FEATURE_CORR and max_abs <= FEATURE_MAX_ABS, (n, corr, max_abs)


def test_rmvpe_f0_and_coarse_match_rvc(v2_exp, torch_rmvpe):
    exp, _, _ = v2_exp
    for n in SEGMENTS:
        x, sr = sf.read(str(exp / "1_16k_wavs" / f"{n}.wav"), dtype="float32")
        with torch.no_grad():
            want = torch_rmvpe.infer_from_audio(x, thred=THRESHOLD)
        got = np.load(exp / "2b-f0nsf" / f"{n}.wav.npy")
        pitch = np.load(exp / "2a_f0" / f"{n}.wav.npy")
        assert got.shape == want.shape
        agree = float(np.mean((got > 0) == (want > 0)))
        both = (got > 0) & (want > 0)
        err = cents(got[both], want[both]).max(initial=0.0)
        print(f"rmvpe {n}: voicing agreement {agree:.4f}, voiced {both.mean():.2f}, max cents {err:.3f}")
        assert agree >= VOICING_AGREEMENT and err <= CENTS_TOL
        assert 0.2 < both.mean() < 0.95  # the reference is neither all voiced nor all unvoiced
        np.testing.assert_array_equal(pitch, rvc_coarse(got))  # RVC's quantisation of the saved f0
        ref_pitch = rvc_coarse(want)
        assert np.abs(pitch - ref_pitch).max() <= 1 and np.mean(pitch == ref_pitch) >= VOICING_AGREEMENT
