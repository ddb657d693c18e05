"""Applio's vocoders (MRF HiFi-GAN, RefineGAN) against Applio's own Synthesizer (ultimate-rvc 0.6.0).

Voices are random-weight Applio models saved the way Applio's trainer saves them (fp16, ``weight_g/weight_v``,
Applio metadata; see ``tests/reference/applio_models.py``). Deterministic parity: the reference runs with
``torch.randn_like``/``torch.rand`` patched to zeros, ours with ``noise="none"``. The end-to-end case drives
Applio's Synthesizer with rvc==0.3.5's ``Pipeline`` (index, rmvpe) against ``rvc-mlx infer --deterministic``.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
import torch

from rvc_mlx.checkpoint import load_checkpoint
from rvc_mlx.command import main
from rvc_mlx.convert.rvc import convert_voice
from rvc_mlx.errors import ConversionError
from rvc_mlx.models.synthesizer import Noise, Synthesizer
from rvc_mlx.store import save
from tests.reference import applio_models as A
from tests.reference import hubert_models
from tests.reference import rvc_models as R
from tests.reference.rvc_pipeline import ReferenceModels, reference_convert

MAX_ABS = 1e-4
MIN_CORR = 0.99999
MIN_E2E_CORR = 0.9999
SR16 = 16000
CONFIGS = [(v, sr) for v in ("MRF HiFi-GAN", "RefineGAN") for sr in A.SAMPLE_RATES[v]]
# The default set runs one config per vocoder (each other config costs a model build); the slow set runs all.
DEFAULT_CONFIGS = {("MRF HiFi-GAN", 40000), ("RefineGAN", 32000)}
FAST_LONG = {("RefineGAN", 32000)}  # also run 1000 frames in the default set


def _id(vocoder, sr):
    return f"{'mrf' if vocoder.startswith('MRF') else 'refinegan'}-{sr // 1000}k"


@functools.lru_cache(maxsize=2)
def _models(vocoder: str, sr: int, cache_dir: str):
    """(Applio reference net, our Synthesizer, converted weights, config) from the same cached fp16 .pth."""
    path = A.checkpoint_path(cache_dir, vocoder, sr)
    ref = A.reference_model(R.load_torch_checkpoint(path))
    weights, config = convert_voice(load_checkpoint(path), str(path))
    out = path.with_suffix(".safetensors")
    if not out.exists():
        save(out, weights, config)
    return ref, Synthesizer.load(out), weights, config


def _corr(a, b) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def _cases():
    for vocoder, sr in CONFIGS:
        for frames in (1, 7, 200, 1000):
            slow = (vocoder, sr) not in DEFAULT_CONFIGS or (frames == 1000 and (vocoder, sr) not in FAST_LONG)
            yield pytest.param(vocoder, sr, frames, id=f"{_id(vocoder, sr)}-{frames}",
                               marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("vocoder,sr,frames", list(_cases()))
def test_deterministic_parity(vocoder, sr, frames, ref_cache):
    ref, ours, _, config = _models(vocoder, sr, str(ref_cache))
    assert config["vocoder"] == vocoder and ours.config.vocoder == vocoder
    feats, pitch, f0 = R.make_inputs(768, frames, seed=0)
    with R.deterministic():
        want = A.reference_infer(ref, feats, pitch, f0, sid=0)
    got = ours.synthesize(feats, pitch, f0, sid=0, noise="none")
    assert got.shape == want.shape == (frames * sr // 100,)
    diff = float(np.abs(got - want).max())
    print(f"{_id(vocoder, sr)} {frames} frames: max|diff| {diff:.2e} std {want.std():.3f}"
          + (f" corr {_corr(got, want):.8f}" if frames > 1 else ""))
    assert diff <= MAX_ABS, diff
    if frames > 1:
        assert _corr(got, want) >= MIN_CORR


@pytest.mark.parametrize("vocoder,sr", [("MRF HiFi-GAN", 40000), ("RefineGAN", 32000)], ids=["mrf-40k", "refinegan-32k"])
def test_parity_is_not_vacuous(vocoder, sr, ref_cache):
    """Speech-level audio; one decoder conv of the converted weights, the f0 and the harmonic merge each move
    the output far beyond the tolerance."""
    ref, ours, weights, config = _models(vocoder, sr, str(ref_cache))
    feats, pitch, f0 = R.make_inputs(768, 200, seed=0)
    with R.deterministic():
        want = A.reference_infer(ref, feats, pitch, f0, sid=0)
        shifted = A.reference_infer(ref, feats, pitch, f0 * 1.5, sid=0)
    assert 0.1 < want.std() < 0.6 and abs(want.mean()) < 0.2 * want.std()
    assert np.abs(shifted - want).max() > 1000 * MAX_ABS
    conv = "dec.ups.1.weight" if vocoder.startswith("MRF") else "dec.upsample_conv_blocks.1.input_conv.weight"
    for name, change in ((conv, lambda w: w * 1.05), ("dec.m_source.l_linear.weight", lambda w: w * 0.5)):
        faulty = Synthesizer(ours.config)
        faulty.load_weights([(k, mx.array(change(v) if k == name else v)) for k, v in weights.items()])
        got = faulty.synthesize(feats, pitch, f0, sid=0, noise="none")
        diff = float(np.abs(got - want).max())
        print(f"{_id(vocoder, sr)} fault in {name}: max|diff| {diff:.2e}")
        assert diff > 100 * MAX_ABS, (name, diff)


def test_mrf_noise_enters_where_applio_adds_it(ref_cache):
    """The same random draws (z_p noise, initial phases of the overtones, source noise) give Applio's noisy
    output: random phases on harmonics 2..9 matter, and they are the only other random input."""
    ref, ours, _, _ = _models("MRF HiFi-GAN", 40000, str(ref_cache))
    feats, pitch, f0 = R.make_inputs(768, 60, seed=2)
    draws = []
    real_randn_like, real_rand = torch.randn_like, torch.rand

    def recording(fn):
        def draw(*a, **k):
            draws.append((fn.__name__, fn(*a, **k)))
            return draws[-1][1]
        return draw

    torch.manual_seed(0)
    torch.randn_like, torch.rand = recording(real_randn_like), recording(real_rand)
    try:
        want = A.reference_infer(ref, feats, pitch, f0, sid=0)
    finally:
        torch.randn_like, torch.rand = real_randn_like, real_rand
    assert [name for name, _ in draws] == ["randn_like", "rand", "randn_like"]
    z = draws[0][1][0].T[None].numpy()  # (1, T, 192)
    phase = draws[1][1].numpy().copy()  # (1, 9); Applio zeroes the fundamental's after drawing
    phase[:, 0] = 0
    source = draws[2][1].numpy()  # (1, T·upp, 9)
    noise = Noise(z=mx.array(z), phase=mx.array(phase), source=mx.array(source))
    got = ours.synthesize(feats, pitch, f0, sid=0, noise=noise)
    assert _corr(got, want) >= MIN_CORR and np.abs(got - want).max() <= MAX_ABS
    without_phase = ours.synthesize(feats, pitch, f0, sid=0, noise=Noise(z=mx.array(z), source=mx.array(source)))
    assert np.abs(without_phase - want).max() > 100 * MAX_ABS
    a = ours.synthesize(feats, pitch, f0, sid=0, seed=3)
    b = ours.synthesize(feats, pitch, f0, sid=0, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - ours.synthesize(feats, pitch, f0, sid=0, seed=4)).std() > 0.05 * a.std()


# -- conversion -----------------------------------------------------------------------------------------------


def test_applio_metadata_and_layout(ref_cache):
    path = A.checkpoint_path(ref_cache, "MRF HiFi-GAN", 40000)
    raw = load_checkpoint(path)
    assert raw["vocoder"] == "MRF HiFi-GAN" and any(k.endswith(".weight_g") for k in raw["weight"])
    assert raw["weight"]["dec.conv_pre.weight_v"].dtype == np.float16
    weights, config = convert_voice(raw, str(path))
    assert config["vocoder"] == "MRF HiFi-GAN" and config["sample_rate"] == 40000
    assert weights["dec.m_source.l_linear.weight"].shape == (1, 9) and "dec.conv_post.bias" in weights
    # without the field, the decoder's keys say which vocoder it is; a field that contradicts them is refused
    assert convert_voice({k: v for k, v in raw.items() if k != "vocoder"})[1]["vocoder"] == "MRF HiFi-GAN"
    with pytest.raises(ConversionError, match="says vocoder 'HiFi-GAN' but its decoder weights are MRF HiFi-GAN's"):
        convert_voice(dict(raw, vocoder="HiFi-GAN"), "x.pth")


def test_old_refinegan_layout_is_one_clear_line(ref_cache):
    path = A.checkpoint_path(ref_cache, "RefineGAN", 32000)
    raw = load_checkpoint(path)
    raw["weight"]["dec.pre_conv.weight_v"] = np.zeros((256, 1, 7), np.float16)  # Applio 3.2.9's pre_conv
    raw["weight"]["dec.pre_conv.weight_g"] = np.ones((256, 1, 1), np.float16)
    with pytest.raises(ConversionError) as err:
        convert_voice(raw, "old.pth")
    text = str(err.value)
    assert text.startswith("old.pth: RefineGAN layout of Applio 3.2.9") and "retrain" in text and "\n" not in text


# -- end to end -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


@pytest.mark.parametrize("voice", ["applio-mrf-40k", "applio-refinegan-32k"])
def test_infer_matches_rvc_pipeline_driving_applio(models, voice, tmp_path, capsys):
    """``rvc-mlx infer --deterministic`` on the Applio ``.pth`` itself, with an index and rmvpe, against
    rvc==0.3.5's Pipeline with Applio's Synthesizer as ``net_g``."""
    _, _, ckpt = models.voice(voice)
    pth = A.checkpoint_path(models.cache, ckpt["vocoder"], ckpt["sr"])
    audio = (hubert_models.speech_like(int(SR16 * 2.5) + 7, seed=3) * 0.6).astype(np.float32)
    src = tmp_path / "in.wav"
    sf.write(src, audio, SR16, subtype="FLOAT")
    index = models.index(768)
    out = tmp_path / "out.wav"
    code = main([str(a) for a in ["infer", "-m", pth, "-i", src, "-o", out, "--index", index, "--hubert",
                                  models.hubert_path, "--rmvpe", models.rmvpe_path, "--f0-method", "rmvpe",
                                  "--deterministic", "--format", "wav"]])
    assert code == 0, capsys.readouterr().err
    got, sr = sf.read(out, dtype="float32")
    want, want_sr = reference_convert(models, voice, audio, f0_method="rmvpe", index=index)
    assert sr == want_sr == ckpt["sr"] and got.shape == want.shape
    corr = _corr(got, want.astype(np.float64) / 32768.0)
    print(f"{voice}: corr {corr:.7f}")
    assert corr >= MIN_E2E_CORR


@pytest.mark.parametrize("voice", ["applio-mrf-40k", "applio-refinegan-32k"])
def test_info_and_ios_export_carry_the_vocoder(models, voice, tmp_path, capsys):
    import json

    from rvc_mlx.export import export_bundle, load_bundle

    path, _, ckpt = models.voice(voice)
    pth = A.checkpoint_path(models.cache, ckpt["vocoder"], ckpt["sr"])
    code = main(["info", str(pth), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["vocoder"] == ckpt["vocoder"]
    manifest = export_bundle(tmp_path / "b", path, models.hubert_path, models.rmvpe_path, golden=False)
    assert manifest["voice"]["vocoder"] == ckpt["vocoder"]
    layouts = manifest["files"]["voice.safetensors"]["tensors"]
    dec = {t["name"]: t["layout"] for t in layouts if t["name"].startswith("dec.")}
    assert dec and set(dec.values()) <= {"conv1d", "conv_transpose1d", "keep"}
    assert f"vocoder {ckpt['vocoder']}" in (tmp_path / "b" / "FORMAT.md").read_text()
    converter = load_bundle(tmp_path / "b")
    assert converter.synthesizer.config.vocoder == ckpt["vocoder"]
