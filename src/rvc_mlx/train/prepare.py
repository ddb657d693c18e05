"""Training step 1, ``prepare``: a folder of recordings -> RVC's sliced, normalised training segments.

The semantics are RVC WebUI's dataset preprocessing (``PreProcess.pipeline``), constant for constant:

1. every file is read and mixed down to mono at the model rate ``sr`` (32, 40 or 48 kHz). Files of any rate are
   fine: each is resampled (soxr HQ) to ``sr``, so a dataset may mix 44.1 kHz and 48 kHz takes;
2. a causal 5th-order Butterworth high-pass at 48 Hz (``lfilter``, not zero-phase: RVC found zero-phase filtering
   adds pre-ringing);
3. RVC's silence slicer (threshold -42 dB, min length 1.5 s, min interval 0.4 s, hop 15 ms, max silence kept
   0.5 s) cuts each file at its pauses;
4. each slice is cut into 3.7 s segments overlapping by 0.3 s; a remainder of up to 4.0 s becomes the last segment;
5. a segment whose peak exceeds 2.5 is dropped ("filtered"); the others are normalised to
   ``x / peak * 0.9 * 0.75 + 0.25 * x``;
6. each segment is written twice, float32 WAV: ``EXP/0_gt_wavs/{file}_{segment}.wav`` at ``sr`` and
   ``EXP/1_16k_wavs/{file}_{segment}.wav`` at 16 kHz (soxr HQ, librosa's default resampler, length
   ``ceil(n * 16000 / sr)`` as librosa's ``fix=True`` gives).

``{file}`` is the file's index among the dataset's files sorted by name (hidden files are not read),
``{segment}`` counts the segments cut from that file (a filtered segment keeps its number, so names do not depend
on the filter). RVC's own loop numbers the last segment of a slice one too high, so a following slice longer than
4 s overwrites it with its first segment (the tail is lost: about one segment in five on test takes); here every
segment gets its own number, as in Applio.

Several speakers: a dataset folder with subfolders is a multi-speaker set, one speaker per subfolder (its files
directly inside it). Speaker ids follow the folders' name order from 0; files directly in the dataset folder, if
any, are speaker 0 and the folders follow. File indices run over the speakers in that order. The ids are kept in
``prepare.json`` (``speakers``: name -> id, and each file's ``speaker``) for the fit step.

What rvc-mlx adds: a report of what was skipped and why (:class:`PrepareReport`); files that are silent (digital
silence, or no slicer frame reaching the threshold) are skipped rather than written as a scrap of amplified
noise; the step resumes: ``EXP/prepare.json`` records each file's outputs, and a file whose record matches (same
name, size, mtime, index, sample rate) and whose outputs all exist is not redone. Outputs are written atomically
(temporary file, then rename), so an interrupted run leaves no partial segment.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import audio
from ..atomic import TEMP_SUFFIX, atomic_write
from ..errors import AudioError, DiskFullError, InputError, OutputError, RvcMlxError, SilentAudioError

SAMPLE_RATES = (32000, 40000, 48000)  # the rates RVC models are trained at
FEATURE_RATE = 16000  # HuBERT/ContentVec and the F0 estimators read 16 kHz audio
GT_DIR = "0_gt_wavs"
WAVS_16K_DIR = "1_16k_wavs"
MANIFEST = "prepare.json"
MANIFEST_VERSION = 1  # bump when the outputs for the same input change: every file is then redone

# RVC's high-pass filter
HIGHPASS_ORDER = 5
HIGHPASS_HZ = 48.0

# RVC's slicer settings for training data (milliseconds; threshold in dBFS of frame RMS)
SLICE_THRESHOLD_DB = -42.0
SLICE_MIN_LENGTH_MS = 1500
SLICE_MIN_INTERVAL_MS = 400
SLICE_HOP_MS = 15
SLICE_MAX_SIL_KEPT_MS = 500
RMS_WINDOW_HOPS = 4  # the RMS window is at most this many hops (and at most the min interval)

# RVC's segmentation and normalisation
SEGMENT_SECONDS = 3.7
OVERLAP_SECONDS = 0.3
PEAK_LIMIT = 2.5  # a segment peaking above this is dropped as broken
NORM_PEAK = 0.9
NORM_ALPHA = 0.75  # share of the peak-normalised signal in the mix with the original

# reasons in PrepareReport.skipped
UNREADABLE = "unreadable"
TOO_SHORT = "too short"
SILENT = "silent"
FILTERED = "filtered"

_OUTPUT_NAME = re.compile(r"^(\d+)_(\d+)\.wav$")
_DISK_FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT

Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------------------------
# the slicer


class Slicer:
    """RVC's silence slicer: cuts audio where the frame RMS stays below a threshold long enough.

    Lengths are given in milliseconds and held in frames of ``hop`` samples, rounded as RVC rounds them. The RMS of
    frame ``k`` is taken over ``win`` samples centred on sample ``k * hop`` (zero padding at the ends)."""

    def __init__(self, sr: int, threshold_db: float = SLICE_THRESHOLD_DB, min_length_ms: float = SLICE_MIN_LENGTH_MS,
                 min_interval_ms: float = SLICE_MIN_INTERVAL_MS, hop_ms: float = SLICE_HOP_MS,
                 max_sil_kept_ms: float = SLICE_MAX_SIL_KEPT_MS):
        if not min_length_ms >= min_interval_ms >= hop_ms:
            raise InputError(f"slicer: need min_length ({min_length_ms} ms) >= min_interval ({min_interval_ms} ms) "
                             f">= hop ({hop_ms} ms)")
        if not max_sil_kept_ms >= hop_ms:
            raise InputError(f"slicer: need max_sil_kept ({max_sil_kept_ms} ms) >= hop ({hop_ms} ms)")
        interval = sr * min_interval_ms / 1000  # samples
        self.threshold = 10 ** (threshold_db / 20.0)  # linear RMS
        self.hop = round(sr * hop_ms / 1000)  # samples per frame
        self.win = min(round(interval), RMS_WINDOW_HOPS * self.hop)  # samples
        self.min_length = round(sr * min_length_ms / 1000 / self.hop)  # frames
        self.min_interval = round(interval / self.hop)  # frames
        self.max_sil_kept = round(sr * max_sil_kept_ms / 1000 / self.hop)  # frames

    def frame_rms(self, x: np.ndarray) -> np.ndarray:
        """RMS per frame of mono ``x`` (N,): ``(ceil((N + 2*(win//2) - win + 1) / hop),)`` float."""
        half = self.win // 2
        padded = np.pad(np.asarray(x), (half, half))
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.win)[::self.hop]
        return np.sqrt(np.mean(frames * frames, axis=-1))

    def _cuts(self, rms: np.ndarray) -> list[tuple[int, int]]:
        """The silent spans to remove, as ``(first, end)`` frame pairs in order (a pair may be empty: a cut point)."""
        total = len(rms)
        keep = self.max_sil_kept
        quiet = np.concatenate([[False], rms < self.threshold, [False]])
        edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
        runs = list(zip(edges[0::2].tolist(), edges[1::2].tolist()))  # [start, end) of each silent run

        def quietest(lo: int, hi: int) -> int:  # frame of least RMS in [lo, hi] (first on ties)
            return lo + int(np.argmin(rms[lo:hi + 1]))

        cuts: list[tuple[int, int]] = []
        clip_start = 0
        for start, end in runs:
            if end == total:  # silence running to the end: handled below
                break
            # ``end`` is the first loud frame after the silence
            length = end - start
            leading = start == 0 and end > keep
            splits = length >= self.min_interval and end - clip_start >= self.min_length
            if not (leading or splits):
                continue
            if length <= keep:  # short silence: cut at its quietest frame
                at = quietest(start, end)
                cuts.append((0, at) if start == 0 else (at, at))
                clip_start = at
                continue
            left = quietest(start, start + keep)  # quietest frame near each end of the silence
            right = quietest(end - keep, end)
            if start == 0:  # leading silence: drop it up to the quietest frame near the sound
                cuts.append((0, right))
                clip_start = right
            elif length <= 2 * keep:  # the two search windows overlap: also try the quietest frame of the overlap
                middle = quietest(end - keep, start + keep)
                cuts.append((min(left, middle), max(right, middle)))
                clip_start = max(right, middle)
            else:
                cuts.append((left, right))
                clip_start = right
        if runs and runs[-1][1] == total and total - runs[-1][0] >= self.min_interval:
            start = runs[-1][0]
            cuts.append((quietest(start, min(total, start + keep)), total + 1))
        return cuts

    def bounds(self, x: np.ndarray) -> list[tuple[int, int]]:
        """The kept pieces of mono ``x`` (N,) as ``[start, end)`` sample ranges, in order."""
        n = len(x)
        # RVC compares the sample count with min_length in frames here: only tiny inputs are returned whole
        if n <= self.min_length:
            return [(0, n)]
        rms = self.frame_rms(x)
        cuts = self._cuts(rms)
        if not cuts:
            return [(0, n)]
        total = len(rms)
        frames = []
        if cuts[0][0] > 0:
            frames.append((0, cuts[0][0]))
        frames += [(a[1], b[0]) for a, b in zip(cuts, cuts[1:])]
        if cuts[-1][1] < total:
            frames.append((cuts[-1][1], total))
        return [(a * self.hop, min(n, b * self.hop)) for a, b in frames]

    def slice(self, x: np.ndarray) -> list[np.ndarray]:
        """The kept pieces of mono ``x`` (N,) as views into it."""
        return [x[a:b] for a, b in self.bounds(x)]


# ---------------------------------------------------------------------------------------------------------------
# the signal steps


def highpass(x: np.ndarray, sr: int) -> np.ndarray:
    """RVC's causal high-pass of mono ``x`` (N,) at ``sr`` Hz: float64 (N,)."""
    from scipy import signal

    b, a = signal.butter(N=HIGHPASS_ORDER, Wn=HIGHPASS_HZ, btype="high", fs=sr)
    return signal.lfilter(b, a, x)


def segment_bounds(n: int, sr: int) -> list[tuple[int, int]]:
    """RVC's cut of a slice of ``n`` samples into ``SEGMENT_SECONDS`` pieces that start every
    ``SEGMENT_SECONDS - OVERLAP_SECONDS``; the rest, once no longer than ``SEGMENT_SECONDS + OVERLAP_SECONDS``,
    is the last piece. ``[start, end)`` sample ranges."""
    step = SEGMENT_SECONDS - OVERLAP_SECONDS
    longest_rest = (SEGMENT_SECONDS + OVERLAP_SECONDS) * sr  # samples
    size = int(SEGMENT_SECONDS * sr)
    pieces = []
    k = 0
    while True:
        start = int(sr * step * k)
        if n - start > longest_rest:
            pieces.append((start, start + size))
            k += 1
        else:
            pieces.append((start, n))
            return pieces


def normalise(x: np.ndarray) -> np.ndarray | None:
    """RVC's loudness normalisation of a segment (float64 (n,)); None when it must be dropped (peak above
    ``PEAK_LIMIT``, zero, or not finite)."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if not math.isfinite(peak) or peak <= 0.0 or peak > PEAK_LIMIT:
        return None
    return x / peak * (NORM_PEAK * NORM_ALPHA) + (1.0 - NORM_ALPHA) * x


def to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    """``x`` (n,) at ``sr`` resampled to 16 kHz: float32 ``(ceil(n * 16000 / sr),)``. soxr HQ on float64 input
    equals librosa's default ``resample`` (soxr_hq) exactly; the zero padding to the ceiling length is librosa's
    ``fix_length``."""
    y = audio.resample(np.asarray(x, dtype=np.float64), sr, FEATURE_RATE)
    n_out = math.ceil(len(x) * FEATURE_RATE / sr)
    if len(y) < n_out:
        y = np.pad(y, (0, n_out - len(y)))
    return y[:n_out].astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# the report


@dataclass
class Skipped:
    """Something not written: a whole file (``segment`` None) or one segment (``segment`` "FILE_SEGMENT")."""

    source: str  # the file's name in the dataset folder
    reason: str  # UNREADABLE | TOO_SHORT | SILENT | FILTERED
    detail: str  # one readable line
    segment: str | None = None


@dataclass
class PrepareReport:
    """What :func:`prepare` did. Counts cover the whole dataset; ``processed``/``written`` this run only."""

    dataset: str
    sample_rate: int
    files: int = 0  # recordings in the dataset folder and its speaker subfolders (hidden files not counted)
    processed: int = 0  # files read and cut in this run
    reused: int = 0  # files whose outputs from an earlier run were complete and kept
    segments: int = 0  # segments in the experiment folder for this dataset
    written: int = 0  # segments written in this run
    seconds: float = 0.0  # duration of those segments (at the model rate; overlaps counted twice)
    resampled: int = 0  # files whose own sample rate was not the model's (resampled on reading)
    removed: int = 0  # stale outputs deleted (of files no longer in the dataset, or redone with fewer segments)
    skipped: list[Skipped] = field(default_factory=list)
    speakers: dict[str, int] = field(default_factory=dict)  # speaker name (folder) -> id

    def summary(self) -> str:
        """One line for a front end."""
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
        skip = ", ".join(f"{n} {r}" for r, n in reasons.items())
        return (f"{self.files} files -> {self.segments} segments ({self.seconds:.1f} s at {self.sample_rate} Hz); "
                f"{self.processed} prepared, {self.reused} already done"
                + (f", {len(self.speakers)} speakers" if len(self.speakers) > 1 else "")
                + (f", {self.resampled} resampled" if self.resampled else "")
                + (f"; skipped: {skip}" if skip else ""))


# ---------------------------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class Source:
    """One recording: its name in the manifest (``FILE`` or ``SPEAKER/FILE``), path and speaker id."""

    key: str
    path: Path
    speaker: int


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as e:
        raise InputError(f"{folder}: cannot list the dataset folder ({e.strerror})") from None


def _dataset_files(dataset: Path) -> tuple[list[Source], dict[str, int]]:
    """The recordings in name order, speaker by speaker, and the speakers' ids (see the module docstring)."""
    if not dataset.is_dir():
        raise InputError(f"{dataset}: dataset folder not found" if not dataset.exists()
                         else f"{dataset}: not a folder (give the folder holding the recordings)")
    entries = _listing(dataset)
    groups = [(dataset.name, "", [p for p in entries if p.is_file()])]
    groups += [(d.name, f"{d.name}/", [p for p in _listing(d) if p.is_file()]) for d in entries if d.is_dir()]
    groups = [g for g in groups if g[2]]
    if not groups:
        raise InputError(f"{dataset}: no audio files in the dataset folder (or in its speaker subfolders)")
    speakers = {name: sid for sid, (name, _, _) in enumerate(groups)}
    files = [Source(prefix + p.name, p, speakers[name]) for name, prefix, paths in groups for p in paths]
    return files, speakers


def file_index(stem: str) -> int | None:
    """The recording's index in a segment name ``FILE_SEGMENT`` this step writes (None for any other name)."""
    m = _OUTPUT_NAME.match(stem + ".wav")
    return int(m.group(1)) if m else None


def segment_speakers(exp_dir: str | os.PathLike) -> dict[int, int]:
    """File index -> speaker id, as the last prepare recorded them (an experiment prepared before speakers were
    recorded, or not by this step, gives ``{}``: one speaker)."""
    try:
        data = json.loads((Path(exp_dir) / MANIFEST).read_text(encoding="utf-8"))
        return {int(rec["index"]): int(rec.get("speaker", 0)) for rec in data["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    """float32 WAV (IEEE float, as RVC writes), atomically; one-line errors."""
    from scipy.io import wavfile

    try:
        atomic_write(path, lambda tmp: wavfile.write(tmp, sr, np.asarray(x, dtype=np.float32)))
    except OSError as e:
        if e.errno in _DISK_FULL_ERRNOS:
            raise DiskFullError(f"{path}: no space left on the device; nothing was written") from None
        raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None


def _read_manifest(exp: Path, sr: int) -> dict:
    try:
        data = json.loads((exp / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or data.get("sample_rate") != sr:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_manifest(exp: Path, sr: int, records: dict, speakers: dict[str, int]) -> None:
    text = json.dumps({"version": MANIFEST_VERSION, "sample_rate": sr, "speakers": speakers, "files": records},
                      indent=1, sort_keys=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    try:
        atomic_write(exp / MANIFEST, write)
    except OSError as e:
        raise OutputError(f"{exp / MANIFEST}: cannot write ({e.strerror or type(e).__name__})") from None


def _valid_record(rec) -> bool:
    """A manifest record as :func:`_prepare_file` writes it (a hand-edited or damaged one is redone)."""
    return (isinstance(rec, dict) and isinstance(rec.get("outputs"), list)
            and all(isinstance(o, str) for o in rec["outputs"])
            and isinstance(rec.get("skipped"), list)
            and all(isinstance(k, list) and len(k) == 3 for k in rec["skipped"])
            and isinstance(rec.get("seconds"), (int, float)) and isinstance(rec.get("index"), int))


def _signature(path: Path, idx0: int) -> dict:
    st = path.stat()
    return {"index": idx0, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _outputs(folder: Path) -> dict[int, set[str]]:
    """Our segment names (stems ``FILE_SEGMENT``) in ``folder``, by file index."""
    found: dict[int, set[str]] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = _OUTPUT_NAME.match(p.name)
            if m:
                found.setdefault(int(m.group(1)), set()).add(p.name[:-len(".wav")])
    return found


def _remove_stale(folders: list[Path], keep: dict[int, set[str]], indices: set[int]) -> int:
    """Delete our outputs of file ``indices`` that are not in ``keep``; also leftover temporaries of an
    interrupted run. Returns the number of segment files removed."""
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _OUTPUT_NAME.match(p.name)
            if m and int(m.group(1)) in indices and p.name[:-len(".wav")] not in keep.get(int(m.group(1)), ()):
                p.unlink()
                removed += 1
            elif p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX + ".wav"):
                p.unlink()
    return removed


# ---------------------------------------------------------------------------------------------------------------
# the step


def _read(path: Path, label: str, sr: int) -> tuple[np.ndarray, int]:
    """``audio.load``'s steps, keeping the file's own rate for the report: float32 (N,) at ``sr``."""
    x, file_sr = audio.read(path)
    if x.size < audio.MIN_SECONDS * file_sr:
        raise _TooShort(f"{label}: {x.size / max(file_sr, 1):.3f} s long; at least {audio.MIN_SECONDS} s "
                        "is needed")
    x = audio.check(x, file_sr, label)
    return audio.resample(x, file_sr, sr), file_sr


class _TooShort(AudioError):
    pass


def _prepare_file(path: Path, label: str, idx0: int, sr: int, slicer: Slicer, gt: Path, w16: Path) -> dict:
    """Cut one file into segments and write them. Returns its record: outputs (stems), skipped items, seconds,
    the file's own rate. Unreadable input raises ``AudioError``."""
    x, file_sr = _read(path, label, sr)
    record = {"outputs": [], "skipped": [], "seconds": 0.0, "source_rate": file_sr}
    x = highpass(x, sr)
    if not np.any(slicer.frame_rms(x) >= slicer.threshold):
        record["skipped"].append([None, SILENT, f"{label}: no sound above {SLICE_THRESHOLD_DB:g} dB"])
        return record
    idx1 = 0
    for a, b in slicer.bounds(x):
        piece = x[a:b]
        for s, e in segment_bounds(len(piece), sr):
            stem = f"{idx0}_{idx1}"
            idx1 += 1
            seg = normalise(piece[s:e])
            if seg is None:
                peak = float(np.max(np.abs(piece[s:e]))) if e > s else 0.0
                reason = FILTERED if peak > PEAK_LIMIT else SILENT
                why = (f"peak {peak:.2f} above {PEAK_LIMIT}" if reason == FILTERED
                       else "segment is silent or empty")
                record["skipped"].append([stem, reason, f"{label} segment {stem}: {why}"])
                continue
            _write_wav(gt / f"{stem}.wav", seg, sr)
            _write_wav(w16 / f"{stem}.wav", to_16k(seg, sr), FEATURE_RATE)
            record["outputs"].append(stem)
            record["seconds"] += len(seg) / sr
    if not record["outputs"] and not record["skipped"]:
        record["skipped"].append([None, SILENT, f"{label}: the slicer kept nothing"])
    return record


def prepare(dataset_dir: str | os.PathLike, exp_dir: str | os.PathLike, sample_rate: int, *,
            progress: Progress | None = None) -> PrepareReport:
    """Prepare the recordings in ``dataset_dir`` for training a ``sample_rate`` model into ``exp_dir``.

    Writes ``exp_dir/0_gt_wavs/{i}_{j}.wav`` (float32 at ``sample_rate``, 32000|40000|48000) and
    ``exp_dir/1_16k_wavs/{i}_{j}.wav`` (float32 at 16 kHz): segment ``j`` of the ``i``-th file in name order, at
    most 4.0 s each (see the module docstring for RVC's steps). Any format and sample rate the project reads is
    accepted (everything is resampled to ``sample_rate``). Files already prepared (same name, size, mtime and
    index, outputs all present; recorded in ``exp_dir/prepare.json``) are not redone; outputs of files no longer
    in the dataset are removed. ``progress(done, total, file_name)`` is called after each file.

    Unreadable, too short or silent files and filtered segments are reported in ``PrepareReport.skipped``; a
    dataset folder that is missing, empty, or has nothing usable raises ``InputError`` (one line)."""
    if sample_rate not in SAMPLE_RATES:
        raise InputError(f"sample rate {sample_rate}: RVC models use {', '.join(map(str, SAMPLE_RATES))} Hz")
    dataset, exp = Path(dataset_dir), Path(exp_dir)
    files, speakers = _dataset_files(dataset)
    gt, w16 = exp / GT_DIR, exp / WAVS_16K_DIR
    for folder in (gt, w16):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{folder}: cannot create ({e.strerror or type(e).__name__})") from None
    old = _read_manifest(exp, sample_rate)
    present = [_outputs(gt), _outputs(w16)]
    slicer = Slicer(sample_rate)
    report = PrepareReport(dataset=str(dataset), sample_rate=sample_rate, files=len(files), speakers=speakers)
    records: dict[str, dict] = {}
    for idx0, source in enumerate(files):
        path, key = source.path, source.key
        try:
            signature = _signature(path, idx0)
        except OSError as e:
            signature = None
            detail = f"{key}: cannot read ({e.strerror or type(e).__name__})"
        rec = old.get(key) if signature is not None else None
        done = (_valid_record(rec)
                and all(rec.get(k) == v for k, v in signature.items())
                and all(set(rec.get("outputs", ())) <= p.get(idx0, set()) for p in present))
        if done:
            report.reused += 1
        elif signature is not None:
            try:
                rec = dict(signature, **_prepare_file(path, key, idx0, sample_rate, slicer, gt, w16))
                report.processed += 1
                report.written += len(rec["outputs"])
            except _TooShort as e:
                rec = dict(signature, outputs=[], skipped=[[None, TOO_SHORT, str(e)]], seconds=0.0, source_rate=None)
                report.processed += 1
            except SilentAudioError as e:
                rec = dict(signature, outputs=[], skipped=[[None, SILENT, str(e)]], seconds=0.0, source_rate=None)
                report.processed += 1
            except OutputError:  # cannot write the experiment folder: stop
                raise
            except (RvcMlxError, OSError) as e:
                rec, detail = None, str(e) if isinstance(e, RvcMlxError) else f"{key}: {e}"
        if rec is None:  # unreadable: not recorded, so a later run tries again
            report.skipped.append(Skipped(key, UNREADABLE, " ".join(detail.split())))
        else:
            rec["speaker"] = source.speaker  # ids may move when speakers are added; the audio does not
            records[key] = rec
            report.segments += len(rec["outputs"])
            report.seconds += rec["seconds"]
            report.resampled += rec["source_rate"] not in (None, sample_rate)
            report.skipped += [Skipped(key, r, d, s) for s, r, d in rec["skipped"]]
            if not done:  # its outputs of an earlier run that this run did not write again
                keep = {idx0: set(rec["outputs"])}
                report.removed += _remove_stale([gt, w16], keep, {idx0})
                _write_manifest(exp, sample_rate, {**{k: v for k, v in old.items() if k not in records}, **records},
                                speakers)
        if progress is not None:
            progress(idx0 + 1, len(files), key)
    # outputs of files that are no longer in the dataset (or of unreadable ones)
    live = {rec["index"]: set(rec["outputs"]) for rec in records.values()}
    stale = {i for p in present for i in p} - set(live)
    report.removed += _remove_stale([gt, w16], live, stale | set(live))
    _write_manifest(exp, sample_rate, records, speakers)
    if report.segments == 0:
        raise InputError(f"{dataset}: no usable audio ({report.summary()})")
    return report
