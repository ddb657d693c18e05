"""Blend two voice models into one (Applio's model blender).

Applio's ``model_blender(name, path1, path2, ratio)`` (rvc/train/process/model_blender.py) computes, for every
tensor of the two exported checkpoints, ``ratio · A + (1 − ratio) · B`` in float32 and stores the result as
float16. It blends the *raw* tensors, so weight-norm pairs (``weight_g``/``weight_v``) are blended separately and
fused only when the blend is used. Where the two speaker tables (``emb_g.weight``) differ in rows, both are cut to
the smaller count. The blended checkpoint keeps A's ``config``, ``f0``, ``version`` and ``vocoder``, A's sample
rate, and an ``info`` line naming both models and the ratio.

rvc-mlx does the same and converts the blended checkpoint to its voice format, so a blend of two ``.pth`` files
equals converting Applio's blended ``.pth``. Differences, each on purpose:

* a converted ``.safetensors`` voice has only fused weights; when an input is one, both models are blended in the
  converted float32 space (``method`` "converted" in the result's ``blend`` field). Fusion is not linear, so this
  is close to, but not the same as, Applio's blend of the ``.pth`` files;
* the two models must agree on every architecture field of the synthesizer config (sample rate, version, f0,
  vocoder, layer sizes, ...) and on the embedder, and have the same tensors of the same shapes (``emb_g`` rows
  aside). Applio checks only the sample rate and the key set, and takes A's config for the rest;
* old (``weight_g``/``weight_v``) and new (``parametrizations.weight.original0/1``) weight-norm names are the same
  tensors: a model exported by RVC-Project blends with one exported by Applio (Applio refuses the pair);
* the embedder is kept (Applio's blend drops ``embedder_model``; our format records the embedder the voice needs);
* ``info`` names the files without their folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError, InputError

DEFAULT_RATIO = 0.5  # Applio's UI default
SPEAKER_TABLE = "emb_g.weight"
# Config fields compared besides the synthesizer's own; the first ones are named first when several differ.
FIRST_COMPARED = ("sample_rate", "version", "use_f0", "vocoder", "embedder")
LABELS = {"use_f0": "f0 (pitch guidance)"}
_WEIGHT_NORM_NAMES = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}


@dataclass
class _Voice:
    path: Path
    ckpt: dict | None  # the raw checkpoint of a .pth; None for a converted voice
    weights: dict[str, np.ndarray]  # converted (MLX layout, float32)
    config: dict


def check_ratio(ratio: float) -> float:
    """``ratio`` (the share of the first model) if it is a number in 0..1; ``InputError`` otherwise."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise InputError(f"blend: ratio {ratio!r} is not a number") from None
    if not (0.0 <= value <= 1.0):  # also refuses NaN
        raise InputError(f"blend: ratio {ratio} is outside 0..1 (the share of the first model)")
    return value


def weighted_mean(a: np.ndarray, b: np.ndarray, ratio: float) -> np.ndarray:
    """``ratio · a + (1 − ratio) · b`` in float32, both factors rounded to float32 first as torch does for a
    Python scalar times a float32 tensor. Shapes must be equal."""
    return np.float32(ratio) * a.astype(np.float32) + np.float32(1 - ratio) * b.astype(np.float32)


def _aligned(a: dict, b: dict):
    """``(key, a[key], b[key])`` for every tensor of ``a``; speaker tables of different row counts are both cut to
    the smaller count (Applio's rule)."""
    for key, x in a.items():
        x, y = np.asarray(x), np.asarray(b[key])
        if key == SPEAKER_TABLE and x.shape != y.shape:
            rows = min(x.shape[0], y.shape[0])
            x, y = x[:rows], y[:rows]
        yield key, x, y


def blend_state_dicts(a: dict[str, np.ndarray], b: dict[str, np.ndarray], ratio: float) -> dict[str, np.ndarray]:
    """Applio's blend of two raw state dicts with the same keys and shapes (``emb_g.weight`` rows may differ: both
    are cut to the smaller count). Returns float16 arrays, as Applio stores them."""
    return {key: weighted_mean(x, y, ratio).astype(np.float16) for key, x, y in _aligned(a, b)}


def _canonical_names(state: dict) -> dict[str, np.ndarray]:
    """State dict with new-style weight-norm names spelled the old way (the same tensors either way)."""
    out = {}
    for key, value in state.items():
        key = str(key)
        for new, old in _WEIGHT_NORM_NAMES.items():
            if key.endswith(new):
                key = key[: -len(new)] + old
        out[key] = np.asarray(value)
    return out


