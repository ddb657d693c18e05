"""Training step 3: RVC's IVF retrieval index over the voice's training features.

RVC WebUI's ``train_index`` recipe, over ``EXP/3_feature256`` (v1) or ``EXP/3_feature768`` (v2)::

    *.npy (sorted by name) ─ concatenate ─▶ (N, D) float32 ─ shuffle rows ─┬─ N ≤ 200 000: as they are
                                                                          └─ N > 200 000: 10 000 k-means centroids
    ─▶ faiss "IVF{n_ivf},Flat", n_ivf = min(int(16·sqrt(N)), N // 39), nprobe 1 ─ train ─ add in batches of 8192
    ─▶ EXP/added_IVF{n_ivf}_Flat_nprobe_1_{name}_{version}.index   (what RVC, Applio and rvc-mlx load)

Choices (RVC's behaviour where it has one):

- The shuffle is RVC's ``np.random.shuffle`` of ``arange(N)``, drawn from ``np.random.RandomState(seed)``: the
  same permutation RVC makes after ``np.random.seed(seed)``, and the same index on every run with one seed.
- K-means: RVC uses sklearn's ``MiniBatchKMeans(init="random")``; sklearn is not a runtime dependency, so
  :func:`kmeans_centroids` is our own mini-batch k-means in numpy, the same method (measured at batch 512: inertia
  0.98-1.01x sklearn's on the same data, tests/test_train_index.py). The batch is fixed at 512 rows (RVC: 256 per
  CPU), so every machine builds the same index; at batch 2048 sklearn's inertia was 17 % lower than ours on one
  case, so the batch where the two agree is the one used. faiss's Lloyd k-means (``faiss.Kmeans``) was tried
  too: ~3 % lower inertia on one case, but every iteration passes over all N rows (at RVC's size, ≥ 200 000 × 768
  rows and 10 000 centroids, ~3·10¹² multiply-adds per iteration), several times the work of the mini-batch run.
- Only the ``added_`` index is written. RVC also writes ``trained_...index`` (the same IVF index with no vectors:
  no use for inference, and an easy wrong pick) and ``total_fea.npy`` (the matrix the index holds, N × D float32,
  which RVC's own inference no longer reads): ``save_total=True`` writes that too. An older ``added_`` index of the
  same name and version (another ``n_ivf``, from fewer or more features) is removed once the new one is in place.
- faiss runs on one OpenMP thread here: its threads calling the pthreads OpenBLAS preloaded for MLX may hang
  (see ``rvc_mlx.retrieval``); the BLAS's own threads still parallelise the distance products.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import FormatError, InputError
from .features import FEATURE_DIMS, FEATURE_DIRS, NPY_SUFFIX, Progress, save_npy, step_files, write_output

KMEANS_THRESHOLD = 200_000  # RVC: more feature rows than this are reduced to k-means centroids
KMEANS_CENTROIDS = 10_000
KMEANS_BATCH = 512  # rows per mini-batch: RVC's 256 per CPU on 2 CPUs, fixed so every machine builds the same index
KMEANS_MAX_EPOCHS = 100  # passes over the data at most (sklearn's max_iter)
KMEANS_PATIENCE = 10  # steps without improvement of the smoothed inertia before stopping (max_no_improvement)
REASSIGN_RATIO = 0.01  # centres given fewer rows than this fraction of the busiest one restart
REASSIGN_EVERY = 10  # ... checked after every REASSIGN_EVERY·k rows (and while any centre is empty)
IVF_LISTS_PER_ROOT = 16  # n_ivf = min(int(16·sqrt(N)), N // 39)
MIN_POINTS_PER_LIST = 39  # faiss's own minimum training points per inverted list
NPROBE = 1
ADD_BATCH = 8192
TOTAL_FEATURES = "total_fea.npy"
INDEX_PREFIX = "added_"


def index_name(n_ivf: int, name: str, version: str) -> str:
    """RVC's file name of the added index."""
    return f"{INDEX_PREFIX}IVF{n_ivf}_Flat_nprobe_{NPROBE}_{name}_{version}.index"


