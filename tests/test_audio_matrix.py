"""The audio matrix (issue 16): every kind of audio a user can feed ``infer``/``batch``, each a row generated here.

Reading: ``audio.read`` returns float32 mono at the file's rate whose samples equal the mean of the generated
channels within one quantisation step of the format (lossless), or correlate with it above ``LOSSY_MIN_CORR``
after aligning for the codec's delay, at the same level, with the length within the codec's padding (lossy).
Digital silence (all zeros, denormals only) is refused by ``audio.check`` as "audio is silent". Seeded faults
(a reader that takes the first channel, or reports the wrong rate) fail these checks.

Conversion: a subset of rows (every codec, every channel layout, 8 and 192 kHz, DC offset, clipping, a single
sample, leading/trailing silence) runs ``convert_file`` with a small random-weight voice: the output is finite,
in [-1, 1], as long as the input at the voice's rate minus at most ``MAX_SHORT_FRAMES`` 10 ms frames (RVC's
HuBERT framing), has no DC, and no temporary file is left beside it. Every input is generated in the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_mlx import audio
from rvc_mlx.errors import AudioError
from rvc_mlx.options import parse_options
from rvc_mlx.service.models import resolve_models
from rvc_mlx.service.tasks import convert_file
from tests.reference.rvc_pipeline import ReferenceModels

VOICE = "v2-40k-f0"
OPTIONS = parse_options({"f0_method": "pm", "deterministic": True})
SECONDS = 0.4  # every row but the ones whose content needs its own length
SILENCE_SECONDS = 1.0  # padding of the leading/trailing silence row, and the single-sample row's length
PEAK = 0.5  # speech-like peak of each channel
DC_OFFSET = 0.3
CLIP_DRIVE = 4.0  # sine amplitude before the hard clip to +/-1
SINGLE_SAMPLE = 0.5
DENORMAL = 1e-39  # below float32's smallest normal (1.18e-38)
SILENT_SUFFIX = "audio is silent"
LFE_CHANNEL = 3  # 5.1 order: FL FR FC LFE BL BR (WAV, FLAC, AAC)
LFE_HZ = 55.0

# lossless: one quantisation step of the stored format (0 for float files). libsndfile stores x as x * 2^(b-1)
# truncated in WAV (rounded in FLAC; +1.0 clipped to the largest code) and reads a code as code / 2^(b-1).
PCM_STEP = {"PCM_U8": 2.0 ** -7, "PCM_S8": 2.0 ** -7, "PCM_16": 2.0 ** -15, "PCM_24": 2.0 ** -23,
            "PCM_32": 2.0 ** -31, "FLOAT": 0.0, "DOUBLE": 0.0}
FLOAT32_STEP = 2.0 ** -24  # relative rounding of a float32 result (twice: the sample, and the channel mean)
# lossy: measured on these rows (README "Audio matrix"); a reader that takes the first channel of a mix
# instead of the mean scores 0.61 (stereo) / 0.33 (5.1)
LOSSY_MIN_CORR = 0.98  # lowest measured: 0.9979 (Opus stereo)
LOSSY_LEVEL = (0.95, 1.05)  # RMS of the decoded audio over the generated mix at the best lag; measured 0.995-1.004
MAX_DELAY = 4096  # samples searched either side for a delay the decoder left in
DELAY_LEFT = 0  # measured: every decoder removes its codec's delay (decoded[i] lines up with written[i])
# samples the decoded audio may run past the written (never short): AAC ends on a whole 1024-sample frame;
# libsndfile's mp3 (LAME's gapless header), Vorbis and Opus decoders and FFmpeg's Opus give back the exact length
PADDING = {"ogg": 0, "mp3": 0, "opus": 0, "webm": 0, "m4a": 1024}

HOP_SECONDS = 0.01  # the pipeline's frame
MAX_SHORT_FRAMES = 2  # RVC's output is up to 2 frames short: HuBERT's 20 ms frames over 400-sample windows
DC_MAX_MEAN = 0.01  # output mean for the DC-offset row (input mean 0.3); the pipeline high-passes at 48 Hz


@dataclass(frozen=True)
class Row:
    id: str
    ext: str  # file extension; decides the writer
    subtype: str | None = None  # soundfile subtype (None: the codec's own)
    sr: int = 44100
    channels: int = 1
    content: str = "speech"  # speech | dc | clip | single | padded | zeros | denormal
    convert: bool = False  # also run end to end through convert_file

    @property
    def lossy(self) -> bool:
        return self.ext in LOSSY

    @property
    def silent(self) -> bool:
        return self.content in ("zeros", "denormal")


LOSSY = ("ogg", "mp3", "m4a", "opus", "webm")
SF_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
SF_LOSSY_SUBTYPES = {"ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}
AV_CODECS = {"m4a": ("ipod", "aac"), "opus": ("ogg", "libopus"), "webm": ("webm", "libopus")}
AV_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}

ROWS = [
    # sample formats
    Row("wav-u8", "wav", "PCM_U8", 16000),
    Row("flac-s8", "flac", "PCM_S8", 16000),
    Row("wav-16", "wav", "PCM_16", 16000),
    Row("flac-16", "flac", "PCM_16", 16000, convert=True),
    Row("wav-24", "wav", "PCM_24", 16000),
    Row("flac-24", "flac", "PCM_24", 16000),
    Row("wav-32", "wav", "PCM_32", 16000),
    Row("wav-float", "wav", "FLOAT", 16000),
    Row("wav-double", "wav", "DOUBLE", 16000),
    # sample rates
    *(Row(f"wav-16-{sr}", "wav", "PCM_16", sr, convert=sr in (8000, 192000))
      for sr in (8000, 11025, 22050, 44100, 48000, 96000, 192000)),
    Row("flac-24-96000", "flac", "PCM_24", 96000),
    # channel layouts
    Row("wav-16-stereo", "wav", "PCM_16", 44100, 2, convert=True),
    Row("wav-16-5.1", "wav", "PCM_16", 48000, 6),
    Row("flac-24-5.1", "flac", "PCM_24", 48000, 6),
    # lossy codecs
    Row("ogg-vorbis", "ogg", sr=44100, convert=True),
    Row("ogg-vorbis-stereo", "ogg", sr=44100, channels=2),
    Row("mp3", "mp3", sr=44100, convert=True),
    Row("mp3-stereo", "mp3", sr=44100, channels=2),
    Row("mp3-16000", "mp3", sr=16000),
    Row("m4a-aac", "m4a", sr=44100, convert=True),
    Row("m4a-aac-stereo", "m4a", sr=44100, channels=2),
    Row("m4a-aac-5.1", "m4a", sr=48000, channels=6, convert=True),
    Row("opus-ogg", "opus", sr=48000, convert=True),
    Row("opus-ogg-stereo", "opus", sr=48000, channels=2),
    Row("opus-webm", "webm", sr=48000),
    Row("opus-webm-stereo", "webm", sr=48000, channels=2),
    # content
    Row("dc-offset", "wav", "PCM_16", 16000, content="dc", convert=True),
    Row("clipped", "wav", "PCM_16", 44100, content="clip", convert=True),
    Row("single-sample", "wav", "PCM_16", 16000, content="single", convert=True),
    Row("silence-around", "wav", "PCM_16", 16000, content="padded", convert=True),
    Row("all-zero-wav", "wav", "PCM_16", 16000, content="zeros", convert=True),
    Row("all-zero-flac", "flac", "PCM_16", 16000, content="zeros"),
    Row("denormals-float", "wav", "FLOAT", 16000, content="denormal", convert=True),
    Row("denormals-double", "wav", "DOUBLE", 16000, content="denormal"),
]
BY_ID = {row.id: row for row in ROWS}


# -- generating the inputs --------------------------------------------------------------------------------------


def speech_like(n: int, sr: int, channel: int = 0) -> np.ndarray:
    """A deterministic voiced test signal at ``sr``: gliding harmonics below 4 kHz (and Nyquist) with a
    syllable-rate envelope; each channel has its own pitch and envelope phase, so channels differ. Peak ``PEAK``."""
    rng = np.random.default_rng(100 + channel)
    t = np.arange(n) / sr
    f0 = 110.0 + 35.0 * channel + 30.0 * np.sin(2 * np.pi * 0.9 * t + channel)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    top = min(4000.0, 0.45 * sr)
    voiced = sum(np.sin(h * phase + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 40) if h * 190.0 < top)
    envelope = 0.4 + 0.6 * np.sin(2 * np.pi * (3.0 + 0.5 * channel) * t + 0.7 * channel) ** 2
    x = envelope * voiced
    return PEAK * x / np.abs(x).max()


def lfe(n: int, sr: int) -> np.ndarray:
    """The 5.1 rows' LFE channel: a 55 Hz hum with a slow envelope (AAC codes LFE below ~120 Hz only)."""
    t = np.arange(n) / sr
    return PEAK * np.sin(2 * np.pi * LFE_HZ * t) * (0.6 + 0.4 * np.cos(2 * np.pi * 1.5 * t))