def _read(path: str | os.PathLike) -> _Voice:
    from . import store
    from .checkpoint import load_checkpoint
    from .convert.rvc import convert_voice

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: voice model not found")
    if path.suffix.lower() == ".safetensors":
        kind = store.read_config(path)["kind"]
        if kind != "voice":
            raise InputError(f"{path}: is a {kind} model, not a voice")
        weights, config = store.load_numpy(path)
        return _Voice(path, None, weights, config)
    ckpt = load_checkpoint(path)
    weights, config = convert_voice(ckpt, str(path))  # validates the model (training states, vocoders, config)
    return _Voice(path, ckpt, weights, config)


def _mismatch(a: _Voice, b: _Voice, what: str) -> ConversionError:
    return ConversionError(f"cannot blend {a.path} and {b.path}: {what}")


def _check_configs(a: _Voice, b: _Voice) -> None:
    from dataclasses import fields

    from .models.synthesizer import SynthesizerConfig

    network = [f.name for f in fields(SynthesizerConfig) if f.name != "n_speakers"]
    for key in list(FIRST_COMPARED) + [k for k in network if k not in FIRST_COMPARED]:
        x, y = a.config.get(key), b.config.get(key)
        if x != y:
            raise _mismatch(a, b, f"different {LABELS.get(key, key.replace('_', ' '))}: {x} vs {y}")


def _check_tensors(a: _Voice, b: _Voice, sa: dict, sb: dict) -> None:
    only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
    if only_a or only_b:
        parts = [f"only in {v.path.name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for v, keys in ((a, only_a), (b, only_b)) if keys]
        raise _mismatch(a, b, f"different tensors ({'; '.join(parts)})")
    for key in sa:
        x, y = sa[key].shape, sb[key].shape
        if x != y and not (key == SPEAKER_TABLE and x[1:] == y[1:]):
            raise _mismatch(a, b, f"tensor {key} has shape {x} vs {y}")


def _info(a: _Voice, b: _Voice, ratio: float) -> str:
    return f"Model {a.path.name} and {b.path.name} are merged with alpha {ratio}."


def _applio_sample_rate(sr) -> str:
    """Applio's spelling of a checkpoint's sample rate ("40k" and 40000 -> "40000")."""
    return str(sr).lower().replace("k", "000")


def _blend_checkpoints(a: _Voice, b: _Voice, ratio: float) -> tuple[dict[str, np.ndarray], dict]:
    from .convert.rvc import convert_voice

    sa, sb = _canonical_names(a.ckpt["weight"]), _canonical_names(b.ckpt["weight"])
    _check_tensors(a, b, sa, sb)
    blended = {
        "weight": blend_state_dicts(sa, sb, ratio),
        "config": list(a.ckpt["config"]),
        "sr": _applio_sample_rate(a.ckpt.get("sr", a.config["sample_rate"])),
        "f0": a.ckpt.get("f0", 1),
        "version": a.ckpt.get("version", "v1"),
        "info": _info(a, b, ratio),
        "vocoder": a.ckpt.get("vocoder", "HiFi-GAN"),
        "embedder_model": a.config["embedder"],
    }
    return convert_voice(blended, f"blend of {a.path} and {b.path}")


def _blend_converted(a: _Voice, b: _Voice, ratio: float) -> tuple[dict[str, np.ndarray], dict]:
    _check_tensors(a, b, a.weights, b.weights)
    weights = {key: weighted_mean(x, y, ratio) for key, x, y in _aligned(a.weights, b.weights)}
    config = {k: v for k, v in a.config.items() if k not in ("format", "format_version", "source_sha256", "blend")}
    config["n_speakers"] = int(weights[SPEAKER_TABLE].shape[0])
    config["info"] = _info(a, b, ratio)
    return weights, config


def blend_voices(
    path_a: str | os.PathLike, path_b: str | os.PathLike, ratio: float = DEFAULT_RATIO
) -> tuple[dict[str, np.ndarray], dict]:
    """Blend voice A (share ``ratio``) with voice B (share ``1 − ratio``).

    Inputs are RVC ``.pth`` exports or converted ``.safetensors`` voices. Two ``.pth`` files are blended raw, as
    Applio does, and the blend is converted; otherwise the converted weights are blended (see the module notes).
    Returns ``(weights in MLX layout (float32), named voice config)``; ``config["blend"]`` records the inputs,
    the ratio and the method ("checkpoint" or "converted"). Raises ``InputError`` for a ratio outside 0..1 and
    ``ConversionError`` (one line naming both files) when the models differ in architecture.
    """
    from .convert import sha256_file

    ratio = check_ratio(ratio)
    a, b = _read(path_a), _read(path_b)
    _check_configs(a, b)
    if a.ckpt is not None and b.ckpt is not None:
        weights, config = _blend_checkpoints(a, b, ratio)
        method = "checkpoint"
    else:
        weights, config = _blend_converted(a, b, ratio)
        method = "converted"
    config["blend"] = {
        "a": a.path.name, "a_sha256": sha256_file(a.path),
        "b": b.path.name, "b_sha256": sha256_file(b.path),
        "ratio": ratio, "method": method,
    }
    return weights, config
