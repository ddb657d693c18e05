"""Audio in and out: the one place that touches files of sound.

Reading uses libsndfile (wav, flac, ogg, mp3, aiff, ...) and falls back to FFmpeg through PyAV for containers
libsndfile does not know (m4a, aac, opus in webm, video files). Resampling uses soxr (HQ). Writing is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import AudioError
from .atomic import atomic_write

WRITE_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
MIN_SECONDS = 0.1
SILENCE_PEAK = 1e-6  # peak below this is treated as digital silence
READ_BLOCK_SAMPLES = 1 << 20  # samples (all channels) decoded per block: 4 MB of float32
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # what MPEG audio can carry


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a (N,) or (N, C) float array with soxr's high-quality filter (librosa's ``soxr_hq``)."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32)


def _read_soundfile(path: Path):
    import soundfile as sf

    # In blocks, not sf.read: that allocates the frame count the header states up front, and a damaged header
    # may state billions of frames for a file of a few kilobytes. Blocks allocate only what is really decoded.
    with sf.SoundFile(str(path)) as f:
        block = max(1, READ_BLOCK_SAMPLES // max(f.channels, 1))
        chunks = []
        while True:
            data = f.read(block, dtype="float32", always_2d=True)
            if not len(data):
                break
            chunks.append(data)
        data = np.concatenate(chunks) if chunks else np.zeros((0, f.channels), np.float32)
        return data, f.samplerate


def _read_av(path: Path):
    import av

    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(f"{path}: no audio stream in file")
            resampler = av.AudioResampler(format="flt", layout="mono")
            # a damaged file may have an audio stream without a decoder (codec_context None) or a rate
            codec = stream.codec_context
            sr = (codec.sample_rate if codec is not None else None) or getattr(stream, "rate", None)
            if codec is None or not sr:
                raise AudioError(f"{path}: cannot decode audio (no decoder or sample rate for its audio stream)")
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as e:
        raise AudioError(f"{path}: cannot decode audio ({' '.join(str(e).split())[:200]})") from None
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return data[:, None].astype(np.float32), int(sr)


def read(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any audio file as float32 mono ``(N,)`` at its own sample rate. Raises ``AudioError``."""
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
    return data.mean(axis=1).astype(np.float32), int(sr)


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
    """Reject audio that cannot be converted: empty, shorter than 0.1 s, NaN/Inf, or digital silence."""
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
        raise AudioError(f"{source}: audio is silent")
    return audio.astype(np.float32, copy=False)


def load(path: str | os.PathLike, sr: int = 16000) -> np.ndarray:
    """Read, mix down, validate and resample to ``sr``: float32 ``(N,)``."""
    audio, file_sr = read(path)
    audio = check(audio, file_sr, str(path))
    return resample(audio, file_sr, sr)


def write(path: str | os.PathLike, audio: np.ndarray, sr: int, fmt: str | None = None) -> None:
    """Write float audio in [-1, 1] atomically. ``fmt`` (wav|flac|ogg|mp3) defaults to the file's extension."""
    import soundfile as sf

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "wav").lower()
    if fmt not in WRITE_FORMATS:
        raise AudioError(f"{path}: cannot write format {fmt!r} (choose from {', '.join(WRITE_FORMATS)})")
    subtype = "PCM_16" if fmt in ("wav", "flac") else None
    audio = np.asarray(audio, dtype=np.float32)
    if fmt == "mp3" and sr not in MP3_RATES:  # e.g. 40 kHz models: the next rate MPEG supports
        target = min((r for r in MP3_RATES if r > sr), default=MP3_RATES[-1])
        audio, sr = resample(audio, sr, target), target
    audio = np.clip(audio, -1.0, 1.0)

    def _write(tmp):
        try:
            sf.write(tmp, audio, sr, format=WRITE_FORMATS[fmt], subtype=subtype)
        except sf.LibsndfileError as e:
            raise AudioError(f"{path}: cannot write {fmt} ({e.error_string})") from None

    atomic_write(path, _write)
