"""Parity kit: stage dumps of rvc-mlx vs the PyTorch reference (rvc==0.3.5), and seeded faults that `compare`
must detect and attribute to the right first stage.

Faults are injected the way a port gets them wrong: into a *copy* of the converted weights (a conv weight
transposed once more, flow couplings in the wrong order, BERT's LayerNorm eps 1e-12 in the HuBERT config) or
into a code path (coarse pitch truncated instead of rounded). F0 uses ``pm`` in both pipelines (see
test_pipeline: a neural estimator's flipped voicing decision would decorrelate later audio).
"""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_mlx import parity, store
from rvc_mlx.command import main
from rvc_mlx.pipeline import STAGES, ConversionOptions, VoiceConverter
from tests.reference import hubert_models
from tests.reference.reference_dump import reference_dump
from tests.reference.rvc_pipeline import ReferenceModels

SR16 = 16000
VOICE = "v2-40k-f0"
OPTIONS = {"f0_method": "pm", "index_rate": 0.75, "protect": 0.33, "rms_mix_rate": 0.25}
LOUD_PEAK = 0.5  # speech_like's level
QUIET_PEAK = 0.005  # about -46 dBFS: where LayerNorm's eps is no longer negligible against the variance
CLIP_SECONDS = 1.5


def _audio(peak: float) -> np.ndarray:
    a = hubert_models.speech_like(int(SR16 * CLIP_SECONDS) + 7, seed=3)
    return (a * (peak / np.abs(a).max())).astype(np.float32)


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


@pytest.fixture(scope="module")
def index(models):
    return models.index(768)


def _ref_dump_path(models, ref_cache, index, peak) -> Path:
    """Reference stage dump, cached per (voice, hubert) build and input level."""
    voice_path, _, _ = models.voice(VOICE)
    key = f"{voice_path.stem}-{Path(models.hubert_path).stem}-{Path(index).stem}-p{peak:g}-{CLIP_SECONDS:g}s"
    path = Path(ref_cache) / "parity" / f"refdump-{key}.safetensors"
    if not path.exists():
        stages, info = reference_dump(models, VOICE, _audio(peak), index=index, **OPTIONS)
        parity.save_dump(path, stages, info)
    return path


@pytest.fixture(scope="module")
def ref_loud(models, ref_cache, index):
    return _ref_dump_path(models, ref_cache, index, LOUD_PEAK)


@pytest.fixture(scope="module")
def ref_quiet(models, ref_cache, index):
    return _ref_dump_path(models, ref_cache, index, QUIET_PEAK)


def _ours(models, index, peak, out: Path, voice=None, hubert=None, patch=None) -> Path:
    voice = voice or models.voice(VOICE)[0]
    vc = VoiceConverter.load(voice, hubert=hubert or models.hubert_path, index=index)
    if patch is not None:
        patch(vc)
    stages, info = parity.dump(vc, _audio(peak), SR16, ConversionOptions(deterministic=True, **OPTIONS))
    parity.save_dump(out, stages, info)
    return out


@pytest.fixture(scope="module")
def ours_loud_cli(models, index, tmp_path_factory):
    """Our clean dump of the loud clip, made through the CLI (`rvc-mlx dump`)."""
    d = tmp_path_factory.mktemp("ours")
    wav = d / "in.wav"
    sf.write(wav, _audio(LOUD_PEAK), SR16, subtype="FLOAT")
    out = d / "ours.safetensors"
    code = main(["dump", "-m", str(models.voice(VOICE)[0]), "-i", str(wav), "-o", str(out),
                 "--hubert", str(models.hubert_path), "--index", str(index), "--deterministic",
                 "--f0-method", OPTIONS["f0_method"], "--index-rate", str(OPTIONS["index_rate"]),
                 "--protect", str(OPTIONS["protect"]), "--rms-mix-rate", str(OPTIONS["rms_mix_rate"])])
    assert code == 0
    return out


