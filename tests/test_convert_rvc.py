"""RVC voice converter against rvc==0.3.5 checkpoints (RVC-Project and Applio exports, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from rvc_mlx.checkpoint import load_checkpoint
from rvc_mlx.convert.common import LAYOUTS
from rvc_mlx.convert.rvc import DROP, convert_voice, is_training_checkpoint, is_voice_checkpoint
from rvc_mlx.errors import ConversionError
from rvc_mlx.models.synthesizer import Synthesizer, SynthesizerConfig
from rvc_mlx.store import load, load_into, save
from tests.reference import rvc_models as R

VARIANT_IDS = [v.name for v in R.VARIANTS]
V2_40K_F0 = next(v for v in R.VARIANTS if v.name == "v2-40k-f0")


@pytest.fixture(scope="module")
def ckpts(ref_cache):
    """variant name -> checkpoint dict as read by the runtime's safe reader."""
    cache = {}

    def get(variant, kind="rvc"):
        key = (variant.name, kind)
        if key not in cache:
            cache[key] = load_checkpoint(R.checkpoint_path(ref_cache, variant, kind))
        return cache[key]

    return get


@pytest.fixture(scope="module")
def converted(ckpts):
    """variant name -> ``convert_voice`` result of its RVC-Project checkpoint (converted once per module)."""
    cache = {}

    def get(variant):
        if variant.name not in cache:
            cache[variant.name] = convert_voice(ckpts(variant), "model.pth")
        return cache[variant.name]

    return get


def _wn_modules(state: dict) -> list[str]:
    return sorted(k[: -len(".weight_g")] for k in state if k.endswith(".weight_g"))


@pytest.mark.parametrize("variant", R.VARIANTS, ids=VARIANT_IDS)
def test_converts_and_loads_strictly(variant, ckpts, converted, tmp_path):
    ckpt = ckpts(variant)
    weights, config = converted(variant)
    cfg_list = R.config_list(variant)
    assert config["kind"] == "voice" and config["version"] == variant.version
    assert config["sample_rate"] == variant.sample_rate and isinstance(config["sample_rate"], int)
    assert config["use_f0"] is variant.f0
    assert config["feature_dim"] == variant.feature_dim
    assert config["n_speakers"] == ckpt["weight"]["emb_g.weight"].shape[0] == cfg_list[15]
    assert config["upsample_rates"] == cfg_list[12] and config["upsample_kernel_sizes"] == cfg_list[14]
    assert config["embedder"] == "contentvec" and config["vocoder"] == "HiFi-GAN" and config["info"] == "20epoch"
    assert all(w.dtype == np.float32 for w in weights.values())

    model = Synthesizer(SynthesizerConfig.from_dict(config))
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(s) for k, s in expected.items()}

    path = tmp_path / "voice.safetensors"
    save(path, weights, config)
    loaded, stored_config = load(path, kind="voice")
    assert stored_config["n_speakers"] == config["n_speakers"]
    load_into(Synthesizer(SynthesizerConfig.from_dict(stored_config)), loaded, str(path))
    Synthesizer.load(path)


@pytest.mark.parametrize("variant", R.VARIANTS, ids=VARIANT_IDS)
def test_every_tensor_mapped_or_dropped(variant, ckpts, converted):
    """Each source tensor becomes exactly one converted tensor (weight-norm pairs become one ``.weight``)."""
    ckpt = ckpts(variant)
    weights, _ = converted(variant)
    src = ckpt["weight"]
    wn = _wn_modules(src)
    expected = {k for k in src if not k.endswith((".weight_g", ".weight_v"))} | {m + ".weight" for m in wn}
    assert set(weights) == expected
    assert len(weights) == len(src) - len(wn)

    extra = dict(ckpt, weight={**src, "dec.extra_layer.weight": np.zeros((2, 2), np.float16)})
    with pytest.raises(ConversionError, match="dec.extra_layer.weight"):
        convert_voice(extra, "odd.pth")


@pytest.mark.parametrize("variant", R.VARIANTS, ids=VARIANT_IDS)
def test_layouts_and_weight_norm_fusion(variant, ckpts, converted):
    """Fused weights equal torch's own weight_norm of the fp16 checkpoint tensors (≤ 1e-6); every other
    tensor is the source (upcast) in MLX layout."""
    ckpt = ckpts(variant)
    weights, _ = converted(variant)
    src = ckpt["weight"]
    wn = set(_wn_modules(src))
    worst = 0.0
    for module in wn:
        g = torch.from_numpy(src[module + ".weight_g"]).float()
        v = torch.from_numpy(src[module + ".weight_v"]).float()
        ref = torch._weight_norm(v, g, 0).numpy()
        layout = "conv_transpose1d" if ".ups." in module else "conv1d"
        worst = max(worst, float(np.abs(weights[module + ".weight"] - LAYOUTS[layout](ref)).max()))
    assert worst <= 1e-6
    for key, value in src.items():
        if key.endswith((".weight_g", ".weight_v")):
            continue
        ref = value.astype(np.float32)
        if ref.ndim == 3 and key.endswith(".weight"):
            ref = LAYOUTS["conv1d"](ref)
        np.testing.assert_array_equal(weights[key], ref, err_msg=key)


