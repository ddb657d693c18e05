"""Realtime voice conversion: a block-in/block-out streaming engine with RVC's realtime semantics.

No audio-device code: :meth:`StreamConverter.process` takes one block at the device rate and returns one, so the
engine runs from a file (:func:`stream_file`), a socket or a sound card (``rvc_mlx.devices``). The arithmetic is
that of RVC's realtime GUI (2026 ``realtime_gui.py`` / ``rtrvc.py``)::

    block ─ [dB gate per 10 ms] ─ device ring: extra + crossfade + search + block
            └ new block + 20 ms left context ─ sinc resample ─ 16 kHz ring (whole 10 ms frames)
    16 kHz ring ─ HuBERT (all of it) ─ index blend (new frames only) ─ ×2 upsample
              └ last block16k + 800 samples ─ F0 ─ [3:-1] into a 1024-frame pitch cache
    synthesizer window: encoder on every frame, flow from skip_head − 24, decoder on return_length frames
      ─ [resample to the device rate] ─ rms mix (40 ms frames) ─ SOLA (10 ms search, sin² or phase-vocoder fade)
      ─ block out; the next sola_buffer samples kept for the next fade

Sizes (device rate ``sr``; every duration rounded to the 10 ms grid ``zc = sr // 100``)::

    sola_buffer = min(crossfade, 40 ms)   sola_search = 10 ms   skip_head = extra / 10 ms
    return_length = (block + sola_buffer + sola_search) / 10 ms

Latency: the output trails the input by ``crossfade + 10 ms − SOLA offset`` (the engine); live, capture and
playback add about two blocks plus the devices' own latency (see :class:`Latency`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from .errors import InputError
from .pipeline import timed, upsample2

SAMPLE_RATE = 16000  # HuBERT and the F0 estimators
HOP = 160  # 16 kHz samples per 10 ms frame
FRAME_SECONDS = 0.01
PITCH_CACHE = 1024  # frames of pitch history kept (rtrvc's cache_pitch / cache_pitchf)
F0_CONTEXT = 800  # 16 kHz samples of left context the F0 window adds to the new block
RMVPE_CHUNK = 5120  # RMVPE's window is rounded up to 5120·k − 160 samples (a whole multiple of 32 mel frames)
F0_TRIM = (3, 1)  # F0 frames dropped at the window's start (no left context) and end (half-padded "now")
SOLA_BUFFER_FRAMES = 4  # 10 ms frames: the longest crossfade SOLA fades over; longer crossfades add look-ahead only
GATE_OFF = -60.0  # dB: a threshold at or below this turns the silence gate off
RMS_FLOOR = 1e-3  # rms mix: the converted envelope is floored here before dividing
RESAMPLE_WIDTH, RESAMPLE_ROLLOFF = 6, 0.99  # torchaudio Resample's sinc_interp_hann defaults
PM_FLOOR, PM_CEILING, PM_VOICING = 65.0, 1100.0, 0.6  # realtime pm (parselmouth to_pitch_ac)
WARMUP_BLOCKS = 3
WARMUP_HZ, WARMUP_LEVEL = 220.0, 0.1
STREAM_F0_METHODS = ("rmvpe", "fcpe", "pm")
UNVOICED = ("interpolate", "zero")
MIN_RATE, MAX_RATE = 16000, 192000
STATS_WINDOW = 2048  # per-block compute times kept for the percentiles


@dataclass(frozen=True)
class StreamOptions:
    """Realtime settings; the defaults are RVC's realtime GUI's.

    Times in seconds (rounded to whole 10 ms). ``threshold``: dB below which 10 ms input frames are zeroed
    (−60: off). ``unvoiced``: ``"interpolate"`` fills unvoiced F0 frames between voiced ones (RVC 2026), ``"zero"``
    keeps them at 0 Hz (RVC 2024). ``sample_rate``: the device rate (None: the voice's). ``passthrough``: skip
    the voice and return the (gated) input through the same buffers and fade (for latency checks).
    """

    block_time: float = 0.25
    crossfade_time: float = 0.05
    extra_time: float = 2.5
    threshold: float = GATE_OFF
    pitch: float = 0.0
    f0_method: str = "rmvpe"
    index_rate: float = 0.0
    rms_mix_rate: float = 0.0
    sid: int = 0
    deterministic: bool = False
    sample_rate: int | None = None
    phase_vocoder: bool = False
    unvoiced: str = "interpolate"
    passthrough: bool = False

    RANGES = {"block_time": (0.02, 1.5), "crossfade_time": (0.01, 0.15), "extra_time": (0.05, 5.0),
              "threshold": (-60.0, 0.0), "pitch": (-24.0, 24.0), "index_rate": (0.0, 1.0),
              "rms_mix_rate": (0.0, 1.0)}

    def validate(self) -> "StreamOptions":
        for name, (lo, hi) in self.RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
                raise InputError(f"{name.replace('_', '-')} must be within {lo:g}..{hi:g}, got {value!r}")
        if self.f0_method not in STREAM_F0_METHODS:
            raise InputError(f"f0 method {self.f0_method!r} is not available live (choose from "
                             f"{', '.join(STREAM_F0_METHODS)})")
        if self.unvoiced not in UNVOICED:
            raise InputError(f"unvoiced must be one of {', '.join(UNVOICED)}, got {self.unvoiced!r}")
        sr = self.sample_rate
        if sr is not None and (int(sr) != sr or not MIN_RATE <= sr <= MAX_RATE or sr % 100):
            raise InputError(f"device sample rate {sr} Hz is not supported (a multiple of 100 Hz within "
                             f"{MIN_RATE}..{MAX_RATE}, e.g. 44100 or 48000)")
        if self.sid < 0:
            raise InputError(f"speaker id must be >= 0, got {self.sid}")
        return self


# -- signal steps (numpy, float32 like the reference) -------------------------------------------------------------


class SincResampler:
    """Band-limited resampling by a fixed ratio with torchaudio ``Resample``'s arithmetic (``sinc_interp_hann``,
    width 6, rolloff 0.99, the kernel built in float32 as RVC's realtime path builds it): ``(N,) -> (⌈N·new/orig⌉,)``.
    Stateless: the caller supplies the left context it wants."""

    def __init__(self, orig: int, new: int):
        g = math.gcd(int(orig), int(new))
        self.orig, self.new = int(orig) // g, int(new) // g
        base = min(self.orig, self.new) * RESAMPLE_ROLLOFF
        self.width = math.ceil(RESAMPLE_WIDTH * self.orig / base)
        idx = np.arange(-self.width, self.width + self.orig, dtype=np.float32)[None] / np.float32(self.orig)
        t = np.arange(0, -self.new, -1, dtype=np.float32)[:, None] / np.float32(self.new) + idx
        t = np.clip(t * np.float32(base), -RESAMPLE_WIDTH, RESAMPLE_WIDTH).astype(np.float32)
        window = np.cos(t * np.float32(math.pi) / np.float32(RESAMPLE_WIDTH) / np.float32(2)) ** 2
        t = t * np.float32(math.pi)
        with np.errstate(invalid="ignore", divide="ignore"):
            kernel = np.where(t == 0, np.float32(1.0), np.sin(t) / t)
        self.kernel = (kernel * (window * np.float32(base / self.orig))).astype(np.float32)  # (new, K)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.orig == self.new:
            return np.asarray(x, dtype=np.float32)
        n = x.shape[0]
        padded = np.pad(np.asarray(x, dtype=np.float32), (self.width, self.width + self.orig))
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.kernel.shape[1])[:: self.orig]
        out = (frames @ self.kernel.T).reshape(-1)
        return out[: math.ceil(self.new * n / self.orig)]


def frame_rms(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """RMS of centred, zero-padded frames (``librosa.feature.rms(y, frame_length, hop_length)[0]``): (1 + N // hop,)."""
    padded = np.pad(np.asarray(x, dtype=np.float32), frame // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]
    return np.sqrt(np.mean(frames * frames, axis=-1, dtype=np.float32))


def amplitude_db(rms: np.ndarray) -> np.ndarray:
    """``librosa.amplitude_to_db(rms, ref=1)`` (floor 1e-5; the 80 dB top clamp cannot reach a −60..0 gate)."""
    return 20.0 * np.log10(np.maximum(rms, 1e-5))


def resize_align_corners(x: np.ndarray, size: int) -> np.ndarray:
    """Linear resize with the end points kept (torch ``interpolate(mode="linear", align_corners=True)``)."""
    n = x.shape[0]
    if n == 1 or size == 1:
        return np.full(size, x[0], dtype=np.float32)
    pos = np.arange(size, dtype=np.float64) * ((n - 1) / (size - 1))
    i0 = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    lam = (pos - i0).astype(np.float32)
    return (x[i0] * (1 - lam) + x[i0 + 1] * lam).astype(np.float32)


def fade_windows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """sin² fade-in over ``n`` samples and its complement."""
    fade_in = (np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, n, dtype=np.float32)) ** 2).astype(np.float32)
    return fade_in, (1 - fade_in).astype(np.float32)


def sola_offset(head: np.ndarray, tail: np.ndarray, search: int) -> int:
    """Where ``tail`` (the previous block's kept samples) best continues into ``head``: the argmax over
    ``0..search`` of the cross-correlation normalised by the new signal's energy."""
    n = tail.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(head[: n + search], n)
    nom = windows @ tail
    den = np.sqrt(np.einsum("ij,ij->i", windows, windows) + 1e-8)
    return int(np.argmax(nom / den))


def phase_vocoder_fade(a: np.ndarray, b: np.ndarray, fade_out: np.ndarray, fade_in: np.ndarray) -> np.ndarray:
    """Crossfade ``a`` (old tail) into ``b`` (new head) with RVC's phase-vocoder fade: squared windows plus
    sinusoids whose phase glides bin by bin from ``a``'s to ``b``'s (``a == b`` gives ``a``)."""
    n = a.shape[0]
    window = np.sqrt(fade_out * fade_in)
    fa, fb = np.fft.rfft(a * window), np.fft.rfft(b * window)
    mag = np.abs(fa) + np.abs(fb)
    mag[1 : -1 if n % 2 == 0 else None] *= 2
    phase_a = np.angle(fa)
    delta = np.angle(fb) - phase_a
    delta -= 2 * np.pi * np.floor(delta / (2 * np.pi) + 0.5)
    bins = 2 * np.pi * np.arange(n // 2 + 1)
    t = np.arange(n)[:, None] / n
    glide = (mag * np.cos((bins + delta) * t + phase_a)).sum(-1) * window / n
    return (a * fade_out**2 + b * fade_in**2 + glide).astype(np.float32)


def pm_window(x: np.ndarray) -> np.ndarray:
    """Realtime pm F0 of a 16 kHz window: Praat's autocorrelation pitch on the window padded for a 65 Hz floor,
    cut to ``N // 160 + 1`` frames (RVC's realtime pm, unlike the offline one)."""
    import parselmouth

    frames = x.shape[0] // HOP + 1
    pad = int(np.ceil(1.5 / PM_FLOOR * SAMPLE_RATE))
    sound = parselmouth.Sound(np.pad(x.astype(np.float64), (pad, pad + 1)), SAMPLE_RATE)
    f0 = sound.to_pitch_ac(time_step=FRAME_SECONDS, voicing_threshold=PM_VOICING, pitch_floor=PM_FLOOR,
                           pitch_ceiling=PM_CEILING).selected_array["frequency"]
    return np.pad(f0, (0, max(0, frames - f0.shape[0])))[:frames].astype(np.float32)


# -- the engine -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Buffer sizes in device samples (``zc`` = 10 ms) and synthesizer frames."""

    sample_rate: int
    zc: int
    block: int
    crossfade: int
    sola_buffer: int
    sola_search: int
    extra: int

    @classmethod
    def of(cls, options: StreamOptions, sr: int) -> "Geometry":
        zc = sr // 100

        def frames(seconds: float) -> int:
            return int(np.round(seconds * sr / zc)) * zc

        crossfade = frames(options.crossfade_time)
        return cls(sr, zc, max(zc, frames(options.block_time)), crossfade,
                   min(crossfade, SOLA_BUFFER_FRAMES * zc), zc, frames(options.extra_time))

    @property
    def ring(self) -> int:
        return self.extra + self.crossfade + self.sola_search + self.block

    @property
    def ring16k(self) -> int:
        return HOP * self.ring // self.zc

    @property
    def block16k(self) -> int:
        return HOP * self.block // self.zc

    @property
    def skip_head(self) -> int:
        return self.extra // self.zc

    @property
    def return_length(self) -> int:
        return (self.block + self.sola_buffer + self.sola_search) // self.zc


@dataclass
class Latency:
    """Latency of the engine in milliseconds.

    ``engine_ms``: how far the output trails the input at most (crossfade + 10 ms); ``algorithmic_ms``: the same
    minus the last SOLA offset. :meth:`estimate_ms`: end to end live, ``2·block + crossfade + 10 ms`` plus the
    devices' input and output latency (a block is captured whole before it is converted, and its output plays
    after the block already queued)."""

    block_ms: float
    engine_ms: float
    sola_offset_ms: float = 0.0

    @property
    def algorithmic_ms(self) -> float:
        return self.engine_ms - self.sola_offset_ms

    def estimate_ms(self, input_device_ms: float = 0.0, output_device_ms: float = 0.0) -> float:
        return 2 * self.block_ms + self.engine_ms + max(0.0, input_device_ms) + max(0.0, output_device_ms)


@dataclass
class StreamStats:
    """Counters of a stream: blocks converted, blocks dropped (by the I/O layer when it fell behind), input
    samples that were not finite (zeroed), recent per-block compute times and the last block's time per stage."""

    block_ms: float
    blocks: int = 0
    drops: int = 0
    bad_samples: int = 0
    compute_ms: deque = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    stage_ms: dict = field(default_factory=dict)  # stage -> ms of the last block (hubert, index, f0, synthesis)

    def summary(self) -> dict:
        times = np.array(self.compute_ms) if self.compute_ms else np.zeros(1)
        p50, p95 = (float(v) for v in np.percentile(times, [50, 95]))
        return {"blocks": self.blocks, "drops": self.drops, "bad_samples": self.bad_samples,
                "p50_ms": p50, "p95_ms": p95, "max_ms": float(times.max()),
                "rtf_p50": p50 / self.block_ms, "rtf_p95": p95 / self.block_ms,
                "load": float(times[-1]) / self.block_ms}


class StreamConverter:
    """A voice (:class:`rvc_mlx.pipeline.VoiceConverter`) as a stream: ``process(block) -> block``.

    >>> sc = StreamConverter(VoiceConverter.load(...), StreamOptions(pitch=12, sample_rate=48000))
    >>> out = sc.process(block)      # block: (sc.block_size,) float32 at sc.sample_rate

    Not thread-safe: call it from one thread (it runs MLX). ``skip_head``, ``return_length``, ``cache_pitch``,
    ``cache_pitchf`` and ``last_offset`` are kept for inspection.
    """

    def __init__(self, converter, options: StreamOptions | None = None):
        self.converter = converter
        self.options = (options or StreamOptions()).validate()
        cfg = converter.synthesizer.config
        if self.options.sid >= cfg.n_speakers:
            raise InputError(f"speaker id {self.options.sid} is out of range: this model has {cfg.n_speakers} "
                             f"speaker(s)")
        if cfg.use_f0 and self.options.f0_method == "rmvpe" and not converter.f0_models.get("rmvpe"):
            raise InputError("f0 method 'rmvpe' needs an RMVPE model (--rmvpe, or rvc-mlx download rmvpe)")
        self.model_rate = cfg.sample_rate
        self.geometry = Geometry.of(self.options, self.options.sample_rate or self.model_rate)
        geo = self.geometry
        self.resample_in = SincResampler(geo.sample_rate, SAMPLE_RATE)
        self.resample_out = SincResampler(self.model_rate, geo.sample_rate)
        self.fade_in, self.fade_out = fade_windows(geo.sola_buffer)
        self.latency = Latency(1000 * geo.block / geo.sample_rate,
                               1000 * (geo.crossfade + geo.sola_search) / geo.sample_rate)
        self.stats = StreamStats(self.latency.block_ms)
        from .f0 import F0Options

        f0_models = converter.f0_models
        self._f0_options = F0Options(rmvpe_path=f0_models.get("rmvpe"), fcpe_path=f0_models.get("fcpe"))
        self.reset()

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.geometry.sample_rate

    @property
    def block_size(self) -> int:
        return self.geometry.block

    @property
    def skip_head(self) -> int:
        return self.geometry.skip_head

    @property
    def return_length(self) -> int:
        return self.geometry.return_length

    def reset(self) -> None:
        """Clear every buffer (silence history), as at the start of a stream."""
        geo = self.geometry
        self.input_wav = np.zeros(geo.ring, dtype=np.float32)
        self.input_wav16k = np.zeros(geo.ring16k, dtype=np.float32)
        self.rms_buffer = np.zeros(4 * geo.zc, dtype=np.float32)
        self.sola_tail = np.zeros(geo.sola_buffer, dtype=np.float32)
        self.cache_pitch = np.zeros(PITCH_CACHE, dtype=np.int32)
        self.cache_pitchf = np.zeros(PITCH_CACHE, dtype=np.float32)
        self.last_offset = 0

    def warmup(self, blocks: int = WARMUP_BLOCKS) -> None:
        """Run ``blocks`` blocks of a quiet tone (every kernel and buffer shape used later), then reset, so the
        first real blocks are not late. Leaves the counters as they were."""
        t = np.arange(self.block_size) / self.sample_rate
        tone = (WARMUP_LEVEL * np.sin(2 * np.pi * WARMUP_HZ * t)).astype(np.float32)
        stats = self.stats
        self.stats = StreamStats(stats.block_ms)
        try:
            for _ in range(blocks):
                self.process(tone)
        finally:
            self.stats = stats
            self.reset()

    # -- processing ---------------------------------------------------------------------------------------------

    def _check(self, block) -> np.ndarray:
        block = np.asarray(block)
        if block.dtype.kind != "f":
            raise InputError(f"audio blocks must be floating-point samples in [-1, 1], got {block.dtype}")
        if block.ndim == 2 and 1 in block.shape:
            block = block.reshape(-1)
        if block.shape != (self.block_size,):
            raise InputError(f"audio block must have {self.block_size} mono samples at {self.sample_rate} Hz, "
                             f"got shape {block.shape}")
        block = block.astype(np.float32)  # a copy: the caller's buffer is never modified
        bad = ~np.isfinite(block)
        if bad.any():
            self.stats.bad_samples += int(bad.sum())
            block[bad] = 0.0
        return block

    def process(self, block) -> np.ndarray:
        """Convert one block: ``(block_size,)`` float at ``sample_rate`` -> ``(block_size,)`` float32."""
        start = time.perf_counter()
        self.stats.stage_ms = {}
        out = self._process(self._check(block))
        self.stats.blocks += 1
        self.stats.compute_ms.append(1000 * (time.perf_counter() - start))
        return out

    def _gate(self, block: np.ndarray) -> np.ndarray:
        """Zero the 10 ms frames quieter than the threshold; returns ``block + 20 ms``: the previous block's last
        20 ms re-gated with the new right context (so the gate adds no delay)."""
        zc = self.geometry.zc
        x = np.concatenate([self.rms_buffer, block])
        db = amplitude_db(frame_rms(x, 4 * zc, zc)[2:])
        self.rms_buffer = x[-4 * zc :].copy()
        x = x[2 * zc - zc // 2 :].copy()
        for i in np.flatnonzero(db < self.options.threshold):
            x[i * zc : (i + 1) * zc] = 0.0
        return x[zc // 2 :]

    def _process(self, block: np.ndarray) -> np.ndarray:
        geo, opts = self.geometry, self.options
        if opts.threshold > GATE_OFF:
            block = self._gate(block)
        n = block.shape[0]
        self.input_wav[: -geo.block] = self.input_wav[geo.block :]
        self.input_wav[-n:] = block
        self.input_wav16k[: -geo.block16k] = self.input_wav16k[geo.block16k :]
        # the new samples with 20 ms of left context; the first 10 ms at 16 kHz (edge effects) is dropped
        fresh = self.resample_in(self.input_wav[-n - 2 * geo.zc :])[HOP:]
        self.input_wav16k[-fresh.shape[0] :] = fresh
        if opts.passthrough:
            wav = self.input_wav[geo.extra :].copy()
        else:
            wav = self.resample_out(self._infer())
            if opts.rms_mix_rate < 1:
                wav = self._rms_mix(wav)
        return self._sola(wav)

    def _infer(self) -> np.ndarray:
        """The voice on the 16 kHz ring: ``return_length`` frames of audio at the model rate."""
        vc, geo, opts = self.converter, self.geometry, self.options
        cfg = vc.synthesizer.config
        seconds = {}
        with timed(seconds, "hubert"):
            feats = vc.content_features(self.input_wav16k)
        feats = np.concatenate([feats, feats[-1:]])
        new = geo.skip_head // 2
        if vc.index is not None and opts.index_rate != 0:
            with timed(seconds, "index"):
                feats[new:] = vc.index.blend(feats[new:], opts.index_rate)
        p_len = self.input_wav16k.shape[0] // HOP
        feats = upsample2(feats)[:p_len]
        pitch = f0 = None
        if cfg.use_f0:
            with timed(seconds, "f0"):
                self._update_pitch()
            pitch, f0 = self.cache_pitch[-p_len:], self.cache_pitchf[-p_len:]
        noise = "none" if opts.deterministic else "default"
        with timed(seconds, "synthesis"):
            audio = vc.synthesizer.stages(feats, pitch, f0, sid=opts.sid, noise=noise, skip_head=geo.skip_head,
                                          return_length=geo.return_length)["audio"]
            mx.eval(audio)
        self.stats.stage_ms = {k: 1000 * v for k, v in seconds.items()}
        return np.array(audio)

    def _update_pitch(self) -> None:
        """F0 of the newest ``block16k + 800`` samples (RMVPE: rounded up to ``5120·k − 160``), post-processed and
        written, less its first 3 and last frame, over the end of the pitch cache shifted by one block."""
        from .f0 import estimate
        from .f0 import postprocess as pp

        geo, opts = self.geometry, self.options
        size = geo.block16k + F0_CONTEXT
        if opts.f0_method == "rmvpe":
            size = RMVPE_CHUNK * ((size - 1) // RMVPE_CHUNK + 1) - HOP
        x = self.input_wav16k[-size:]
        f0 = pm_window(x) if opts.f0_method == "pm" else estimate(opts.f0_method, x, self._f0_options)
        f0 = np.array(f0, dtype=np.float32)
        unvoiced = f0 == 0
        if opts.unvoiced == "interpolate" and not unvoiced.all():
            f0[unvoiced] = np.interp(np.flatnonzero(unvoiced), np.flatnonzero(~unvoiced), f0[~unvoiced])
        f0 *= np.float32(2 ** (opts.pitch / 12))
        shift = geo.block16k // HOP
        keep = f0.shape[0] - sum(F0_TRIM)
        for cache, values in ((self.cache_pitch, pp.coarse(f0, np.float32)), (self.cache_pitchf, f0)):
            cache[:-shift] = cache[shift:].copy()
            cache[-keep:] = values[F0_TRIM[0] : -F0_TRIM[1]]

    def _rms_mix(self, wav: np.ndarray) -> np.ndarray:
        """Give the converted audio the input's loudness envelope (40 ms frames every 10 ms) by
        ``(rms_in / rms_out)^(1 − rms_mix_rate)``."""
        zc = self.geometry.zc
        n = wav.shape[0]
        rms_in = frame_rms(self.input_wav[self.geometry.extra :][:n], 4 * zc, zc)
        rms_out = frame_rms(wav, 4 * zc, zc)
        env_in = resize_align_corners(rms_in, n + 1)[:-1]
        env_out = np.maximum(resize_align_corners(rms_out, n + 1)[:-1], np.float32(RMS_FLOOR))
        return (wav * np.power(env_in / env_out, np.float32(1 - self.options.rms_mix_rate))).astype(np.float32)

    def _sola(self, wav: np.ndarray) -> np.ndarray:
        """Align ``wav`` to the kept tail, fade the tail into it, keep the next tail, return one block."""
        geo = self.geometry
        offset = sola_offset(wav, self.sola_tail, geo.sola_search)
        self.last_offset = offset
        self.latency.sola_offset_ms = 1000 * offset / geo.sample_rate
        wav = wav[offset:].copy()
        head = wav[: geo.sola_buffer]
        if self.options.phase_vocoder:
            wav[: geo.sola_buffer] = phase_vocoder_fade(self.sola_tail, head, self.fade_out, self.fade_in)
        else:
            wav[: geo.sola_buffer] = head * self.fade_in + self.sola_tail * self.fade_out
        self.sola_tail = wav[geo.block : geo.block + geo.sola_buffer].copy()
        return wav[: geo.block]


def stream_file(engine: StreamConverter, audio: np.ndarray) -> np.ndarray:
    """Run ``engine`` block by block over mono ``audio`` at ``engine.sample_rate`` (no pacing): the output has the
    input's length; the last partial block is padded with silence."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n, size = audio.shape[0], engine.block_size
    out = np.empty(-(-n // size) * size, dtype=np.float32)
    for i in range(0, n, size):
        block = audio[i : i + size]
        if block.shape[0] < size:
            block = np.pad(block, (0, size - block.shape[0]))
        out[i : i + size] = engine.process(block)
    return out[:n]

