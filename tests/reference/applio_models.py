"""Random-weight Applio voice models (MRF HiFi-GAN, RefineGAN), saved the way Applio's trainer saves them.

The reference network is Applio's ``Synthesizer`` as ultimate-rvc 0.6.0 ships it (test-time dependency only).

* ``build_model(vocoder, sample_rate)``: the text encoder, flow and speaker table are those of the calibrated
  rvc==0.3.5 v2 model of the same rate (same names and shapes in both projects); the decoder is
  - MRF HiFi-GAN: the calibrated NSF decoder's weights (MRF is the same body under other names), weight norm on
    ``conv_pre``/``conv_post``, a random ``conv_post`` bias and a 9→1 merge that weights every harmonic;
  - RefineGAN: the calibrated random decoder of ``refinegan_models`` (AdaIN scales raised so the noise matters);
  then ``conv_post`` is calibrated like ``rvc_models.calibrate_output`` (speech-level audio, no DC).
* ``export_applio(model, ...)``: Applio's ``extract_model`` layout: fp16, enc_q dropped, ``weight_g/weight_v``
  names, ``config`` (18 items), integer ``sr``, ``f0``, ``version``, ``vocoder``, ``embedder_model`` and the rest.
* ``reference_model(ckpt)``: what Applio's loader runs (``Synthesizer(*config, ..., vocoder)``, fp16 weights
  upcast, ``eval``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import refinegan_models
from . import rvc_models as R

os.environ.setdefault("URVC_NO_LOGGING", "1")

SAMPLE_RATES = {
    "HiFi-GAN": (32000, 40000, 48000),
    "MRF HiFi-GAN": (32000, 40000, 48000),
    "RefineGAN": (24000, 32000, 40000, 48000),
}
# Applio's rvc/configs/24000.json (rvc 0.3.5 has no 24 kHz config): the 32k model with hop 240.
CONFIG_24K = [513, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5]] * 3, [10, 6, 2, 2], 512,
              [20, 12, 4, 4], 109, 256, 24000]
BUILD_SEED = 4321


def config_list(sample_rate: int) -> list:
    if sample_rate == 24000:
        return [list(v) if isinstance(v, list) else v for v in CONFIG_24K]
    return R.config_list(_rvc_variant(sample_rate))


def _rvc_variant(sample_rate: int) -> R.Variant:
    sr = {32000: "32k", 40000: "40k", 48000: "48k", 24000: "32k"}[sample_rate]
    return R.Variant("v2", sr, True)


def new_model(vocoder: str, sample_rate: int) -> torch.nn.Module:
    from ultimate_rvc.rvc.lib.algorithm.synthesizers import Synthesizer

    return Synthesizer(*config_list(sample_rate), use_f0=True, text_enc_hidden_dim=768, vocoder=vocoder)


def _set_weight(mod: torch.nn.Module, weight: torch.Tensor) -> None:
    """Set a conv's weight, weight-normed (parametrizations, dim 0) or plain."""
    if hasattr(mod, "parametrizations"):
        dims = tuple(range(1, weight.ndim))
        mod.parametrizations.weight.original1.data.copy_(weight)
        mod.parametrizations.weight.original0.data.copy_(weight.norm(dim=dims, keepdim=True))
    else:
        mod.weight.data.copy_(weight)


def _weight(mod: torch.nn.Module) -> torch.Tensor:
    """A conv's effective weight; old-style weight norm (rvc) recomputes ``.weight`` only in forward."""
    if hasattr(mod, "weight_g"):
        return torch._weight_norm(mod.weight_v, mod.weight_g, 0).detach()
    return mod.weight.detach()


@torch.no_grad()
def _copy_prior(model: torch.nn.Module, rvc_state: dict) -> None:
    """Text encoder, flow and speaker table from an rvc model's state (weight_g/v names)."""
    own = model.state_dict()
    state = {k: v.float() for k, v in R._to_parametrizations(rvc_state).items() if not k.startswith("dec.")}
    state["emb_g.weight"] = state["emb_g.weight"][: own["emb_g.weight"].shape[0]]
    missing = [k for k in own if not k.startswith(("dec.", "enc_q.")) and k not in state]
    assert not missing, missing
    model.load_state_dict(state, strict=False)


@torch.no_grad()
def _mrf_decoder(model: torch.nn.Module, rvc_model: torch.nn.Module, gen) -> None:
    dec, nsf = model.dec, rvc_model.dec
    _set_weight(dec.conv_pre, _weight(nsf.conv_pre))
    dec.conv_pre.bias.copy_(nsf.conv_pre.bias)
    dec.cond.load_state_dict(nsf.cond.state_dict())
    for up, ref in zip(dec.upsamples, nsf.ups):
        _set_weight(up, _weight(ref))
        up.bias.copy_(ref.bias)
    for nc, ref in zip(dec.noise_convs, nsf.noise_convs):
        nc.load_state_dict(ref.state_dict())
    k = len(dec.mrfs[0])
    for i, blocks in enumerate(dec.mrfs):
        for j, block in enumerate(blocks):
            ref = nsf.resblocks[k * i + j]
            for n, layer in enumerate(block.layers):
                for conv, ref_conv in ((layer.conv1, ref.convs1[n]), (layer.conv2, ref.convs2[n])):
                    _set_weight(conv, _weight(ref_conv))
                    conv.bias.copy_(ref_conv.bias)
    _set_weight(dec.conv_post, _weight(nsf.conv_post))
    dec.conv_post.bias.copy_(torch.randn(1, generator=gen) * 0.02)
    harmonics = dec.m_source.l_linear.weight.shape[1]
    dec.m_source.l_linear.weight.copy_(2.0 / torch.arange(1, harmonics + 1).float()[None])
    dec.m_source.l_linear.bias.fill_(0.01)


