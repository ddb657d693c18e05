"""A trained (or converted) voice as an RVC-format ``.pth``, written without torch.

Two layers:

* :func:`save_torch` writes PyTorch's zip checkpoint format (what ``torch.save`` writes since torch 1.6) from plain
  Python values and numpy arrays, so ``torch.load(path, weights_only=True)`` returns the same structure with
  tensors. Layout of the zip (records uncompressed, each payload aligned to 64 bytes as torch's writer does)::

      archive/data.pkl     protocol-2 pickle of the object; each array is
                           torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())
                           and each storage a persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
      archive/byteorder    "little"
      archive/data/<key>   the raw little-endian bytes of storage <key> (0, 1, ... in pickling order)
      archive/version      "3"

  ``.format_version``/``.storage_alignment`` (torch >= 2.6) are left out on purpose: with them torch may compute
  record offsets assuming its own zip writer's data descriptors, which Python's ``zipfile`` does not write.

* :func:`rvc_state_dict` / :func:`rvc_checkpoint` / :func:`save_rvc_pth` turn a voice's parameters in rvc-mlx's
  MLX layout into what RVC's ``savee``/``extract_small_model`` writes: ``{"weight": state dict (float16, torch
  layout, no enc_q), "config": the 18-item list, "info", "sr": "40k", "f0": 1|0, "version": "v1"|"v2"}``. The
  layouts are the converter's rule table (:mod:`rvc_mlx.convert.rvc`) run backwards; the modules RVC builds with
  weight norm get ``weight_g``/``weight_v`` back (RVC loads the dict into a weight-normed model), either the pair
  the trainer kept or an exact re-parametrisation of a fused weight (``v = w``, ``g = ||w||``).
  :func:`export_voice` does it for a converted ``.safetensors`` voice.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..convert.common import LAYOUTS, layout_of
from ..convert.rvc import DROP, FEATURE_DIMS, HIFIGAN_RULES, RULES, SAMPLE_RATE_NAMES, convert_voice
from ..errors import ConversionError, DiskFullError, FormatError, InputError, OutputError
from .losses import RATE_TABLE
from .nets import is_weight_normed

# -- PyTorch's zip checkpoint format ----------------------------------------------------------------------------

ARCHIVE = "archive"  # record prefix (torch.save into a buffer uses the same)
FILE_FORMAT_VERSION = b"3\n"  # the zip format torch >= 1.6 writes and every later torch reads
RECORD_ALIGNMENT = 64  # payload offsets, as torch's PyTorchStreamWriter aligns them
PICKLE_PROTOCOL = 2  # torch.save's default
_ZIP_LOCAL_HEADER = 30  # bytes before the file name in a zip local header
_ZIP64_EXTRA = 20  # zip64 extra field zipfile adds to a large record's local header
_PAD_EXTRA_ID = 0x4246  # "FB": the extra-field id torch pads with
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same object gives the same bytes
_ZIP_EXTERNAL_ATTR = 0o644 << 16
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# numpy dtype -> torch storage class (what a tensor of that dtype pickles as)
STORAGE_TYPES = {
    "float64": "DoubleStorage",
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}


class _Global:
    """A module-level name the pickle refers to (``GLOBAL module name``) without this process importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable; the unpickler calls the real one
        raise TypeError(f"{self.module}.{self.name} is a pickle reference, not callable here")


_GLOBALS: dict[tuple[str, str], _Global] = {}


def _global(module: str, name: str) -> _Global:
    """One object per name, so the pickler's memo writes each GLOBAL once (as torch's pickle does)."""
    return _GLOBALS.setdefault((module, name), _Global(module, name))


class _Storage:
    """One array's bytes, stored as record ``data/<key>``."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array
        self.type = _global("torch", STORAGE_TYPES[array.dtype.name])

    def payload(self) -> memoryview:
        return memoryview(self.array.reshape(-1).view(np.uint8))


class _Tensor:
    """Pickles as ``_rebuild_tensor_v2(storage, 0, shape, contiguous stride, False, OrderedDict())``."""

    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        shape = tuple(int(n) for n in self.storage.array.shape)
        return (_global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, 0, shape, _contiguous_stride(shape), False, OrderedDict()))


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous tensor, as torch computes them (an empty axis counts as 1)."""
    stride, step = [], 1
    for n in reversed(shape):
        stride.append(step)
        step *= max(n, 1)
    return tuple(reversed(stride))


