"""Convert RMVPE's ``rmvpe.pt`` (a bare state dict of RVC's ``E2E(4, 1, (2, 2))``) to the rvc-mlx format.

Source names (PyTorch) and what happens to them:

=============================================================  ==================  ===========================
``unet.encoder.bn.*``                                          BatchNorm2d         kept
``unet.{encoder,intermediate}.layers.N.conv.M.conv.{0,3}``     Conv2d 3×3          (O,I,H,W) -> (O,H,W,I)
``unet.{encoder,intermediate}.layers.N.conv.M.conv.{1,4}.*``   BatchNorm2d         kept
``unet.decoder.layers.N.conv2.M.conv.{0,3}`` / ``{1,4}``       Conv2d / BN         as above
``....shortcut.{weight,bias}``                                 Conv2d 1×1          (O,I,1,1) -> (O,1,1,I)
``unet.decoder.layers.N.conv1.0.weight``                       ConvTranspose2d     (I,O,H,W) -> (O,H,W,I)
``unet.decoder.layers.N.conv1.1.*``                            BatchNorm2d         kept
``cnn.{weight,bias}``                                          Conv2d 3×3          (O,I,H,W) -> (O,H,W,I)
``fc.0.gru.{weight_ih,weight_hh,bias_ih,bias_hh}_l0[_reverse]`` GRU               -> ``fc.0.gru.l0[_reverse]
                                                                                      .{Wx,Wh,b,bhn}``
``fc.1.{weight,bias}``                                         Linear 512->360     kept
``*.num_batches_tracked``                                      BN counter          dropped
=============================================================  ==================  ===========================

GRU biases are folded here, at conversion (see ``rvc_mlx.nn.gru``): ``b = bias_ih + [b_hr, b_hz, 0]``,
``bhn = b_hn``. A converted file therefore never contains PyTorch's raw GRU biases.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import ConversionError
from ..nn.gru import fold_gru_biases
from .common import Rule, apply_rules

# Front end and decode constants of RVC's RMVPE (rvc.lib.rmvpe.RMVPE / MelSpectrogram).
N_MELS = 128
SAMPLE_RATE = 16000
HOP = 160
N_FFT = 1024
WIN_LENGTH = 1024
MEL_FMIN = 30.0
MEL_FMAX = 8000.0
THRESHOLD = 0.03
PAD_MODES = ("constant", "reflect")  # rvc==0.3.5 zero-pads the log-mel to a multiple of 32 frames; Applio reflects

_BLOCK = r"unet\.(?:encoder|intermediate)\.layers\.\d+\.conv\.\d+|unet\.decoder\.layers\.\d+\.conv2\.\d+"
_BN = r"(?:weight|bias|running_mean|running_var)"

RULES = [
    Rule(rf"unet\.encoder\.bn\.{_BN}"),
    Rule(rf"(?:{_BLOCK})\.conv\.[03]\.weight", "conv2d"),
    Rule(rf"(?:{_BLOCK})\.conv\.[14]\.{_BN}"),
    Rule(rf"(?:{_BLOCK})\.shortcut\.weight", "conv2d"),
    Rule(rf"(?:{_BLOCK})\.shortcut\.bias"),
    Rule(r"unet\.decoder\.layers\.\d+\.conv1\.0\.weight", "conv_transpose2d"),
    Rule(rf"unet\.decoder\.layers\.\d+\.conv1\.1\.{_BN}"),
    Rule(r"cnn\.weight", "conv2d"),
    Rule(r"cnn\.bias"),
    Rule(r"fc\.0\.gru\.l0(?:_reverse)?\.(?:Wx|Wh|b|bhn)"),
    Rule(r"fc\.1\.(?:weight|bias)"),
]
DROP = [r".*\.num_batches_tracked"]

_GRU_SUFFIXES = ("_l0", "_l0_reverse")


def is_rmvpe_checkpoint(ckpt) -> bool:
    """True if ``ckpt`` (a loaded checkpoint) looks like RMVPE's bare E2E state dict."""
    return (
        isinstance(ckpt, dict)
        and "unet.encoder.bn.weight" in ckpt
        and "cnn.weight" in ckpt
        and "fc.0.gru.weight_ih_l0" in ckpt
    )


