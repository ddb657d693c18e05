"""HuBERT / ContentVec: conversion (fairseq ``hubert_base.pt`` and transformers directories) and MLX parity
against ``transformers.HubertModel`` with seeded random weights (see tests/reference/hubert_models.py).

"Layer L" follows fairseq's ``extract_features(output_layer=L)`` (what RVC calls: v1 L=9 + final_proj, v2 L=12),
which equals transformers' ``hidden_states[L]`` (output of post-LN layer L); see rvc_mlx.models.hubert.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.reference import hubert_models as H
from rvc_mlx import store
from rvc_mlx.checkpoint import load_checkpoint
from rvc_mlx.convert.hubert import (
    ConversionError,
    convert_hubert_fairseq,
    convert_hubert_state,
    convert_hubert_transformers,
    expected_keys,
    is_hubert_checkpoint,
    is_hubert_directory,
)
from rvc_mlx.errors import AudioError, FormatError, InputError
from rvc_mlx.models.hubert import Hubert, HubertConfig

TOL = 1e-4
CONVERTED = "hubert_converted.safetensors"
FAIRSEQ_DROPPED = {"mask_emb", "label_embs_concat"}
HF_DROPPED = {"masked_spec_embed"}


@pytest.fixture(scope="module")
def ref_dir(ref_cache):
    return H.ensure_reference(ref_cache)


@pytest.fixture(scope="module")
def fairseq_ckpt(ref_dir):
    return load_checkpoint(ref_dir / H.FAIRSEQ_FILE)


@pytest.fixture(scope="module")
def hf_config(ref_dir):
    return json.loads((ref_dir / H.HF_ST_DIR / "config.json").read_text())


@pytest.fixture(scope="module")
def hf_bin_state(ref_dir):
    """The transformers state dict with legacy weight_g/weight_v names (the content of pytorch_model.bin), read
    from the safetensors copy, which is much faster than unpickling."""
    from safetensors.numpy import load_file

    state = load_file(str(ref_dir / H.HF_ST_DIR / "model.safetensors"))
    return {k: v for k, v in H.legacy_weight_norm_names(state).items()}


@pytest.fixture(scope="module")
def conversions(ref_dir, fairseq_ckpt, hf_bin_state, hf_config):
    return {
        "fairseq": convert_hubert_fairseq(fairseq_ckpt, str(ref_dir / H.FAIRSEQ_FILE)),
        "hf_bin": convert_hubert_transformers(ref_dir / H.HF_BIN_DIR),  # read with rvc_mlx.checkpoint
        "hf_safetensors": convert_hubert_transformers(ref_dir / H.HF_ST_DIR),
    }


@pytest.fixture(scope="module")
def converted_path(ref_dir, conversions):
    path = ref_dir / CONVERTED
    weights, config = conversions["fairseq"]
    store.save(path, weights, config)
    return path


@pytest.fixture(scope="module")
def mlx_model(converted_path):
    return Hubert.load(converted_path)


@pytest.fixture(scope="module")
def torch_model(ref_dir):
    return H.load_reference_model(ref_dir)


def reference_for(ref_dir, torch_model, n_samples: int) -> dict[str, np.ndarray]:
    """transformers outputs for ``speech_like(n_samples)``, cached next to the reference checkpoints."""
    path = ref_dir / f"hubert_ref_v{H.REFERENCE_VERSION}_out_{n_samples}.npz"
    if path.exists():
        with np.load(path) as f:
            return dict(f)
    out = H.reference_outputs(*torch_model, H.speech_like(n_samples))
    np.savez(path, **out)
    return out


# ---------------------------------------------------------------------------------------------- conversion


def test_all_formats_convert_to_identical_weights(conversions):
    base_w, base_c = conversions["hf_safetensors"]
    assert set(base_w) == expected_keys()
    for name in ("fairseq", "hf_bin"):
        w, c = conversions[name]
        assert set(w) == set(base_w), name
        for k in base_w:
            assert w[k].dtype == np.float32 and w[k].shape == base_w[k].shape, (name, k)
            np.testing.assert_array_equal(w[k], base_w[k], err_msg=f"{name}: {k}")
        differ = {k for k in base_c if c[k] != base_c[k]}
        assert differ == ({"embedder", "source_format"} if name == "fairseq" else {"embedder"}), name
    assert base_c["kind"] == "hubert" and base_c["has_final_proj"] is True and base_c["final_proj_dim"] == 256
    assert conversions["fairseq"][1]["embedder"] == "hubert_base"
    assert conversions["fairseq"][1]["source_format"] == "fairseq"


def test_conversion_layouts_match_source(conversions, fairseq_ckpt):
    """Spot-check the rename + layout of each kind of tensor against the fairseq source."""
    w, _ = conversions["fairseq"]
    src = fairseq_ckpt["model"]
    np.testing.assert_array_equal(
        w["feature_extractor.conv_layers.3.conv.weight"], src["feature_extractor.conv_layers.3.0.weight"].transpose(0, 2, 1)
    )
    np.testing.assert_array_equal(w["feature_extractor.conv_layers.0.layer_norm.bias"], src["feature_extractor.conv_layers.0.2.bias"])
    np.testing.assert_array_equal(w["feature_projection.layer_norm.weight"], src["layer_norm.weight"])
    np.testing.assert_array_equal(w["feature_projection.projection.weight"], src["post_extract_proj.weight"])
    np.testing.assert_array_equal(w["encoder.layers.7.attention.k_proj.weight"], src["encoder.layers.7.self_attn.k_proj.weight"])
    np.testing.assert_array_equal(w["encoder.layers.7.layer_norm.bias"], src["encoder.layers.7.self_attn_layer_norm.bias"])
    np.testing.assert_array_equal(
        w["encoder.layers.11.feed_forward.output_dense.weight"], src["encoder.layers.11.fc2.weight"]
    )
    np.testing.assert_array_equal(w["final_proj.weight"], src["final_proj.weight"])


def test_every_source_tensor_mapped_or_dropped(fairseq_ckpt, hf_bin_state, hf_config):
    src = fairseq_ckpt["model"]
    # 2 weight-norm tensors fuse into 1; the dropped ones are exactly the training-only tensors
    assert len(src) - len(FAIRSEQ_DROPPED) - 1 == len(expected_keys())
    assert FAIRSEQ_DROPPED <= set(src)
    # an unknown tensor is an error, never silently ignored
    with pytest.raises(ConversionError, match="not recognised.*encoder.layers.3.extra"):
        convert_hubert_fairseq({"model": {**src, "encoder.layers.3.extra": np.zeros(3, np.float32)}}, "x.pt")
    hf, hf_cfg = hf_bin_state, hf_config
    assert len(hf) - len(HF_DROPPED) - 1 == len(expected_keys())
    assert HF_DROPPED <= set(hf)
    with pytest.raises(ConversionError, match="not recognised.*feature_projection.extra"):
        convert_hubert_state({**hf, "feature_projection.extra": np.zeros(3, np.float32)}, hf_cfg, "dir")
    # a missing tensor (e.g. a truncated or different model) is an error too
    partial = {k: v for k, v in src.items() if k != "encoder.layers.11.fc1.bias"}
    with pytest.raises(ConversionError, match="missing 1: encoder.layers.11.feed_forward.intermediate_dense.bias"):
        convert_hubert_fairseq({"model": partial}, "x.pt")


def test_pos_conv_weight_norm_fusion_matches_torch(conversions, torch_model, fairseq_ckpt):
    w, _ = conversions["fairseq"]
    fused = w["encoder.pos_conv_embed.conv.weight"].transpose(0, 2, 1)  # back to torch (O, I/groups, K)
    src = fairseq_ckpt["model"]
    g = torch.from_numpy(np.asarray(src["encoder.pos_conv.0.weight_g"]))
    v = torch.from_numpy(np.asarray(src["encoder.pos_conv.0.weight_v"]))
    assert tuple(g.shape) == (1, 1, 128)
    expected = torch._weight_norm(v, g, 2).numpy()
    assert np.abs(fused - expected).max() <= 1e-6
    # and the transformers module's own (parametrized) effective weight
    module_w = torch_model[0].encoder.pos_conv_embed.conv.weight.detach().numpy()
    assert np.abs(fused - module_w).max() <= 1e-6
    # dim=2: each kernel tap (all output and input channels together) has norm g[tap]
    tap_norms = np.sqrt((fused.astype(np.float64) ** 2).sum(axis=(0, 1)))
    np.testing.assert_allclose(tap_norms, g.numpy().ravel(), rtol=1e-5)
    assert g.numpy().std() > 0.1  # taps have different gains, so a wrong dim would show


def test_fp16_fairseq_checkpoint_is_upcast(fairseq_ckpt):
    """RVC's hubert_base.pt stores float16 weights; conversion computes in float32 from the fp16 values."""
    half = {k: np.asarray(v).astype(np.float16) for k, v in fairseq_ckpt["model"].items()}
    w, _ = convert_hubert_fairseq({"model": half, "cfg": None}, "hubert_base.pt")
    assert all(a.dtype == np.float32 for a in w.values())
    np.testing.assert_array_equal(
        w["encoder.layers.2.feed_forward.intermediate_dense.bias"], half["encoder.layers.2.fc1.bias"].astype(np.float32)
    )
    g = torch.from_numpy(half["encoder.pos_conv.0.weight_g"].astype(np.float32))
    v = torch.from_numpy(half["encoder.pos_conv.0.weight_v"].astype(np.float32))
    fused = w["encoder.pos_conv_embed.conv.weight"].transpose(0, 2, 1)
    assert np.abs(fused - torch._weight_norm(v, g, 2).numpy()).max() <= 1e-6