def n_ivf_for(n_rows: int) -> int:
    """RVC's number of inverted lists for ``n_rows`` training vectors."""
    return min(int(IVF_LISTS_PER_ROOT * np.sqrt(n_rows)), n_rows // MIN_POINTS_PER_LIST)


def feature_files(exp_dir: str | os.PathLike, version: str) -> list[Path]:
    """The version's feature files (``*.npy``, hidden temporaries excluded), sorted by name as RVC lists them."""
    if version not in FEATURE_DIRS:
        raise InputError(f"RVC version must be 'v1' or 'v2', got {version!r}")
    return step_files(Path(exp_dir) / FEATURE_DIRS[version], NPY_SUFFIX, "feature files (.npy)", "features")


def load_feature_file(path: Path, dim: int) -> np.ndarray:
    """One features file as float32 (T, ``dim``); a one-line ``FormatError`` naming the file otherwise."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FormatError(f"{path}: not a readable .npy feature file ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        what = f"a {arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else "not an array"
        raise FormatError(f"{path}: {what}; expected float features (frames, {dim})")
    if arr.shape[1] != dim:
        raise FormatError(f"{path}: {arr.shape[1]}-d features, expected {dim}-d like the rest of "
                          f"{path.parent.name}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise FormatError(f"{path}: features contain NaN or Inf")
    return arr


def load_features(exp_dir: str | os.PathLike, version: str, progress=None) -> np.ndarray:
    """All the version's features concatenated in file-name order: (N, D) float32 (RVC's ``big_npy``)."""
    files = feature_files(exp_dir, version)
    arrays = []
    for i, path in enumerate(files):
        arrays.append(load_feature_file(path, FEATURE_DIMS[version]))
        if progress is not None:
            progress(i + 1, len(files), "load")
    return np.concatenate(arrays, axis=0)


def shuffle_rows(big: np.ndarray, seed: int) -> np.ndarray:
    """Rows in RVC's shuffled order: ``np.random.shuffle(arange(N))`` with the legacy generator seeded ``seed``."""
    order = np.arange(big.shape[0])
    np.random.RandomState(seed).shuffle(order)
    return big[order]