def test_applio_format(ckpts):
    """Applio: integer sr, new-style parametrizations weight norm, embedder/vocoder metadata."""
    applio = ckpts(V2_40K_F0, "applio")
    assert isinstance(applio["sr"], int)
    assert any(".parametrizations.weight.original1" in k for k in applio["weight"])
    weights, config = convert_voice(applio, "applio.pth")
    assert config["sample_rate"] == 40000 and config["embedder"] == "contentvec" and config["info"] == "applio-test"
    rvc_weights, _ = convert_voice(ckpts(V2_40K_F0))
    assert set(weights) == set(rvc_weights)
    for k in weights:
        np.testing.assert_allclose(weights[k], rvc_weights[k], rtol=0, atol=1e-6, err_msg=k)
    # torch's parametrizations.weight_norm on one conv transpose and one conv
    for module, conv in (("dec.ups.0", torch.nn.ConvTranspose1d), ("flow.flows.2.enc.in_layers.1", torch.nn.Conv1d)):
        g = torch.from_numpy(applio["weight"][module + ".parametrizations.weight.original0"]).float()
        v = torch.from_numpy(applio["weight"][module + ".parametrizations.weight.original1"]).float()
        layer = torch.nn.utils.parametrizations.weight_norm(conv(1, 1, 1))
        layer.parametrizations.weight.original0 = torch.nn.Parameter(g)
        layer.parametrizations.weight.original1 = torch.nn.Parameter(v)
        layout = "conv_transpose1d" if conv is torch.nn.ConvTranspose1d else "conv1d"
        ref = LAYOUTS[layout](layer.weight.detach().numpy())
        assert np.abs(weights[module + ".weight"] - ref).max() <= 1e-6


def test_applio_embedder_name_is_kept(ckpts):
    applio = dict(ckpts(V2_40K_F0, "applio"), embedder_model="japanese-hubert-base")
    assert convert_voice(applio)[1]["embedder"] == "japanese-hubert-base"


@pytest.mark.parametrize("vocoder", ["RingFormer", "PCPH-GAN"])
def test_unknown_vocoder_refused(ckpts, vocoder):
    ckpt = dict(ckpts(V2_40K_F0, "applio"), vocoder=vocoder)  # vocoders of Applio forks
    with pytest.raises(ConversionError, match=f"my.pth: vocoder '{vocoder}' is not supported") as err:
        convert_voice(ckpt, "my.pth")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("vocoder", ["RefineGAN", "MRF HiFi-GAN"])
def test_vocoder_field_must_match_the_weights(ckpts, vocoder):
    ckpt = dict(ckpts(V2_40K_F0, "applio"), vocoder=vocoder)  # HiFi-GAN weights under another name
    with pytest.raises(ConversionError, match=f"my.pth: the checkpoint says vocoder '{vocoder}' but its decoder "
                                              "weights are HiFi-GAN's") as err:
        convert_voice(ckpt, "my.pth")
    assert "\n" not in str(err.value)


def test_training_checkpoint_refused(ckpts):
    train = ckpts(V2_40K_F0, "train")
    assert is_training_checkpoint(train) and is_voice_checkpoint(train)
    assert any(k.startswith("enc_q.") for k in train["model"])
    with pytest.raises(ConversionError, match=r"G_100\.pth: is a training checkpoint.*exported small model"):
        convert_voice(train, "G_100.pth")


def test_discriminator_training_checkpoint_refused():
    """Applio's D_*.pth (multi-period discriminator state): recognised as a voice-training file, one clear line."""
    state = {f"discriminators.{i}.convs.0.weight_v": np.zeros((32, 1, 5, 1), np.float32) for i in range(3)}
    d = {"model": state, "iteration": 100, "optimizer": {}, "learning_rate": 1e-4}
    assert is_training_checkpoint(d) and is_voice_checkpoint(d)
    with pytest.raises(ConversionError, match=r"D_100\.pth: is a training checkpoint \(D_\*\.pth: a discriminator") as e:
        convert_voice(d, "D_100.pth")
    assert "\n" not in str(e.value)


def test_enc_q_is_dropped_by_the_drop_list(ckpts):
    """A state dict that still carries the posterior encoder converts to the same tensors (enc_q dropped)."""
    train = ckpts(V2_40K_F0, "train")
    exported = ckpts(V2_40K_F0)
    full = dict(exported, weight={k: v.astype(np.float16) for k, v in train["model"].items()})
    assert DROP == [r"enc_q\..*"]
    weights, _ = convert_voice(full)
    assert set(weights) == set(convert_voice(exported)[0])


def test_voice_detection(ckpts):
    assert is_voice_checkpoint(ckpts(V2_40K_F0)) and is_voice_checkpoint(ckpts(V2_40K_F0, "applio"))
    assert not is_voice_checkpoint({"model": {"conv.weight": np.zeros(1)}, "iteration": 3})
    assert not is_voice_checkpoint({"weight": {"unet.conv.weight": np.zeros(1)}})
    assert not is_voice_checkpoint([1, 2])


def test_config_validation(ckpts):
    ckpt = ckpts(next(v for v in R.VARIANTS if v.name == "v1-48k-f0"))
    with pytest.raises(ConversionError, match="18-item list"):
        convert_voice(dict(ckpt, config=ckpt["config"][:-1]), "m.pth")
    with pytest.raises(ConversionError, match="f0=0 but the weights contain the pitch layers"):
        convert_voice(dict(ckpt, f0=0), "m.pth")
    with pytest.raises(ConversionError, match="version v2 expects 768-d features"):
        convert_voice(dict(ckpt, version="v2"), "m.pth")
    with pytest.raises(ConversionError, match="disagrees with config sample rate"):
        convert_voice(dict(ckpt, sr="40k"), "m.pth")
    with pytest.raises(ConversionError, match="no 'weight' state dict"):
        convert_voice({"config": ckpt["config"]}, "m.pth")
