"""The training set of an experiment folder, batched as RVC's loader does.

Items (RVC's ``TextAudioLoaderMultiNSFsid``): the segment at the model rate (``0_gt_wavs``), its content features
repeated ×2 to 100 fps (``3_feature*``) and cut to ``MAX_FRAMES``, coarse pitch and f0 (``2a_f0``, ``2b-f0nsf``;
f0 models), the linear spectrogram of the wav (cached beside it as ``NAME.spec.npy``); all cut to the shorter of
the features and the spectrogram. RVC's mute sample (silence, unvoiced, the embedder's features of silence from
the features step) is added twice per speaker, as RVC's training list has it.

Batches (RVC's ``DistributedBucketSampler`` on one process): items go to length buckets (spectrogram frames,
boundaries 100..900), each bucket is shuffled and filled up to a multiple of the batch size by repeating its own
items, the batches of all buckets are shuffled; the order is a function of ``(seed, epoch)`` only, so a resumed
run sees the same batches. Within a batch items are sorted longest first and zero padded (RVC's collate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..atomic import atomic_write
from ..errors import InputError
from ..f0.postprocess import coarse
from . import losses as L
from .features import FEATURE_DIRS, MUTE_NAME, MUTE_SECONDS, mute_feature_path
from .prepare import MANIFEST, file_index, segment_speakers
from .nets import Batch

MUTES_PER_SPEAKER = 2  # RVC's click_train adds its mute sample twice to the list
MAX_FRAMES = 900  # RVC's get_labels cut
FEATURE_REPEAT = 2  # 50 fps features -> 100 fps frames
BUCKET_BOUNDARIES = tuple(range(100, 1000, 100))  # RVC train.py: [100, 200, ..., 900]


@dataclass
class Item:
    name: str
    wave: np.ndarray  # (T·hop,) float32
    spec: np.ndarray  # (T, bins) float32
    phone: np.ndarray  # (T, dim) float32
    pitch: np.ndarray | None  # (T,) int
    pitchf: np.ndarray | None  # (T,) float32
    sid: int


def _read_wav(path: Path, sample_rate: int) -> np.ndarray:
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as e:
        raise InputError(f"{path}: cannot read the segment ({e})") from None
    if sr != sample_rate:
        raise InputError(f"{path}: is {sr} Hz, the experiment trains at {sample_rate} Hz (run prepare again)")
    return data.mean(axis=1)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None


class TrainingSet:
    """The segments of ``exp_dir`` present in every folder the model needs (RVC's ``filelist.txt``)."""

    def __init__(self, exp_dir: str | os.PathLike, version: str, use_f0: bool, spec: L.SpectrogramConfig,
                 sid: int | None = None, mutes: int = MUTES_PER_SPEAKER):
        """``sid``: the speaker id of every segment; None: each segment's speaker as the prepare step recorded
        it (a dataset with speaker subfolders), else 0. ``mutes``: copies of RVC's mute sample per speaker
        (when the features step has made its features), at the end of :attr:`names`."""
        self.exp = Path(exp_dir)
        self.version, self.use_f0, self.spec = version, use_f0, spec
        self.gt = self.exp / "0_gt_wavs"
        self.feat = self.exp / FEATURE_DIRS[version]
        folders = [self.gt, self.feat] + ([self.exp / "2a_f0", self.exp / "2b-f0nsf"] if use_f0 else [])
        for folder in folders:
            if not folder.is_dir():
                raise InputError(f"{folder}: missing (run the prepare and features steps first)")
        names = {p.stem for p in self.gt.glob("*.wav")} & {p.stem for p in self.feat.glob("*.npy")}
        if use_f0:
            for sub in ("2a_f0", "2b-f0nsf"):
                names &= {p.name[: -len(".wav.npy")] for p in (self.exp / sub).glob("*.wav.npy")}
        self.names = sorted(names)
        if not self.names:
            raise InputError(f"{self.exp}: no segment has all of its training files (wav, features"
                             f"{', f0' if use_f0 else ''})")
        recorded = segment_speakers(self.exp)
        if sid is not None and len(set(recorded.values())) > 1:
            raise InputError(f"{self.exp / MANIFEST}: the dataset has {len(set(recorded.values()))} speakers "
                             "(its subfolders); a single speaker id does not apply")
        self.sids = [sid if sid is not None else recorded.get(file_index(n), 0) for n in self.names]
        self.mute_features = mute_feature_path(self.exp, version)
        self.mutes = mutes if self.mute_features.exists() else 0
        speakers = sorted(set(self.sids))
        self.segments = len(self.names)  # the items after these are mute samples
        self.names += [MUTE_NAME] * (self.mutes * len(speakers))
        self.sids += [s for s in speakers for _ in range(self.mutes)]
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def _spec(self, cache: Path, wave: np.ndarray) -> np.ndarray:
        if cache.exists():
            spec = _load_npy(cache)
            if spec.ndim == 2 and spec.shape[1] == self.spec.bins:
                return spec
        spec = np.array(L.spectrogram(mx.array(wave[None]), self.spec)[0])

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, spec)

        atomic_write(cache, save)
        return spec

    def _mute_wave(self) -> np.ndarray:
        return np.zeros(int(MUTE_SECONDS * self.spec.sample_rate), np.float32)

    def item(self, i: int) -> Item:
        name = self.names[i]
        if i >= self.segments:  # digital silence, unvoiced, with the embedder's features of silence
            wave = self._mute_wave()
            phone = _load_npy(self.mute_features)
            frames = len(wave) // self.spec.hop + 1
            pitchf = np.zeros(frames, np.float32)
            pitch = coarse(pitchf).astype(np.int32)
            cache = self.mute_features.parent.parent / f"{MUTE_NAME}_{self.spec.sample_rate}.spec.npy"
        else:
            wave = _read_wav(self.gt / f"{name}.wav", self.spec.sample_rate)
            phone = _load_npy(self.feat / f"{name}.npy")
            if self.use_f0:
                pitch = _load_npy(self.exp / "2a_f0" / f"{name}.wav.npy").astype(np.int32)
                pitchf = _load_npy(self.exp / "2b-f0nsf" / f"{name}.wav.npy").astype(np.float32)
            cache = self.gt / f"{name}.spec.npy"
        phone = np.repeat(phone.astype(np.float32), FEATURE_REPEAT, axis=0)
        n = min(len(phone), MAX_FRAMES)
        if not self.use_f0:
            pitch = pitchf = None
        else:
            n = min(n, len(pitch), len(pitchf))
        spec = self._spec(cache, wave)
        n = min(n, len(spec))
        if n < 1:
            raise InputError(f"{self.gt / name}.wav: too short to train on")
        cut = lambda a: None if a is None else a[:n]  # noqa: E731
        return Item(name, wave[: n * self.spec.hop], spec[:n], phone[:n], cut(pitch), cut(pitchf), self.sids[i])

    def lengths(self) -> list[int]:
        """Spectrogram frames per item (for the buckets), from the wav lengths."""
        if self._lengths is None:
            import soundfile as sf

            names = self.names[: self.segments]
            self._lengths = [sf.info(str(self.gt / f"{n}.wav")).frames // self.spec.hop for n in names]
            self._lengths += [len(self._mute_wave()) // self.spec.hop] * (len(self.names) - self.segments)
        return self._lengths


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Item indices per batch for ``epoch`` (RVC's bucket sampler on one process; see the module docstring).
    Items longer than the last boundary are dropped, as RVC does."""
    rng = np.random.default_rng([seed, epoch])
    buckets: list[list[int]] = [[] for _ in range(len(BUCKET_BOUNDARIES) - 1)]
    for i, n in enumerate(lengths):
        for b in range(len(BUCKET_BOUNDARIES) - 1):
            if BUCKET_BOUNDARIES[b] < n <= BUCKET_BOUNDARIES[b + 1]:
                buckets[b].append(i)
                break
    batches = []
    for bucket in buckets:
        if not bucket:
            continue
        order = [bucket[j] for j in rng.permutation(len(bucket))]
        fill = (-len(order)) % batch_size
        order += (order * (fill // len(order) + 1))[:fill]
        batches += [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))]


def collate(items: list[Item], use_f0: bool) -> Batch:
    """Longest first, zero padded (RVC's ``TextAudioCollateMultiNSFsid``)."""
    items = sorted(items, key=lambda it: -len(it.spec))
    t = len(items[0].spec)
    hop = len(items[0].wave) // t
    b = len(items)

    def pad(arrays, shape, dtype):
        out = np.zeros((b,) + shape, dtype)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = a
        return mx.array(out)

    lengths = mx.array(np.array([len(it.spec) for it in items], np.int32))
    return Batch(
        phone=pad([it.phone for it in items], (t, items[0].phone.shape[1]), np.float32),
        phone_lengths=lengths,
        pitch=pad([it.pitch for it in items], (t,), np.int32) if use_f0 else None,
        pitchf=pad([it.pitchf for it in items], (t,), np.float32) if use_f0 else None,
        spec=pad([it.spec for it in items], (t, items[0].spec.shape[1]), np.float32),
        spec_lengths=lengths,
        wave=pad([it.wave for it in items], (t * hop,), np.float32),
        sid=mx.array(np.array([it.sid for it in items], np.int32)),
    )
