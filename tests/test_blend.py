"""rvc-mlx blend: Applio's model blender, exactly.

Two random-weight voices of one architecture are blended; the result must equal converting the checkpoint that
Applio's own ``model_blender`` (ultimate-rvc 0.6.0's copy) writes, and the blender formula computed here in torch.
Mismatched architectures and bad ratios give one line, exit 1 and no output file.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from rvc_mlx import store
from rvc_mlx.command import main
from rvc_mlx.convert.rvc import convert_voice
from tests.reference import hubert_models, rvc_models
from tests.reference.rvc_pipeline import ReferenceModels

VARIANT = next(v for v in rvc_models.VARIANTS if v.name == "v2-40k-f0")
SEED_B = rvc_models.BUILD_SEED + 1
FEWER_SPEAKERS = 50


def _variant(name):
    return next(v for v in rvc_models.VARIANTS if v.name == name)


def _save(data: dict, path):
    tmp = path.with_suffix(".part")
    torch.save(data, tmp)
    tmp.replace(path)
    return path


@pytest.fixture(scope="module")
def voices(ref_cache):
    """A (RVC-Project export) and a second model B exported both ways (RVC-Project and Applio layouts)."""
    a = rvc_models.checkpoint_path(ref_cache, VARIANT)
    b_rvc = ref_cache / f"voice-{VARIANT.name}-rvc-s{SEED_B}.pth"
    b_applio = ref_cache / f"voice-{VARIANT.name}-applio-s{SEED_B}.pth"
    if not (b_rvc.exists() and b_applio.exists()):
        model = rvc_models.build_model(VARIANT, seed=SEED_B)
        _save(rvc_models.export_rvc_project(model, VARIANT), b_rvc)
        _save(rvc_models.export_applio(model, VARIANT), b_applio)
    return {"a": a, "b": b_rvc, "b_applio": b_applio}


@pytest.fixture(scope="module")
def few_speakers(voices, tmp_path_factory):
    """B with a smaller speaker table (rows and config's spk_embed_dim cut), as a model trained so would be."""
    ckpt = rvc_models.load_torch_checkpoint(voices["b"])
    ckpt["weight"]["emb_g.weight"] = ckpt["weight"]["emb_g.weight"][:FEWER_SPEAKERS].clone()
    ckpt["config"][-3] = FEWER_SPEAKERS
    return _save(ckpt, tmp_path_factory.mktemp("few") / "few-speakers.pth")


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _convert_torch(ckpt: dict) -> dict:
    weights, _ = convert_voice(rvc_models.to_numpy_checkpoint(ckpt), "expected")
    return weights


def _applio_blend(a, b, ratio, tmp_path, monkeypatch) -> dict:
    """Run Applio's model_blender (it writes ./logs/<name>.pth) and load what it wrote."""
    from ultimate_rvc.rvc.train.process.model_blender import model_blender

    (tmp_path / "logs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = model_blender("applio", str(a), str(b), ratio)
    assert isinstance(result, tuple), result  # Applio returns a message string (or the error) when it refuses
    return rvc_models.load_torch_checkpoint(tmp_path / result[1])


def _assert_same(weights: dict, expected: dict):
    assert sorted(weights) == sorted(expected)
    for k in expected:
        assert weights[k].dtype == np.float32 and weights[k].shape == expected[k].shape, k
        assert np.array_equal(weights[k], expected[k]), f"{k}: max abs {np.abs(weights[k] - expected[k]).max()}"


def test_blend_equals_applio_and_the_formula(voices, tmp_path, monkeypatch, capsys):
    ratio = 0.4
    out = tmp_path / "blend.safetensors"
    code, text, err = _run(["blend", voices["a"], voices["b"], "--ratio", ratio, "-o", out], capsys)
    assert code == 0, err
    assert err == "" and "0.4 x" in text
    weights, config = store.load_numpy(out)

    # the formula, computed here in torch from the raw checkpoint tensors
    ca, cb = (rvc_models.load_torch_checkpoint(voices[k]) for k in ("a", "b"))
    blended = {k: (ratio * ca["weight"][k].float() + (1 - ratio) * cb["weight"][k].float()).half()
               for k in ca["weight"]}
    expected = _convert_torch({**ca, "weight": blended})
    _assert_same(weights, expected)

    # Applio's own blender
    applio = _applio_blend(voices["a"], voices["b"], ratio, tmp_path / "applio", monkeypatch)
    assert all(t.dtype == torch.float16 for t in applio["weight"].values())
    _assert_same(weights, _convert_torch(applio))
    assert config["info"] == applio["info"].replace(str(voices["a"]), voices["a"].name).replace(
        str(voices["b"]), voices["b"].name)
    assert (config["version"], config["sample_rate"], config["use_f0"], config["vocoder"]) == (
        applio["version"], int(applio["sr"]), bool(applio["f0"]), applio["vocoder"])
    assert config["blend"]["method"] == "checkpoint" and config["blend"]["ratio"] == ratio
    assert config["blend"]["a"] == voices["a"].name and len(config["blend"]["b_sha256"]) == 64

    # the blend is neither input: every weight-normed conv moved
    wa = _convert_torch(ca)
    assert np.abs(weights["dec.conv_post.weight"] - wa["dec.conv_post.weight"]).max() > 1e-3


@pytest.mark.parametrize("ratio, source", [(1.0, "a"), (0.0, "b_applio")])
def test_ratio_ends_give_the_inputs(voices, tmp_path, capsys, ratio, source):
    """ratio 1 is A, ratio 0 is B (here B in Applio's layout: new weight-norm names blend with old ones)."""
    out = tmp_path / "end"  # suffix added
    code, _, err = _run(["blend", voices["a"], voices["b_applio"], "--ratio", ratio, "-o", out], capsys)
    assert code == 0, err
    weights, _ = store.load_numpy(out.with_suffix(".safetensors"))
    _assert_same(weights, _convert_torch(rvc_models.load_torch_checkpoint(voices[source])))


def test_speaker_tables_are_cut_to_the_smaller(voices, few_speakers, tmp_path, monkeypatch, capsys):
    out = tmp_path / "few.safetensors"
    code, _, err = _run(["blend", voices["a"], few_speakers, "--ratio", 0.7, "-o", out], capsys)
    assert code == 0, err
    weights, config = store.load_numpy(out)
    assert weights["emb_g.weight"].shape[0] == FEWER_SPEAKERS == config["n_speakers"]
    _assert_same(weights, _convert_torch(_applio_blend(voices["a"], few_speakers, 0.7, tmp_path, monkeypatch)))


def test_converted_inputs_blend_the_fused_weights(voices, tmp_path, capsys):
    a_conv = tmp_path / "a.safetensors"
    assert _run(["convert", voices["a"], "-o", a_conv], capsys)[0] == 0
    out = tmp_path / "fused.safetensors"
    code, text, err = _run(["blend", a_conv, voices["b"], "--ratio", 0.4, "-o", out], capsys)
    assert code == 0, err
    assert err.count("\n") == 1 and "note:" in err and "fused" in err
    weights, config = store.load_numpy(out)
    assert config["blend"]["method"] == "converted" and config["n_speakers"] == 109
    wa, _ = store.load_numpy(a_conv)
    wb = _convert_torch(rvc_models.load_torch_checkpoint(voices["b"]))
    expected = {k: np.float32(0.4) * wa[k] + np.float32(0.6) * wb[k] for k in wa}
    _assert_same(weights, expected)
    # weight-norm fusion is not linear: the fused blend differs from Applio's blend of the .pth files
    raw = tmp_path / "raw.safetensors"
    assert _run(["blend", voices["a"], voices["b"], "--ratio", 0.4, "-o", raw], capsys)[0] == 0
    w_raw, _ = store.load_numpy(raw)
    assert np.abs(w_raw["dec.ups.0.weight"] - weights["dec.ups.0.weight"]).max() > 1e-3
    # a plain tensor differs only by Applio's float16 storage of the blend
    assert 0 < np.abs(w_raw["enc_p.emb_phone.weight"] - weights["enc_p.emb_phone.weight"]).max() < 1e-3


def test_blend_runs(voices, ref_cache, tmp_path, capsys):
    models = ReferenceModels(ref_cache)
    clip = tmp_path / "speech.wav"
    sf.write(clip, hubert_models.speech_like(int(16000 * 0.6) + 3, seed=2), 16000)
    blend = tmp_path / "blend.safetensors"
    assert _run(["blend", voices["a"], voices["b"], "--ratio", 0.4, "-o", blend], capsys)[0] == 0
    wav = tmp_path / "blend.wav"
    code, _, err = _run(["infer", "-m", blend, "-i", clip, "-o", wav, "--hubert", models.hubert_path,
                         "--rmvpe", models.rmvpe_path, "--f0-method", "pm", "--deterministic"], capsys)
    assert code == 0, err
    y, sr = sf.read(wav)
    assert sr == 40000 and abs(len(y) - 0.6 * sr) < 0.05 * sr  # RVC output is whole 20 ms feature frames
    assert np.isfinite(y).all() and 0.01 < np.sqrt(np.mean(y**2)) < 1


def _assert_refused(argv, tmp_path, capsys, *words):
    before = set(tmp_path.iterdir())
    code, _, err = _run(argv, capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert str(word) in err, err
    assert set(tmp_path.iterdir()) == before  # no output, no temp file
    return err


@pytest.mark.parametrize("other, difference", [
    ("v2-48k-f0", "different sample rate: 40000 vs 48000"),
    ("v1-40k-f0", "different version: v2 vs v1"),
    ("v2-40k-nof0", "different f0 (pitch guidance): True vs False"),
])
def test_different_architectures_are_refused(voices, ref_cache, tmp_path, capsys, other, difference):
    b = rvc_models.checkpoint_path(ref_cache, _variant(other))
    out = tmp_path / "x.safetensors"
    _assert_refused(["blend", voices["a"], b, "-o", out], tmp_path, capsys, voices["a"], b, difference)


def test_different_tensors_and_embedders_are_refused(voices, tmp_path, capsys):
    ckpt = rvc_models.load_torch_checkpoint(voices["b"])
    del ckpt["weight"]["flow.flows.0.post.bias"]
    missing = _save(ckpt, tmp_path / "missing.pth")
    ckpt = rvc_models.load_torch_checkpoint(voices["b"])
    ckpt["weight"]["enc_p.emb_pitch.weight"] = ckpt["weight"]["enc_p.emb_pitch.weight"][:200].clone()
    short = _save(ckpt, tmp_path / "short.pth")
    ckpt = rvc_models.load_torch_checkpoint(voices["b_applio"])
    ckpt["embedder_model"] = "chinese-hubert-base"
    chinese = _save(ckpt, tmp_path / "chinese.pth")
    out = tmp_path / "x.safetensors"
    _assert_refused(["blend", voices["a"], missing, "-o", out], tmp_path, capsys,
                    "different tensors", f"only in {voices['a'].name}: flow.flows.0.post.bias")
    _assert_refused(["blend", voices["a"], short, "-o", out], tmp_path, capsys,
                    "tensor enc_p.emb_pitch.weight has shape (256, 192) vs (200, 192)")
    _assert_refused(["blend", voices["a"], chinese, "-o", out], tmp_path, capsys,
                    "different embedder: contentvec vs chinese-hubert-base")


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "nan"])
def test_ratio_outside_0_1_is_refused(voices, tmp_path, capsys, ratio):
    out = tmp_path / "x.safetensors"
    _assert_refused(["blend", voices["a"], voices["b"], "--ratio", ratio, "-o", out], tmp_path, capsys,
                    "ratio", "outside 0..1")


def test_bad_paths_are_refused(voices, ref_cache, tmp_path, capsys):
    _assert_refused(["blend", voices["a"], voices["b"], "-o", tmp_path / "x.pth"], tmp_path, capsys, ".safetensors")
    _assert_refused(["blend", voices["a"], tmp_path / "none.pth", "-o", tmp_path / "x"], tmp_path, capsys,
                    "none.pth", "not found")
    models = ReferenceModels(ref_cache)
    _assert_refused(["blend", voices["a"], models.hubert_path, "-o", tmp_path / "x"], tmp_path, capsys,
                    "hubert model, not a voice")
