"""Training step 2: content features and F0 of every 16 kHz segment, in RVC's experiment layout.

For each ``EXP/1_16k_wavs/NAME.wav`` (sorted by name)::

    NAME.wav ─┬─ HuBERT/ContentVec ─▶ EXP/3_feature256/NAME.npy   v1: final_proj(layer 9), float32 (T, 256)
              │                   └▶ EXP/3_feature768/NAME.npy   v2: layer 12, float32 (T, 768)
              └─ F0 estimator ─────▶ EXP/2b-f0nsf/NAME.wav.npy   f0 Hz per 10 ms frame, float32 (F,), 0 = unvoiced
                                  └▶ EXP/2a_f0/NAME.wav.npy      coarse pitch 1..255, int64 (F,)   (f0 models only)

Semantics of RVC WebUI's ``extract_feature_print.py`` and ``extract_f0_print.py``/``extract_f0_rmvpe.py``:

- The segment is read as it is (mono: the mean of its channels; it must be 16 kHz), with no normalisation
  (ContentVec's ``task.normalize`` is False) and no padding: T = HuBERT's frame count (≈ N / 320, 50 fps) and
  F = the estimator's own count (rmvpe, harvest, dio: N // 160 + 1; pm: N // 160), 100 fps. Lengths are kept
  raw, as RVC writes them; the trainer aligns features and pitch later.
- F0 uses RVC's training settings: rmvpe with voicing threshold 0.03; harvest/dio with stonemask and *no* median
  filter (the filter is an inference option); pm with voicing threshold 0.6. Coarse pitch is
  ``f0.postprocess.coarse`` (RVC's mel quantisation, float64).
- Features containing NaN are not saved (RVC's rule); the report lists them, and a later run tries them again.
- Resumable as RVC: a segment's features are skipped when their file exists, its F0 when both F0 files exist.
  Every file is written atomically, so an interrupted run leaves no partial output.
- RVC's "mute" sample (the two silent items it adds to every training list, so a voice learns silence): its
  features are this embedder's on ``MUTE_SECONDS`` of digital silence, written to ``EXP/mute/3_feature*/mute.npy``
  (outside the segment folders, so the index does not see it); its audio and pitch are zeros, made by the
  trainer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_write
from ..errors import AudioError, DiskFullError, InputError, OutputError

SAMPLE_RATE = 16000  # the 16 kHz segments both HuBERT and every F0 estimator read
WAVS_16K = "1_16k_wavs"
COARSE_DIR = "2a_f0"
F0_DIR = "2b-f0nsf"
FEATURE_DIRS = {"v1": "3_feature256", "v2": "3_feature768"}
FEATURE_DIMS = {"v1": 256, "v2": 768}
MUTE_DIR = "mute"
MUTE_NAME = "mute"
MUTE_SECONDS = 3.0  # the length of RVC's shipped mute samples
WAV_SUFFIX = ".wav"
NPY_SUFFIX = ".npy"
Progress = Callable[[int, int, str], None]  # (done, total, segment name), the train steps' shared signature


@dataclass
class FeaturesReport:
    """What :func:`extract_features` did. ``*_skipped``: outputs that already existed (resume)."""

    exp_dir: Path
    version: str
    f0_method: str | None  # None: no F0 (a model without pitch guidance)
    segments: int = 0
    features_written: int = 0
    features_skipped: int = 0
    f0_written: int = 0
    f0_skipped: int = 0
    nan_features: list[str] = field(default_factory=list)  # segment names whose features had NaN: not saved
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for a log or the CLI."""
        f0 = (f", f0 ({self.f0_method}): {self.f0_written} written, {self.f0_skipped} existed"
              if self.f0_method else "")
        nan = f", {len(self.nan_features)} with NaN features not saved" if self.nan_features else ""
        return (f"{self.segments} segments: features ({self.version}) {self.features_written} written, "
                f"{self.features_skipped} existed{f0}{nan} in {self.seconds:.1f} s")


