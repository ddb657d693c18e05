"""Pitch references: synthetic test signals with known f0, and the PyTorch/library reference estimators.

Signals are harmonic tones (steady, vibrato, glides) with spectral tilt, separated by gaps, over white noise;
each comes with its true f0 per 10 ms frame and a mask of the frames scored for accuracy (voiced frames away
from onsets and offsets).

References (test-only code, uses torch):
- ``crepe`` / ``crepe-tiny``: ``torchcrepe.predict`` called exactly as rvc==0.3.5's ``Pipeline.get_f0`` does
  (``crepe`` goes through ``get_f0`` itself), with torchcrepe's random ±20-cent dither switched off;
- ``fcpe``: torchfcpe's bundled model, ``infer(audio, sr=16000, decoder_mode="local_argmax", threshold=0.006)``
  as Applio calls it;
- ``pm`` / ``harvest``: rvc==0.3.5's ``Pipeline.get_f0``; ``dio``: pyworld ``dio`` + ``stonemask`` at 10 ms with
  RVC's f0 range, as RVC's training-time f0 extractor does (rvc==0.3.5's inference pipeline has no dio).

torchcrepe and torchfcpe import torchaudio, whose PyPI wheels carry CUDA-linked extension libraries. A CPU-only
environment needs a torchaudio whose compiled libraries are removed (the pure-Python parts suffice); see
``TORCHAUDIO_RECIPE``.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import numpy as np

SR = 16000
HOP = 160
F0_MIN = 50.0
F0_MAX = 1100.0
FCPE_THRESHOLD = 0.006
EDGE_FRAMES = 3  # frames next to an onset/offset are not scored
CENTS_TOLERANCE = 50.0  # raw pitch accuracy: within 50 cents
TORCHAUDIO_RECIPE = """\
pip install --no-deps torchaudio==2.11.0 torchcrepe==0.0.24 torchfcpe==0.0.4 einops==0.8.2 local-attention==1.9.0 \
resampy==0.4.3
rm -f "$(python -c 'import importlib.util,os;print(os.path.dirname(importlib.util.find_spec("torchaudio").origin))')"/lib/*.so
"""


# ---------------------------------------------------------------------------------------------------------------
# signals


@dataclass(frozen=True)
class Note:
    """A harmonic note: ``seconds`` long, f0 gliding exponentially from ``f_start`` to ``f_end``, with vibrato
    of ``vib_cents`` depth at ``vib_rate`` Hz. ``f_start == 0`` means a gap (noise only)."""

    seconds: float
    f_start: float
    f_end: float | None = None
    vib_cents: float = 0.0
    vib_rate: float = 5.5


@dataclass
class Signal:
    name: str
    audio: np.ndarray  # (N,) float32 at 16 kHz
    f0: np.ndarray  # (1 + N // 160,) true f0 Hz per frame, 0 in gaps
    scored: np.ndarray  # (1 + N // 160,) bool: voiced frames away from note edges


def synthesize(
    notes: list[Note], snr_db: float | None, seed: int, tilt: float = 1.0, first_harmonic: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Render notes -> (audio (N,), true f0 per sample (N,)). Harmonics ``first_harmonic``.. up to 7 kHz with
    amplitude k**-tilt (``first_harmonic=2``: a missing fundamental)."""
    rng = np.random.default_rng(seed)
    f_track, parts = [], []
    for note in notes:
        n = int(round(note.seconds * SR))
        if note.f_start <= 0:
            f_track.append(np.zeros(n))
            continue
        t = np.arange(n) / SR
        f_end = note.f_start if note.f_end is None else note.f_end
        f = note.f_start * (f_end / note.f_start) ** (t / note.seconds)
        if note.vib_cents:
            f = f * 2 ** (note.vib_cents / 1200 * np.sin(2 * np.pi * note.vib_rate * t))
        f_track.append(f)
    f_all = np.concatenate(f_track)
    voiced = f_all > 0
    phase = 2 * np.pi * np.cumsum(f_all) / SR + rng.uniform(0, 2 * np.pi)
    audio = np.zeros_like(f_all)
    for k in range(first_harmonic, 60):
        amp = k ** (-tilt) * np.where(voiced & (k * f_all < 7000), 1.0, 0.0)
        if not amp.any():
            break
        audio += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    # 10 ms raised-cosine fades at note edges (no clicks)
    env = voiced.astype(np.float64)
    fade = int(0.01 * SR)
    kernel = np.hanning(2 * fade + 1)
    env = np.convolve(env, kernel / kernel.sum(), mode="same") * voiced
    audio *= env
    audio *= 0.5 / max(np.abs(audio).max(), 1e-9)
    if snr_db is not None:
        rms = np.sqrt(np.mean(audio[voiced] ** 2))
        audio += rng.standard_normal(len(audio)) * rms * 10 ** (-snr_db / 20)
    return audio.astype(np.float32), f_all


def _frame_truth(f_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_frames = 1 + len(f_sample) // HOP
    idx = np.minimum(np.arange(n_frames) * HOP, len(f_sample) - 1)
    f0 = f_sample[idx]
    voiced = f0 > 0
    scored = voiced.copy()
    edges = np.flatnonzero(np.diff(voiced.astype(np.int8)) != 0)
    for e in edges:
        scored[max(0, e - EDGE_FRAMES + 1) : e + EDGE_FRAMES + 1] = False
    scored[:EDGE_FRAMES] = False
    scored[-EDGE_FRAMES:] = False
    return f0, scored


GAP = Note(0.15, 0.0)
SIGNAL_SPECS: dict[str, tuple] = {
    # name: (notes, SNR dB or None, seed[, tilt, first harmonic])
    "steady": (
        [GAP] + [x for f in (60, 110, 220, 440, 700, 1000) for x in (Note(0.35, f), GAP)],
        30.0,
        1,
    ),
    "vibrato": ([GAP, Note(0.9, 180, vib_cents=60), GAP, Note(0.9, 520, vib_cents=40, vib_rate=6.5), GAP], 25.0, 2),
    "glide": ([GAP, Note(0.9, 90, 360), GAP, Note(0.9, 800, 200, vib_cents=25), GAP], 25.0, 3),
    "noisy": ([GAP, Note(0.6, 150, 240), GAP, Note(0.6, 330), GAP, Note(0.5, 600, 450), GAP], 3.0, 4),
    "no-fundamental": (
        [GAP, Note(0.6, 80, 130, vib_cents=30), GAP, Note(0.6, 260, vib_cents=80, vib_rate=7.0), GAP], 10.0, 5, 0.7, 2
    ),
}


def make_signal(name: str) -> Signal:
    notes, snr, seed, *shape = SIGNAL_SPECS[name]
    audio, f_sample = synthesize(notes, snr, seed, *shape)
    f0, scored = _frame_truth(f_sample)
    return Signal(name, audio, f0, scored)


def all_signals() -> list[Signal]:
    return [make_signal(name) for name in SIGNAL_SPECS]


# ---------------------------------------------------------------------------------------------------------------
# metrics


def cents(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1200·log2(a/b) where both are voiced (> 0), else NaN."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = np.full(np.broadcast(a, b).shape, np.nan)
    ok = (a > 0) & (b > 0)
    out[ok] = 1200 * np.log2(a[ok] / b[ok])
    return out


def raw_pitch_accuracy(est: np.ndarray, sig: Signal) -> float:
    """Fraction of scored (truly voiced) frames estimated voiced and within 50 cents of the truth."""
    n = min(len(est), len(sig.f0))
    est, truth, scored = est[:n], sig.f0[:n], sig.scored[:n]
    err = np.abs(cents(est, truth))
    hit = np.where(np.isnan(err), False, err < CENTS_TOLERANCE)
    return float(hit[scored].mean())


def parity_stats(ours: np.ndarray, ref: np.ndarray) -> dict:
    """Cent differences on frames both call voiced, and the fraction of frames with the same voicing."""
    n = min(len(ours), len(ref))
    ours, ref = np.asarray(ours[:n], dtype=np.float64), np.asarray(ref[:n], dtype=np.float64)
    d = np.abs(cents(ours, ref))
    d = d[~np.isnan(d)]
    same_voicing = float(np.mean((ours > 0) == (ref > 0)))
    return {
        "frames": n,
        "voiced_both": int(d.size),
        "median_cents": float(np.median(d)) if d.size else 0.0,
        "p99_cents": float(np.percentile(d, 99)) if d.size else 0.0,
        "max_cents": float(d.max()) if d.size else 0.0,
        "same_voicing": same_voicing,
        "len_ours": len(ours),
        "len_ref": len(ref),
    }


# ---------------------------------------------------------------------------------------------------------------
# reference estimators (torch / libraries)


@contextlib.contextmanager
def no_crepe_dither():
    """Switch off torchcrepe's random ±20-cent dither of decoded pitches (two runs otherwise differ)."""
    import torchcrepe

    saved = torchcrepe.convert.dither
    torchcrepe.convert.dither = lambda cents: cents
    try:
        yield
    finally:
        torchcrepe.convert.dither = saved


_PIPELINE = {}


def rvc_pipeline():
    """rvc==0.3.5's ``Pipeline`` (40 kHz target; only ``get_f0`` is used)."""
    if "p" not in _PIPELINE:
        saved = sys.argv
        sys.argv = sys.argv[:1]  # rvc's Config parses argv
        try:
            from rvc.configs.config import Config
            from rvc.modules.vc.pipeline import Pipeline

            _PIPELINE["p"] = Pipeline(40000, Config())
        finally:
            sys.argv = saved
    return _PIPELINE["p"]


def rvc_get_f0(audio: np.ndarray, method: str, key: str, filter_radius: int = 3) -> np.ndarray:
    """f0 from rvc==0.3.5's ``Pipeline.get_f0`` (pm | harvest | crepe). ``key`` must be unique per audio (RVC
    caches harvest results by path)."""
    p = rvc_pipeline()
    x = np.asarray(audio, dtype=np.float32)
    with no_crepe_dither():
        _, f0 = p.get_f0(f"{key}:{method}", x, len(x) // HOP, 0, method, filter_radius)
    return np.asarray(f0, dtype=np.float32)


def torchcrepe_rvc(audio: np.ndarray, model: str = "full", batch_size: int = 512) -> np.ndarray:
    """RVC's crepe recipe with any torchcrepe capacity (RVC hard-codes ``full``)."""
    import torch
    import torchcrepe

    x = torch.tensor(np.asarray(audio, dtype=np.float32))[None]
    with no_crepe_dither(), torch.no_grad():
        f0, pd = torchcrepe.predict(
            x, SR, HOP, F0_MIN, F0_MAX, model, batch_size=batch_size, device="cpu", return_periodicity=True
        )
        pd = torchcrepe.filter.median(pd, 3)
        f0 = torchcrepe.filter.mean(f0, 3)
        f0[pd < 0.1] = 0
    return f0[0].numpy().astype(np.float32)


def torchcrepe_probabilities(audio: np.ndarray, model: str = "full") -> np.ndarray:
    """torchcrepe's network output (T, 360) for its own framing of ``audio`` (hop 160, padded)."""
    import torch
    import torchcrepe

    x = torch.tensor(np.asarray(audio, dtype=np.float32))[None]
    out = []
    with torch.no_grad():
        for frames in torchcrepe.preprocess(x, SR, HOP, 512, "cpu", True):
            out.append(torchcrepe.infer(frames, model).numpy())
    return np.concatenate(out).astype(np.float32)


_FCPE = {}


def fcpe_model():
    if "m" not in _FCPE:
        from torchfcpe import spawn_bundled_infer_model

        _FCPE["m"] = spawn_bundled_infer_model(device="cpu")
    return _FCPE["m"]


def torchfcpe_f0(audio: np.ndarray, threshold: float = FCPE_THRESHOLD) -> np.ndarray:
    """torchfcpe's bundled model as Applio calls it: (1 + N // 160,) Hz, 0 = unvoiced."""
    import torch

    x = torch.tensor(np.asarray(audio, dtype=np.float32))[None, :, None]
    with torch.no_grad():
        f0 = fcpe_model().infer(x, sr=SR, decoder_mode="local_argmax", threshold=threshold)
    return f0[0, :, 0].numpy().astype(np.float32)


def torchfcpe_mel_and_latent(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torchfcpe's log-mel (T, 128) and network output (T, 360) for ``audio``."""
    import torch

    m = fcpe_model()
    x = torch.tensor(np.asarray(audio, dtype=np.float32))[None, :, None]
    with torch.no_grad():
        mel = m.wav2mel(x, SR)
        latent = m.model(mel)
    return mel[0].numpy(), latent[0].numpy()


def pyworld_dio(audio: np.ndarray) -> np.ndarray:
    """pyworld ``dio`` + ``stonemask`` at 10 ms in RVC's range (RVC's training-time extractor's recipe)."""
    import pyworld

    x = np.asarray(audio, dtype=np.float64)
    f0, t = pyworld.dio(x, fs=SR, f0_ceil=F0_MAX, f0_floor=F0_MIN, frame_period=1000 * HOP / SR)
    return pyworld.stonemask(x, f0, t, SR).astype(np.float32)


def reference_f0(method: str, sig: Signal) -> np.ndarray:
    """The reference implementation's f0 for ``method`` on ``sig``."""
    if method == "crepe":
        return rvc_get_f0(sig.audio, "crepe", sig.name)
    if method == "crepe-tiny":
        return torchcrepe_rvc(sig.audio, "tiny")
    if method == "fcpe":
        return torchfcpe_f0(sig.audio)
    if method in ("pm", "harvest"):
        # filter_radius 0: RVC's harvest median filter is post-processing (rvc_mlx.f0.postprocess), not estimation
        return rvc_get_f0(sig.audio, method, sig.name, filter_radius=0)
    if method == "dio":
        return pyworld_dio(sig.audio)
    raise ValueError(method)


REFERENCE_VERSION = 1  # bump when a reference recipe or the signals change (invalidates cached outputs)


def cached_reference_f0(method: str, sig: Signal, cache_dir) -> np.ndarray:
    """``reference_f0`` cached as .npy under ``cache_dir`` (CREPE full takes minutes on 2 cores)."""
    from pathlib import Path

    path = Path(cache_dir) / f"pitch-ref-v{REFERENCE_VERSION}-{method}-{sig.name}.npy"
    if path.exists():
        return np.load(path)
    f0 = reference_f0(method, sig)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, f0)
    tmp.replace(path)
    return f0


_OURS: dict = {}


def our_f0(method: str, name: str) -> np.ndarray:
    """rvc-mlx's f0 for ``method`` on signal ``name`` (memoised per process: shared by parity and accuracy tests)."""
    key = (method, name)
    if key not in _OURS:
        from rvc_mlx.f0 import F0Options, estimate

        _OURS[key] = estimate(method, make_signal(name).audio, F0Options(f0_min=F0_MIN, f0_max=F0_MAX))
    return _OURS[key]


REFERENCE_NAMES = {
    "crepe": "torchcrepe (RVC)",
    "crepe-tiny": "torchcrepe",
    "fcpe": "torchfcpe",
    "harvest": "pyworld (RVC)",
    "dio": "pyworld",
    "pm": "parselmouth (RVC)",
}
