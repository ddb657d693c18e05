"""torchfcpe checkpoints (``torchfcpe/assets/fcpe_c_v001.pt``) -> rvc-mlx FCPE weights.

Layouts accepted (all the same ``CFNaiveMelPE`` network):

- torchfcpe's bundled file: ``{"model": state_dict, "config_dict": {...}, "global_step": int}``;
- Applio's ``Resources/predictors/fcpe.pt`` (loaded by Applio with torchfcpe's ``spawn_infer_model_from_pt``):
  ``{"model": state_dict, "config_dict": {...}}``, config under ``config`` also accepted;
- a saved ``InferCFNaiveMelPE`` state dict (network keys prefixed ``model.``; its mel front end has no weights);
- a bare state dict (then torchfcpe's default mel settings are assumed).

The older FCPE of DDSP-SVC / Applio's former ``FCPE.py`` (``stack.*``, ``decoder.*``, ``dense_out.*``: an
attention network) is recognised and refused with a one-line error. ``output_proj`` carries weight norm
(``weight_g``/``weight_v``, dim 0), fused here. Only convolution-only models (``conv_only``, like the bundled
one) are supported: their per-layer ``norm`` (which feeds the absent attention) is dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConversionError
from ..models.fcpe import FcpeConfig
from .common import Rule, apply_rules, fuse_weight_norms
from .crepe import find_packaged_weights  # noqa: F401  (re-exported: find_packaged_weights("fcpe"))

_LAYER = r"net\.encoder_layers\.\d+\.conformer\.net"
RULES = [
    Rule(r"input_stack\.[03]\.weight", "conv1d"),  # Conv1d k3
    Rule(r"input_stack\.[03]\.bias"),
    Rule(r"input_stack\.1\.(weight|bias)"),  # GroupNorm
    Rule(_LAYER + r"\.0\.(weight|bias)"),  # LayerNorm
    Rule(_LAYER + r"\.[26]\.weight", "conv1d"),  # pointwise Conv1d
    Rule(_LAYER + r"\.[26]\.bias"),
    Rule(_LAYER + r"\.4\.conv\.weight", "conv1d"),  # depthwise Conv1d (C, 1, K) -> (C, K, 1)
    Rule(_LAYER + r"\.4\.conv\.bias"),
    Rule(r"norm\.(weight|bias)"),
    Rule(r"output_proj\.(weight|bias)"),  # Linear (weight norm fused)
    Rule(r"cent_table"),  # decoder's cent of each bin (torch float32 linspace; kept for exact decoding)
]
DROP = [
    r"net\.encoder_layers\.\d+\.norm\.(weight|bias)",  # pre-attention LayerNorm; unused when conv_only
    r"gaussian_blurred_cent_mask",  # training target helper
]
_ATTENTION = ("attn.", "harmonic_emb")


_LEGACY_MARKERS = ("stack.0.weight", "dense_out.weight_v")  # DDSP-SVC's FCPE (PCmer attention network)
_WRAPPER_PREFIX = "model."  # InferCFNaiveMelPE.state_dict(): the network under ``model.``


def _state_and_config(ckpt: Any) -> tuple[dict | None, Any]:
    """(state dict, config) of any accepted layout, or (None, None) when ``ckpt`` is not a dict."""
    if not isinstance(ckpt, dict):
        return None, None
    if isinstance(ckpt.get("model"), dict):
        state = ckpt["model"]
        cfg = ckpt.get("config_dict", ckpt.get("config"))
    else:
        state, cfg = ckpt, None
    if any(isinstance(k, str) and k.startswith(_WRAPPER_PREFIX + "input_stack.") for k in state):
        state = {k[len(_WRAPPER_PREFIX):]: v for k, v in state.items()
                 if isinstance(k, str) and k.startswith(_WRAPPER_PREFIX)}
    return state, cfg


def _is_legacy(state: dict) -> bool:
    return any(k in state for k in _LEGACY_MARKERS) and any(str(k).startswith("decoder.") for k in state)


def _split(ckpt: Any, source: str) -> tuple[dict[str, np.ndarray], dict]:
    state, cfg = _state_and_config(ckpt)
    if state is None:
        raise ConversionError(f"{source}: not an FCPE checkpoint (expected a dict)")
    if _is_legacy(state):
        raise ConversionError(f"{source}: the older FCPE network (DDSP-SVC's, with attention) is not supported; "
                              "use torchfcpe's fcpe_c_v001.pt or Applio's current fcpe.pt (rvc-mlx download fcpe)")
    state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    return state, cfg if isinstance(cfg, dict) else {}


def is_fcpe_checkpoint(ckpt: Any) -> bool:
    """True for a torchfcpe ``CFNaiveMelPE`` checkpoint in any accepted layout (and for the older, unsupported
    DDSP-SVC FCPE, so that converting it says what it is)."""
    state, _ = _state_and_config(ckpt)
    if state is None:
        return False
    if _is_legacy(state):
        return True
    return "input_stack.0.weight" in state and "cent_table" in state and any(
        str(k).startswith("net.encoder_layers.") for k in state
    )


def convert_fcpe(ckpt: Any, source: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict]:
    """Convert a torchfcpe checkpoint (plain dict with numpy arrays). Returns ``(weights, config)``."""
    state, cfg = _split(ckpt, source)
    if "input_stack.0.weight" not in state:
        raise ConversionError(f"{source}: not an FCPE checkpoint (no input_stack.0.weight)")
    if any(any(a in k for a in _ATTENTION) for k in state):
        raise ConversionError(f"{source}: FCPE models with attention or harmonic embeddings are not supported "
                              "(only conv_only models such as torchfcpe's bundled fcpe_c_v001)")
    mel_cfg = cfg.get("mel", {}) if isinstance(cfg.get("mel"), dict) else {}
    model_cfg = cfg.get("model", {}) if isinstance(cfg.get("model"), dict) else {}
    if mel_cfg.get("type", "default") not in (None, "default", "none", "None"):
        raise ConversionError(f"{source}: FCPE mel type {mel_cfg.get('type')!r} is not supported")
    state = fuse_weight_norms(state)
    weights = apply_rules(state, RULES, DROP, source)
    layers = sorted({int(k.split(".")[2]) for k in weights if k.startswith("net.encoder_layers.")})
    if layers != list(range(len(layers))):
        raise ConversionError(f"{source}: FCPE encoder layers are not numbered 0..n-1: {layers}")
    default = FcpeConfig()
    hidden, n_mels = weights["input_stack.0.weight"].shape[0], weights["input_stack.0.weight"].shape[2]
    config = {
        "kind": "fcpe",
        "model": "fcpe",
        "sample_rate": int(mel_cfg.get("sr", default.sample_rate)),
        "n_mels": int(n_mels),
        "n_fft": int(mel_cfg.get("n_fft", default.n_fft)),
        "win_size": int(mel_cfg.get("win_size", default.win_size)),
        "hop_size": int(mel_cfg.get("hop_size", default.hop_size)),
        "mel_fmin": float(mel_cfg.get("fmin", default.mel_fmin) or 0.0),
        "mel_fmax": float(mel_cfg.get("fmax", default.mel_fmax) or default.sample_rate / 2),
        "clip_val": default.clip_val,
        "out_dims": int(weights["output_proj.weight"].shape[0]),
        "hidden_dims": int(hidden),
        "n_layers": len(layers),
        "kernel_size": int(weights["net.encoder_layers.0.conformer.net.4.conv.weight"].shape[1]),
        "expansion_factor": int(weights["net.encoder_layers.0.conformer.net.6.weight"].shape[2] // hidden),
        "f0_min": float(model_cfg.get("f0_min", default.f0_min)),
        "f0_max": float(model_cfg.get("f0_max", default.f0_max)),
    }
    if n_mels != int(mel_cfg.get("num_mels", n_mels)):
        raise ConversionError(f"{source}: config num_mels {mel_cfg.get('num_mels')} != input_stack width {n_mels}")
    return weights, config
