"""Safe, torch-free reader for PyTorch checkpoints (``.pth`` / ``.pt`` / ``pytorch_model.bin``).

A torch checkpoint is a pickle, and a pickle can call any importable function. This reader never lets it:
the unpickler resolves globals only from a small allowlist (tensor rebuild functions, storage and dtype names,
plain containers), refuses modules that can run code (``os``, ``subprocess``, ``builtins.eval`` ...), and turns
every other class (``argparse.Namespace``, omegaconf nodes in fairseq checkpoints, ...) into an inert
:class:`Placeholder` that only records its arguments and state.

Supported containers:

* the zip format of ``torch.save`` (torch >= 1.6): ``<prefix>/data.pkl`` + ``<prefix>/data/<key>`` storages;
* the legacy format (torch < 1.6): magic number, protocol, sys info, object pickle, storage keys, raw storages.

Tensors come back as numpy arrays (strided/offset views and shared storages honoured). float16 is kept unless
``upcast_half=True``; bfloat16 (not a numpy dtype) is always widened to float32.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray

# torch storage class / dtype name -> (numpy dtype of the raw bytes, is bfloat16)
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}
_TORCH_DTYPES = {
    "float64": "float64",
    "double": "float64",
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}
# Modules whose globals can execute code or touch the system: a model file never needs them.
_FORBIDDEN_MODULES = (
    "os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "importlib", "runpy", "code", "codeops",
    "ctypes", "pickle", "_pickle", "marshal", "types", "builtins", "__builtin__", "io", "_io", "pty", "signal",
    "multiprocessing", "threading", "asyncio", "webbrowser", "http", "urllib", "requests", "operator",
    "functools", "inspect", "pdb", "platform", "tempfile", "pathlib", "glob", "commands", "popen2", "timeit",
    "torch._C", "torch.hub", "torch.jit", "torch.ops", "torch.serialization", "torch.utils", "numpy.testing",
    "numpy.f2py", "numpy.lib", "numpy.ctypeslib", "numpy.distutils",
)
# Harmless builtins that appear as class references (omegaconf metadata stores e.g. ``builtins.dict``).
_SAFE_BUILTINS = {
    "dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "int": int, "float": float,
    "str": str, "bytes": bytes, "bytearray": bytearray, "bool": bool, "complex": complex, "slice": slice,
    "range": range, "object": object, "NoneType": type(None),
    # protocol-2 pickles spell builtins.int/str by their Python 2 names (fairseq cfg: omegaconf ListConfig key_type)
    "long": int, "unicode": str,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class Placeholder:
    """An inert stand-in for a class the checkpoint names but we do not trust or need.

    ``name`` is ``"module.qualname"``; ``args`` are the constructor arguments; ``state`` is what the pickle set
    with BUILD. Nothing of the original class is imported or run.
    """

    def __init__(self, name: str, args: tuple = (), state: Any = None):
        self.name, self.args, self.state = name, args, state

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.name} (inert placeholder)>"


def _placeholder_class(name: str):
    """A fresh Placeholder subclass for one global, so REDUCE/NEWOBJ/BUILD all produce inert records."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        Placeholder.__init__(obj, name, args)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    return type("Placeholder", (Placeholder,), {"__new__": __new__, "__init__": __init__, "qualname": name})


class _StorageType:
    def __init__(self, dtype: str):
        self.dtype = dtype


class _Dtype:
    def __init__(self, name: str):
        self.dtype = name


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


class _Storage:
    """Raw bytes of one torch storage, typed lazily (a storage may be viewed with several dtypes)."""

    def __init__(self, data: bytes | memoryview, dtype: str, big_endian: bool = False):
        self.data, self.dtype, self.big_endian = data, dtype, big_endian

    def array(self, dtype: str | None = None) -> np.ndarray:
        dtype = dtype or self.dtype
        raw_dtype = np.dtype("uint16" if dtype == "bfloat16" else dtype)
        if self.big_endian:
            raw_dtype = raw_dtype.newbyteorder(">")
        n = len(self.data) // raw_dtype.itemsize
        arr = np.frombuffer(self.data, dtype=raw_dtype, count=n)
        if self.big_endian:
            arr = arr.astype(raw_dtype.newbyteorder("="))
        return _bf16_to_f32(arr) if dtype == "bfloat16" else arr


