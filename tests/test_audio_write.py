"""Writing outputs (``audio.write``): long ogg outputs no longer crash libsndfile's Vorbis encoder, and a full device
(a real tmpfs where the test may mount one) is a one-line ``DiskFullError`` for every format, before encoding
(wav/flac: their size is known) or when the write fails (ogg/mp3), with nothing left behind.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from rvc_mlx import audio as audio_io
from rvc_mlx.errors import DiskFullError, OutputError

LONG_OGG_SAMPLES = 3_000_000  # one sf.write call of more than ~2.5 M samples crashed the Vorbis encoder
WRITE_FORMATS = ("wav", "flac", "ogg", "mp3")


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.3).astype(np.float32)


def test_a_long_ogg_output_is_written_whole(tmp_path):
    """In a child process: before the fix the process died of SIGSEGV inside libsndfile."""
    out = tmp_path / "long.ogg"
    code = textwrap.dedent(f"""
        import numpy as np
        from rvc_mlx import audio
        x = (np.random.default_rng(0).standard_normal({LONG_OGG_SAMPLES}) * 0.3).astype(np.float32)
        audio.write({str(out)!r}, x, 16000)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"
    assert sf.info(str(out)).frames == LONG_OGG_SAMPLES


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_block_writes_equal_one_write(fmt, tmp_path):
    """Writing in blocks gives the file one ``sf.write`` call gives. Ogg (whose stream serial number is random):
    the same length, and Vorbis, fed in blocks, codes 256 of 200 000 samples a little differently (measured
    max |diff| 0.015); the decodings correlate > 0.9999."""
    x = np.clip(_noise(200_000, 1), -1, 1)
    audio_io.write(tmp_path / f"blocks.{fmt}", x, 16000)
    sf.write(tmp_path / f"one.{fmt}", x, 16000, format=audio_io.WRITE_FORMATS[fmt],
             subtype="PCM_16" if fmt in ("wav", "flac") else None)
    blocks, one = (tmp_path / f"blocks.{fmt}").read_bytes(), (tmp_path / f"one.{fmt}").read_bytes()
    if fmt == "ogg":
        a, b = sf.read(tmp_path / "blocks.ogg")[0], sf.read(tmp_path / "one.ogg")[0]
        assert a.shape == b.shape == x.shape
        assert np.corrcoef(a, b)[0, 1] > 0.9999 and np.mean(np.abs(a - b) > 1e-6) < 0.01
    else:
        assert blocks == one


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_a_full_device_is_one_line_and_leaves_nothing(fmt, tmpfs):
    """On a real 2 MB tmpfs, 12 M samples: 24 MB as wav (refused before encoding), ~3.5 MB as ogg or mp3 (fails
    while writing)."""
    folder = tmpfs("2m")
    out = folder / f"o.{fmt}"
    keep = folder / f"keep.{fmt}"
    keep.write_bytes(b"an earlier output")
    with pytest.raises(DiskFullError) as err:
        audio_io.write(keep, _noise(12_000_000), 16000)
    message = str(err.value)
    assert message.startswith(f"{keep}: no space left on the device (") and "\n" not in message
    assert message.endswith("nothing was written") and "MB free" in message
    assert ("MB needed" in message) == (fmt in ("wav", "flac"))
    assert sorted(p.name for p in folder.iterdir()) == [keep.name]  # no temporary left
    assert keep.read_bytes() == b"an earlier output"  # the old file is kept
    assert not out.exists()


def test_an_unwritable_place_is_an_output_error(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(OutputError) as err:
        audio_io.write(a_file / "o.wav", _noise(1000), 16000)
    assert str(err.value).startswith(f"{a_file / 'o.wav'}: cannot write (")
    assert not isinstance(err.value, DiskFullError)
