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
from tests.reference.rmvpe_models import BUILD_VERSION as RMVPE_BUILD, cached_rmvpe, speech_like

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
def hubert_st(hubert_pt):
    """The converted HuBERT, kept in the reference cache (resolving the .pt hashes its 360 MB on every call; the
    v2 run takes that path)."""
    import shutil

    from rvc_mlx.service.models import resolve_base_model

    path = hubert_pt.parent / f"train_features_hubert_v{H.REFERENCE_VERSION}.safetensors"
    if not path.exists():
        shutil.copy(resolve_base_model(hubert_pt, "hubert"), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return path


class _Lazy:
    """A reference model built on first use (its outputs are cached on disk, so a warm run builds none)."""

    def __init__(self, build):
        self.build, self.model = build, None

    def __call__(self):
        if self.model is None:
            self.model = self.build()
        return self.model


@pytest.fixture(scope="module")
def torch_hubert(hubert_pt):
    return _Lazy(lambda: H.load_reference_model(hubert_pt.parent))


@pytest.fixture(scope="module")
def torch_rmvpe(rmvpe_pt):
    def build():
        from rvc.lib.rmvpe import RMVPE

        return RMVPE(str(rmvpe_pt), is_half=False, device="cpu")

    return _Lazy(build)


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
                                progress=lambda done, total, name: calls.append((done, total, name)))
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


def cached(ref_cache, key: str, compute) -> np.ndarray:
    path = ref_cache / "train_features_ref" / f"{key}.npy"
    if path.exists():
        return np.load(path)
    out = compute()
    path.parent.mkdir(exist_ok=True)
    np.save(path, out)
    return out


def sample_digest(path) -> str:
    """Digest of a wav's samples (not its bytes: libsndfile stamps the time into float wavs' PEAK chunk)."""
    import hashlib

    return hashlib.sha256(sf.read(str(path), dtype="float32")[0].tobytes()).hexdigest()[:16]


def rvc_features(torch_hubert, path, version, ref_cache) -> np.ndarray:
    """The reference features of the segment at ``path`` (cached by its content digest)."""
    def compute():
        model, final_proj = torch_hubert()
        with torch.no_grad():
            hs = model(rvc_read(path), output_hidden_states=True).hidden_states
            out = final_proj(hs[9]) if version == "v1" else hs[12]
        return out.squeeze(0).float().numpy()

    digest = sample_digest(path)
    return cached(ref_cache, f"hubert_v{H.REFERENCE_VERSION}_{version}_{digest}", compute)


def rvc_rmvpe(torch_rmvpe, path, ref_cache) -> np.ndarray:
    """rvc's ``infer_from_audio(x, thred=0.03)`` of the segment at ``path`` (cached by its content digest)."""
    def compute():
        x, _ = sf.read(str(path), dtype="float32")
        with torch.no_grad():
            return torch_rmvpe().infer_from_audio(x, thred=THRESHOLD)

    digest = sample_digest(path)
    return cached(ref_cache, f"rmvpe_v{RMVPE_BUILD}_{digest}", compute)


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
    assert sorted(p.name for p in exp.iterdir()) == ["1_16k_wavs", "2a_f0", "2b-f0nsf", "3_feature768", "mute"]
    assert [p.relative_to(exp).as_posix() for p in (exp / "mute").rglob("*.npy")] == ["mute/3_feature768/mute.npy"]
    assert (report.segments, report.features_written, report.f0_written) == (3, 3, 3)
    assert (report.features_skipped, report.f0_skipped, report.nan_features) == (0, 0, [])
    assert calls == [(i + 1, 3, f"{n}.wav") for i, n in enumerate(names)]
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


def test_mute_features_are_the_reference_hubert_of_silence(v2_exp, torch_hubert, ref_cache, tmp_path):
    exp, _, _ = v2_exp
    silence = tmp_path / "mute.wav"
    sf.write(str(silence), np.zeros(int(F.MUTE_SECONDS * 16000), np.float32), 16000, subtype="FLOAT")
    want = rvc_features(torch_hubert, silence, "v2", ref_cache)
    got = np.load(F.mute_feature_path(exp, "v2"))
    assert got.shape == want.shape == (149, 768)  # RVC's shipped mute.npy is 149 frames (3 s) too
    max_abs = float(np.abs(got - want).max())
    print(f"mute: max-abs {max_abs:.2e} (feature std {want.std():.3f})")
    assert max_abs <= FEATURE_MAX_ABS