def _rebuild_tensor(storage, offset, size, stride, *rest, upcast_half=False, dtype=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor refers to something that is not a storage")
    flat = storage.array(dtype)
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(offset)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise CheckpointError("tensor has an invalid shape or stride")
    if 0 in size:
        arr = np.zeros(size, dtype=flat.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise CheckpointError("tensor reaches past the end of its storage (truncated or corrupt file)")
        item = flat.itemsize
        arr = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
        ).copy()
    if upcast_half and arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return arr


_MEMO_OPS = ("BINPUT", "LONG_BINPUT", "PUT", "BINGET", "LONG_BINGET", "GET")


def _prescan(file, size: int) -> None:
    """Walk one pickle's opcodes (pure Python, nothing built) before the C unpickler runs it.

    The C unpickler trusts two kinds of numbers: a bytes/str length (it allocates that many bytes before
    reading them) and a memo index (it grows the memo to that index). A pickle of ``size`` bytes can hold at most
    ``size`` of anything, so a larger length is a truncated or damaged file (``pickletools`` finds that out by
    reading what is there) and a larger memo index is damage too."""
    start = file.tell()
    for op, arg, _ in pickletools.genops(file):
        if op.name in _MEMO_OPS and isinstance(arg, int) and not 0 <= arg <= size:
            raise CheckpointError(f"pickle memo index {arg} is out of range (corrupt file)")
    file.seek(start)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages, upcast_half: bool, lazy: bool = False):
        _prescan(file, len(file.getbuffer()))
        super().__init__(file)
        self._storages = storages  # callable(pid tuple) -> _Storage
        self._upcast = upcast_half
        self._lazy = lazy  # legacy files: storages come after the pickle, so defer rebuilding tensors

    def _tensor(self, *args, dtype=None):
        if self._lazy:
            return _LazyTensor(args)
        return _rebuild_tensor(*args, upcast_half=self._upcast, dtype=dtype)

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._tensor
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            # (storage, offset, size, stride, requires_grad, hooks, dtype, metadata)
            return lambda s, o, sz, st, rg, h, dt, *rest: self._tensor(
                s, o, sz, st, dtype=dt.dtype if isinstance(dt, _Dtype) else None
            )
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *rest: data
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _Dtype(_TORCH_DTYPES[name])
        if module == "torch" and name == "Size":
            return tuple
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_np_multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":  # protocol-2 pickles spell bytes as encode(str, "latin1")
            return _latin1_bytes
        if module == "torch" and name == "device":
            return str
        root = module.split(".")[0]
        if any(module == m or module.startswith(m + ".") for m in _FORBIDDEN_MODULES) or root in (
            "os", "subprocess", "sys", "builtins", "posix", "nt",
        ):
            raise CheckpointError(
                f"refuses to load: the file asks to call {full}, which a model file never needs (possibly malicious)"
            )
        return _placeholder_class(full)

    def persistent_load(self, pid):
        return self._storages(pid)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"unexpected byte encoding {encoding!r} in pickle")
    return text.encode("latin1")


def _read_zip(path: Path, upcast_half: bool):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{path}: zip file is not a torch checkpoint (no data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            big_endian = zf.read(prefix + "byteorder").strip() == b"big"
        cache: dict[str, _Storage] = {}

        def storage(pid):
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                raise CheckpointError("unknown persistent id in pickle")
            stype, key = pid[1], str(pid[2])
            if not isinstance(stype, _StorageType):
                raise CheckpointError("storage of an unknown type")
            if key not in cache:
                try:
                    data = zf.read(f"{prefix}data/{key}")
                except KeyError:
                    raise CheckpointError(f"storage {key} is missing (truncated file?)") from None
                cache[key] = _Storage(data, stype.dtype, big_endian)
            st = cache[key]
            # typed view of a storage first seen with another dtype
            return st if st.dtype == stype.dtype else _Storage(st.data, stype.dtype, big_endian)

        return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storage, upcast_half).load()


class _LazyTensor:
    """A tensor of a legacy checkpoint, rebuilt once the raw storages (stored after the pickle) are read."""

    def __init__(self, args):
        self.args = args


