"""Random-weight rvc==0.3.5 voice models for every variant, saved the way users have them.

* ``build_model(variant, seed)``: a full torch ``SynthesizerTrnMs{256,768}NSFsid[_nono]`` (incl. enc_q) whose
  weights are re-drawn so every stage matters (the flow's zero-init ``post`` convs are randomised, layers are
  scaled so the audio is broadband and of speech-like level rather than DC and tones).
* ``export_rvc_project(model, variant)``: the dict RVC-Project's ``savee`` writes (fp16, no enc_q, sr "40k").
* ``export_applio(model, variant)``: Applio's layout (sr int, embedder_model, vocoder, speakers_id, new-style
  ``parametrizations.weight.original0/1`` weight norm).
* ``reference_model(ckpt)``: the torch model RVC itself would run from a checkpoint (fp16 weights upcast).
* ``checkpoint_path(cache, variant)``: build once, cache the ``.pth`` under the test cache.
* ``deterministic()``: a context in which ``torch.randn_like``/``torch.rand`` return zeros (noise-free infer).

Test-only code; torch is imported here and never by the runtime.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VERSIONS = ("v1", "v2")
SAMPLE_RATES = ("32k", "40k", "48k")
RVC_CONFIG_SOURCE = {("v2", "40k"): ("v1", "40k")}  # rvc 0.3.5 ships no v2/40k config; RVC uses v1's
BUILD_SEED = 1234


@dataclass(frozen=True)
class Variant:
    version: str
    sr: str
    f0: bool

    @property
    def name(self) -> str:
        return f"{self.version}-{self.sr}-{'f0' if self.f0 else 'nof0'}"

    @property
    def sample_rate(self) -> int:
        return {"32k": 32000, "40k": 40000, "48k": 48000}[self.sr]

    @property
    def feature_dim(self) -> int:
        return 256 if self.version == "v1" else 768


VARIANTS = [Variant(v, s, f) for v in VERSIONS for s in SAMPLE_RATES for f in (True, False)]


def _rvc_configs_dir() -> Path:
    import rvc

    return Path(rvc.__file__).parent / "configs"


def _hps(variant: Variant) -> dict:
    version, sr = RVC_CONFIG_SOURCE.get((variant.version, variant.sr), (variant.version, variant.sr))
    return json.loads((_rvc_configs_dir() / version / f"{sr}.json").read_text())


def train_config(variant: Variant) -> dict:
    """The ``train`` section of rvc 0.3.5's config JSON for the variant."""
    return _hps(variant)["train"]


def config_list(variant: Variant) -> list:
    """RVC's 18-item config list, as its exporter writes it (from rvc 0.3.5's ``configs/`` JSONs)."""
    hps = _hps(variant)
    d, m = hps["data"], hps["model"]
    return [
        d["filter_length"] // 2 + 1,
        32,
        m["inter_channels"],
        m["hidden_channels"],
        m["filter_channels"],
        m["n_heads"],
        m["n_layers"],
        m["kernel_size"],
        m["p_dropout"],
        m["resblock"],
        m["resblock_kernel_sizes"],
        m["resblock_dilation_sizes"],
        m["upsample_rates"],
        m["upsample_initial_channel"],
        m["upsample_kernel_sizes"],
        m["spk_embed_dim"],
        m["gin_channels"],
        d["sampling_rate"],
    ]


def model_class(version: str, f0: bool):
    sys.argv = sys.argv[:1]
    from rvc.lib.infer_pack import models

    name = {"v1": "SynthesizerTrnMs256NSFsid", "v2": "SynthesizerTrnMs768NSFsid"}[version]
    return getattr(models, name if f0 else name + "_nono")


def new_model(version: str, f0: bool, config: list) -> torch.nn.Module:
    cls = model_class(version, f0)
    return cls(*config, is_half=False) if f0 else cls(*config)


# -- weight randomisation ------------------------------------------------------------------------------------


def _wn_set(mod, g_row_norm: torch.Tensor, gen: torch.Generator):
    """Weight-normed conv: random direction ``v``, row norms ``g`` (dim 0)."""
    v = torch.randn(mod.weight_v.shape, generator=gen)
    mod.weight_v.data.copy_(v)
    mod.weight_g.data.copy_(g_row_norm.reshape(mod.weight_g.shape))


def _spread(n: int, gen: torch.Generator, lo=0.7, hi=1.3) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _conv(mod, gen, gain: float, bias_std: float = 0.02):
    fan_in = mod.weight.shape[1] * mod.weight.shape[2]
    mod.weight.data.copy_(torch.randn(mod.weight.shape, generator=gen) * gain / math.sqrt(fan_in))
    if mod.bias is not None:
        mod.bias.data.copy_(torch.randn(mod.bias.shape, generator=gen) * bias_std)