def test_v2_features_match_reference(v2_exp, torch_hubert, ref_cache):
    exp, _, _ = v2_exp
    for n in SEGMENTS:
        want = rvc_features(torch_hubert, exp / "1_16k_wavs" / f"{n}.wav", "v2", ref_cache)
        corr, max_abs = compare_features(np.load(exp / "3_feature768" / f"{n}.npy"), want)
        print(f"v2 {n}: corr {corr:.8f} max-abs {max_abs:.2e} (feature std {want.std():.3f})")
        assert corr >= FEATURE_CORR and max_abs <= FEATURE_MAX_ABS, (n, corr, max_abs)


def test_rmvpe_f0_and_coarse_match_rvc(v2_exp, torch_rmvpe, ref_cache):
    exp, _, _ = v2_exp
    for n in SEGMENTS:
        want = rvc_rmvpe(torch_rmvpe, exp / "1_16k_wavs" / f"{n}.wav", ref_cache)
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


V1_SEGMENTS = {"a_0": (1.5, 4), "a_1": (0.9, 5)}


@pytest.fixture(scope="module")
def v1_exp(tmp_path_factory, hubert_st):
    exp = make_exp(tmp_path_factory.mktemp("v1"), V1_SEGMENTS)
    report = F.extract_features(exp, hubert_st, "v1", f0_method="pm")
    return exp, report


def rvc_pm(x) -> np.ndarray:
    """RVC's ``extract_f0_print.py`` pm branch: Praat 10 ms, voicing 0.6, 50..1100 Hz, padded to N // 160."""
    import parselmouth

    p_len = x.shape[0] // 160
    f0 = parselmouth.Sound(x, 16000).to_pitch_ac(time_step=0.01, voicing_threshold=0.6, pitch_floor=50,
                                                 pitch_ceiling=1100).selected_array["frequency"]
    pad = (p_len - len(f0) + 1) // 2
    if pad > 0 or p_len - len(f0) - pad > 0:
        f0 = np.pad(f0, [[pad, p_len - len(f0) - pad]], mode="constant")
    return f0


def test_v1_features_and_pm_f0_match_reference(v1_exp, torch_hubert, ref_cache):
    exp, report = v1_exp
    assert sorted(p.name for p in exp.iterdir()) == ["1_16k_wavs", "2a_f0", "2b-f0nsf", "3_feature256", "mute"]
    assert (report.features_written, report.f0_written, report.f0_method) == (2, 2, "pm")
    for n in V1_SEGMENTS:
        wav = exp / "1_16k_wavs" / f"{n}.wav"
        want = rvc_features(torch_hubert, wav, "v1", ref_cache)
        got = np.load(exp / "3_feature256" / f"{n}.npy")
        corr, max_abs = compare_features(got, want)
        print(f"v1 {n}: corr {corr:.8f} max-abs {max_abs:.2e} (feature std {want.std():.3f})")
        assert got.dtype == np.float32 and corr >= FEATURE_CORR and max_abs <= FEATURE_MAX_ABS, (n, corr, max_abs)
        x, _ = sf.read(str(wav))
        want_f0 = rvc_pm(x)
        got_f0 = np.load(exp / "2b-f0nsf" / f"{n}.wav.npy")
        assert got_f0.shape == want_f0.shape == (x.shape[0] // 160,)
        np.testing.assert_allclose(got_f0, want_f0, rtol=1e-6, atol=1e-6)
        assert (want_f0 > 0).mean() > 0.2
        np.testing.assert_array_equal(np.load(exp / "2a_f0" / f"{n}.wav.npy"), rvc_coarse(got_f0))


def test_resume_skips_done_segments_and_redoes_deleted_outputs(v1_exp, hubert_st):
    exp, _ = v1_exp
    outputs = sorted(p for d in ("3_feature256", "2a_f0", "2b-f0nsf") for p in (exp / d).iterdir())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}
    again = F.extract_features(exp, hubert_st, "v1", f0_method="pm")
    assert (again.features_written, again.f0_written, again.features_skipped, again.f0_skipped) == (0, 0, 2, 2)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs} == before
    gone = [exp / "3_feature256" / "a_1.npy", exp / "2a_f0" / "a_0.wav.npy"]
    for p in gone:
        p.unlink()
    redo = F.extract_features(exp, hubert_st, "v1", f0_method="pm")
    assert (redo.features_written, redo.f0_written, redo.features_skipped, redo.f0_skipped) == (1, 1, 1, 1)
    for p in outputs:
        assert p.read_bytes() == before[p][1], p  # redone outputs equal the first run's
        if p not in gone and p != exp / "2b-f0nsf" / "a_0.wav.npy":  # that one is rewritten with its pair
            assert p.stat().st_mtime_ns == before[p][0], p
    assert not [p for p in exp.rglob(".*")]  # no temporaries left


