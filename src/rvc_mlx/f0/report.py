"""Showing an F0 contour: CSV (time, f0, voiced) and a picture of the contour over a spectrogram."""

from __future__ import annotations

import os

import numpy as np

from ..atomic import atomic_write
from . import HOP, SAMPLE_RATE
from .postprocess import F0_FILE_HEADER

FRAME_SECONDS = HOP / SAMPLE_RATE
SPEC_FFT = 1024
PLOT_MAX_HZ = 1200.0


def _hz(value: np.float32) -> str:
    """The shortest decimal that reads back (through float64, as ``read_f0_file`` reads) as this float32, so a
    contour given back as an F0 file is the same bits; the exact value when double rounding could differ."""
    text = np.format_float_positional(value, unique=True, trim="-")
    if np.float32(float(text)) != value:
        text = np.format_float_positional(np.float64(value), unique=True, trim="-")
    return text


def csv_text(f0: np.ndarray) -> str:
    """``time,f0,voiced`` rows, one per 10 ms frame (time in seconds, f0 in Hz, voiced 0/1). f0 is written with
    the digits it needs to be read back bit for bit (float32): the CSV is a valid ``--f0-file``."""
    rows = [F0_FILE_HEADER]
    f0 = np.asarray(f0, np.float32)
    rows += [f"{i * FRAME_SECONDS:.2f},{_hz(hz)},{int(hz > 0)}" for i, hz in enumerate(f0)]
    return "\n".join(rows) + "\n"


def write_csv(path: str | os.PathLike, f0: np.ndarray) -> None:
    text = csv_text(f0)

    def _write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, _write)


def plot(path: str | os.PathLike, audio16k: np.ndarray, f0: np.ndarray, title: str = "") -> None:
    """PNG of the log spectrogram (0–1200 Hz) with the voiced F0 contour drawn over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import signal

    freqs, times, spec = signal.spectrogram(
        audio16k, fs=SAMPLE_RATE, nperseg=SPEC_FFT, noverlap=SPEC_FFT - HOP, scaling="spectrum"
    )
    keep = freqs <= PLOT_MAX_HZ
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    ax.pcolormesh(times, freqs[keep], 10 * np.log10(spec[keep] + 1e-10), shading="auto", cmap="magma")
    t = np.arange(len(f0)) * FRAME_SECONDS
    voiced = np.where(np.asarray(f0) > 0, f0, np.nan)
    ax.plot(t, voiced, color="cyan", linewidth=1.6, label="F0")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Hz")
    ax.set_ylim(0, PLOT_MAX_HZ)
    ax.set_title(title or "F0 over spectrogram")
    ax.legend(loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def plot_contours(path: str | os.PathLike, contours: dict[str, np.ndarray], title: str = "") -> None:
    """PNG of several voiced F0 contours (label -> f0 at 100 fps) on one time axis, e.g. input and output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.5), dpi=100)
    for label, f0 in contours.items():
        f0 = np.asarray(f0, dtype=np.float64)
        ax.plot(np.arange(len(f0)) * FRAME_SECONDS, np.where(f0 > 0, f0, np.nan), linewidth=1.4, label=label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("F0 (Hz)")
    ax.set_title(title or "pitch contours")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