class _TorchPickler(pickle._Pickler):
    """Python's pure pickler (its dispatch table is the extension point) with torch's persistent ids and GLOBAL
    references written by name."""

    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.type, obj.key, "cpu", int(obj.array.size))
        return None

    def _save_global_ref(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_Global] = _save_global_ref


def _prepare(obj, storages: list[_Storage], seen: dict[int, _Tensor], where: str = "object"):
    """A copy of ``obj`` in which arrays are ``_Tensor``s (each with its own storage; one array object given twice
    stays one tensor), numpy scalars are Python scalars, and anything else is refused."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        if id(obj) not in seen:
            if obj.dtype.name not in STORAGE_TYPES:
                raise TypeError(f"{where}: cannot store a {obj.dtype} array in a torch checkpoint")
            array = obj.astype(obj.dtype.newbyteorder("<"), order="C", copy=False)  # keeps 0-d arrays 0-d
            storages.append(_Storage(str(len(storages)), array))
            seen[id(obj)] = _Tensor(storages[-1])
        return seen[id(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict key {k!r} is not a str or int")
            out[k] = _prepare(v, storages, seen, f"{where}[{k!r}]")
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, (list, tuple)):
        items = [_prepare(v, storages, seen, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a weights-only torch checkpoint")


def _add_record(zf: zipfile.ZipFile, f, name: str, data) -> None:
    """One uncompressed record whose payload starts at a multiple of ``RECORD_ALIGNMENT`` (padding extra field)."""
    info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = _ZIP_EXTERNAL_ATTR
    size = len(data)
    header = _ZIP_LOCAL_HEADER + len(info.filename.encode("ascii")) + 4  # + the padding field's own header
    if size * 1.05 > zipfile.ZIP64_LIMIT:  # zipfile's rule for adding its zip64 extra field
        header += _ZIP64_EXTRA
    pad = -(f.tell() + header) % RECORD_ALIGNMENT
    info.extra = struct.pack("<HH", _PAD_EXTRA_ID, pad) + b"Z" * pad
    zf.writestr(info, data)
    if (f.tell() - size) % RECORD_ALIGNMENT:
        raise AssertionError(f"record {name} is not aligned")  # zipfile changed its header layout


def write_torch(file, obj) -> None:
    """Write ``obj`` (nested dict/list/tuple of str, int, float, bool, None and numpy arrays) to the seekable
    binary ``file`` in torch's zip format. Arrays become C-contiguous tensors of their dtype (float16/32/64,
    int8/16/32/64, uint8, bool); ``TypeError`` for anything else."""
    storages: list[_Storage] = []
    prepared = _prepare(obj, storages, {})
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=PICKLE_PROTOCOL).dump(prepared)
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as zf:
        _add_record(zf, file, "data.pkl", buf.getvalue())
        _add_record(zf, file, "byteorder", b"little")
        for storage in storages:
            _add_record(zf, file, f"data/{storage.key}", storage.payload())
        _add_record(zf, file, "version", FILE_FORMAT_VERSION)


def save_torch(path: str | os.PathLike, obj) -> None:
    """:func:`write_torch` to ``path`` atomically (nothing is left behind on failure). A full device is a
    ``DiskFullError``, any other write failure an ``OutputError`` (one line)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write_torch(f, obj)

    try:
        atomic_write(path, write)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(f"{path}: no space left on the device; nothing was written") from None
        raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None


# -- RVC's voice checkpoint -------------------------------------------------------------------------------------

VOICE_RULES = RULES + HIFIGAN_RULES  # RVC's networks (Applio's other vocoders have no RVC-format file)
DTYPES = ("float16", "float32")
# The two config entries the inference model does not use: the posterior encoder's input width (n_fft/2 + 1 of
# RVC's training config per rate) and RVC's training segment, which savee writes as a literal 32.
SPEC_CHANNELS = {rate: n_fft // 2 + 1 for rate, (n_fft, _, _) in RATE_TABLE.items()}
SEGMENT_SIZE = 32
# What RVC's configs give every voice (used when a named config leaves a field out).
RVC_DEFAULTS = {
    "inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
    "kernel_size": 3, "p_dropout": 0, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5]] * 3, "upsample_initial_channel": 512, "gin_channels": 256,
}
FLOAT16_MAX = float(np.finfo(np.float16).max)
DEFAULT_EMBEDDER = "contentvec"
_WN_SUFFIXES = (".weight_g", ".weight_v")
_DROPPED = [re.compile(p) for p in DROP]