def segment_wavs(exp_dir: str | os.PathLike) -> list[Path]:
    """The 16 kHz segments of ``exp_dir`` (``1_16k_wavs/*.wav``, hidden files excluded), sorted by name.
    Raises a one-line error when there are none."""
    return step_files(Path(exp_dir) / WAVS_16K, WAV_SUFFIX, ".wav segments", "prepare")


def step_files(folder: Path, suffix: str, what: str, step: str) -> list[Path]:
    """The files of ``folder`` ending in ``suffix`` (hidden temporaries excluded), sorted by name; a one-line
    error naming the ``step`` that makes them when the folder is missing or has none."""
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found; run the {step} step first")
    files = sorted((p for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")
                    and p.is_file()), key=lambda p: p.name)
    if not files:
        raise InputError(f"{folder}: no {what} found; run the {step} step first")
    return files


def output_paths(exp_dir: str | os.PathLike, wav_name: str, version: str) -> tuple[Path, Path, Path]:
    """(features, coarse pitch, f0) paths of segment ``wav_name`` (``NAME.wav``)."""
    exp = Path(exp_dir)
    stem = wav_name[: -len(WAV_SUFFIX)]
    return (exp / FEATURE_DIRS[version] / (stem + NPY_SUFFIX),
            exp / COARSE_DIR / (wav_name + NPY_SUFFIX),
            exp / F0_DIR / (wav_name + NPY_SUFFIX))


def mute_feature_path(exp_dir: str | os.PathLike, version: str) -> Path:
    return Path(exp_dir) / MUTE_DIR / FEATURE_DIRS[version] / (MUTE_NAME + NPY_SUFFIX)


def read_segment(path: Path) -> np.ndarray:
    """A 16 kHz segment as float32 (N,) (channels averaged); one-line ``AudioError`` naming the file otherwise."""
    from .. import audio as audio_io

    data, sr = audio_io.read(path)
    if sr != SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {sr} Hz; the segments in {WAVS_16K} must be {SAMPLE_RATE} Hz")
    if data.size == 0:
        raise AudioError(f"{path}: no audio samples")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    return data.astype(np.float32, copy=False)


def write_output(path: Path, write: Callable[[str], None]) -> None:
    """``atomic_write(path, write)`` with a failing file system as a one-line ``OutputError``
    (``DiskFullError`` for a full device or quota); nothing is left behind."""
    from ..audio import DISK_FULL_ERRNOS

    try:
        atomic_write(path, write)
    except OSError as e:
        kind = DiskFullError if e.errno in DISK_FULL_ERRNOS else OutputError
        raise kind(f"{path}: cannot write ({e.strerror or e})") from None


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically (no pickles)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    write_output(path, write)


class _Models:
    """The base models, loaded on first use (a run with nothing left to do loads none)."""

    def __init__(self, hubert_path: Path, version: str, f0_method: str | None, f0_options):
        self.hubert_path, self.version = hubert_path, version
        self.f0_method, self.f0_options = f0_method, f0_options
        self._hubert = None

    def features(self, audio: np.ndarray, source: Path) -> np.ndarray:
        from ..models.hubert import Hubert

        if self._hubert is None:
            self._hubert = Hubert.load(self.hubert_path)
        if audio.shape[0] < self._hubert.config.min_samples:
            raise AudioError(f"{source}: {audio.shape[0]} samples, too short for HuBERT (needs at least "
                             f"{self._hubert.config.min_samples} at 16 kHz)")
        return np.array(self._hubert.extract_rvc(audio, self.version), dtype=np.float32)

    def f0(self, audio: np.ndarray) -> np.ndarray:
        from ..f0 import estimate

        return estimate(self.f0_method, audio, self.f0_options)


def _f0_options(f0_method: str, rmvpe_path, crepe_path, fcpe_path):
    from ..f0 import F0Options, get_estimator
    from ..service.models import f0_model_paths

    get_estimator(f0_method)  # an unknown method is a one-line error before any work
    paths = f0_model_paths(f0_method, rmvpe=rmvpe_path, crepe=crepe_path, fcpe=fcpe_path)
    return F0Options(rmvpe_path=paths["rmvpe"], crepe_path=paths["crepe"], fcpe_path=paths["fcpe"])


