"""The converted format: one self-describing ``.safetensors`` file per model.

Tensors are stored in MLX layout (channels last) and are never transposed at load time. The safetensors
``__metadata__`` holds three string fields::

    format          "rvc-mlx"
    format_version  "1"
    config          JSON object with named fields; always has "kind" (voice | hubert | rmvpe | crepe | fcpe)

Loading is strict: a model whose parameter names or shapes differ from the file is an error that lists them.

Float tensors may be stored as float32 (the default), float16 or bfloat16 (``convert --dtype``: half the size);
loading upcasts half-precision tensors to float32, the precision every network computes in.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import FormatError

FORMAT_NAME = "rvc-mlx"
FORMAT_VERSION = 1
KINDS = ("voice", "hubert", "rmvpe", "crepe", "fcpe")
_MAX_HEADER = 100 * 1024 * 1024
STORAGE_DTYPES = ("float32", "float16", "bfloat16")  # how float tensors may be stored
HALF_DTYPES = {"F16", "BF16"}  # safetensors names of the half-precision storage types


def save(path: str | os.PathLike, weights: dict[str, np.ndarray], config: dict, dtype: str = "float32") -> None:
    """Write ``weights`` (already in MLX layout) and ``config`` (must contain ``kind``) to ``path`` atomically,
    float tensors stored as ``dtype`` (float32 | float16 | bfloat16, rounded to nearest even)."""
    if config.get("kind") not in KINDS:
        raise FormatError(f"{path}: config kind must be one of {', '.join(KINDS)}, got {config.get('kind')!r}")
    if dtype not in STORAGE_DTYPES:
        raise FormatError(f"{path}: cannot store tensors as {dtype!r} (choose from {', '.join(STORAGE_DTYPES)})")
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config}
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "config": json.dumps(config)}
    arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    if dtype == "float32":
        from safetensors.numpy import save_file

        atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))
        return
    import mlx.core as mx  # numpy has no bfloat16

    half = getattr(mx, dtype)
    stored = {k: mx.array(v).astype(half) if np.issubdtype(v.dtype, np.floating) else mx.array(v)
              for k, v in arrays.items()}
    atomic_write(path, lambda tmp: mx.save_safetensors(tmp, stored, metadata=meta))


def storage_dtype(path: str | os.PathLike) -> str:
    """How a converted file stores its float tensors: float32, float16 or bfloat16 (from the header)."""
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    found = {v["dtype"] for k, v in _read_header(Path(path)).items() if k != "__metadata__"} & set(names)
    return names[max(found, key=lambda d: d != "F32")] if found else "float32"


# safetensors dtype names -> bytes per element
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
_VERSION_RE = re.compile(r"[0-9]+")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _DuplicateKey(next(k for k in keys if keys.count(k) > 1))
    return dict(pairs)


def _is_count(x) -> bool:
    return type(x) is int and x >= 0  # not bool, not float


def _tensor_problem(info, data_len: int) -> str | None:
    """What is wrong with one tensor's header entry, or None."""
    if not isinstance(info, dict):
        return "entry is not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"shape {shape!r} is not a list of non-negative integers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        return f"data_offsets {offsets!r} are not [begin, end]"
    begin, end = offsets
    if not begin <= end <= data_len:
        return f"data_offsets {offsets} outside the {data_len}-byte data section"
    size = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != size:
        return f"{dtype} {tuple(shape)} needs {size} bytes, data_offsets give {end - begin}"
    return None


def _read_header(path: Path) -> dict:
    """Validate the safetensors framing and every tensor entry without trusting them; return the parsed header.

    The one check behind every reader (``read_config``, ``tensor_shapes``, ``load``, ``info``): header length
    within the file, JSON object with unique names, ``__metadata__`` of strings, and per tensor a known dtype, a
    shape of non-negative integers and ``data_offsets`` whose byte count is ``prod(shape) * itemsize``; the
    tensors tile the data section exactly (no overlap, no gap, nothing after), as safetensors itself requires.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise FormatError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, expected a .safetensors file") from None
    except _DuplicateKey as e:
        raise FormatError(f"{path}: corrupt safetensors file (name {e.args[0]!r} appears twice)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise FormatError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file (header is not an object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{path}: corrupt safetensors file (__metadata__ is not an object of strings)")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_problem(info, data_len)
        if problem:
            raise FormatError(f"{path}: corrupt or truncated safetensors file (tensor {name!r}: {problem})")
        spans.append((*info["data_offsets"], name))
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise FormatError(f"{path}: corrupt safetensors file (tensors {a!r} and {b!r} overlap)")
    covered = 0
    for begin, end, name in spans:
        if begin != covered:
            raise FormatError(f"{path}: corrupt safetensors file (unused bytes before tensor {name!r})")
        covered = end
    if covered != data_len:
        raise FormatError(f"{path}: corrupt safetensors file ({data_len - covered} bytes after the last tensor)")
    return header


def _damaged(path: Path, problem: str) -> FormatError:
    return FormatError(f"{path}: rvc-mlx metadata is damaged ({problem})")


def read_config(path: str | os.PathLike) -> dict:
    """Return the named config of a converted file, checking that it is an rvc-mlx file of a known version.

    Every way the metadata can be wrong (missing fields, ``config`` not a JSON object, a version that is not a
    positive integer, an unknown ``kind``) is a one-line ``FormatError``."""
    path = Path(path)
    meta = _read_header(path).get("__metadata__", {})
    if meta.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not an rvc-mlx file (no '{FORMAT_NAME}' format marker); convert it first")
    raw_version = meta.get("format_version")
    if raw_version is None:
        raise _damaged(path, "no format_version")
    if not _VERSION_RE.fullmatch(raw_version) or int(raw_version) < 1:
        raise _damaged(path, f"format_version {raw_version[:40]!r} is not a positive integer")
    version = int(raw_version)
    if version > FORMAT_VERSION:
        raise FormatError(f"{path}: format version {version} is newer than this rvc-mlx supports ({FORMAT_VERSION})")
    if "config" not in meta:
        raise _damaged(path, "no config")
    try:
        config = json.loads(meta["config"])
    except (json.JSONDecodeError, RecursionError):
        raise _damaged(path, "config is not JSON") from None
    if not isinstance(config, dict):
        raise _damaged(path, f"config is a JSON {type(config).__name__}, not an object")
    if config.setdefault("format", FORMAT_NAME) != FORMAT_NAME:
        raise _damaged(path, f"config format {config['format']!r} is not {FORMAT_NAME!r}")
    inner = config.setdefault("format_version", version)
    if type(inner) is not int or inner != version:
        raise _damaged(path, f"config format_version {inner!r} disagrees with the file's {version}")
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise FormatError(f"{path}: unknown model kind {kind!r} (expected one of {', '.join(KINDS)})")
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
    return {k: v.astype(mx.float32) if v.dtype in (mx.float16, mx.bfloat16) else v for k, v in weights.items()}, config


def load_numpy(path: str | os.PathLike):
    """Like :func:`load` but returns numpy arrays, half-precision tensors upcast to float32 (for tools and tests
    that do not need MLX)."""
    from safetensors.numpy import load_file

    path = Path(path)
    config = read_config(path)
    if storage_dtype(path) == "bfloat16":  # numpy has no bfloat16: through MLX, upcast
        weights, config = load(path)
        return {k: np.array(v) for k, v in weights.items()}, config
    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type; report it as one line
        raise FormatError(f"{path}: cannot read tensors ({e})") from None
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in weights.items()}, config


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