def test_missing_final_proj_is_recorded(hf_bin_state, hf_config):
    import mlx.core as mx

    state = {k: v for k, v in hf_bin_state.items() if not k.startswith("final_proj.")}
    w, c = convert_hubert_state(state, hf_config, "contentvec", embedder="contentvec")
    assert c["has_final_proj"] is False and c["final_proj_dim"] is None and c["embedder"] == "contentvec"
    assert set(w) == expected_keys(final_proj=False)
    model = Hubert(HubertConfig.from_dict(c))
    store.load_into(model, {k: mx.array(v) for k, v in w.items()}, "contentvec")
    audio = H.speech_like(4000)
    assert model.extract(audio, 12).shape == (12, 768)
    with pytest.raises(InputError, match="no final_proj"):
        model.extract_rvc(audio, "v1")


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"hidden_size": 1024}, "hidden_size"),
        ({"num_hidden_layers": 24}, "num_hidden_layers"),
        ({"num_attention_heads": 16}, "num_attention_heads"),
        ({"feat_extract_norm": "layer", "do_stable_layer_norm": True}, "feat_extract_norm"),
        ({"conv_kernel": [10, 3, 3, 3, 3, 3, 2]}, "conv_kernel"),
        ({"conv_stride": [4, 2, 2, 2, 2, 2, 2]}, "conv_stride"),
        ({"num_conv_pos_embedding_groups": 8}, "num_conv_pos_embedding_groups"),
        ({"conv_pos_batch_norm": True}, "conv_pos_batch_norm"),
        ({"model_type": "wav2vec2"}, "model_type"),
    ],
)
def test_non_hubert_base_config_refused(ref_dir, tmp_path, change, needle):
    cfg = json.loads((ref_dir / H.HF_ST_DIR / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=needle):
        convert_hubert_transformers(tmp_path)


def test_directory_errors(tmp_path, ref_dir):
    with pytest.raises(ConversionError, match="no config.json"):
        convert_hubert_transformers(tmp_path)
    (tmp_path / "config.json").write_text((ref_dir / H.HF_ST_DIR / "config.json").read_text())
    with pytest.raises(ConversionError, match="no model.safetensors or pytorch_model.bin"):
        convert_hubert_transformers(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConversionError, match="unreadable config.json"):
        convert_hubert_transformers(tmp_path)


def test_kind_detection(ref_dir, fairseq_ckpt, tmp_path):
    assert is_hubert_checkpoint(fairseq_ckpt)
    assert is_hubert_checkpoint(fairseq_ckpt["model"])  # a bare fairseq state dict
    assert not is_hubert_checkpoint({"weight": {"enc_p.emb_phone.weight": np.zeros((2, 2))}, "config": [1, 2]})
    assert not is_hubert_checkpoint({"model": {"unet.encoder.bn.weight": np.zeros(2)}})
    assert not is_hubert_checkpoint([1, 2, 3])
    with pytest.raises(ConversionError, match="not a fairseq HuBERT"):
        convert_hubert_fairseq({"weight": {}}, "voice.pth")
    assert is_hubert_directory(ref_dir / H.HF_ST_DIR) and is_hubert_directory(ref_dir / H.HF_BIN_DIR)
    assert not is_hubert_directory(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    assert not is_hubert_directory(tmp_path)


def test_strict_load(conversions):
    import mlx.core as mx

    w, c = conversions["hf_safetensors"]
    weights = {k: mx.array(v) for k, v in w.items()}
    model = Hubert(HubertConfig.from_dict(c))
    missing = {k: v for k, v in weights.items() if k != "encoder.layers.4.final_layer_norm.bias"}
    with pytest.raises(FormatError, match="missing 1: encoder.layers.4.final_layer_norm.bias"):
        store.load_into(model, missing, "hubert")
    with pytest.raises(FormatError, match="unexpected 1: mask_emb"):
        store.load_into(model, {**weights, "mask_emb": mx.zeros((768,))}, "hubert")
    store.load_into(model, weights, "hubert")


def test_load_refuses_other_kind(tmp_path):
    path = tmp_path / "voice.safetensors"
    store.save(path, {"x": np.zeros(2, np.float32)}, {"kind": "rmvpe"})
    with pytest.raises(FormatError, match="is a rmvpe model, expected a hubert model"):
        Hubert.load(path)


# -------------------------------------------------------------------------------------------------- parity

CASES = [
    pytest.param(400, id="400-samples-one-frame"),
    pytest.param(801, id="0.05s-odd"),
    pytest.param(16001, id="1s-odd"),
    pytest.param(116803, id="7.3s-odd"),
    pytest.param(41 * 16000 + 3, id="41s-odd", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("n_samples", CASES)
def test_parity_with_transformers(n_samples, mlx_model, torch_model, ref_dir):
    import mlx.core as mx

    ref = reference_for(ref_dir, torch_model, n_samples)
    audio = H.speech_like(n_samples)
    frames = ref["layer12"].shape[0]
    assert mlx_model.config.num_frames(n_samples) == frames
    hs = mlx_model.hidden_states(mx.array(audio)[None])  # one pass gives every layer
    assert len(hs) == 13
    got = {"layer9": hs[9][0], "final_proj9": mlx_model.final_proj(hs[9])[0], "layer12": hs[12][0]}
    for name, out in got.items():
        out = np.array(out)
        assert out.shape == ref[name].shape, name
        diff = np.abs(out - ref[name]).max()
        assert diff <= TOL, f"{name}: max|diff| {diff:.3g}"
        if frames > 2:
            assert np.corrcoef(out.ravel(), ref[name].ravel())[0, 1] > 0.99999
    np.testing.assert_array_equal(ref["layer12"], ref["last"])  # hidden_states[12] is the last hidden state


def test_rvc_feature_selection(mlx_model, torch_model, ref_dir):
    """extract_rvc: v1 = final_proj(layer 9) (256-d), v2 = layer 12 (768-d), 50 fps."""
    n = 16001
    ref = reference_for(ref_dir, torch_model, n)
    audio = H.speech_like(n)
    v1 = np.array(mlx_model.extract_rvc(audio, "v1"))
    v2 = np.array(mlx_model.extract_rvc(audio, "v2"))
    assert v1.shape == (49, 256) and v2.shape == (49, 768)
    assert np.abs(v1 - ref["final_proj9"]).max() <= TOL
    assert np.abs(v2 - ref["layer12"]).max() <= TOL
    np.testing.assert_array_equal(np.array(mlx_model.extract(audio, 9, final_proj=True)), v1)


def test_reference_is_not_degenerate(mlx_model, torch_model, ref_dir):
    """Every stage must matter by far more than the tolerance, else parity would be vacuous."""
    import mlx.core as mx

    n = 16001
    ref = reference_for(ref_dir, torch_model, n)
    audio = mx.array(H.speech_like(n))[None]
    x = mlx_model.feature_projection(mlx_model.feature_extractor(audio))
    pos = mlx_model.encoder.pos_conv_embed(x)
    ratio = float(mx.linalg.norm(pos) / mx.linalg.norm(x))
    assert ratio > 0.2, f"positional conv contributes too little ({ratio:.3f})"
    # features vary over time and between layers
    for name in ("layer9", "final_proj9", "layer12"):
        over_time = ref[name].std(axis=0).mean() / ref[name].std()
        assert over_time > 0.2, f"{name}: features barely change over time ({over_time:.3f})"
    assert np.abs(ref["layer9"] - ref["layer12"]).max() > 100 * TOL
    # the GroupNorm of conv layer 0 matters: the input's scale changes conv-0 output only through it
    louder = np.array(mlx_model.extract(H.speech_like(n) * 3.0, 12))
    quiet = np.array(mlx_model.extract(H.speech_like(n), 12))
    assert np.abs(louder - quiet).max() < 1e-2  # GroupNorm makes features nearly scale invariant
    assert np.abs(ref["layer12"] - np.array(mlx_model.extract(H.speech_like(n, seed=1), 12))).max() > 100 * TOL


def test_input_checks(mlx_model):
    with pytest.raises(AudioError, match="too short"):
        mlx_model.extract(np.zeros(399, np.float32))
    with pytest.raises(AudioError, match="mono"):
        mlx_model.extract(np.zeros((2, 4000), np.float32))
    with pytest.raises(InputError, match="layer must be 1..12"):
        mlx_model.extract(np.zeros(4000, np.float32), layer=13)
    with pytest.raises(InputError, match="version"):
        mlx_model.extract_rvc(np.zeros(4000, np.float32), "v3")
    assert mlx_model.config.min_samples == 400
    assert [mlx_model.config.num_frames(n) for n in (399, 400, 719, 720, 16000)] == [0, 1, 1, 2, 49]


def test_gelu_matches_exact_erf_gelu():
    import mlx.core as mx
    from scipy.special import erf

    from rvc_mlx.nn.gelu import gelu

    x = np.linspace(-12, 12, 400001).astype(np.float32)
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    err = np.abs(np.array(gelu(mx.array(x))) - exact)
    assert err.max() <= 2e-6
    # |error| <= ~4e-7 in erf, times x/2: float32-rounding level (MLX's own erf-GELU: 4.7e-7)
    assert (err / np.maximum(np.abs(exact), 1.0)).max() <= 1.5e-6
    # shapeless compile: other shapes and non-contiguous inputs give the same values
    x2, e2 = x[:400000].reshape(4, -1), exact[:400000].reshape(4, -1)
    assert np.abs(np.array(gelu(mx.array(x2)[:, ::3])) - e2[:, ::3]).max() <= 2e-6


def _mlx_peak(fn, *args) -> int:
    import mlx.core as mx

    mx.clear_cache()
    mx.reset_peak_memory()
    fn(*args)
    peak = mx.get_peak_memory()
    mx.clear_cache()
    return peak


def test_blocked_feature_convs_and_attention_bound_memory(mlx_model, monkeypatch):
    """Peak MLX memory grows with the input by conv 1's output (kept whole for its channel-norm statistics) and
    a few (T, 3072) encoder activations: not by the full-rate temporaries of convs 2..7 (block by block) nor by
    the T² attention scores (query blocks). Without the blocks it grows several times faster, so this can fail."""
    from rvc_mlx.models import hubert as hubert_model
    from rvc_mlx.nn import fastmath

    monkeypatch.setattr(fastmath, "SCORE_BLOCK_BYTES", 4 << 20)  # several query blocks at these lengths
    audio = {s: H.speech_like(s * 16000) for s in (4, 16)}
    mlx_model.extract(audio[4][:16000])  # weights load lazily: the first call's peak would not count them all
    peak = {s: _mlx_peak(mlx_model.extract, a) for s, a in audio.items()}
    conv1 = 16000 // 5 * 512 * 4  # bytes of conv 1's output per second of audio
    growth = (peak[16] - peak[4]) / 12
    monkeypatch.setattr(hubert_model, "FEATURE_BLOCK", 1 << 30)
    monkeypatch.setattr(fastmath, "SCORE_BLOCK_BYTES", 1 << 40)
    whole = (_mlx_peak(mlx_model.extract, audio[16]) - peak[4]) / 12
    print(f"growth {growth / conv1:.2f}, unblocked {whole / conv1:.2f} x conv 1's output per second")
    assert growth <= 1.5 * conv1
    assert whole >= 2 * growth
