"""Feature retrieval: blend content features toward their nearest neighbours in the voice's training set.

RVC stores the training features in a faiss ``.index``. For every 50 fps feature frame we take the k = 8 nearest
stored vectors, weight them by (1 / distance)^2 normalised per frame, and mix the weighted mean in with
``index_rate``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError

TOP_K = 8
MIN_DISTANCE = 1e-10  # guards exact matches (distance 0), where RVC itself would produce NaN


class FeatureIndex:
    """A faiss index plus its stored vectors (``vectors``: (M, D) float32)."""

    def __init__(self, index, vectors: np.ndarray, source: str = "index"):
        self.index, self.vectors, self.source = index, vectors, source

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureIndex":
        import faiss

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: index file not found")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise InputError(f"{path}: not a faiss index (corrupt or wrong file)") from None
        if index.ntotal == 0:
            raise InputError(f"{path}: index is empty")
        vectors = index.reconstruct_n(0, index.ntotal).astype(np.float32)
        return cls(index, vectors, str(path))

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, source: str = "vectors") -> "FeatureIndex":
        """An exact (flat L2) index over ``vectors`` (M, D); used for exported bundles that carry a plain matrix."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = faiss.IndexFlatL2(vectors.shape[1])
        index.add(vectors)
        return cls(index, vectors, source)

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
        retrieved = np.sum(self.vectors[ids] * weight[:, :, None], axis=1)
        return (index_rate * retrieved + (1.0 - index_rate) * feats).astype(np.float32)
