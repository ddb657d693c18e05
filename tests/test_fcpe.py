"""FCPE in MLX vs torchfcpe 0.0.4's bundled model (real weights), called as Applio calls it."""

import librosa
import numpy as np
import pytest
import torch

from rvc_mlx import store
from rvc_mlx.checkpoint import load_checkpoint
from rvc_mlx.convert.crepe import is_crepe_checkpoint
from rvc_mlx.convert.fcpe import convert_fcpe, find_packaged_weights, is_fcpe_checkpoint
from rvc_mlx.errors import ConversionError
from rvc_mlx.f0 import F0Options
from rvc_mlx.f0 import fcpe as fcpe_f0
from rvc_mlx.models.fcpe import FcpeConfig, log_mel, slaney_mel_filterbank
from tests.reference import pitch_reference as pr


def test_convert_maps_every_tensor():
    ckpt = load_checkpoint(find_packaged_weights("fcpe"))
    assert is_fcpe_checkpoint(ckpt) and not is_crepe_checkpoint(ckpt)
    weights, config = convert_fcpe(ckpt, "src")
    assert config["kind"] == "fcpe"
    assert (config["n_mels"], config["hidden_dims"], config["n_layers"], config["out_dims"]) == (128, 512, 6, 360)
    ref = torch.load(find_packaged_weights("fcpe"), map_location="cpu", weights_only=False)["model"]
    dropped = {k for k in ref if (".norm." in k and k.startswith("net.")) or k == "gaussian_blurred_cent_mask"}
    fused = {"output_proj.weight_g", "output_proj.weight_v"}
    assert set(weights) == (set(ref) - dropped - fused) | {"output_proj.weight"}
    g, v = ref["output_proj.weight_g"], ref["output_proj.weight_v"]
    np.testing.assert_allclose(weights["output_proj.weight"], (g * v / v.norm(dim=1, keepdim=True)).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(
        weights["net.encoder_layers.3.conformer.net.4.conv.weight"],
        ref["net.encoder_layers.3.conformer.net.4.conv.weight"].numpy().transpose(0, 2, 1),
    )
    np.testing.assert_array_equal(weights["cent_table"], ref["cent_table"].numpy())


def test_convert_rejects_attention_models():
    ckpt = load_checkpoint(find_packaged_weights("fcpe"))
    ckpt["model"]["net.encoder_layers.0.attn.to_q.weight"] = np.zeros((512, 512), np.float32)
    with pytest.raises(ConversionError, match="attention"):
        convert_fcpe(ckpt, "src")


def test_mel_filterbank_matches_librosa():
    for sr, n_fft, n_mels, fmin, fmax in [(16000, 1024, 128, 0, 8000), (44100, 2048, 80, 40, 16000)]:
        ours = slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["vibrato", "noisy"])
