"""Audio in and out: the one place that touches files of sound.

Reading uses libsndfile (wav, flac, ogg, mp3, aiff, ...) and falls back to FFmpeg through PyAV for containers
libsndfile does not know (m4a, aac, opus in webm, video files). Resampling uses soxr (HQ). Writing is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import AudioError, DiskFullError, OutputError, SilentAudioError
from .atomic import atomic_write

WRITE_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
MIN_SECONDS = 0.1
SILENCE_PEAK = 1e-6  # peak below this is treated as digital silence
READ_BLOCK_SAMPLES = 1 << 20  # samples (all channels) decoded per block: 4 MB of float32
MAX_SECONDS = 4 * 3600.0  # longest input read (a conversion holds it whole; see README "Limits")
MAX_SECONDS_ENV = "RVC_MLX_MAX_INPUT_HOURS"
WRITE_BLOCK_FRAMES = 1 << 16  # frames handed to the encoder per call
WRITE_HEADROOM_BYTES = 1 << 20  # free space wanted beyond an output's size estimate
DISK_FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # what MPEG audio can carry


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a (N,) or (N, C) float array with soxr's high-quality filter (librosa's ``soxr_hq``)."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32)


def max_seconds() -> float:
    """The longest input :func:`read` accepts: ``MAX_SECONDS``, or ``$RVC_MLX_MAX_INPUT_HOURS`` hours."""
    hours = os.environ.get(MAX_SECONDS_ENV)
    if hours:
        try:
            return float(hours) * 3600.0
        except ValueError:
            raise AudioError(f"{MAX_SECONDS_ENV}={hours!r}: not a number of hours") from None
    return MAX_SECONDS


class _Mono:
    """Decoded blocks mixed down to mono as they arrive (a 5.1 file never holds six channels in memory), refusing
    input longer than :func:`max_seconds` as soon as that much is decoded (headers may lie about the length)."""

    def __init__(self, path: Path, sr: int):
        self.path, self.sr = path, sr
        self.limit = int(max_seconds() * sr)
        self.chunks: list[np.ndarray] = []
        self.n = 0

    def add(self, block: np.ndarray) -> None:
        """``block``: float32 ``(n, channels)``."""
        mono = block[:, 0].copy() if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        self.n += len(mono)
        if self.n > self.limit:
            raise AudioError(f"{self.path}: longer than {max_seconds() / 3600:g} h, the longest input rvc-mlx "
                             f"converts in one piece; split it (or raise {MAX_SECONDS_ENV})")
        self.chunks.append(mono)

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def _read_soundfile(path: Path):
    import soundfile as sf

    # In blocks, not sf.read: that allocates the frame count the header states up front, and a damaged header
    # may state billions of frames for a file of a few kilobytes. Blocks allocate only what is really decoded.
    with sf.SoundFile(str(path)) as f:
        block = max(1, READ_BLOCK_SAMPLES // max(f.channels, 1))
        mono = _Mono(path, f.samplerate)
        while True:
            data = f.read(block, dtype="float32", always_2d=True)
            if not len(data):
                break
            mono.add(data)
        return mono.audio(), f.samplerate


def _interleaved(frame) -> np.ndarray:
    """A packed float PyAV frame as ``(n, channels)``."""
    return frame.to_ndarray().reshape(-1, len(frame.layout.channels))


def _read_av(path: Path):
    import av

    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(f"{path}: no audio stream in file")
            # packed float in the stream's own layout, mixed down here: the mean of the channels, as libsndfile's
            # path does (FFmpeg's own downmix weights them: (L + R) / sqrt 2, 5.1 without its LFE). Packed, not
            # planar: PyAV's planar to_ndarray reads one buffer per channel and crashed on damaged frames.
            resampler = av.AudioResampler(format="flt")
            # a damaged file may have an audio stream without a decoder (codec_context None) or a rate
            codec = stream.codec_context
            sr = (codec.sample_rate if codec is not None else None) or getattr(stream, "rate", None)
            if codec is None or not sr:
                raise AudioError(f"{path}: cannot decode audio (no decoder or sample rate for its audio stream)")
            mono = _Mono(path, int(sr))
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    mono.add(_interleaved(out))
            for out in resampler.resample(None):
                mono.add(_interleaved(out))
    except av.FFmpegError as e:
        raise AudioError(f"{path}: cannot decode audio ({' '.join(str(e).split())[:200]})") from None
    return mono.audio().astype(np.float32, copy=False), int(sr)


def read(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any audio file as float32 mono ``(N,)`` (the mean of its channels) at its own sample rate.
    Raises ``AudioError`` (also for input longer than :func:`max_seconds`)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    import soundfile as sf

    try:
        data, sr = _read_soundfile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        data, sr = _read_av(path)
    return data, int(sr)


def header_seconds(path: str | os.PathLike) -> float | None:
    """An audio file's duration from its header, without decoding it (None when the header does not say).
    Raises ``AudioError`` when the file is not audio that soundfile or FFmpeg can open."""
    import av
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    try:
        with av.open(str(path)) as container:
            return container.duration / 1_000_000 if container.duration else None
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        raise AudioError(f"{path}: not an audio file (or a damaged one)") from None


def check(audio: np.ndarray, sr: int, source: str = "audio") -> np.ndarray:
    """Reject audio that cannot be converted: empty, shorter than 0.1 s, NaN/Inf, or digital silence (every sample
    below ``SILENCE_PEAK``, denormals included: ``SilentAudioError``, which a batch reports as a skip)."""
    audio = np.asarray(audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1 or audio.size == 0:
        raise AudioError(f"{source}: no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{source}: audio contains NaN or Inf samples")
    if audio.size < MIN_SECONDS * sr:
        raise AudioError(f"{source}: audio is {audio.size / sr:.3f} s long; at least {MIN_SECONDS} s is needed")
    if np.max(np.abs(audio)) < SILENCE_PEAK:
        raise SilentAudioError(f"{source}: audio is silent")
    return audio.astype(np.float32, copy=False)


def load(path: str | os.PathLike, sr: int = 16000) -> np.ndarray:
    """Read, mix down, validate and resample to ``sr``: float32 ``(N,)``."""
    audio, file_sr = read(path)
    audio = check(audio, file_sr, str(path))
    return resample(audio, file_sr, sr)


def _space_needed(audio: np.ndarray, fmt: str) -> int:
    """The free space an output needs: for wav/flac its 16-bit PCM size (flac is smaller) plus headroom; for the
    lossy formats, whose size is not known before encoding, the headroom only."""
    pcm = int(audio.size) * 2 if fmt in ("wav", "flac") else 0
    return pcm + WRITE_HEADROOM_BYTES


def _free_bytes(folder: Path) -> int | None:
    """Bytes free for this user in ``folder``'s file system; None when it does not say (size 0: /proc, some FUSE)."""
    import shutil

    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return usage.free if usage.total else None