def _is_weight_normed(module: str) -> bool:
    """Modules rvc wraps in weight_norm (the training networks' table, :data:`nets.WEIGHT_NORMED`)."""
    return is_weight_normed(module + ".weight")


def _to_torch_layout(array: np.ndarray, layout: str, key: str) -> np.ndarray:
    """Undo ``LAYOUTS[layout]``: the permutation is read off the converter's own function on a probe array with
    distinct axis sizes, so this is its exact inverse."""
    probe = np.empty(tuple(range(2, 2 + array.ndim)), dtype=np.uint8)
    try:
        perm = [n - 2 for n in LAYOUTS[layout](probe).shape]
    except ValueError:
        raise ConversionError(f"{key}: shape {array.shape} is not an MLX-layout {layout} weight") from None
    if sorted(perm) != list(range(array.ndim)):  # e.g. a layout that also drops an axis: not invertible here
        raise ConversionError(f"{key}: layout {layout} is not an axis permutation; cannot write it for RVC")
    return np.ascontiguousarray(array.transpose(np.argsort(perm)))


def _reparametrise(w: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(g, v)`` of torch's ``weight_norm`` (dim 0) with ``g * v / ||v|| == w``: ``v = w`` as stored, ``g`` its
    norm over every axis but 0 computed from the stored ``v`` (so only g's own rounding remains). A zero slice
    gets ``v = 1, g = 0`` (torch would divide 0 by 0)."""
    v = w.astype(dtype)
    axes = tuple(range(1, v.ndim))
    norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=axes, keepdims=True))
    zero = (norm == 0).reshape(-1)
    if zero.any():
        v = v.copy()
        v[zero] = 1
    return norm.astype(dtype), v


def _check_finite(key: str, array: np.ndarray, dtype: str) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    if not np.isfinite(array).all():
        raise ConversionError(f"{key}: weights contain NaN or Inf (did training diverge?)")
    if dtype == "float16" and array.size and float(np.abs(array).max()) > FLOAT16_MAX:
        raise ConversionError(f"{key}: values beyond the float16 range; export with dtype float32")


def rvc_state_dict(weights: dict[str, np.ndarray], dtype: str = "float16") -> dict[str, np.ndarray]:
    """RVC's inference state dict (torch layout, ``dtype``) from a voice's parameters in MLX layout.

    ``weights``: the names of :func:`rvc_mlx.convert.rvc.convert_voice`'s output (numpy or MLX arrays, as
    ``rvc_mlx.train.nets.training_params`` gives them). A weight-normed module (see
    ``WEIGHT_NORMED``) may come fused (``<m>.weight``: written as an exact re-parametrisation) or as the
    trainer's pair ``<m>.weight_v`` (MLX layout, like the weight) + ``<m>.weight_g`` (one magnitude per channel
    of torch's weight-norm dim 0 -- a conv's output channels, a transposed conv's input channels -- in any shape
    of that size, e.g. ``(O, 1, 1)``, ``(1, 1, I)`` or ``(n,)``), written as given. ``enc_q.*`` is dropped as
    RVC's export drops it; any other unknown name is a ``ConversionError``.
    """
    if dtype not in DTYPES:
        raise InputError(f"cannot write RVC weights as {dtype!r} (choose from {', '.join(DTYPES)})")
    out: dict[str, np.ndarray] = {}
    unknown = []
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        key = str(key)
        if any(p.fullmatch(key) for p in _DROPPED):
            continue
        array = np.asarray(value)
        _check_finite(key, array, dtype)
        if key.endswith(_WN_SUFFIXES):
            pairs.setdefault(key[: -len(".weight_g")], {})[key[-1]] = array
            continue
        layout = layout_of(key, VOICE_RULES)
        if layout is None:
            unknown.append(key)
            continue
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        if module is not None and layout != "keep" and _is_weight_normed(module):
            if module in pairs:
                raise ConversionError(f"{module}: has both a fused weight and weight_g/weight_v")
            g, v = _reparametrise(_to_torch_layout(array, layout, key), dtype)
            out[module + ".weight_g"], out[module + ".weight_v"] = g, v
            continue
        torch_array = _to_torch_layout(array, layout, key) if layout != "keep" else array
        out[key] = torch_array.astype(dtype) if np.issubdtype(array.dtype, np.floating) else torch_array
    for module, pair in pairs.items():
        layout = layout_of(module + ".weight", VOICE_RULES)
        if layout is None or layout == "keep" or not _is_weight_normed(module):
            unknown.extend(module + s for s in _WN_SUFFIXES if s[-1] in pair)
            continue
        if set(pair) != {"g", "v"}:
            missing = "weight_v" if "v" not in pair else "weight_g"
            raise ConversionError(f"{module}: weight norm pair lacks {module}.{missing}")
        if module + ".weight" in weights:
            raise ConversionError(f"{module}: has both a fused weight and weight_g/weight_v")
        v = _to_torch_layout(pair["v"], layout, module + ".weight_v")
        if pair["g"].size != v.shape[0]:
            raise ConversionError(
                f"{module}: weight_g has {pair['g'].size} values, the weight-norm axis of weight_v {v.shape} has "
                f"{v.shape[0]}")
        out[module + ".weight_g"] = pair["g"].reshape(v.shape[0], *[1] * (v.ndim - 1)).astype(dtype)
        out[module + ".weight_v"] = v.astype(dtype)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensor(s) are not part of an RVC voice: {', '.join(sorted(unknown)[:8])}"
            + (" ..." if len(unknown) > 8 else ""))
    return dict(sorted(out.items(), key=lambda kv: _state_order(kv[0])))


_MODULE_ORDER = ("enc_p.", "dec.", "flow.", "emb_g.")  # the order RVC's synthesizers register their parts


def _state_order(key: str):
    group = next((i for i, p in enumerate(_MODULE_ORDER) if key.startswith(p)), len(_MODULE_ORDER))
    return group, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _sample_rate_name(rate: int) -> str:
    names = {v: k for k, v in SAMPLE_RATE_NAMES.items()}
    if rate not in names:
        raise ConversionError(f"RVC voices are 32k, 40k or 48k; this voice is {rate} Hz")
    return names[rate]


def rvc_config_list(config: dict, n_speakers: int) -> list:
    """RVC's positional 18-item ``config`` (order of ``rvc_mlx.convert.rvc.CONFIG_FIELDS``) from rvc-mlx's
    named voice config. ``spk_embed_dim`` is ``n_speakers`` (the rows of ``emb_g.weight``, which RVC writes
    there and reads back)."""
    c = {**RVC_DEFAULTS, **config}
    missing = [k for k in ("sample_rate", "upsample_rates", "upsample_kernel_sizes") if k not in config]
    if missing:
        raise ConversionError(f"voice config lacks {', '.join(missing)}")
    rate = int(c["sample_rate"])
    _sample_rate_name(rate)
    return [
        int(c.get("spec_channels", SPEC_CHANNELS[rate])),
        int(c.get("segment_size", SEGMENT_SIZE)),
        int(c["inter_channels"]),
        int(c["hidden_channels"]),
        int(c["filter_channels"]),
        int(c["n_heads"]),
        int(c["n_layers"]),
        int(c["kernel_size"]),
        c["p_dropout"],
        str(c["resblock"]),
        [int(k) for k in c["resblock_kernel_sizes"]],
        [[int(d) for d in ds] for ds in c["resblock_dilation_sizes"]],
        [int(u) for u in c["upsample_rates"]],
        int(c["upsample_initial_channel"]),
        [int(k) for k in c["upsample_kernel_sizes"]],
        int(n_speakers),
        int(c["gin_channels"]),
        rate,
    ]


# Named-config fields the written checkpoint must give back when our converter reads it.
_ROUND_TRIP_FIELDS = (
    "version", "sample_rate", "use_f0", "feature_dim", "n_speakers", "inter_channels", "hidden_channels",
    "filter_channels", "n_heads", "n_layers", "kernel_size", "resblock_kernel_sizes", "resblock_dilation_sizes",
    "upsample_rates", "upsample_initial_channel", "upsample_kernel_sizes", "gin_channels",
)


def _check_shapes(weights: dict[str, np.ndarray], config: dict) -> None:
    """Names and shapes against rvc-mlx's own synthesizer for ``config`` (weight-norm pairs by their v)."""
    from mlx.utils import tree_flatten

    from ..models.synthesizer import Synthesizer, SynthesizerConfig

    model = Synthesizer(SynthesizerConfig.from_dict(config))  # parameters stay lazy: only their shapes are read
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    given = {}
    for key, value in weights.items():
        if any(p.fullmatch(key) for p in _DROPPED) or key.endswith(".weight_g"):
            continue
        given[key[: -len("_v")] if key.endswith(".weight_v") else key] = tuple(np.shape(value))
    missing = sorted(set(expected) - set(given))
    wrong = sorted(f"{k} {given[k]} != {expected[k]}" for k in set(expected) & set(given) if given[k] != expected[k])
    problems = ([f"missing {len(missing)}: {', '.join(missing[:8])}"] if missing else []) + (
        [f"wrong shape {len(wrong)}: {', '.join(wrong[:8])}"] if wrong else [])
    if problems:
        raise ConversionError(f"weights do not fit the voice config ({'; '.join(problems)})")