def _wn_conv(mod, gen, gain: float, bias_std: float = 0.02):
    o = mod.weight_v.shape[0]
    _wn_set(mod, gain * _spread(o, gen), gen)
    if mod.bias is not None:
        mod.bias.data.copy_(torch.randn(mod.bias.shape, generator=gen) * bias_std)


def _wn_conv_transpose(mod, gen, gain: float):
    c_in, c_out, _ = mod.weight_v.shape
    s = mod.stride[0]
    # keep the output variance ~ gain^2 x input variance: each output sees ~C_in·k/s taps of a row of norm g
    _wn_set(mod, gain * math.sqrt(c_out * s / c_in) * _spread(c_in, gen), gen)
    mod.bias.data.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.02)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Draw non-vacuous weights (see module docstring). Deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    enc = model.enc_p
    enc.emb_phone.weight.copy_(torch.randn(enc.emb_phone.weight.shape, generator=gen) / math.sqrt(enc.emb_phone.in_features))
    enc.emb_phone.bias.copy_(torch.randn(enc.emb_phone.bias.shape, generator=gen) * 0.02)
    if hasattr(enc, "emb_pitch"):
        enc.emb_pitch.weight.copy_(torch.randn(enc.emb_pitch.weight.shape, generator=gen) * 0.5)
    d = enc.encoder.attn_layers[0].k_channels
    for attn in enc.encoder.attn_layers:
        for c in (attn.conv_q, attn.conv_k, attn.conv_v, attn.conv_o):
            _conv(c, gen, 1.0)
        attn.emb_rel_k.copy_(torch.randn(attn.emb_rel_k.shape, generator=gen) * d**-0.5)
        attn.emb_rel_v.copy_(torch.randn(attn.emb_rel_v.shape, generator=gen) * d**-0.5)
    for norm in list(enc.encoder.norm_layers_1) + list(enc.encoder.norm_layers_2):
        norm.gamma.copy_(1 + 0.1 * torch.randn(norm.gamma.shape, generator=gen))
        norm.beta.copy_(0.1 * torch.randn(norm.beta.shape, generator=gen))
    for ffn in enc.encoder.ffn_layers:
        _conv(ffn.conv_1, gen, 1.4)
        _conv(ffn.conv_2, gen, 1.0)
    # proj -> (m_p, logs_p): m ~ O(1), logs around -1 so the z_p noise matters without dominating
    _conv(enc.proj, gen, 0.8)
    half = enc.proj.out_channels // 2
    enc.proj.weight[half:] *= 0.3
    enc.proj.bias[half:] = -1.0 + 0.1 * torch.randn(half, generator=gen)

    model.emb_g.weight.copy_(torch.randn(model.emb_g.weight.shape, generator=gen))

    for flow in model.flow.flows[::2]:
        _conv(flow.pre, gen, 1.0)
        wn = flow.enc
        _wn_conv(wn.cond_layer, gen, 0.5)
        for layer in wn.in_layers:
            _wn_conv(layer, gen, 1.0)
        for layer in wn.res_skip_layers:
            _wn_conv(layer, gen, 0.7)
        _conv(flow.post, gen, 0.5)  # zero-init in rvc: the flow would be the identity

    for q_mod in model.enc_q.modules():  # dropped by the export; randomised only so the full model is sane
        if isinstance(q_mod, torch.nn.Conv1d) and not hasattr(q_mod, "weight_g"):
            _conv(q_mod, gen, 1.0)

    dec = model.dec
    _conv(dec.conv_pre, gen, 1.0)
    _conv(dec.cond, gen, 0.3)
    for up in dec.ups:
        _wn_conv_transpose(up, gen, 1.2)
    for block in dec.resblocks:
        for c in list(block.convs1) + list(block.convs2):
            _wn_conv(c, gen, 0.6)
    if hasattr(dec, "noise_convs"):
        for nc in dec.noise_convs:
            _conv(nc, gen, 12.0)  # source amplitude is ~0.1: make the excitation audible in every stage
        dec.m_source.l_linear.weight.fill_(2.0)
        dec.m_source.l_linear.bias.fill_(0.01)
    _conv(dec.conv_post, gen, 0.8)


TARGET_PRE_TANH_STD = 0.35  # audio of speech-like level: rms ~0.3, rarely near the tanh rails