def _resolve(obj, build):
    """Replace every _LazyTensor inside plain containers (and placeholder args/state) using ``build``."""
    if isinstance(obj, _LazyTensor):
        return build(obj)
    if isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _resolve(obj[k], build)
        return obj
    if isinstance(obj, list):
        obj[:] = [_resolve(v, build) for v in obj]
        return obj
    if isinstance(obj, tuple):
        return type(obj)(_resolve(v, build) for v in obj) if type(obj) is tuple else obj
    if isinstance(obj, Placeholder):
        obj.args = _resolve(obj.args, build)
        obj.state = _resolve(obj.state, build)
    return obj


def _read_legacy(path: Path, upcast_half: bool):
    # From memory, not the file: a length field set huge in a pickle opcode makes the unpickler ask for that many
    # bytes, which a file object allocates before reading (a BytesIO returns what is there).
    raw = path.read_bytes()
    size = len(raw)
    with io.BytesIO(raw) as f:
        def plain():
            return _RestrictedUnpickler(f, lambda pid: None, upcast_half).load()

        if plain() != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a torch checkpoint (unrecognised pickle)")
        if plain() != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy torch checkpoint protocol")
        plain()  # sys_info
        dtypes: dict[str, str] = {}

        def storage(pid):
            # ('storage', type, root_key, location, numel[, (view_key, offset, view_numel)])
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                    and isinstance(pid[1], _StorageType)):
                raise CheckpointError("unknown persistent id in pickle")
            dtypes.setdefault(str(pid[2]), pid[1].dtype)
            return ("ref", str(pid[2]), pid[1].dtype, pid[5] if len(pid) > 5 else None)

        obj = _RestrictedUnpickler(f, storage, upcast_half, lazy=True).load()
        roots: dict[str, bytes] = {}
        for key in plain():
            key = str(key)
            (n,) = struct.unpack("<q", f.read(8))
            dtype = dtypes.get(key, "uint8")
            nbytes = n * np.dtype("uint16" if dtype == "bfloat16" else dtype).itemsize
            if not 0 <= nbytes <= size - f.tell():  # a size field set huge must not make us allocate it
                raise CheckpointError(f"storage {key} claims {n} elements, more than the file holds (corrupt file)")
            roots[key] = f.read(nbytes)
            if len(roots[key]) != nbytes:
                raise CheckpointError("truncated storage data")

    def build(lazy: _LazyTensor):
        ref, *rest = lazy.args
        _, key, dtype, view = ref
        if key not in roots:
            raise CheckpointError("pickle refers to a storage that is not in the file")
        data = roots[key]
        if view:
            item = np.dtype("uint16" if dtype == "bfloat16" else dtype).itemsize
            data = data[int(view[1]) * item:(int(view[1]) + int(view[2])) * item]
        return _rebuild_tensor(_Storage(data, dtype), *rest, upcast_half=upcast_half)

    return _resolve(obj, build)


_LOAD_ERRORS = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
    struct.error, zipfile.BadZipFile, zipfile.LargeZipFile, UnicodeDecodeError, OverflowError, MemoryError,
    RecursionError, NotImplementedError, zlib.error,
    RuntimeError,  # zipfile: an encrypted member ("password required for extraction")
)


def load_checkpoint(path: str | os.PathLike, upcast_half: bool = False) -> Any:
    """Read a torch checkpoint without torch and without running code from it.

    Returns the pickled object with every tensor as a numpy array (dicts, lists, tuples, OrderedDicts kept;
    unknown classes as :class:`Placeholder`). Raises ``CheckpointError`` (one line) for anything unreadable
    or unsafe.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .pth/.pt file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK":
            return _read_zip(path, upcast_half)
        if head[:1] == b"\x80":
            return _read_legacy(path, upcast_half)
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a zip nor a pickle)")
    except CheckpointError as e:
        msg = " ".join(str(e).split())
        raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except _LOAD_ERRORS as e:
        detail = " ".join(str(e).split())  # one line: a damaged pickle's text may hold newlines
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {detail})"[:300]) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None


def state_dict_arrays(obj: Any) -> dict[str, np.ndarray]:
    """The ``{name: array}`` items of a (possibly nested) state dict, for converters that want only tensors."""
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