def _extract_one(exp: Path, wav: Path, version: str, f0_method: str | None, models: _Models,
                 report: FeaturesReport) -> None:
    """The outputs of one segment that are missing (see :func:`extract_features`)."""
    from ..f0.postprocess import coarse

    feat_path, coarse_path, f0_path = output_paths(exp, wav.name, version)
    need_f0 = bool(f0_method) and not (coarse_path.exists() and f0_path.exists())
    need_feats = not feat_path.exists()
    audio = read_segment(wav) if (need_f0 or need_feats) else None
    if need_f0:
        f0 = models.f0(audio)
        save_npy(f0_path, f0.astype(np.float32))
        save_npy(coarse_path, coarse(f0).astype(np.int64))  # RVC: np.rint(...).astype(int)
        report.f0_written += 1
    elif f0_method:
        report.f0_skipped += 1
    if need_feats:
        feats = models.features(audio, wav)
        if np.isnan(feats).any():
            report.nan_features.append(feat_path.stem)
        else:
            save_npy(feat_path, feats)
            report.features_written += 1
    else:
        report.features_skipped += 1


def extract_features(exp_dir: str | os.PathLike, hubert_path: str | os.PathLike | None, version: str, *,
                     f0_method: str | None = "rmvpe", rmvpe_path: str | os.PathLike | None = None,
                     crepe_path: str | os.PathLike | None = None, fcpe_path: str | os.PathLike | None = None,
                     progress: Progress | None = None) -> FeaturesReport:
    """Extract the content features (and, unless ``f0_method`` is None, the F0) of every segment in
    ``exp_dir/1_16k_wavs`` into RVC's folders (see the module docstring); segments already done are skipped.

    ``hubert_path``: the HuBERT/ContentVec base model in any form the converters take (converted
    ``.safetensors``, fairseq ``hubert_base.pt``, transformers folder, or a downloaded model's name); None: the
    downloaded default embedder. ``version``: "v1" (256-d) or "v2" (768-d). ``f0_method``: any registered f0
    method (``rvc_mlx.f0.known_methods()``); rmvpe/crepe/fcpe take their model from ``rmvpe_path`` /
    ``crepe_path`` / ``fcpe_path`` or the models directory. ``progress(done, total, segment_name)`` is called
    after every segment. Raises one-line ``RvcMlxError``s (no segments, a base model missing,
    a segment that is not 16 kHz audio) and stops there; outputs written so far are kept."""
    from ..service.models import resolve_base_model

    start = time.perf_counter()
    if version not in FEATURE_DIRS:
        raise InputError(f"RVC version must be 'v1' or 'v2', got {version!r}")
    exp = Path(exp_dir)
    wavs = segment_wavs(exp)
    if hubert_path is None:
        from ..hub import find_embedder

        hubert = find_embedder(None)
    else:
        hubert = resolve_base_model(hubert_path, "hubert")
    options = _f0_options(f0_method, rmvpe_path, crepe_path, fcpe_path) if f0_method else None
    models = _Models(hubert, version, f0_method, options)
    report = FeaturesReport(exp, version, f0_method, segments=len(wavs))
    (exp / FEATURE_DIRS[version]).mkdir(parents=True, exist_ok=True)
    if f0_method:
        (exp / COARSE_DIR).mkdir(parents=True, exist_ok=True)
        (exp / F0_DIR).mkdir(parents=True, exist_ok=True)

    for i, wav in enumerate(wavs):
        try:
            _extract_one(exp, wav, version, f0_method, models, report)
        except AudioError as e:  # an estimator's or HuBERT's complaint about the audio: name the segment
            raise e if str(wav) in str(e) else type(e)(f"{wav}: {e}") from None
        if progress is not None:
            progress(i + 1, len(wavs), wav.name)
    mute = mute_feature_path(exp, version)
    if not mute.exists():
        mute.parent.mkdir(parents=True, exist_ok=True)
        silence = np.zeros(int(MUTE_SECONDS * SAMPLE_RATE), np.float32)
        save_npy(mute, models.features(silence, Path(MUTE_NAME + WAV_SUFFIX)))
    report.seconds = time.perf_counter() - start
    return report