def rvc_checkpoint(weights: dict[str, np.ndarray], config: dict, info: str | None = None,
                   dtype: str = "float16") -> dict:
    """The dict RVC's ``savee`` writes, from MLX-layout ``weights`` (see :func:`rvc_state_dict`) and rvc-mlx's
    named voice ``config`` (``version``, ``sample_rate``, ``use_f0``, ``upsample_rates``,
    ``upsample_kernel_sizes``; other fields default to RVC's). ``info`` defaults to the config's.

    The result is checked by reading it back with rvc-mlx's converter: names, shapes and every config field
    must agree, else ``ConversionError``. A non-default embedder is kept as Applio's ``embedder_model``.
    """
    vocoder = config.get("vocoder", "HiFi-GAN")
    if vocoder != "HiFi-GAN":
        raise ConversionError(f"RVC-format files hold HiFi-GAN voices; this voice's vocoder is {vocoder} (Applio's)")
    version = config.get("version")
    if version not in FEATURE_DIMS:
        raise ConversionError(f"voice config version {version!r} is not v1 or v2")
    if "sample_rate" not in config:
        raise ConversionError("voice config lacks sample_rate")
    _sample_rate_name(int(config["sample_rate"]))
    if "emb_g.weight" not in weights:
        raise ConversionError("weights lack emb_g.weight; not a voice")
    n_speakers = int(np.shape(weights["emb_g.weight"])[0])
    if int(config.get("n_speakers", n_speakers)) != n_speakers:
        raise ConversionError(f"config says {config['n_speakers']} speakers, emb_g.weight has {n_speakers} rows")
    full = {**config, "n_speakers": n_speakers}
    full.setdefault("feature_dim", FEATURE_DIMS[version])
    full.setdefault("use_f0", "enc_p.emb_pitch.weight" in weights)
    _check_shapes(weights, full)
    ckpt = {
        "weight": rvc_state_dict(weights, dtype),
        "config": rvc_config_list(full, n_speakers),
        "info": str(config.get("info", "") if info is None else info),
        "sr": _sample_rate_name(int(full["sample_rate"])),
        "f0": int(bool(full["use_f0"])),
        "version": version,
    }
    embedder = config.get("embedder", DEFAULT_EMBEDDER)
    if embedder != DEFAULT_EMBEDDER:
        ckpt["embedder_model"] = str(embedder)
    _, back = convert_voice(ckpt, "the RVC checkpoint read back")
    differ = [k for k in _ROUND_TRIP_FIELDS if k in full and back[k] != full[k]]
    if differ:
        raise ConversionError(
            "voice config disagrees with its weights: " + ", ".join(f"{k} {full[k]!r} vs {back[k]!r}" for k in differ))
    return ckpt