def signal(row: Row) -> np.ndarray:
    """The generated audio, float64 ``(n, channels)``."""
    sr = row.sr
    n = int(round(SECONDS * sr))
    if row.content == "zeros":
        return np.zeros((n, row.channels))
    if row.content == "denormal":
        return np.full((n, row.channels), DENORMAL)
    if row.content == "single":
        x = np.zeros((int(SILENCE_SECONDS * sr), row.channels))
        x[len(x) // 2] = SINGLE_SAMPLE
        return x
    if row.content == "clip":
        t = np.arange(n) / sr
        return np.clip(CLIP_DRIVE * np.sin(2 * np.pi * 220.0 * t), -1.0, 1.0)[:, None]
    x = np.stack([lfe(n, sr) if row.channels == 6 and c == LFE_CHANNEL else speech_like(n, sr, c)
                  for c in range(row.channels)], axis=1)
    if row.content == "dc":
        x = x + DC_OFFSET
    if row.content == "padded":
        pad = np.zeros((int(SILENCE_SECONDS * sr), row.channels))
        x = np.concatenate([pad, x, pad])
    return x


def _write_av(path: Path, x: np.ndarray, row: Row) -> None:
    import av

    container_format, codec = AV_CODECS[row.ext]
    layout = AV_LAYOUTS[row.channels]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=row.sr, layout=layout)
        fmt = stream.codec_context.format.name  # fltp (aac) or s16/flt (opus)
        size = stream.codec_context.frame_size or 1024
        for start in range(0, len(x), size):
            block = x[start:start + size].astype(np.float32)
            if fmt.endswith("p"):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.T), format=fmt, layout=layout)
            else:
                frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout=layout)
            frame.sample_rate = row.sr
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_row(row: Row, folder: Path) -> tuple[Path, np.ndarray]:
    """Write ``row``'s signal to ``folder`` and return ``(path, the signal)``."""
    x = signal(row)
    path = folder / f"{row.id}.{row.ext}"
    if row.ext in SF_FORMATS:
        subtype = row.subtype or SF_LOSSY_SUBTYPES[row.ext]
        sf.write(path, x, row.sr, format=SF_FORMATS[row.ext], subtype=subtype)
    else:
        _write_av(path, x, row)
    return path, x