@torch.no_grad()
def calibrate_output(model: torch.nn.Module, variant: Variant) -> None:
    """Rescale ``dec.conv_post`` so the audio is speech-level and has no DC.

    Random HiFi-GAN weights plus LeakyReLU give every channel a positive mean, which ``conv_post`` turns into a
    large DC offset (measured: mean 0.5, 20 % of samples saturated). On a calibration input we measure the
    channel means entering ``conv_post``, remove the component of each channel's DC gain along them, and scale
    the kernel to a target pre-tanh std.
    """
    feats, pitch, f0 = make_inputs(variant.feature_dim, 120, seed=99)
    seen = {}
    hook = model.dec.conv_post.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    with deterministic():
        reference_infer(model, feats, pitch if variant.f0 else None, f0 if variant.f0 else None)
    hook.remove()
    x = torch.nn.functional.leaky_relu(seen["x"])[0]  # (C, N) what conv_post convolves (after its lrelu)
    w = model.dec.conv_post.weight  # (1, C, K)
    mu = x.mean(dim=1)
    a = w[0].sum(dim=1)
    a_new = a - (a @ mu) / (mu @ mu) * mu
    w[0] += ((a_new - a) / w.shape[2])[:, None]
    y = torch.nn.functional.conv1d(x[None], w, padding=3)
    w *= TARGET_PRE_TANH_STD / y.std()


def build_model(variant: Variant, seed: int = BUILD_SEED) -> torch.nn.Module:
    """A full random-weight torch model (eval mode, float32, weight norm not removed)."""
    torch.manual_seed(seed)
    model = new_model(variant.version, variant.f0, config_list(variant)).eval()
    randomize(model, seed + VARIANTS.index(variant))
    calibrate_output(model, variant)
    return model


# -- exports ---------------------------------------------------------------------------------------------------


def export_rvc_project(model: torch.nn.Module, variant: Variant, info: str = "20epoch") -> dict:
    """What RVC-Project's ``savee``/``extract_small_model`` writes: fp16 weights without enc_q."""
    return {
        "weight": {k: v.half() for k, v in model.state_dict().items() if "enc_q" not in k},
        "config": config_list(variant),
        "info": info,
        "sr": variant.sr,
        "f0": int(variant.f0),
        "version": variant.version,
    }