def test_mel_and_network_parity(name):
    audio = pr.make_signal(name).audio
    mel_ref, latent_ref = pr.torchfcpe_mel_and_latent(audio)
    est = fcpe_f0.load_fcpe()
    mel = log_mel(audio, est.config, est.mel_basis)
    latent = est.salience(audio)
    assert mel.shape == mel_ref.shape == (1 + len(audio) // 160, 128)
    mel_err = np.abs(mel - mel_ref).max()
    err = np.abs(latent - latent_ref).max()
    corr = np.corrcoef(latent.ravel(), latent_ref.ravel())[0, 1]
    print(f"fcpe {name}: log-mel max|diff| {mel_err:.2e}; salience max|diff| {err:.2e}, corr {corr:.9f}")
    assert mel_err < 1e-3
    assert err < 1e-4 and corr > 0.99999
    assert latent_ref.max() > 0.3  # the real network is confident somewhere


def test_short_audio_frame_count():
    """Audio shorter than one window takes torchfcpe's constant-padding branch."""
    audio = pr.make_signal("vibrato").audio[2400:2400 + 700]
    ref = pr.torchfcpe_f0(audio)
    ours = fcpe_f0.fcpe(audio, F0Options())
    assert len(ours) == len(ref) == 1 + 700 // 160
    mel_ref, _ = pr.torchfcpe_mel_and_latent(audio)
    np.testing.assert_allclose(log_mel(audio, FcpeConfig()), mel_ref, atol=1e-3)


@pytest.mark.parametrize("name", list(pr.SIGNAL_SPECS))
def test_f0_parity(name, ref_cache):
    sig = pr.make_signal(name)
    ref = pr.cached_reference_f0("fcpe", sig, ref_cache)
    ours = pr.our_f0("fcpe", name)
    s = pr.parity_stats(ours, ref)
    print(f"fcpe {name}: {s}")
    assert s["len_ours"] == s["len_ref"] == 1 + len(sig.audio) // pr.HOP
    assert s["median_cents"] <= 1.0 and s["p99_cents"] <= 5.0, s
    assert s["same_voicing"] >= 0.99, s
    assert 0.3 < np.mean(ref > 0) < 0.95


def test_threshold_option_and_converted_file(tmp_path):
    src = find_packaged_weights("fcpe")
    weights, config = convert_fcpe(load_checkpoint(src), str(src))
    path = tmp_path / "fcpe.safetensors"
    store.save(path, weights, config)
    audio = pr.make_signal("noisy").audio
    a = fcpe_f0.fcpe(audio, F0Options(fcpe_path=str(path)))
    np.testing.assert_array_equal(a, pr.our_f0("fcpe", "noisy"))
    strict = fcpe_f0.fcpe(audio, F0Options(threshold=0.5))
    ref_strict = pr.torchfcpe_f0(audio, threshold=0.5)
    assert (strict > 0).sum() < (a > 0).sum()
    assert np.mean((strict > 0) == (ref_strict > 0)) >= 0.99


def test_long_input_in_windows_equals_the_whole():
    """Windows of 256 frames with the production context (beyond the receptive radius) and float64 GroupNorm
    statistics of the whole input: one pass with those statistics up to float32 rounding, and as close to torchfcpe as
    the whole-input network (closer: measured 2.5e-6 vs 5.7e-5, MLX's float32 group statistics); a context
    inside the receptive radius differs visibly (the check can fail)."""
    import mlx.core as mx

    from rvc_mlx.models.fcpe import CONTEXT_FRAMES

    audio = np.concatenate([pr.make_signal(name).audio for name in pr.SIGNAL_SPECS])
    est = fcpe_f0.load_fcpe()
    assert est.model.receptive_radius() + 1 <= CONTEXT_FRAMES
    mel = log_mel(audio, est.config, est.mel_basis)
    chunked = est.salience(audio, chunk=256)
    assert chunked.shape[0] > 3 * 256
    one_pass = np.array(est.model.forward_normalised(mx.array(mel)[None], *est.model.group_statistics(mel, 256))[0])
    np.testing.assert_allclose(chunked, one_pass, rtol=0, atol=2e-6)  # measured 0 to 7e-7 (float32 rounding)
    _, latent_ref = pr.torchfcpe_mel_and_latent(audio)
    whole = est.salience(audio, chunk=1 << 30)
    err_chunked, err_whole = np.abs(chunked - latent_ref).max(), np.abs(whole - latent_ref).max()
    f0_whole = fcpe_f0.decode_local_argmax(whole, est.cent_table, fcpe_f0.THRESHOLD)
    f0_chunked = est(audio, chunk=256)
    both = (f0_whole > 0) & (f0_chunked > 0)
    cents = np.abs(1200 * np.log2(f0_chunked[both] / f0_whole[both]))
    print(f"fcpe windows ({chunked.shape[0]} frames): max|diff| vs torchfcpe {err_chunked:.2e} (whole input at "
          f"once: {err_whole:.2e}); vs whole: voicing agreement {np.mean((f0_whole > 0) == (f0_chunked > 0)):.5f}, "
          f"max cents {cents.max():.2e}")
    assert err_chunked <= 1e-4 and err_whole <= 1e-4
    assert np.mean((f0_whole > 0) == (f0_chunked > 0)) >= 0.999
    assert cents.max() <= 0.1
    narrow = est.salience(audio, chunk=256, context=16)
    assert np.abs(narrow - one_pass).max() > 1e-3
