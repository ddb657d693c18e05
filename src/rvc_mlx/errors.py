"""Error types. Every user-facing failure is an ``RvcMlxError`` whose message is one readable line."""


class RvcMlxError(Exception):
    """Base class: the CLI prints ``str(err)`` and exits non-zero, without a traceback."""


class CheckpointError(RvcMlxError):
    """A torch checkpoint could not be read safely (corrupt, truncated, or asks for forbidden code)."""


class ConversionError(RvcMlxError):
    """A checkpoint was read but is not a model rvc-mlx knows how to convert."""


class FormatError(RvcMlxError):
    """A converted ``.safetensors`` file is corrupt, of the wrong kind, or does not fit the model."""


class AudioError(RvcMlxError):
    """Audio could not be read, is empty/silent/too short, or contains NaN/Inf."""


class InputError(RvcMlxError):
    """An option or argument is out of range (speaker id, pitch, index dimension, ...)."""


class SilentAudioError(AudioError):
    """The audio is digital silence (every sample below ``audio.SILENCE_PEAK``): nothing to convert. A batch
    reports such a take as skipped; converting one file refuses it."""


class OutputError(RvcMlxError):
    """An output could not be written (folder not writable, file system read-only, ...); nothing was left behind."""


class DiskFullError(OutputError):
    """The device holding an output is full (or the user's quota is used up); nothing was left behind."""