def kmeans_centroids(x: np.ndarray, k: int, seed: int, batch_size: int = KMEANS_BATCH,
                     max_epochs: int = KMEANS_MAX_EPOCHS, patience: int = KMEANS_PATIENCE) -> np.ndarray:
    """``k`` centroids of ``x`` (N, D) by mini-batch k-means (Sculley 2010, the method of sklearn's
    ``MiniBatchKMeans`` with ``init="random"``): (k, D) float32, reproducible for a seed.

    Start from k distinct random rows; per step, draw ``batch_size`` rows (with replacement), move each centre
    to the running mean of all rows it has been given; centres that have been given (almost) nothing — none
    yet, or under ``REASSIGN_RATIO`` of the busiest centre's count, checked whenever some centre is still empty
    and after every 10·k rows — restart at random rows of the batch. Stop when the smoothed batch inertia has
    not improved for ``patience`` steps, or after ``max_epochs`` passes over the data."""
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if not 0 < k <= n:
        raise InputError(f"k-means needs 1..{n} centroids for {n} rows, got {k}")
    batch_size = min(batch_size, n)
    centers = x[np.sort(rng.choice(n, k, replace=False))].copy()
    counts = np.zeros(k, np.float64)
    alpha = 2.0 * batch_size / (n + 1)  # smoothing of the batch inertia (about two batches per pass)
    smoothed, best, stalled, since_reassign = None, np.inf, 0, 0
    for step in range(max(1, max_epochs * n // batch_size)):
        batch = x[rng.integers(0, n, batch_size)]
        since_reassign += batch_size
        reassign = bool((counts == 0).any()) or since_reassign >= REASSIGN_EVERY * k
        if reassign:
            since_reassign = 0
        # nearest centre by ||c||² - 2 x·c (the ||x||² term is the same for every centre)
        dist = np.einsum("ij,ij->i", centers, centers)[None, :] - 2.0 * (batch @ centers.T)
        labels = dist.argmin(axis=1)
        inertia = float(dist[np.arange(batch_size), labels].sum() + np.einsum("ij,ij->", batch, batch)) / batch_size
        order = np.argsort(labels, kind="stable")
        hit, first = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(batch[order], first, axis=0)
        given = np.diff(np.append(first, batch_size)).astype(np.float64)
        counts[hit] += given
        centers[hit] += ((sums - given[:, None] * centers[hit]) / counts[hit, None]).astype(np.float32)
        if reassign:
            low = np.flatnonzero(counts < REASSIGN_RATIO * counts.max())
            if low.size:
                low = low[np.argsort(counts[low], kind="stable")[: batch_size // 2]]  # the least used first
                centers[low] = batch[rng.choice(batch_size, low.size, replace=False)]
                rest = np.ones(k, bool)
                rest[low] = False
                counts[low] = counts[rest].min() if rest.any() else 0.0  # not so small that they restart at once
        if step == 0:  # the first batch measures the random start, not progress
            continue
        smoothed = inertia if smoothed is None else smoothed * (1 - alpha) + inertia * alpha
        if smoothed < best:
            best, stalled = smoothed, 0
        else:
            stalled += 1
            if stalled >= patience:
                break
    return centers


def _write_index(index, tmp: str) -> None:
    """The index's bytes (``faiss.serialize_index``: the same bytes ``faiss.write_index`` writes) into ``tmp``,
    written by Python so that a full disk is an ``OSError`` with its errno (faiss's writer only says it failed)."""
    import faiss

    data = faiss.serialize_index(index)
    with open(tmp, "wb") as f:
        f.write(memoryview(data))


def _remove_stale(exp: Path, keep: Path, name: str, version: str) -> list[Path]:
    pattern = re.compile(rf"{INDEX_PREFIX}IVF\d+_Flat_nprobe_{NPROBE}_{re.escape(name)}_{version}\.index")
    removed = []
    for p in exp.iterdir():
        if p != keep and pattern.fullmatch(p.name):
            p.unlink()
            removed.append(p)
    return removed


def build_index(exp_dir: str | os.PathLike, name: str, version: str, *, seed: int = 0,
                kmeans_threshold: int = KMEANS_THRESHOLD, n_centroids: int = KMEANS_CENTROIDS,
                save_total: bool = False, progress: Progress | None = None) -> Path:
    """Build RVC's retrieval index over ``exp_dir``'s ``version`` features (see the module docstring) and return
    the path of ``exp_dir/added_IVF{n}_Flat_nprobe_1_{name}_{version}.index``, written atomically.

    ``seed``: the row shuffle's (and k-means') seed; a fixed seed makes the index reproducible.
    ``kmeans_threshold`` / ``n_centroids``: more rows than the threshold are first reduced to that many k-means
    centroids (RVC: 200 000 / 10 000). ``save_total``: also write ``total_fea.npy`` (the indexed matrix), as RVC
    does. ``progress(done, total, stage)``: "load" per feature file, "kmeans" (only when it runs) and "train" as
    0/1 then 1/1, "add" per batch of rows, "write" 1/1 at the end.
    Raises one-line errors naming the file for missing, unreadable, mixed-dimension or non-finite features."""
    import faiss

    if not name or name != Path(name).name or name.startswith("."):
        raise InputError(f"index name must be a plain file name part, got {name!r}")
    report = progress or (lambda done, total, stage: None)
    exp = Path(exp_dir)
    big = shuffle_rows(load_features(exp, version, progress), seed)
    if big.shape[0] > kmeans_threshold:
        report(0, 1, "kmeans")
        big = kmeans_centroids(big, n_centroids, seed)
        report(1, 1, "kmeans")
    n_ivf = n_ivf_for(big.shape[0])
    if n_ivf < 1:
        raise InputError(f"{exp / FEATURE_DIRS[version]}: {big.shape[0]} feature frames in all; an index needs at "
                         f"least {MIN_POINTS_PER_LIST} (about a second of audio)")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index = faiss.index_factory(big.shape[1], f"IVF{n_ivf},Flat")
        faiss.extract_index_ivf(index).nprobe = NPROBE
        report(0, 1, "train")
        index.train(big)
        report(1, 1, "train")
        batches = range(0, big.shape[0], ADD_BATCH)
        for i, start in enumerate(batches):
            index.add(big[start : start + ADD_BATCH])
            report(i + 1, len(batches), "add")
        path = exp / index_name(n_ivf, name, version)
        write_output(path, lambda tmp: _write_index(index, tmp))
    finally:
        faiss.omp_set_num_threads(threads)
    if save_total:
        save_npy(exp / TOTAL_FEATURES, big)
    _remove_stale(exp, path, name, version)
    report(1, 1, "write")
    return path
