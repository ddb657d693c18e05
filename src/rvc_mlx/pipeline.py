"""The RVC voice-conversion pipeline (semantics of rvc==0.3.5 ``Pipeline.pipeline`` and ``VC.vc_single``).

Each step is a small function over arrays; :class:`VoiceConverter` composes them::

    audio@16k ─ normalise_input ─ high_pass ─ reflect pad ─┬─ F0 (whole padded audio) ─ post-process ─ coarse
                                                           └─ pieces cut at quiet points (cut_points)
    per piece: HuBERT ─ retrieval blend ─ ×2 upsample ─ protect ─ synthesizer ─ trim pads
    concatenate ─ rms_mix ─ resample ─ peak-normalise

Deliberate deviations from the reference, each switchable back:
* ``ConversionOptions.deterministic`` zeroes the synthesizer noise (the reference is always random).
* retrieval guards distance-0 matches (the reference divides by zero there; see ``retrieval``).
* an F0 file replaces the estimate *before* autotune and pitch shift (the reference: after; see
  ``VoiceConverter.f0``), so ``pitch_contour`` (what ``rvc-mlx pitch`` writes) round-trips exactly. Not
  switchable: with ``pitch`` 0 and no autotune both orders are the same.
"""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager

import mlx.core as mx
import numpy as np

from . import audio as audio_io
from .errors import InputError
from .options import ConversionOptions  # noqa: F401  (re-exported: the pipeline's public options)

SAMPLE_RATE = 16000  # HuBERT and every F0 estimator work at 16 kHz
WINDOW = 160  # samples per F0 frame (100 fps)
X_PAD = 1  # seconds of reflect padding around every piece
X_QUERY = 6  # seconds searched either side of a cut point for the quietest sample
X_CENTER = 38  # seconds between cut points
X_MAX = 41  # audio longer than this (after a small pad) is cut into pieces
INPUT_PEAK = 0.95  # input louder than this is scaled down first (VC.vc_single)
OUTPUT_PEAK = 0.99  # output louder than this is scaled down last
HIGH_PASS_ORDER = 5
HIGH_PASS_HZ = 48
PROTECT_OFF = 0.5  # protect >= 0.5 disables the protection of unvoiced frames
BLOCK = 1 << 20  # samples per block of the length-proportional steps (high-pass, rms mix): bounds their temporaries

# Stages reported to ``VoiceConverter.convert(..., progress=callback)``, in order (f0 only for f0 voices)
PROGRESS_STAGES = ("f0", "convert", "post")

# Stages recorded by ``VoiceConverter.convert(..., trace=dict)``: name -> (axes, meaning)
STAGES = {
    "input16k": ("samples", "input after resampling to 16 kHz, peak limiting and the 48 Hz high-pass"),
    "f0": ("frames100", "F0 in Hz of the whole padded input after shift/autotune/file (0 = unvoiced)"),
    "pitch": ("frames100", "coarse pitch 1..255 of the whole padded input"),
    "hubert": ("frames50, channels", "HuBERT/ContentVec features of the piece (v1: 256-d, v2: 768-d)"),
    "retrieved": ("frames50, channels", "features after the index blend (equal to hubert without an index)"),
    "coarse_pitch": ("frames100", "coarse pitch of the piece, cut to the feature length"),
    "f0_frames": ("frames100", "F0 of the piece in Hz, cut to the feature length"),
    "protected": ("frames100, channels", "features upsampled ×2 and blended by protect"),
    "m_p": ("frames100, channels", "prior mean from enc_p"),
    "logs_p": ("frames100, channels", "prior log-std from enc_p"),
    "z_p": ("frames100, channels", "m_p + exp(logs_p)·noise·0.66666"),
    "z": ("frames100, channels", "latent after the reverse flow"),
    "generator": ("samples", "decoder output at the model rate, before trimming the pads"),
    "audio": ("samples", "final output (trimmed, rms-mixed, resampled, peak-normalised)"),
}


# -- steps ------------------------------------------------------------------------------------------------------