@torch.no_grad()
def calibrate_output(model: torch.nn.Module, sample_rate: int) -> None:
    """``conv_post`` rescaled so the audio is speech-level, with its DC gain along the input's mean removed (see
    ``rvc_models.calibrate_output``; here ``conv_post`` is weight-normed)."""
    feats, pitch, f0 = R.make_inputs(768, 120, seed=99)
    seen = {}
    post = model.dec.conv_post
    hook = post.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    with R.deterministic():
        reference_infer(model, feats, pitch, f0)
    hook.remove()
    x = seen["x"][0]  # (C, N): the input of conv_post (RefineGAN and MRF apply their leaky ReLU before it)
    w = post.weight.detach().clone()
    mu = x.mean(dim=1)
    a = w[0].sum(dim=1)
    a_new = a - (a @ mu) / (mu @ mu) * mu
    w[0] += ((a_new - a) / w.shape[2])[:, None]
    y = torch.nn.functional.conv1d(x[None], w, padding=w.shape[2] // 2)
    _set_weight(post, w * (R.TARGET_PRE_TANH_STD / y.std()))


def build_model(vocoder: str, sample_rate: int, cache: Path, seed: int = BUILD_SEED) -> torch.nn.Module:
    """A full random-weight Applio model (eval, float32) with calibrated, non-vacuous weights."""
    torch.manual_seed(seed)
    model = new_model(vocoder, sample_rate).eval()
    variant = _rvc_variant(sample_rate)
    rvc_ckpt = R.load_torch_checkpoint(R.checkpoint_path(cache, variant))
    _copy_prior(model, rvc_ckpt["weight"])
    gen = torch.Generator().manual_seed(seed + sample_rate)
    if vocoder == "MRF HiFi-GAN":
        _mrf_decoder(model, R.reference_model(rvc_ckpt), gen)
    elif vocoder == "RefineGAN":
        model.dec.load_state_dict(refinegan_models.build_reference(sample_rate).state_dict())
    else:
        raise ValueError(vocoder)
    calibrate_output(model, sample_rate)
    return model


def export_applio(model: torch.nn.Module, vocoder: str, sample_rate: int, name: str = "applio-voice") -> dict:
    """What Applio's ``extract_model`` writes (fp16 weights, old weight-norm names, metadata)."""
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("enc_q."):
            continue
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        k = k.replace(".parametrizations.weight.original1", ".weight_v")
        state[k] = v.half()
    return {
        "weight": state,
        "config": config_list(sample_rate),
        "sr": sample_rate,
        "f0": 1,
        "version": "v2",
        "creation_date": "2026-11-30T12:00:00",
        "overtrain_info": "None",
        "dataset_length": 1,
        "model_hash": "0" * 64,
        "info": f"{vocoder} test voice",
        "model_name": name,
        "author": "rvc-mlx tests",
        "embedder_model": "contentvec",
        "speakers_id": 0,
        "vocoder": vocoder,
        "epoch": 20,
        "step": 1000,
    }


def reference_model(ckpt: dict) -> torch.nn.Module:
    """Applio's loader (``rvc/infer/infer.py``): Synthesizer from the config, enc_q deleted, weights upcast."""
    from ultimate_rvc.rvc.lib.algorithm.synthesizers import Synthesizer

    config = list(ckpt["config"])
    config[-3] = ckpt["weight"]["emb_g.weight"].shape[0]
    model = Synthesizer(*config, use_f0=bool(ckpt["f0"]), text_enc_hidden_dim=768, vocoder=ckpt["vocoder"])
    del model.enc_q
    result = model.load_state_dict({k: v.float() for k, v in ckpt["weight"].items()}, strict=False)
    assert not result.missing_keys and not result.unexpected_keys, result
    return model.float().eval()


def checkpoint_path(cache: Path, vocoder: str, sample_rate: int) -> Path:
    """Build (once) and cache an Applio voice ``.pth``."""
    tag = vocoder.replace(" ", "-")
    path = Path(cache) / f"applio-{tag}-{sample_rate}-s{BUILD_SEED}.pth"
    if not path.exists():
        model = build_model(vocoder, sample_rate, cache)
        tmp = path.with_suffix(".part")
        torch.save(export_applio(model, vocoder, sample_rate), tmp)
        tmp.replace(path)
    return path


@torch.no_grad()
def reference_infer(model: torch.nn.Module, feats: np.ndarray, pitch, f0, sid: int = 0) -> np.ndarray:
    """Applio's ``Synthesizer.infer`` (batch 1) -> audio (N,)."""
    phone = torch.from_numpy(np.asarray(feats, np.float32))[None]
    out, _, _ = model.infer(
        phone, torch.tensor([phone.shape[1]]), torch.from_numpy(np.asarray(pitch, np.int64))[None],
        torch.from_numpy(np.asarray(f0, np.float32))[None], torch.tensor([sid]),
    )
    return out[0, 0].numpy()
