"""The "rmvpe" F0 estimator: RVC's RMVPE network (``rvc_mlx.models.rmvpe``) behind the registry signature.

The model file comes from ``F0Options.rmvpe_path``: a converted ``.safetensors`` (``rvc-mlx convert``), or the
original ``rmvpe.pt``, converted in memory on first use. Loaded models are cached per (path, mtime, pad mode).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import F0Options, register

DEFAULT_THRESHOLD = 0.03  # RVC's pipeline calls infer_from_audio(x, thred=0.03)
TORCH_SUFFIXES = (".pt", ".pth")

_cache: dict[tuple, object] = {}


def load_rmvpe(path: str | os.PathLike, pad_mode: str | None = None):
    """Load (and cache) the RMVPE at ``path`` (converted .safetensors or original rmvpe.pt)."""
    from ..models.rmvpe import Rmvpe

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: RMVPE model file not found")
    key = (str(path.resolve()), path.stat().st_mtime_ns, pad_mode)
    if key not in _cache:
        if path.suffix.lower() in TORCH_SUFFIXES:
            from ..checkpoint import load_checkpoint
            from ..convert.rmvpe import convert_rmvpe

            weights, config = convert_rmvpe(load_checkpoint(path), str(path))
            model = Rmvpe.from_weights(weights, config, pad_mode, source=str(path))
        else:
            model = Rmvpe.load(path, pad_mode=pad_mode)
        _cache.clear()  # keep one model: a second path replaces the first
        _cache[key] = model
    return _cache[key]


@register("rmvpe")
def rmvpe_f0(audio16k: np.ndarray, opts: F0Options) -> np.ndarray:
    """(N,) 16 kHz audio -> (N // 160 + 1,) f0 Hz (0 = unvoiced); voicing threshold ``opts.threshold`` (0.03)."""
    if opts.rmvpe_path is None:
        raise InputError("f0 method 'rmvpe' needs an RMVPE model: set F0Options(rmvpe_path=...)")
    model = load_rmvpe(opts.rmvpe_path)
    threshold = DEFAULT_THRESHOLD if opts.threshold is None else opts.threshold
    return model.f0(audio16k, threshold=threshold)