def normalise_input(audio: np.ndarray) -> np.ndarray:
    """Scale ``audio`` down so its peak is at most ``INPUT_PEAK`` (louder input only)."""
    peak = np.abs(audio).max() / INPUT_PEAK
    return audio / peak if peak > 1 else audio


def high_pass(audio: np.ndarray) -> np.ndarray:
    """Zero-phase Butterworth high-pass (order 5, 48 Hz) at 16 kHz; float64 like the reference.

    Bit-identical to ``scipy.signal.filtfilt(b, a, audio)`` (odd extension of 3·6 samples, steady-state initial
    conditions), computed in blocks of ``BLOCK`` samples with the filter state carried across blocks, so the only
    full-length array is the float64 result (filtfilt itself holds several)."""
    from scipy import signal

    b, a = signal.butter(N=HIGH_PASS_ORDER, Wn=HIGH_PASS_HZ, btype="high", fs=SAMPLE_RATE)
    x = np.asarray(audio)
    edge = 3 * max(len(a), len(b))
    if x.ndim != 1 or x.shape[0] <= edge:
        return signal.filtfilt(b, a, x)
    # odd extension at both ends (computed in the input's dtype, as filtfilt's odd_ext)
    left = 2 * x[:1] - x[edge:0:-1]
    right = 2 * x[-1:] - x[-2 : -(edge + 2) : -1]
    n = x.shape[0] + 2 * edge
    y = np.empty(n, dtype=np.result_type(b, a, x))
    zi = signal.lfilter_zi(b, a)
    state = zi * left[0]
    pos = 0
    blocks = (x[i : i + BLOCK] for i in range(0, x.shape[0], BLOCK))
    for part in itertools.chain((left,), blocks, (right,)):  # forward pass
        y[pos : pos + part.shape[0]], state = signal.lfilter(b, a, part, zi=state)
        pos += part.shape[0]
    state = zi * y[-1]
    for stop in range(n, 0, -BLOCK):  # backward pass, in place from the end
        start = max(0, stop - BLOCK)
        out, state = signal.lfilter(b, a, y[start:stop][::-1], zi=state)
        y[start:stop] = out[::-1]
    return y[edge:-edge]


def prepare_input(audio: np.ndarray, sr: int) -> np.ndarray:
    """Mono float ``audio`` at ``sr`` as every later step sees it: checked, resampled to 16 kHz, peak-limited
    (``normalise_input``) and high-passed (float64, as the reference)."""
    audio16k = audio_io.resample(audio_io.check(audio, sr), sr, SAMPLE_RATE)
    return high_pass(normalise_input(audio16k.astype(np.float32)))


def reflect_pad32(audio: np.ndarray, pad: int) -> np.ndarray:
    """``np.pad(audio, (pad, pad), mode="reflect").astype(np.float32)`` without a full-length temporary."""
    n = audio.shape[0]
    if n <= pad:
        return np.pad(audio, (pad, pad), mode="reflect").astype(np.float32)
    out = np.empty(n + 2 * pad, dtype=np.float32)
    out[pad : pad + n] = audio
    out[:pad] = audio[pad:0:-1]
    out[pad + n :] = audio[-2 : -(pad + 2) : -1]
    return out


def cut_points(audio: np.ndarray) -> list[int]:
    """Sample positions (in unpadded ``audio``) where long audio is cut: every ``X_CENTER`` s, moved to the
    quietest point (smallest moving |x| sum over one window) within ±``X_QUERY`` s. Empty for short audio.

    Only the ±``X_QUERY`` s around each nominal cut are summed (the reference sums the whole signal), in the
    same order, so the sums, and the ties, are the same."""
    n = audio.shape[0]
    half = WINDOW // 2
    if n + 2 * half <= SAMPLE_RATE * X_MAX:
        return []
    query, center = SAMPLE_RATE * X_QUERY, SAMPLE_RATE * X_CENTER
    points = []
    for t in range(center, n, center):
        # the reference's audio_sum[j] = sum_i |pad[j + i]| (i < WINDOW, pad = audio reflect-padded by half),
        # needed for j in lo..hi: pad[lo : hi + WINDOW - 1] = audio[lo - half : hi + half - 1], reflected past the end
        lo, hi = t - query, min(t + query, n)
        need = hi + WINDOW - half - 1
        if need <= n:
            pad = audio[lo - half : need]
        else:
            pad = np.pad(audio[lo - half :], (0, half), mode="reflect")[: need - (lo - half)]
        seg = np.zeros(hi - lo, dtype=audio.dtype)
        for i in range(WINDOW):  # same summation order as the reference, so ties break identically
            seg += np.abs(pad[i : i + hi - lo])
        points.append(lo + int(np.argmin(seg)))
    return points