def _disk_full(path: Path, needed: int) -> DiskFullError:
    free = _free_bytes(path.parent)
    facts = [f"{free / 1e6:.1f} MB free"] if free is not None else []
    if needed > WRITE_HEADROOM_BYTES:
        facts.append(f"about {needed / 1e6:.1f} MB needed")
    detail = f" ({', '.join(facts)})" if facts else ""
    return DiskFullError(f"{path}: no space left on the device{detail}; nothing was written")


def _encode(tmp: str, audio: np.ndarray, sr: int, fmt: str) -> None:
    """Write ``audio`` into ``tmp`` in blocks of ``WRITE_BLOCK_FRAMES``: libsndfile's Vorbis encoder crashes the
    process when one call hands it more than about 2.5 million samples (a minute at 40 kHz). Ogg is encoded in
    memory and written by Python, because that encoder also ignores write errors (a full disk gave a truncated
    file, or a crash) where Python raises ``OSError``."""
    import io

    import soundfile as sf

    subtype = "PCM_16" if fmt in ("wav", "flac") else None
    target = io.BytesIO() if fmt == "ogg" else tmp
    with sf.SoundFile(target, "w", sr, 1, format=WRITE_FORMATS[fmt], subtype=subtype) as f:
        for start in range(0, len(audio), WRITE_BLOCK_FRAMES):
            f.write(audio[start:start + WRITE_BLOCK_FRAMES])
    if fmt == "ogg":
        with open(tmp, "wb") as out:
            out.write(target.getbuffer())


def write(path: str | os.PathLike, audio: np.ndarray, sr: int, fmt: str | None = None) -> None:
    """Write float audio in [-1, 1] atomically. ``fmt`` (wav|flac|ogg|mp3) defaults to the file's extension.

    A full device (checked before encoding, and on any write error) is a ``DiskFullError``, a folder that cannot
    be written an ``OutputError``; either way nothing is left behind and an existing ``path`` is kept."""
    import errno

    import soundfile as sf

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "wav").lower()
    if fmt not in WRITE_FORMATS:
        raise AudioError(f"{path}: cannot write format {fmt!r} (choose from {', '.join(WRITE_FORMATS)})")
    audio = np.asarray(audio, dtype=np.float32)
    if fmt == "mp3" and sr not in MP3_RATES:  # e.g. 40 kHz models: the next rate MPEG supports
        target = min((r for r in MP3_RATES if r > sr), default=MP3_RATES[-1])
        audio, sr = resample(audio, sr, target), target
    audio = np.clip(audio, -1.0, 1.0)
    needed = _space_needed(audio, fmt)
    free = _free_bytes(path.parent) if path.parent.is_dir() else None
    if free is not None and free < needed:
        raise _disk_full(path, needed)

    def _write(tmp):
        try:
            _encode(tmp, audio, sr, fmt)
        except sf.LibsndfileError as e:  # libsndfile says only "System error" for a full disk
            free = _free_bytes(path.parent)
            if free is not None and free < needed:
                raise _disk_full(path, needed) from None
            raise AudioError(f"{path}: cannot write {fmt} ({e.error_string})") from None

    try:
        atomic_write(path, _write)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise _disk_full(path, needed) from None
        reason = e.strerror or (errno.errorcode.get(e.errno) if e.errno else None) or type(e).__name__
        raise OutputError(f"{path}: cannot write ({reason})") from None
