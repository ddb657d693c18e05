"""The converted format: one self-describing ``.safetensors`` file per model.

Tensors are stored in MLX layout (channels last) and are never transposed at load time. The safetensors
``__metadata__`` holds three string fields::

    format          "rvc-mlx"
    format_version  "1"
    config          JSON object with named fields; always has "kind" (voice | hubert | rmvpe | crepe | fcpe)

Loading is strict: a model whose parameter names or shapes differ from the file is an error that lists them.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from .errors import FormatError

FORMAT_NAME = "rvc-mlx"
FORMAT_VERSION = 1
KINDS = ("voice", "hubert", "rmvpe", "crepe", "fcpe")
_MAX_HEADER = 100 * 1024 * 1024


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a failure never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str | os.PathLike, weights: dict[str, np.ndarray], config: dict) -> None:
    """Write ``weights`` (already in MLX layout) and ``config`` (must contain ``kind``) to ``path`` atomically."""
    from safetensors.numpy import save_file

    if config.get("kind") not in KINDS:
        raise FormatError(f"{path}: config kind must be one of {', '.join(KINDS)}, got {config.get('kind')!r}")
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config}
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "config": json.dumps(config)}
    arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))


def _read_header(path: Path) -> dict:
    """Validate the safetensors framing without trusting it; return the parsed header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise FormatError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, expected a .safetensors file") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file (header is not an object)")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            ok = 0 <= start <= end <= data_len
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise FormatError(f"{path}: corrupt or truncated safetensors file (tensor {name!r} out of bounds)")
    return header


def read_config(path: str | os.PathLike) -> dict:
    """Return the named config of a converted file, checking that it is an rvc-mlx file of a known version."""
    path = Path(path)
    meta = _read_header(path).get("__metadata__") or {}
    if meta.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not an rvc-mlx file (no '{FORMAT_NAME}' format marker); convert it first")
    try:
        version = int(meta.get("format_version", ""))
        config = json.loads(meta["config"])
    except (KeyError, ValueError):
        raise FormatError(f"{path}: rvc-mlx metadata is damaged") from None
    if version > FORMAT_VERSION:
        raise FormatError(f"{path}: format version {version} is newer than this rvc-mlx supports ({FORMAT_VERSION})")
    if config.get("kind") not in KINDS:
        raise FormatError(f"{path}: unknown model kind {config.get('kind')!r}")
    return config


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a converted file, read from the header only."""
    header = _read_header(Path(path))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def load(path: str | os.PathLike, kind: str | None = None):
    """Load a converted file. Returns ``(weights: dict[str, mx.array], config: dict)``.

    ``kind`` (optional) is checked against the file's kind so a HuBERT file passed as a voice is a clear error.
    """
    import mlx.core as mx

    path = Path(path)
    config = read_config(path)
    if kind is not None and config["kind"] != kind:
        raise FormatError(f"{path}: is a {config['kind']} model, expected a {kind} model")
    try:
        weights = mx.load(str(path))
    except (RuntimeError, ValueError) as e:
        raise FormatError(f"{path}: cannot read tensors ({e})") from None
    return weights, config


def load_numpy(path: str | os.PathLike):
    """Like :func:`load` but returns numpy arrays (for tools and tests that do not need MLX)."""
    from safetensors.numpy import load_file

    path = Path(path)
    config = read_config(path)
    try:
        return load_file(str(path)), config
    except Exception as e:  # safetensors raises its own error type; report it as one line
        raise FormatError(f"{path}: cannot read tensors ({e})") from None


def load_into(model, weights: dict, source: str = "weights") -> None:
    """Strictly load ``weights`` (flat dotted names) into an ``mlx.nn.Module``.

    Raises ``FormatError`` listing missing keys, unexpected keys and shape mismatches.
    """
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(
        f"{k} {tuple(weights[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(weights)
        if tuple(weights[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"wrong shape {len(wrong)}: {', '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''}")
    if problems:
        raise FormatError(f"{source}: weights do not fit the model ({'; '.join(problems)})")
    model.load_weights(list(weights.items()), strict=True)