def test_seeded_fault_wrong_layer_fails_the_tolerance(tmp_path, hubert_st, torch_hubert, ref_cache, monkeypatch):
    """v2 features taken from layer 9 instead of 12 must fail the parity check by far."""
    from rvc_mlx.models import hubert as mlx_hubert

    exp = make_exp(tmp_path, {"1_0": SEGMENTS["1_0"]})
    monkeypatch.setitem(mlx_hubert.RVC_LAYERS, "v2", (9, False))
    F.extract_features(exp, hubert_st, "v2", f0_method=None)
    want = rvc_features(torch_hubert, exp / "1_16k_wavs" / "1_0.wav", "v2", ref_cache)
    corr, max_abs = compare_features(np.load(exp / "3_feature768" / "1_0.npy"), want)
    print(f"seeded fault (v2 from layer 9): corr {corr:.4f} max-abs {max_abs:.3f}")
    assert corr < FEATURE_CORR and max_abs > 100 * FEATURE_MAX_ABS
    assert sorted(p.name for p in exp.iterdir()) == ["1_16k_wavs", "3_feature768", "mute"]  # no f0 folders without f0


def test_nan_features_are_not_saved_and_harvest_f0_is_rvcs(tmp_path, hubert_st, monkeypatch):
    exp = make_exp(tmp_path, {"0_0": (0.5, 1), "0_1": (0.5, 2)})

    def fake(self, audio, source):
        out = np.ones((10, 768), np.float32)
        if source.name == "0_1.wav":
            out[3, 5] = np.nan
        return out

    monkeypatch.setattr(F._Models, "features", fake)
    report = F.extract_features(exp, hubert_st, "v2", f0_method="harvest")
    assert report.nan_features == ["0_1"] and report.features_written == 1 and report.segments == 2
    assert sorted(p.name for p in (exp / "3_feature768").iterdir()) == ["0_0.npy"]
    assert "1 with NaN features not saved" in report.summary()
    # F0 is its own output (RVC: its own step), written for both; harvest as RVC's training extracts it:
    # pyworld harvest + stonemask, 10 ms, 50..1100 Hz, and no median filter (that is an inference option)
    import pyworld

    for n in ("0_0", "0_1"):
        x, _ = sf.read(str(exp / "1_16k_wavs" / f"{n}.wav"))
        f0, t = pyworld.harvest(x.astype(np.double), fs=16000, f0_ceil=1100.0, f0_floor=50.0, frame_period=10.0)
        want = pyworld.stonemask(x.astype(np.double), f0, t, 16000)
        got = np.load(exp / "2b-f0nsf" / f"{n}.wav.npy")
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert (want > 0).mean() > 0.3
        np.testing.assert_array_equal(np.load(exp / "2a_f0" / f"{n}.wav.npy"), rvc_coarse(got))


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_user_errors_are_one_line(tmp_path, hubert_st):
    """Each error stops the run before any model is loaded (the bad segment sorts first)."""
    exp = tmp_path / "exp"
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, hubert_st, "v2")
    assert "1_16k_wavs" in one_line(e) and "not found" in one_line(e)
    (exp / "1_16k_wavs").mkdir(parents=True)
    (exp / "1_16k_wavs" / "notes.txt").write_text("x")
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, hubert_st, "v2")
    assert "no .wav segments" in one_line(e)
    sf.write(str(exp / "1_16k_wavs" / "1_0.wav"), speech_like(0.3, 1), 16000, subtype="FLOAT")
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, tmp_path / "missing_hubert.pt", "v2")
    assert "missing_hubert.pt" in one_line(e)
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, hubert_st, "v2", rmvpe_path=tmp_path / "missing_rmvpe.pt")
    assert "missing_rmvpe.pt" in one_line(e)
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, hubert_st, "v3")
    assert "v3" in one_line(e)
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, hubert_st, "v2", f0_method="nope")
    assert "nope" in one_line(e)
    sf.write(str(exp / "1_16k_wavs" / "0_1.wav"), speech_like(0.3, 1), 44100, subtype="FLOAT")
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, hubert_st, "v2", f0_method=None)
    assert "0_1.wav" in one_line(e) and "44100" in one_line(e)
    (exp / "1_16k_wavs" / "0_1.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, hubert_st, "v2", f0_method=None)
    assert "0_1.wav" in one_line(e)
    sf.write(str(exp / "1_16k_wavs" / "0_1.wav"), speech_like(0.3, 1)[:300], 16000, subtype="FLOAT")
    with pytest.raises(RvcMlxError) as e:
        F.extract_features(exp, hubert_st, "v2", f0_method=None)
    assert "0_1.wav" in one_line(e) and "too short" in one_line(e)