# -- what a read must give ----------------------------------------------------------------------------------------


def _lags_by_fft(decoded: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Candidate lags, best first, from one FFT cross-correlation (the exact search then checks a few)."""
    n = 1 << int(np.ceil(np.log2(len(decoded) + len(expected))))
    xc = np.fft.irfft(np.fft.rfft(decoded, n) * np.conj(np.fft.rfft(expected, n)), n)
    lags = np.concatenate([np.arange(0, MAX_DELAY + 1), np.arange(-MAX_DELAY, 0)])
    values = np.concatenate([xc[:MAX_DELAY + 1], xc[n - MAX_DELAY:]])
    return lags[np.argsort(-values)]


def aligned(decoded: np.ndarray, expected: np.ndarray) -> tuple[int, float, float]:
    """``(lag, correlation, level)`` of ``decoded`` against ``expected`` at the best lag; level: RMS ratio."""
    candidates = _lags_by_fft(decoded.astype(np.float64), expected)[:8]
    scored = []
    for lag in candidates:
        a, b = decoded[max(lag, 0):].astype(np.float64), expected[max(-lag, 0):]
        m = min(len(a), len(b))
        a, b = a[:m], b[:m]
        corr = float(np.corrcoef(a, b)[0, 1]) if a.std() and b.std() else 0.0
        level = float(np.sqrt(np.mean(a ** 2) / np.mean(b ** 2))) if np.any(b) else 0.0
        scored.append((corr, int(lag), level))
    corr, lag, level = max(scored)
    return lag, corr, level


def check_read(row: Row, path: Path, x: np.ndarray) -> dict:
    """Assert ``audio.read(path)`` is ``x``'s mono mix at ``row.sr`` within the format's tolerance; return what
    was measured."""
    data, sr = audio.read(path)
    expected = x.mean(axis=1)
    assert sr == row.sr
    assert isinstance(data, np.ndarray) and data.dtype == np.float32 and data.ndim == 1
    if not row.lossy:
        assert data.shape == expected.shape
        step = PCM_STEP[row.subtype]
        magnitude = np.abs(x).mean(axis=1)
        bound = step + 2 * FLOAT32_STEP * magnitude
        error = np.abs(data.astype(np.float64) - expected)
        assert np.all(error <= bound), f"error {error.max():.3g} at sample {int(np.argmax(error - bound))}"
        return {"max_error_steps": float(error.max() / step) if step else float(error.max())}
    lag, corr, level = aligned(data, expected)
    assert corr > LOSSY_MIN_CORR, f"correlation {corr:.4f} at lag {lag}"
    assert LOSSY_LEVEL[0] < level < LOSSY_LEVEL[1], f"level {level:.3f} at lag {lag}"
    assert abs(lag) <= DELAY_LEFT, f"decoded audio is {lag} samples late"
    extra = len(data) - len(expected)
    assert 0 <= extra <= PADDING[row.ext], f"{len(data)} samples decoded, {len(expected)} written"
    return {"lag": lag, "corr": corr, "level": level, "extra": extra}


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_read(row, tmp_path):
    path, x = write_row(row, tmp_path)
    if row.silent:
        data, sr = audio.read(path)
        assert sr == row.sr and data.shape == (len(x),)
        assert np.array_equal(data, x.mean(axis=1).astype(np.float32))  # zeros and denormals kept as written
        with pytest.raises(AudioError) as err:
            audio.check(data, sr, str(path))
        assert str(err.value).endswith(SILENT_SUFFIX) and str(path) in str(err.value)
        return
    check_read(row, path, x)
    audio.check(*audio.read(path), str(path))  # convertible: not too short, finite, not silent


# -- seeded faults: the read checks catch a reader that mixes down or reports the rate wrongly -------------------


def _first_channel_everywhere(real_read):
    def read(self, *args, **kwargs):
        data = real_read(self, *args, **kwargs)
        return np.repeat(data[:, :1], data.shape[1], axis=1) if data.ndim == 2 else data

    return read


@pytest.mark.parametrize("fault", ["first channel", "wrong rate"])
@pytest.mark.parametrize("row_id", ["wav-16-5.1", "wav-16-stereo", "mp3-stereo"])
def test_seeded_faults_fail_the_read_check(fault, row_id, tmp_path, monkeypatch):
    row = BY_ID[row_id]
    path, x = write_row(row, tmp_path)
    check_read(row, path, x)  # passes unfaulted
    if fault == "first channel":  # the decoder hands over channel 0 in every channel: the mix is channel 0
        monkeypatch.setattr(sf.SoundFile, "read", _first_channel_everywhere(sf.SoundFile.read))
    else:
        real = sf.SoundFile.samplerate
        monkeypatch.setattr(sf.SoundFile, "samplerate", property(lambda self: real.fget(self) // 2))
    with pytest.raises(AssertionError):
        check_read(row, path, x)


# -- end to end through convert_file -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converter(ref_cache):
    from rvc_mlx.pipeline import VoiceConverter

    models = ReferenceModels(ref_cache)
    voice, _, _ = models.voice(VOICE)
    paths = resolve_models(voice, hubert=models.hubert_path, rmvpe=models.rmvpe_path, f0_method="pm")
    return VoiceConverter.load(**paths.to_dict())


CONVERT_ROWS = [row for row in ROWS if row.convert]


@pytest.mark.parametrize("row", CONVERT_ROWS, ids=[row.id for row in CONVERT_ROWS])
def test_convert(row, converter, tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src, x = write_row(row, src_dir)
    out = out_dir / f"{row.id}.wav"
    if row.silent:
        with pytest.raises(AudioError) as err:
            convert_file(converter, OPTIONS, src, out, "wav")
        assert str(err.value).endswith(SILENT_SUFFIX)
        assert list(out_dir.iterdir()) == []
        return
    decoded, sr = audio.read(src)
    info = convert_file(converter, OPTIONS, src, out, "wav")
    assert [p.name for p in out_dir.iterdir()] == [out.name]  # no temporary left beside it
    y, out_sr = sf.read(out, dtype="float64")
    voice_sr = converter.sample_rate
    assert out_sr == info["sample_rate"] == voice_sr
    assert y.ndim == 1 and np.all(np.isfinite(y)) and np.abs(y).max() <= 1.0
    assert np.abs(y).max() > 0  # a voice, not silence
    hop = int(HOP_SECONDS * voice_sr)
    full = Fraction(len(decoded), sr) * voice_sr  # the input's length at the voice's rate
    assert len(y) % hop == 0
    assert full - MAX_SHORT_FRAMES * hop <= len(y) <= full, f"{len(y)} samples for {float(full):.0f}"
    if row.content == "dc":
        assert abs(y.mean()) < DC_MAX_MEAN
