"""Feature retrieval: blend content features toward their nearest neighbours in the voice's training set.

RVC stores the training features in a faiss ``.index``. For every 50 fps feature frame we take the k = 8 nearest
stored vectors, weight them by (1 / distance)^2 normalised per frame, and mix the weighted mean in with
``index_rate``.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from .errors import InputError

TOP_K = 8
MIN_DISTANCE = 1e-10  # guards exact matches (distance 0), where RVC itself would produce NaN
LOAD_COPIES = 2  # an index's mapped file and faiss's copy of it are both in memory while it loads
MAX_DIM = 65536  # feature dimensions: RVC's are 256 / 768
_FLAT = {b"IxF2": 1, b"IxFI": 0}  # flat L2 / inner product: fourcc -> faiss metric type
_IVF_FLAT = b"IwFl"
_MAX_NESTING = 4


class _Corrupt(Exception):
    pass


class _IndexReader:
    """Walks a faiss ``.index`` byte by byte, checking every count against the bytes that are there.

    faiss trusts its file: a header may ask it to allocate terabytes, or to read past the data. This reader
    accepts the layouts RVC writes (``IndexFlatL2``/``IndexFlatIP``, ``IndexIVFFlat`` over a flat quantizer with
    array inverted lists) only when the file is exactly that structure, so faiss is handed nothing it can
    misread; the largest allocation faiss then makes is bounded by the file's own size."""

    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes, without copying them (a 3 GB vector block is only stepped over)."""
        if n < 0 or self.pos + n > len(self.data):
            raise _Corrupt("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def count(self, item: int) -> int:
        """A size_t element count whose elements (``item`` bytes each) must fit in the rest of the file."""
        n = self.u64()
        if n * item > len(self.data) - self.pos:
            raise _Corrupt(f"a count of {n} is larger than the file")
        return n

    def header(self, depth: int) -> tuple[bytes, int, int]:
        fourcc = bytes(self.take(4))
        if fourcc not in _FLAT and fourcc != _IVF_FLAT:
            raise _Corrupt(f"unsupported index type {fourcc!r} (rvc-mlx reads flat and IVF-flat indexes)")
        d, ntotal, _, _, trained, metric = struct.unpack("<iqqqBi", self.take(33))
        if not 0 < d <= MAX_DIM:
            raise _Corrupt(f"dimension {d}")
        if ntotal < 0 or ntotal * d * 4 > len(self.data):
            raise _Corrupt(f"{ntotal} vectors do not fit in the file")
        if trained != 1 or metric not in (0, 1):  # an untrained index cannot be searched (faiss raises)
            raise _Corrupt("bad metric or training flag" if trained not in (0, 1) else "index is not trained")
        if fourcc in _FLAT and metric != _FLAT[fourcc]:
            raise _Corrupt("metric disagrees with the index type")
        return fourcc, d, ntotal

    def index(self, depth: int = 0) -> tuple[int, int]:
        if depth > _MAX_NESTING:
            raise _Corrupt("nested too deeply")
        fourcc, d, ntotal = self.header(depth)
        if fourcc in _FLAT:
            if self.count(4) != ntotal * d:
                raise _Corrupt("flat index holds a different number of floats than its header says")
            self.take(ntotal * d * 4)
            return d, ntotal
        nlist, nprobe = self.u64(), self.u64()
        if not 0 < nlist <= max(ntotal, 1) * 4 + 1024:
            raise _Corrupt(f"{nlist} inverted lists")
        if not 0 < nprobe <= nlist:
            raise _Corrupt(f"nprobe {nprobe} with {nlist} inverted lists")
        qd, qn = self.index(depth + 1)
        if qd != d or qn != nlist:
            raise _Corrupt("quantizer does not match the inverted lists")
        direct_map = bytes(self.take(1))
        if direct_map not in (b"\x00", b"\x01"):  # direct map type: none or array (one entry per vector)
            raise _Corrupt("unsupported direct map")
        if self.count(8) != (ntotal if direct_map == b"\x01" else 0):
            raise _Corrupt("direct map size")
        self.take(ntotal * 8 if direct_map == b"\x01" else 0)
        if bytes(self.take(4)) != b"ilar" or self.u64() != nlist or self.u64() != d * 4:
            raise _Corrupt("inverted lists do not match the index")
        kind = bytes(self.take(4))
        if kind == b"full":
            n = self.count(8)
            if n != nlist:
                raise _Corrupt("inverted list sizes")
            sizes = struct.unpack(f"<{n}Q", self.take(8 * n))
        elif kind == b"sprs":
            n = self.count(8)
            if n % 2:
                raise _Corrupt("inverted list sizes")
            pairs = struct.unpack(f"<{n}Q", self.take(8 * n))
            sizes = [0] * nlist
            for i, size in zip(pairs[::2], pairs[1::2]):
                if i >= nlist:
                    raise _Corrupt("inverted list number out of range")
                sizes[i] = size
        else:
            raise _Corrupt("unsupported inverted list layout")
        if sum(sizes) != ntotal or ntotal * (d * 4 + 8) > len(self.data) - self.pos:
            raise _Corrupt("inverted lists hold a different number of vectors than the header says")
        seen = np.zeros(ntotal, dtype=bool)
        for size in sizes:
            self.take(size * d * 4)
            ids = np.frombuffer(self.take(size * 8), dtype="<i8")
            if ids.size and (ids.min() < 0 or ids.max() >= ntotal):  # retrieval indexes the vectors by id
                raise _Corrupt("a vector id is out of range")
            seen[ids] = True
        if not seen.all():  # ids repeat: some vector has none (RVC numbers them 0 .. ntotal - 1)
            raise _Corrupt("vector ids repeat")
        return d, ntotal


def check_index_file(data: bytes, source: str = "index") -> tuple[int, int]:
    """``(dimension, vectors)`` of a faiss index file's bytes after checking its whole structure; ``InputError``
    (one line) when it is not exactly a flat or IVF-flat index (corrupt, truncated, trailing bytes, other type)."""
    reader = _IndexReader(data)
    try:
        d, ntotal = reader.index()
        if reader.pos != len(data):
            raise _Corrupt(f"{len(data) - reader.pos} bytes after the index")
    except (_Corrupt, struct.error) as e:
        raise InputError(f"{source}: not a usable faiss index ({e})") from None
    return d, ntotal


def memory_available() -> int | None:
    """Bytes of memory the system can give without swapping (Linux ``MemAvailable``; elsewhere the free pages);
    None when it does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class _ReadFrom:
    """Hands faiss the checked bytes in blocks: ``faiss.deserialize_index`` would first copy all of them into a
    vector of its own (3 copies of a 3 GB index at once; this way 2: the file's bytes and the index)."""

    BLOCK = 1 << 22

    def __init__(self, data: bytes):
        self.view, self.pos = memoryview(data), 0

    def read(self, n: int) -> bytes:
        chunk = self.view[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk.tobytes()

    def reader(self):
        import faiss

        return faiss.PyCallbackIOReader(self.read, self.BLOCK)


def _map_file(path: Path, size: int):
    """The file's bytes as a read-only memory map (no heap copy: its pages go back when it is unmapped)."""
    if size == 0:
        return b""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _unmap(data) -> None:
    if isinstance(data, mmap.mmap):
        try:
            data.close()
        except BufferError:  # a view is still alive (an error's traceback): unmapped when it is collected
            pass


class FeatureIndex:
    """A faiss index and access to its stored vectors, without a second copy of them: a flat index's own storage
    is viewed (``vectors``: (M, D) float32), an IVF index's rows are fetched by id through a direct map."""

    def __init__(self, index, source: str = "index"):
        import faiss

        self.index, self.source = index, source
        self._flat = None
        if isinstance(index, faiss.IndexFlat):
            self._flat = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        else:  # ids -> list positions, 8 bytes a vector; built here, never taken from the file
            index.make_direct_map(False)
            index.make_direct_map(True)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def vectors(self) -> np.ndarray:
        """All stored vectors (M, D) float32 (a copy for IVF indexes)."""
        if self._flat is not None:
            return self._flat
        return self.index.reconstruct_n(0, self.index.ntotal).astype(np.float32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (any shape of int64 ids) -> ``ids.shape + (D,)``. An id of -1 (faiss found
        fewer than k neighbours) is the last vector, as RVC's ``big_npy[ix]`` reads it."""
        if self._flat is not None:
            return self._flat[ids]
        flat = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        flat = np.where(flat < 0, flat + self.index.ntotal, flat)
        return self.index.reconstruct_batch(flat).reshape(*ids.shape, self.dim)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureIndex":
        import faiss

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: index file not found")
        try:
            size = path.stat().st_size
            available = memory_available()
            if available is not None and LOAD_COPIES * size > available:
                raise InputError(f"{path}: a {size / 1e9:.1f} GB index needs about {LOAD_COPIES * size / 1e9:.1f} GB "
                                 f"of memory to load and {available / 1e9:.1f} GB is available")
            data = _map_file(path, size)
        except OSError as e:
            raise InputError(f"{path}: cannot read index ({e.strerror or e})") from None
        try:
            d, ntotal = check_index_file(data, str(path))
            if ntotal == 0:
                raise InputError(f"{path}: index is empty")
            source = _ReadFrom(data)
            try:  # checked above: faiss reads exactly the structure it wrote, from the mapped file
                index = faiss.read_index(source.reader())
            except RuntimeError as e:
                raise InputError(f"{path}: not a usable faiss index ({str(e).splitlines()[0][:120]})") from None
            finally:
                source.view.release()
        finally:
            _unmap(data)
        loaded = cls(index, str(path))
        if index.d != d or index.ntotal != ntotal:
            raise InputError(f"{path}: not a usable faiss index (faiss read a different shape)")
        return loaded

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, source: str = "vectors") -> "FeatureIndex":
        """An exact (flat L2) index over ``vectors`` (M, D); used for exported bundles that carry a plain matrix."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = faiss.IndexFlatL2(vectors.shape[1])
        index.add(vectors)
        return cls(index, source)

    def check_dim(self, feature_dim: int) -> None:
        if self.dim != feature_dim:
            raise InputError(
                f"{self.source}: index has {self.dim}-d features but the voice model uses {feature_dim}-d "
                f"(a {'v1' if self.dim == 256 else 'v2'} index with a {'v1' if feature_dim == 256 else 'v2'} model?)"
            )

    def blend(self, feats: np.ndarray, index_rate: float, k: int = TOP_K) -> np.ndarray:
        """``index_rate * retrieved + (1 - index_rate) * feats`` for feats (T, D) float32 at 50 fps."""
        import faiss

        # faiss's OpenMP threads would call into the OpenBLAS preloaded for MLX (a pthreads build), which
        # OpenBLAS warns may hang; the search is small, so run it on one thread.
        faiss.omp_set_num_threads(1)
        self.check_dim(feats.shape[1])
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        k = min(k, self.index.ntotal)
        dist, ids = self.index.search(feats, k)
        # An exact match has distance 0; RVC divides by it too (giving inf/nan). Keep the math finite instead.
        weight = np.square(1.0 / np.maximum(dist, MIN_DISTANCE))
        weight /= weight.sum(axis=1, keepdims=True)
        retrieved = np.sum(self.rows(ids) * weight[:, :, None], axis=1)
        return (index_rate * retrieved + (1.0 - index_rate) * feats).astype(np.float32)