def estimate_f0(padded16k: np.ndarray, method: str, f0_options, filter_radius: int) -> np.ndarray:
    """F0 (float64 Hz, one value per ``WINDOW`` samples, ``len(padded16k) // WINDOW`` frames at most) of the whole
    padded audio with ``method``, and RVC's median filter when the method is harvest — the contour before an F0
    file, autotune and pitch shift."""
    from .f0 import estimate
    from .f0 import postprocess as pp

    f0 = estimate(method, padded16k, f0_options).astype(np.float64)
    if method == "harvest":  # RVC filters harvest's F0 only (before cutting: the last frame sees its neighbour)
        f0 = pp.median_filter(f0, filter_radius)
    return f0[: padded16k.shape[0] // WINDOW]


def pitch_contour(audio: np.ndarray, sr: int, method: str, f0_options=None, filter_radius: int = 3) -> np.ndarray:
    """The F0 a conversion of ``audio`` with ``method`` uses, on the audio's own time axis: float32 Hz (0 =
    unvoiced), frame i at i·10 ms, ``N16 // 160`` frames (``N16``: samples at 16 kHz).

    Computed exactly as :meth:`VoiceConverter.f0` does (the same prepared audio, ``X_PAD`` s reflect padding,
    estimate and harvest median filter), then the padding frames are cut off. It is the contour *before* an F0
    file, autotune and pitch shift: given back as an F0 file (see ``f0.postprocess.read_f0_file``) with the same
    ``method``, a conversion is unchanged, and ``pitch``/``autotune`` still apply to it once."""
    from .f0 import F0Options

    audio16k = prepare_input(audio, sr)
    padded = reflect_pad32(audio16k, SAMPLE_RATE * X_PAD)
    f0 = estimate_f0(padded, method, f0_options or F0Options(), filter_radius)
    start = SAMPLE_RATE * X_PAD // WINDOW
    return f0[start : start + audio16k.shape[0] // WINDOW].astype(np.float32)


def upsample2(feats: np.ndarray) -> np.ndarray:
    """50 fps -> 100 fps by repeating every frame (nearest neighbour), (T, C) -> (2T, C)."""
    return np.repeat(feats, 2, axis=0)


def protect_unvoiced(feats: np.ndarray, feats0: np.ndarray, f0: np.ndarray, protect: float) -> np.ndarray:
    """On unvoiced frames (f0 < 1) blend retrieved ``feats`` back toward the original ``feats0``:
    ``feats·w + feats0·(1 − w)`` with w = 1 on voiced frames and ``protect`` elsewhere."""
    w = np.where(f0 > 0, 1.0, protect).astype(np.float32)
    w = np.where(f0 < 1, protect, w).astype(np.float32)[:, None]
    return (feats * w + feats0 * (1 - w)).astype(np.float32)


def rms_envelope(audio: np.ndarray, sr: int) -> np.ndarray:
    """RMS over frames of ~1 s (``sr//2*2`` samples) every 0.5 s, centred with zero padding: (1 + N // hop,)
    float64. Frame j covers ``audio[(j - 1)·hop : (j + 1)·hop]``, i.e. two hop-long blocks, so the frame energies
    are sums of two block energies (accumulated in float64, ``BLOCK`` samples at a time)."""
    hop = sr // 2
    frame = 2 * hop
    n = audio.shape[0]
    energy = np.zeros(n // hop + 2)  # energy[k + 1] = sum of squares of block k; energy[0] = 0 (the padding)
    step = max(1, BLOCK // hop) * hop
    for i in range(0, n, step):
        chunk = audio[i : i + step].astype(np.float64)
        k0, full = i // hop, chunk.shape[0] // hop
        blocks = chunk[: full * hop].reshape(full, hop)
        energy[1 + k0 : 1 + k0 + full] = np.einsum("ij,ij->i", blocks, blocks)
        if chunk.shape[0] > full * hop:  # the last, partial block
            tail = chunk[full * hop :]
            energy[1 + k0 + full] = np.dot(tail, tail)
    return np.sqrt((energy[:-1] + energy[1:]) / frame)


def interpolate_linear(x: np.ndarray, size: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """1-D linear resize with half-pixel centres (torch ``interpolate(mode="linear", align_corners=False)``);
    ``start``, ``stop``: compute only output samples ``start..stop`` of the ``size``."""
    n = x.shape[0]
    stop = size if stop is None else stop
    src = np.maximum((np.arange(start, stop) + 0.5) * (n / size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    return x[i0] * (1 - lam) + x[i1] * lam


def rms_mix_envelope(rms_in: np.ndarray, out: np.ndarray, out_sr: int, rate: float) -> np.ndarray:
    """``rms_mix`` with the input's envelope ``rms_in = rms_envelope(source16k, 16000)`` given; scales float32
    ``out`` IN PLACE (``BLOCK`` samples at a time) and returns it."""
    rms_out = rms_envelope(out, out_sr)
    size = out.shape[0]
    for i in range(0, size, BLOCK):
        stop = min(size, i + BLOCK)
        env_in = interpolate_linear(rms_in, size, i, stop)
        env_out = np.maximum(interpolate_linear(rms_out, size, i, stop), 1e-6)
        out[i:stop] = out[i:stop] * (np.power(env_in, 1 - rate) * np.power(env_out, rate - 1))
    return out


def rms_mix(source16k: np.ndarray, out: np.ndarray, out_sr: int, rate: float) -> np.ndarray:
    """Give ``out`` the loudness envelope of the input: ``out · rms_in^(1−rate) · rms_out^(rate−1)`` (a new
    float32 array; ``VoiceConverter.convert`` uses ``rms_mix_envelope`` in place)."""
    return rms_mix_envelope(rms_envelope(source16k, SAMPLE_RATE), np.array(out, dtype=np.float32), out_sr, rate)


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    """Scale down so the peak is ``OUTPUT_PEAK`` when it is louder (float32; in place when ``audio`` is float32)."""
    audio = np.asarray(audio, dtype=np.float32)
    if not audio.size:
        return audio
    peak = max(audio.max(), -audio.min()) / OUTPUT_PEAK  # float32, as np.abs(audio).max() / OUTPUT_PEAK
    if peak > 1:
        np.divide(audio, peak, out=audio)
    return audio


@contextmanager
def timed(timings: dict | None, stage: str):
    """Add the wall time of the block to ``timings[stage]`` (no-op when ``timings`` is None)."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


# -- composition ------------------------------------------------------------------------------------------------


def plan_pieces(audio: np.ndarray) -> list[tuple[int, int | None, int, int | None]]:
    """``(start, end, f0_start, f0_end)`` of each piece of the padded audio, in samples and F0 frames
    (exactly as the reference slices ``audio_pad`` and the pitch arrays; ``None`` = to the end)."""
    t_pad2 = 2 * SAMPLE_RATE * X_PAD
    bounds, s, t = [], 0, None
    for t in cut_points(audio):
        t = t // WINDOW * WINDOW
        bounds.append((s, t + t_pad2 + WINDOW, s // WINDOW, (t + t_pad2) // WINDOW))
        s = t
    start = t if t is not None else 0
    bounds.append((start, None, start // WINDOW, None))
    return bounds


class VoiceConverter:
    """A loaded voice plus base models; converts many clips.

    >>> vc = VoiceConverter.load("voice.safetensors", hubert="hubert.safetensors", rmvpe="rmvpe.safetensors")
    >>> out, sr = vc.convert(audio, 44100, ConversionOptions(pitch=12))
    """

    def __init__(self, synthesizer, hubert, index=None, f0_models: dict[str, str] | None = None):
        self.synthesizer = synthesizer
        self.hubert = hubert
        self.index = index
        self.f0_models = dict(f0_models or {})
        if index is not None:
            index.check_dim(synthesizer.config.feature_dim)

    @property
    def sample_rate(self) -> int:
        return self.synthesizer.config.sample_rate

    @classmethod
    def load(cls, voice, hubert, rmvpe=None, index=None, crepe=None, fcpe=None) -> "VoiceConverter":
        """Load converted model files (paths). ``index``: a faiss ``.index`` path or None."""
        from .models.hubert import Hubert
        from .models.synthesizer import Synthesizer
        from .retrieval import FeatureIndex

        synth = Synthesizer.load(voice)
        hub = Hubert.load(hubert)
        idx = FeatureIndex.load(index) if index else None
        models = {k: str(v) for k, v in (("rmvpe", rmvpe), ("crepe", crepe), ("fcpe", fcpe)) if v}
        return cls(synth, hub, idx, models)

    # individual stages, also used by the stage-dump tool ------------------------------------------------------

    def content_features(self, audio16k: np.ndarray) -> np.ndarray:
        """HuBERT features (T, D) @50 fps as the voice's version expects (v1: layer 9 + final_proj; v2: layer 12)."""
        return np.array(self.hubert.extract_rvc(audio16k.astype(np.float32), self.synthesizer.config.version))

    def f0(self, padded16k: np.ndarray, options: ConversionOptions) -> tuple[np.ndarray, np.ndarray]:
        """(coarse pitch (T,) int32, f0 (T,) float32 Hz) for the whole padded audio, post-processed.

        Order: estimate (+ harvest's median filter) -> F0 file replaces its span -> autotune -> pitch shift.
        rvc==0.3.5 replaces the span *after* the shift (the file's values are never transposed); here the file
        takes the estimate's place, so ``rvc-mlx pitch``'s contour given back as a file changes nothing and
        ``pitch``/``autotune`` apply to it once. The file is not median-filtered (it is used as written)."""
        from .f0 import F0Options
        from .f0 import postprocess as pp

        opts = F0Options(
            rmvpe_path=self.f0_models.get("rmvpe"),
            crepe_path=self.f0_models.get("crepe"),
            fcpe_path=self.f0_models.get("fcpe"),
        )
        f0 = estimate_f0(padded16k, options.f0_method, opts, options.filter_radius)
        if options.f0_file:
            f0 = pp.apply_f0_file(f0, pp.from_file(options.f0_file), offset_frames=X_PAD * SAMPLE_RATE // WINDOW)
        if options.autotune > 0:
            f0 = pp.autotune(f0, options.autotune)
        f0 = pp.shift(f0, options.pitch)
        return pp.coarse(f0), f0.astype(np.float32)

    def convert_piece(self, piece: np.ndarray, pitch, f0, options: ConversionOptions, trace=None,
                      timings=None) -> np.ndarray:
        """One padded piece of 16 kHz audio -> model-rate audio (untrimmed), as the reference's ``vc``.

        ``trace`` (a dict or None) receives every intermediate stage (see ``STAGES``)."""
        cfg = self.synthesizer.config
        record = trace.__setitem__ if trace is not None else (lambda name, value: None)
        with timed(timings, "hubert"):
            feats = self.content_features(piece)
        record("hubert", feats)
        protect_on = options.protect < PROTECT_OFF and cfg.use_f0
        feats0 = feats
        if self.index is not None and options.index_rate != 0:
            with timed(timings, "retrieval"):
                feats = self.index.blend(feats, options.index_rate)
        record("retrieved", feats)
        feats = upsample2(feats)
        p_len = min(piece.shape[0] // WINDOW, feats.shape[0])
        feats = feats[:p_len]
        if cfg.use_f0:
            pitch, f0 = pitch[:p_len], f0[:p_len]
            if protect_on:
                feats = protect_unvoiced(feats, upsample2(feats0)[:p_len], f0, options.protect)
            record("coarse_pitch", pitch)
            record("f0_frames", f0)
        record("protected", feats)
        noise = "none" if options.deterministic else "default"
        with timed(timings, "synthesis"):
            stages = self.synthesizer.stages(feats, pitch, f0, sid=options.sid, noise=noise, seed=options.seed)
            mx.eval(*stages.values())
            audio = np.array(stages["audio"])
        if trace is not None:
            for name in ("m_p", "logs_p", "z_p", "z"):
                record(name, np.array(stages[name][0]))
        record("generator", audio)
        return audio

    def convert(self, audio: np.ndarray, sr: int, options: ConversionOptions | None = None, trace=None,
                timings=None, progress=None):
        """Convert mono float audio at ``sr``. Returns ``(audio float32 in [-1, 1], sample_rate)``.

        ``trace``: optional dict that receives every stage (``STAGES``); pieces of long audio are recorded as
        ``name`` for the first piece and ``name.<i>`` for piece i > 0. ``timings``: optional dict that
        accumulates seconds per stage (hubert, f0, retrieval, synthesis, post). ``progress``: optional
        ``callback(stage, fraction)`` called as each of ``PROGRESS_STAGES`` starts (0.0), advances and ends (1.0)."""
        options = (options or ConversionOptions()).validate()
        report = progress or (lambda stage, fraction: None)
        cfg = self.synthesizer.config
        if not 0 <= options.sid < cfg.n_speakers:
            raise InputError(f"speaker id {options.sid} is out of range: this model has {cfg.n_speakers} speaker(s)")
        record = trace.__setitem__ if trace is not None else (lambda name, value: None)
        audio16k = prepare_input(audio, sr)  # float64, as the reference
        if trace is not None:
            record("input16k", audio16k.astype(np.float32))
        # what later steps need of the float64 audio, so that only one float32 copy stays alive (memory):
        # the cut points, the input's loudness envelope, and the reflect-padded float32 audio (F0 and pieces)
        pieces_plan = plan_pieces(audio16k)
        rms_in = rms_envelope(audio16k, SAMPLE_RATE) if options.rms_mix_rate != 1 else None
        padded = reflect_pad32(audio16k, SAMPLE_RATE * X_PAD)
        del audio16k
        pitch = f0 = None
        if cfg.use_f0:
            report("f0", 0.0)
            with timed(timings, "f0"):
                pitch, f0 = self.f0(padded, options)
            report("f0", 1.0)
            record("f0", f0)
            record("pitch", pitch)
            mx.clear_cache()  # MLX keeps freed buffers for reuse; return the F0 network's to the system
        trim = cfg.sample_rate * X_PAD
        pieces = []
        for i, (start, end, f_start, f_end) in enumerate(pieces_plan):
            report("convert", i / len(pieces_plan))
            p = f = None
            if cfg.use_f0:
                p, f = pitch[f_start:f_end], f0[f_start:f_end]
            piece_trace = {} if trace is not None else None
            piece = self.convert_piece(padded[start:end], p, f, options, piece_trace, timings)
            pieces.append(piece[trim:-trim].copy())  # a copy: the untrimmed piece is freed now
            del piece
            mx.clear_cache()  # each piece's MLX buffers, so the cache does not grow with the number of pieces
            for name, value in (piece_trace or {}).items():
                record(name if i == 0 else f"{name}.{i}", value)
        del padded
        report("convert", 1.0)
        report("post", 0.0)
        with timed(timings, "post"):
            out = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
            pieces.clear()
            if rms_in is not None:
                out = rms_mix_envelope(rms_in, out.astype(np.float32, copy=False), cfg.sample_rate,
                                       options.rms_mix_rate)
            out_sr = cfg.sample_rate
            if options.resample_sr >= SAMPLE_RATE and options.resample_sr != cfg.sample_rate:
                out, out_sr = audio_io.resample(out, cfg.sample_rate, options.resample_sr), options.resample_sr
            out = peak_normalise(out)
        record("audio", out)
        report("post", 1.0)
        return out, out_sr