def save_rvc_pth(path: str | os.PathLike, weights: dict[str, np.ndarray], config: dict, info: str | None = None,
                 dtype: str = "float16") -> None:
    """Write the voice as an RVC-format ``.pth`` (see :func:`rvc_checkpoint`) atomically, without torch."""
    save_torch(path, rvc_checkpoint(weights, config, info, dtype))


def export_voice(voice: str | os.PathLike, out: str | os.PathLike, info: str | None = None,
                 dtype: str = "float16") -> dict:
    """A converted rvc-mlx voice (``.safetensors``) back to an RVC-format ``.pth`` that RVC, Applio and rvc-mlx
    load. Returns the written checkpoint's metadata (everything but ``weight``)."""
    from ..store import load_numpy

    voice = Path(voice)
    weights, config = load_numpy(voice)
    if config.get("kind") != "voice":
        raise FormatError(f"{voice}: is a {config.get('kind')} model, not a voice")
    try:
        ckpt = rvc_checkpoint(weights, config, info, dtype)
    except ConversionError as e:
        raise ConversionError(f"{voice}: {e}") from None
    save_torch(out, ckpt)
    return {k: v for k, v in ckpt.items() if k != "weight"}


__all__ = [
    "save_torch", "write_torch", "rvc_state_dict", "rvc_config_list", "rvc_checkpoint", "save_rvc_pth",
    "export_voice", "STORAGE_TYPES",
]
