"""Converters from PyTorch checkpoints to the rvc-mlx format (see ``rvc_mlx.store``).

``convert_file(path)`` reads a checkpoint with the safe reader, detects its kind (or takes ``kind``), runs the
matching converter (one module per source kind, each a rule table) and returns ``(weights, config)``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import load_checkpoint
from ..errors import ConversionError

KINDS = ("voice", "hubert", "rmvpe", "crepe", "fcpe")


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def detect_kind(ckpt: Any) -> str | None:
    """The kind of a checkpoint read by ``load_checkpoint``, or None when it is not one we know."""
    if _module("rvc").is_voice_checkpoint(ckpt):
        return "voice"
    if _module("hubert").is_hubert_checkpoint(ckpt):
        return "hubert"
    if _module("rmvpe").is_rmvpe_checkpoint(ckpt):
        return "rmvpe"
    if _module("fcpe").is_fcpe_checkpoint(ckpt):
        return "fcpe"
    if _module("crepe").is_crepe_checkpoint(ckpt):
        return "crepe"
    return None


def _convert_checkpoint(ckpt: Any, kind: str, source: str):
    if kind == "voice":
        return _module("rvc").convert_voice(ckpt, source)
    if kind == "hubert":
        return _module("hubert").convert_hubert_fairseq(ckpt, source)
    if kind == "rmvpe":
        return _module("rmvpe").convert_rmvpe(ckpt, source)
    if kind == "fcpe":
        return _module("fcpe").convert_fcpe(ckpt, source)
    if kind == "crepe":
        return _module("crepe").convert_crepe(ckpt, source)  # size (full/tiny) is read from the weights
    raise ConversionError(f"{source}: unknown kind {kind!r} (choose from {', '.join(KINDS)})")


def convert_file(path: str | os.PathLike, kind: str | None = None,
                 expect: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Convert a ``.pth``/``.pt`` checkpoint or a transformers HuBERT directory. Returns ``(weights, config)``.

    ``kind`` forces a converter; ``expect`` instead requires the detected kind to be that one (a one-line
    error names what the file is otherwise, e.g. an RMVPE checkpoint given where a HuBERT is needed).
    ``config`` gets ``source_sha256`` (of the checkpoint file) so a converted file can be traced to its source.
    """
    path = Path(path)
    source = str(path)
    for k in (kind, expect):
        if k is not None and k not in KINDS:
            raise ConversionError(f"{source}: unknown kind {k!r} (choose from {', '.join(KINDS)})")
    if path.is_dir():
        if (kind or expect) not in (None, "hubert"):
            raise ConversionError(f"{source}: a folder is a transformers HuBERT model, not a {kind or expect} model")
        weights, config = _module("hubert").convert_hubert_transformers(path, source)
        weight_files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
        config["source_sha256"] = sha256_file(weight_files[0]) if weight_files else None
        return weights, config
    ckpt = load_checkpoint(path)
    detected = detect_kind(ckpt)
    if expect is not None and detected != expect:
        what = f"a {detected} checkpoint" if detected else "not a checkpoint rvc-mlx recognises"
        raise ConversionError(f"{source}: is {what}, not a {expect} model")
    if kind is None:
        if detected is None:
            raise ConversionError(
                f"{source}: not a recognised RVC voice, HuBERT, RMVPE, CREPE or FCPE checkpoint "
                "(pass --kind to force one)"
            )
        kind = detected
    try:
        weights, config = _convert_checkpoint(ckpt, kind, source)
    except ConversionError as e:  # shared helpers (weight-norm fusion) do not know the file's name
        if str(e).startswith(source):
            raise
        raise ConversionError(f"{source}: {e}") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        # a damaged checkpoint whose entries are not the tensors/values the converter's rules expect
        detail = " ".join(str(e).split())[:160]
        raise ConversionError(f"{source}: entries do not fit a {kind} model ({type(e).__name__}: {detail})") from None
    config["source_sha256"] = sha256_file(path)
    return weights, config


def parameter_count(weights: dict[str, np.ndarray]) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights.values()))