def _to_parametrizations(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if k.endswith(".weight_g"):
            out[k[: -len(".weight_g")] + ".parametrizations.weight.original0"] = v
        elif k.endswith(".weight_v"):
            out[k[: -len(".weight_v")] + ".parametrizations.weight.original1"] = v
        else:
            out[k] = v
    return out


def export_applio(model: torch.nn.Module, variant: Variant, vocoder: str = "HiFi-GAN") -> dict:
    """Applio's export layout (new-style weight-norm names, integer sr, extra metadata)."""
    state = {k: v.half() for k, v in model.state_dict().items() if "enc_q" not in k}
    return {
        "weight": _to_parametrizations(state),
        "config": config_list(variant),
        "version": variant.version,
        "sr": variant.sample_rate,
        "f0": int(variant.f0),
        "info": "applio-test",
        "model_name": "applio-test",
        "epoch": 20,
        "step": 1000,
        "embedder_model": "contentvec",
        "speakers_id": 0,
        "vocoder": vocoder,
        "author": "rvc-mlx tests",
    }


def export_training_state(model: torch.nn.Module) -> dict:
    """A ``G_*.pth`` training checkpoint: full state dict incl. enc_q, optimizer, no config."""
    return {"model": model.state_dict(), "iteration": 1000, "optimizer": {"state": {}, "param_groups": []},
            "learning_rate": 1e-4}


def to_numpy_checkpoint(ckpt):
    """torch tensors -> numpy (float16 kept), like the runtime's safe reader returns."""
    if isinstance(ckpt, torch.Tensor):
        return ckpt.detach().cpu().numpy()
    if isinstance(ckpt, dict):
        return {k: to_numpy_checkpoint(v) for k, v in ckpt.items()}
    if isinstance(ckpt, list):
        return [to_numpy_checkpoint(v) for v in ckpt]
    return ckpt


def reference_model(ckpt: dict) -> torch.nn.Module:
    """The model RVC runs for a (torch) checkpoint dict: built from its config, enc_q deleted, fp16 weights
    loaded strictly and upcast to float32."""
    config = list(ckpt["config"])
    config[-3] = ckpt["weight"]["emb_g.weight"].shape[0]
    model = new_model(ckpt.get("version", "v1"), bool(ckpt.get("f0", 1)), config)
    del model.enc_q
    weight = ckpt["weight"]
    if any(".parametrizations." in k for k in weight):
        weight = {
            k.replace(".parametrizations.weight.original0", ".weight_g").replace(
                ".parametrizations.weight.original1", ".weight_v"
            ): v
            for k, v in weight.items()
        }
    model.load_state_dict({k: v.float() for k, v in weight.items()}, strict=True)
    return model.float().eval()


def checkpoint_path(cache: Path, variant: Variant, kind: str = "rvc") -> Path:
    """Build (once) and cache a checkpoint: ``kind`` = rvc (RVC-Project export), applio, or train (G_*.pth)."""
    path = Path(cache) / f"voice-{variant.name}-{kind}-s{BUILD_SEED}.pth"
    if not path.exists():
        model = build_model(variant)
        ckpt = {"rvc": export_rvc_project, "applio": export_applio}.get(kind)
        data = ckpt(model, variant) if ckpt else export_training_state(model)
        tmp = path.with_suffix(".part")
        torch.save(data, tmp)
        tmp.replace(path)
    return path


def load_torch_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@contextlib.contextmanager
def deterministic():
    """Inside, ``torch.randn_like`` and ``torch.rand`` return zeros: the only random calls of ``net_g.infer``
    (z_p noise, NSF additive noise, SineGen initial phase)."""
    randn_like, rand = torch.randn_like, torch.rand

    def zeros_like(x, *a, **k):
        return torch.zeros_like(x)

    def zeros(*size, generator=None, device=None, dtype=None, **k):
        if len(size) == 1 and isinstance(size[0], (list, tuple, torch.Size)):
            size = tuple(size[0])
        return torch.zeros(*size, device=device, dtype=dtype or torch.float32)

    torch.randn_like, torch.rand = zeros_like, zeros
    try:
        yield
    finally:
        torch.randn_like, torch.rand = randn_like, rand


@torch.no_grad()
def reference_infer(model: torch.nn.Module, feats: np.ndarray, pitch=None, f0=None, sid: int = 0):
    """Run ``model.infer`` like RVC's pipeline (batch 1). Returns numpy ``(audio (N,), z, z_p, m_p, logs_p)``,
    latents channels-last ``(T, C)``."""
    phone = torch.from_numpy(np.asarray(feats, np.float32))[None]
    lengths = torch.tensor([phone.shape[1]])
    sid_t = torch.tensor([sid])
    if pitch is not None:
        out, _, (z, z_p, m_p, logs_p) = model.infer(
            phone, lengths, torch.from_numpy(np.asarray(pitch, np.int64))[None],
            torch.from_numpy(np.asarray(f0, np.float32))[None], sid_t,
        )
    else:
        out, _, (z, z_p, m_p, logs_p) = model.infer(phone, lengths, sid_t)
    lat = [t[0].T.numpy() for t in (z, z_p, m_p, logs_p)]
    return (out[0, 0].numpy(), *lat)


# -- inputs ------------------------------------------------------------------------------------------------------

F0_MIN, F0_MAX = 50.0, 1100.0


def coarse_pitch(f0: np.ndarray) -> np.ndarray:
    """RVC's f0 -> coarse pitch 1..255 (mel scale, unvoiced -> 1)."""
    mel = 1127 * np.log(1 + f0 / 700)
    lo, hi = 1127 * np.log(1 + F0_MIN / 700), 1127 * np.log(1 + F0_MAX / 700)
    mel = np.where(mel > 0, (mel - lo) * 254 / (hi - lo) + 1, mel)
    mel = np.clip(mel, 1, 255)
    return np.rint(mel).astype(np.int64)


def make_inputs(feature_dim: int, frames: int, seed: int = 0):
    """Smooth random features ``(T, C)`` @100 fps and an f0 contour with voiced and unvoiced stretches.

    Returns ``(feats float32, pitch int64, f0 float32)``."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((frames + 8, feature_dim)).astype(np.float32)
    kernel = np.hanning(9)[:, None].astype(np.float32)
    kernel /= np.sqrt((kernel**2).sum())
    feats = np.stack([np.convolve(raw[:, c], kernel[:, 0], mode="valid") for c in range(feature_dim)], axis=1)[:frames]
    t = np.arange(frames) / 100.0
    f0 = 160 + 60 * np.sin(2 * np.pi * 0.7 * t) + 25 * np.sin(2 * np.pi * 3.1 * t + 1.0)
    voiced = ((np.arange(frames) // 37) % 3 != 2) & (np.arange(frames) % 11 != 5)
    if frames > 1:
        voiced[0] = True
    f0 = np.where(voiced, f0, 0.0).astype(np.float32)
    return feats.astype(np.float32), coarse_pitch(f0), f0