def _fold_gru(state: dict, source: str) -> dict:
    """Replace PyTorch GRU tensors by MLX-named ones with folded biases (``fc.0.gru.l0[_reverse].*``)."""
    out = dict(state)
    prefix = "fc.0.gru."
    for suffix in _GRU_SUFFIXES:
        names = {p: f"{prefix}{p}{suffix}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        missing = [n for n in names.values() if n not in state]
        if missing:
            raise ConversionError(f"{source}: RMVPE GRU tensor(s) missing: {', '.join(missing)}")
        b, bhn = fold_gru_biases(state[names["bias_ih"]], state[names["bias_hh"]])
        target = f"{prefix}{suffix[1:]}."
        out[target + "Wx"] = np.asarray(state[names["weight_ih"]], dtype=np.float32)
        out[target + "Wh"] = np.asarray(state[names["weight_hh"]], dtype=np.float32)
        out[target + "b"] = b
        out[target + "bhn"] = bhn
        for n in names.values():
            del out[n]
    return out


def _count(state: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.fullmatch(k))})


def _architecture(state: dict, source: str) -> dict:
    """Read the E2E hyper-parameters from tensor names and shapes, and check they are RMVPE's."""
    arch = {
        "en_de_layers": _count(state, r"unet\.encoder\.layers\.(\d+)\..*"),
        "inter_layers": _count(state, r"unet\.intermediate\.layers\.(\d+)\..*"),
        "n_blocks": _count(state, r"unet\.encoder\.layers\.0\.conv\.(\d+)\..*"),
        "en_out_channels": int(np.shape(state["unet.encoder.layers.0.conv.0.conv.0.weight"])[0]),
        "in_channels": int(np.shape(state["unet.encoder.bn.weight"])[0]),
        "gru_hidden": int(np.shape(state["fc.0.gru.weight_hh_l0"])[1]),
        "n_classes": int(np.shape(state["fc.1.weight"])[0]),
    }
    if _count(state, r"fc\.0\.gru\.weight_ih_l(\d+)(?:_reverse)?") != 1:
        raise ConversionError(f"{source}: only a one-layer BiGRU RMVPE is supported")
    gru_in = int(np.shape(state["fc.0.gru.weight_ih_l0"])[1])
    if gru_in != 3 * N_MELS or arch["in_channels"] != 1:
        raise ConversionError(f"{source}: not an RMVPE model for {N_MELS} mel bands (GRU input {gru_in})")
    return arch


def convert_rmvpe(ckpt: dict, source: str = "rmvpe.pt") -> tuple[dict[str, np.ndarray], dict]:
    """Convert a loaded ``rmvpe.pt`` state dict (plain dict of numpy arrays) to ``(weights, config)``.

    ``weights`` are float32 in MLX layout; ``config`` holds the named front-end/decode settings and architecture.
    Raises ``ConversionError`` if the checkpoint is not RMVPE or has tensors this converter does not know.
    """
    if not is_rmvpe_checkpoint(ckpt):
        raise ConversionError(f"{source}: not an RMVPE checkpoint (expected the bare E2E state dict of rmvpe.pt)")
    state = {k: np.asarray(v) for k, v in ckpt.items()}
    arch = _architecture(state, source)
    weights = apply_rules(_fold_gru(state, source), RULES, DROP, source)
    config = {
        "kind": "rmvpe",
        "n_mels": N_MELS,
        "sample_rate": SAMPLE_RATE,
        "hop": HOP,
        "n_fft": N_FFT,
        "win_length": WIN_LENGTH,
        "mel_fmin": MEL_FMIN,
        "mel_fmax": MEL_FMAX,
        "threshold": THRESHOLD,
        "pad_mode": PAD_MODES[0],
        **arch,
    }
    return weights, config