def _print(cmp):
    print()
    print(cmp.summary())


# -- clean comparisons -------------------------------------------------------------------------------------------


def test_dump_describes_every_stage(ours_loud_cli):
    d = parity.load_dump(ours_loud_cli)
    assert list(d.stages) == [s for s in STAGES if s in d.stages]  # pipeline order
    assert set(STAGES) <= set(d.stages)
    for name, arr in d.stages.items():
        meta = d.described[name]
        assert meta["shape"] == list(arr.shape) and meta["dtype"] == str(arr.dtype)
        assert (meta["axes"], meta["meaning"]) == STAGES[name]
    t100 = d.stages["m_p"].shape[0]
    assert d.stages["hubert"].shape == (t100 // 2, 768) and d.stages["protected"].shape == (t100, 768)
    assert d.stages["generator"].shape == (t100 * 400,)  # 40 kHz: 400 samples per 100 fps frame
    assert d.stages["pitch"].dtype == np.int32 and d.info["options"]["deterministic"] is True


def test_reference_and_ours_agree(ref_loud, ours_loud_cli):
    a, b = parity.load_dump(ref_loud), parity.load_dump(ours_loud_cli)
    cmp = parity.compare(a, b)
    _print(cmp)
    assert cmp.first_divergent is None
    assert {r.name for r in cmp.compared} == set(STAGES)
    worst = max(r.metrics["rel_rmse"] for r in cmp.results if r.kind == "features")
    assert worst < 1e-5, worst
    assert next(r for r in cmp.results if r.name == "audio").metrics["mel_corr"] > 0.99999


def test_reference_and_ours_agree_on_quiet_input(models, index, ref_quiet, tmp_path):
    cmp = parity.compare(parity.load_dump(ref_quiet), parity.load_dump(_ours(models, index, QUIET_PEAK,
                                                                               tmp_path / "q.safetensors")))
    _print(cmp)
    assert cmp.first_divergent is None


# -- seeded faults -------------------------------------------------------------------------------------------------


def _edited_copy(src: Path, dst: Path, edit_weights=None, edit_config=None) -> Path:
    weights, config = store.load_numpy(src)
    config = {k: v for k, v in config.items() if k not in ("format", "format_version")}
    if edit_weights:
        edit_weights(weights)
    if edit_config:
        edit_config(config)
    store.save(dst, weights, config)
    return dst


def _transpose_again(key):
    """A (out, kernel, in) conv weight transposed once more, (in, kernel, out): fits when in == out."""
    def edit(w):
        assert w[key].shape[0] == w[key].shape[2]
        w[key] = np.ascontiguousarray(w[key].transpose(2, 1, 0))
    return edit


def _reverse_coupling_order(w):
    """Couplings 0,2,4,6 stored as 6,4,2,0 (a port that indexes the flow list the wrong way round)."""
    swap = {"0": "6", "6": "0", "2": "4", "4": "2"}
    moved = {}
    for k in [k for k in w if k.startswith("flow.flows.")]:
        parts = k.split(".")
        parts[2] = swap[parts[2]]
        moved[".".join(parts)] = w.pop(k)
    w.update(moved)


def _truncating_coarse(monkeypatch):
    from rvc_mlx.f0 import postprocess

    original = postprocess.coarse

    def coarse(f0):
        rounded = np.asarray(original(f0))
        f0 = np.asarray(f0, np.float64)
        mel = 1127 * np.log(1 + f0 / 700)
        lo, hi = 1127 * np.log(1 + 50 / 700), 1127 * np.log(1 + 1100 / 700)
        truncated = np.clip((mel - lo) * 254 / (hi - lo) + 1, 1, 255).astype(rounded.dtype)
        return np.where(f0 > 0, truncated, rounded)

    monkeypatch.setattr(postprocess, "coarse", coarse)


FAULTS = {
    # name: (expected first divergent stage, input level, last stage it must still be visible in)
    "synth-conv-transposed": ("m_p", LOUD_PEAK, "audio"),
    "hubert-conv-transposed": ("hubert", LOUD_PEAK, "audio"),
    "flow-order-swapped": ("z", LOUD_PEAK, "audio"),
    "pitch-truncated": ("pitch", LOUD_PEAK, "audio"),
    # eps only matters where the LayerNorm input variance is small (quiet input; on the loud clip HuBERT moves by
    # ~6e-5 relative). It moves z by ~0.4 % but the audio by only ~0.1 %, inside the audio tolerance.
    "layernorm-eps-1e-12": ("hubert", QUIET_PEAK, "z"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_attributed_to_its_first_stage(fault, models, index, ref_loud, ref_quiet, tmp_path, monkeypatch):
    expected, peak, visible_in = FAULTS[fault]
    voice, hubert = models.voice(VOICE)[0], models.hubert_path
    if fault == "synth-conv-transposed":
        voice = _edited_copy(voice, tmp_path / "v.safetensors", _transpose_again("enc_p.encoder.attn_layers.0.conv_q.weight"))
    elif fault == "hubert-conv-transposed":
        hubert = _edited_copy(hubert, tmp_path / "h.safetensors", _transpose_again("feature_extractor.conv_layers.1.conv.weight"))
    elif fault == "flow-order-swapped":
        voice = _edited_copy(voice, tmp_path / "v.safetensors", _reverse_coupling_order)
    elif fault == "layernorm-eps-1e-12":
        hubert = _edited_copy(hubert, tmp_path / "h.safetensors", edit_config=lambda c: c.update(layer_norm_eps=1e-12))
    elif fault == "pitch-truncated":
        _truncating_coarse(monkeypatch)
    ours = _ours(models, index, peak, tmp_path / "faulty.safetensors", voice=voice, hubert=hubert)
    ref = ref_loud if peak == LOUD_PEAK else ref_quiet
    a, b = parity.load_dump(ref), parity.load_dump(ours)
    cmp = parity.compare(a, b)
    _print(cmp)
    first = cmp.first_divergent
    assert first is not None and first.name == expected, (fault, first and first.name, first and first.reason)
    # not vacuous: the fault propagates downstream, and every stage before the culprit is still clean
    assert not next(r for r in cmp.results if r.name == visible_in).passed
    names = [r.name for r in cmp.results]
    assert all(r.passed for r in cmp.results[: names.index(expected)])

    if fault == "pitch-truncated":  # the CLI agrees: exit 2, names the stage, and writes a report with figures
        report = tmp_path / "report.html"
        assert main(["compare", str(ref), str(ours), "--report", str(report)]) == 2
        page = report.read_text()
        assert "First divergent stage: <b>pitch</b>" in page
        pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
        assert len(pngs) >= 3  # error bars, f0 overlay, spectrograms
        assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


# -- compare: metrics and CLI --------------------------------------------------------------------------------------


def _toy_dump(path, f0_scale=1.0, pitch_shift=0, feat_noise=0.0, audio_noise=0.0):
    rng = np.random.default_rng(0)
    f0 = np.where(np.arange(200) % 50 < 35, 150 + 20 * np.sin(np.arange(200) / 9), 0.0) * f0_scale
    feats = rng.standard_normal((100, 8)).astype(np.float32)
    audio = np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000).astype(np.float32)
    stages = {
        "input16k": audio,
        "f0": f0.astype(np.float32),
        "pitch": (np.where(f0 > 0, 100, 1) + pitch_shift * (f0 > 0)).astype(np.int32),
        "hubert": feats + feat_noise * rng.standard_normal(feats.shape).astype(np.float32),
        "audio": audio + audio_noise * rng.standard_normal(audio.shape).astype(np.float32),
    }
    info = {"producer": "toy", "model": {"sample_rate": 16000}, "output_sample_rate": 16000}
    parity.save_dump(path, stages, info)
    return path


def test_compare_metrics_on_known_differences(tmp_path):
    a = parity.load_dump(_toy_dump(tmp_path / "a.safetensors"))
    cents = parity.compare(a, parity.load_dump(_toy_dump(tmp_path / "b.safetensors", f0_scale=2 ** (10 / 1200))))
    r = cents.results[1]
    assert r.name == "f0" and abs(r.metrics["max_cents"] - 10) < 1e-3 and r.metrics["voicing_mismatch"] == 0
    assert cents.first_divergent.name == "f0"
    feats = parity.compare(a, parity.load_dump(_toy_dump(tmp_path / "c.safetensors", feat_noise=1e-2)))
    h = next(r for r in feats.results if r.name == "hubert")
    assert abs(h.metrics["rel_rmse"] - 1e-2) < 2e-3 and feats.first_divergent.name == "hubert"
    same = parity.compare(a, parity.load_dump(_toy_dump(tmp_path / "d.safetensors", feat_noise=1e-7)))
    assert same.first_divergent is None
    audio = parity.compare(a, parity.load_dump(_toy_dump(tmp_path / "e.safetensors", audio_noise=0.05)))
    assert audio.first_divergent.name == "audio" and audio.results[-1].metrics["mel_corr"] < 0.999
    looser = parity.compare(a, parity.load_dump(tmp_path / "c.safetensors"),
                            parity.parse_tolerances(["features.rel_rmse=0.05"]))
    assert looser.first_divergent is None


def test_compare_cli_exit_codes_and_errors(tmp_path, capsys):
    a = _toy_dump(tmp_path / "a.safetensors")
    b = _toy_dump(tmp_path / "b.safetensors", pitch_shift=1)
    assert main(["compare", str(a), str(a)]) == 0
    assert "OK:" in capsys.readouterr().out
    assert main(["compare", str(a), str(b)]) == 2
    assert "first divergent stage is 'pitch'" in capsys.readouterr().out
    # bad inputs: one line on stderr, exit 1, no traceback
    not_dump = tmp_path / "model.safetensors"
    store.save(not_dump, {"w": np.zeros(2, np.float32)}, {"kind": "voice"})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 20)
    for bad, words in ((tmp_path / "missing.safetensors", "not found"), (not_dump, "not a stage dump"),
                       (garbage, "stage dump")):
        assert main(["compare", str(a), str(bad)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err and "Traceback" not in err, err
    assert main(["compare", str(a), str(a), "--tolerance", "bogus=1"]) == 1
    assert "bad tolerance" in capsys.readouterr().err


def test_dump_cli_errors(tmp_path, capsys, models):
    assert main(["dump", "-m", str(models.voice(VOICE)[0]), "-i", str(tmp_path / "nope.wav"),
                 "-o", str(tmp_path / "o.safetensors"), "--hubert", str(models.hubert_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "input audio not found" in err
    wav = tmp_path / "in.wav"
    sf.write(wav, _audio(LOUD_PEAK)[:8000], SR16)
    assert main(["dump", "-m", str(tmp_path / "missing.pth"), "-i", str(wav), "-o", str(tmp_path / "o.safetensors"),
                 "--hubert", str(models.hubert_path)]) == 1
    assert "voice model not found" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_report_is_self_contained(tmp_path):
    a, b = _toy_dump(tmp_path / "a.safetensors"), _toy_dump(tmp_path / "b.safetensors", feat_noise=0.1)
    report = tmp_path / "r.html"
    assert main(["compare", str(a), str(b), "--report", str(report)]) == 2
    page = report.read_text()
    assert "First divergent stage: <b>hubert</b>" in page
    assert "<script" not in page and "http" not in page.replace("charset", "")  # nothing fetched
    assert len(re.findall(r"data:image/png;base64,", page)) == 3
    json.loads(json.dumps(parity.TOLERANCES))  # tolerances are printed as JSON in the page
