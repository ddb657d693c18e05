"""Bounded fuzz run of every loader (tests/fuzz): 2 000 mutated real files per target with a fixed seed end in
success or one clean ``RvcMlxError`` line — no crash, hang, traceback, runaway allocation or leftover file.
Seeded faults show the harness reports each failure class. Regression tests for what the fuzzing found."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from rvc_mlx.errors import RvcMlxError
from tests.fuzz import seeds
from tests.fuzz.runner import FAILURES, run
from tests.fuzz.targets import TARGETS

CI_CASES = 2000
CI_SEED = 20261202


@pytest.fixture(scope="module")
def seed_dirs(tmp_path_factory):
    return {t: tmp_path_factory.mktemp(f"seeds-{t}") for t in TARGETS}


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz_target(target, seed_dirs):
    seeds.build(target, seed_dirs[target])
    result = run(target, CI_CASES, seed=CI_SEED, seed_dir=seed_dirs[target])
    assert result["ok"] + result["error"] == CI_CASES, result["failures"][:10]
    assert all(result[k] == 0 for k in FAILURES)
    assert result["ok"] > 0 and result["error"] > 0  # the mutations reach both outcomes


@pytest.mark.parametrize("fault, outcome", [
    ("keyerror", "traceback"), ("newline", "traceback"), ("leak", "leak"), ("segfault", "crash"),
    ("hang", "hang"), ("allocate", "oom"),
])
def test_harness_reports_seeded_faults(fault, outcome, tmp_path):
    seed_dir = tmp_path / "seeds"
    seeds.build("f0", seed_dir)
    result = run("f0", 2, seed=CI_SEED, seed_dir=seed_dir, fault=fault, timeout=1.5)
    assert result[outcome] == 2, result
    assert [f["case"] for f in result["failures"]] == [0, 1]


# -- regressions: what the fuzzing found ---------------------------------------------------------------------


def _one_line(err):
    assert "\n" not in str(err.value) and str(err.value)


def test_index_with_out_of_range_ids_or_nprobe_is_refused(tmp_path):
    """IVF index whose stored ids point past the vectors (blend raised IndexError) or nprobe > nlist."""
    from rvc_mlx.errors import InputError
    from rvc_mlx.retrieval import FeatureIndex

    flat, ivf = seeds.build_index(tmp_path)
    data = ivf.read_bytes()
    last_id = len(data) - 8
    bad = tmp_path / "ids.index"
    bad.write_bytes(data[:last_id] + struct.pack("<q", 2**39) + data[last_id + 8:])
    with pytest.raises(InputError, match="vector id is out of range") as err:
        FeatureIndex.load(bad)
    _one_line(err)
    nprobe = 4 + 4 + 8 * 3 + 1 + 4 + 8  # after fourcc, d, ntotal, 2 dummies, is_trained, metric, nlist
    bad.write_bytes(data[:nprobe] + struct.pack("<Q", 99) + data[nprobe + 8:])
    with pytest.raises(InputError, match="nprobe"):
        FeatureIndex.load(bad)


@pytest.mark.parametrize("edit", ["ntotal", "dim", "count", "trailing", "type"])
def test_index_header_fields_are_checked_before_faiss(tmp_path, edit):
    """faiss allocates what a header says: ntotal/dimension/vector counts set huge must not reach it."""
    from rvc_mlx.errors import InputError
    from rvc_mlx.retrieval import FeatureIndex

    flat, _ = seeds.build_index(tmp_path)
    data = flat.read_bytes()
    data = {
        "ntotal": data[:8] + struct.pack("<q", 2**40) + data[16:],
        "dim": data[:4] + struct.pack("<i", 2**30) + data[8:],
        "count": data[:37] + struct.pack("<Q", 2**61) + data[45:],
        "trailing": data + b"\0",
        "type": b"IxHN" + data[4:],
    }[edit]
    bad = tmp_path / "bad.index"
    bad.write_bytes(data)
    with pytest.raises(InputError) as err:
        FeatureIndex.load(bad)
    _one_line(err)
    assert FeatureIndex.load(flat).vectors.shape == (40, 8)


def test_f0_file_with_absurd_times_is_refused(tmp_path):
    """A time of 1e30 s made from_file ask numpy for 1e32 frames (ValueError / MemoryError, a traceback)."""
    from rvc_mlx.errors import InputError
    from rvc_mlx.f0.postprocess import from_file

    path = tmp_path / "f0.csv"
    path.write_text("0,100\n1e30,200\n")
    with pytest.raises(InputError, match="F0 file spans") as err:
        from_file(path)
    _one_line(err)
    path.write_text("0,100\n0.5,200\n")
    assert from_file(path).shape == (51,)


def test_audio_stream_without_decoder_is_a_clean_error(tmp_path):
    """A wav whose format tag is damaged so FFmpeg finds an audio stream with no decoder: AttributeError before."""
    from rvc_mlx import audio
    from rvc_mlx.errors import AudioError

    wav = seeds.build_audio(tmp_path)[0]
    data = bytearray(wav.read_bytes())
    fmt = data.find(b"fmt ")
    data[fmt + 8:fmt + 10] = struct.pack("<H", 0x1234)  # unknown format tag
    bad = tmp_path / "bad.wav"
    bad.write_bytes(bytes(data))
    try:
        audio.read(bad)
    except AudioError as e:
        assert "\n" not in str(e)


def _legacy_with_huge_length(tmp_path) -> Path:
    import torch

    path = tmp_path / "legacy.pt"
    torch.save({"name": "x" * 40, "w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    at = data.find(b"X(\x00\x00\x00")  # BINUNICODE of the 40-character string
    assert at > 0
    return path, data[:at + 1] + struct.pack("<I", 2**32 - 2) + data[at + 5:]


def test_pickle_length_set_huge_is_not_allocated(tmp_path):
    """A BINUNICODE/BINBYTES length set to 4 GiB made the C unpickler allocate it (MemoryError under a cap,
    gigabytes of RSS without one) before finding the file truncated."""
    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.errors import CheckpointError

    path, bad = _legacy_with_huge_length(tmp_path)
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_checkpoint(path)
    _one_line(err)


def test_pickle_memo_index_set_huge_is_refused(tmp_path):
    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.errors import CheckpointError

    path = tmp_path / "memo.pt"
    body = pickle.dumps({"a": [1, 2]}, protocol=2)
    at = body.find(b"q")  # BINPUT
    body = body[:at] + b"r" + struct.pack("<I", 2**31 - 1) + body[at + 2:]  # LONG_BINPUT 2**31 - 1
    import torch

    torch.save({"w": torch.ones(1)}, path)
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, body if name.endswith("data.pkl") else data)
    with pytest.raises(CheckpointError, match="memo index") as err:
        load_checkpoint(path)
    _one_line(err)


def test_legacy_storage_size_set_huge_is_refused(tmp_path):
    import torch

    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.errors import CheckpointError

    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    at = len(data) - 12 - 8  # the 8-byte element count before the last storage's 3 floats
    assert struct.unpack("<q", data[at:at + 8]) == (3,)
    path.write_bytes(data[:at] + struct.pack("<q", 2**60) + data[at + 8:])
    with pytest.raises(CheckpointError, match="more than the file holds") as err:
        load_checkpoint(path)
    _one_line(err)


def test_newline_in_a_damaged_pickle_stays_one_line(tmp_path):
    """A damaged protocol-0/1 pickle whose error text quotes a newline ('could not convert string to float:
    'loatStorage\\n'') was a two-line CheckpointError."""
    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.errors import CheckpointError

    path = tmp_path / "m.pt"
    path.write_bytes(b"\x80\x02Ftorch\nFloatStorage\n.")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _one_line(err)


def test_untrained_ivf_index_is_refused(tmp_path):
    """An IVF index whose is_trained byte is 0 loaded, then faiss raised RuntimeError in search (a traceback)."""
    from rvc_mlx.errors import InputError
    from rvc_mlx.retrieval import FeatureIndex

    _, ivf = seeds.build_index(tmp_path)
    data = ivf.read_bytes()
    bad = tmp_path / "untrained.index"
    bad.write_bytes(data[:32] + b"\x00" + data[33:])  # is_trained, after fourcc, d, ntotal and two dummies
    with pytest.raises(InputError, match="not trained") as err:
        FeatureIndex.load(bad)
    _one_line(err)


def test_flac_claiming_billions_of_frames_is_read_without_allocating_them(tmp_path):
    """A flac whose STREAMINFO total-samples field says ~4.3 billion: soundfile.read allocated the stated frame
    count up front (16 GiB for a 4 kB file: MemoryError under the harness cap). Now what is there is read."""
    import subprocess
    import sys

    import soundfile as sf

    from rvc_mlx import audio

    flac = seeds.build_audio(tmp_path)[2]
    data = bytearray(flac.read_bytes())
    data[22:26] = b"\xff\xff\xff\xff"  # low 32 bits of the 36-bit total samples (STREAMINFO bytes 14..17)
    bad = tmp_path / "huge.flac"
    bad.write_bytes(bytes(data))
    assert sf.info(str(bad)).frames > 2**31  # libsndfile believes the header
    x, sr = audio.read(bad)
    assert sr == 16000 and x.size == 2400
    code = (  # under a 2 GiB address-space cap over the interpreter's own, as the fuzz worker runs
        "import resource, sys; from rvc_mlx import audio; v = int(open('/proc/self/statm').read().split()[0]) * "
        "resource.getpagesize(); resource.setrlimit(resource.RLIMIT_AS, (v + (2 << 30), resource.RLIM_INFINITY)); "
        "print(audio.read(sys.argv[1])[0].size)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and int(out.stdout) == x.size, out.stderr[-500:]


def _tiny_voice(tmp_path):
    import torch

    ckpt = seeds._tiny_voice_ckpt()
    path = tmp_path / "voice.pth"
    torch.save(ckpt, path)
    return ckpt, path


@pytest.mark.parametrize("damage", ["g shape", "empty v", "not a tensor"])
def test_damaged_weight_norm_pairs_are_conversion_errors(tmp_path, damage):
    """weight_g/weight_v of mismatched shapes (ValueError: operands could not be broadcast) or a placeholder
    where a tensor belongs (TypeError: float() argument ... 'Placeholder') were tracebacks from convert."""
    import argparse

    import torch

    from rvc_mlx.convert import convert_file
    from rvc_mlx.errors import ConversionError

    ckpt, path = _tiny_voice(tmp_path)
    key = next(k for k in ckpt["weight"] if k.endswith(".weight_g"))
    if damage == "g shape":
        ckpt["weight"][key] = ckpt["weight"][key][:0]
    elif damage == "empty v":
        v = key[: -len("_g")] + "_v"
        ckpt["weight"][v] = ckpt["weight"][v][:0]
    else:
        ckpt["weight"][key] = argparse.Namespace(x=1)
    torch.save(ckpt, path)
    with pytest.raises(ConversionError) as err:
        convert_file(path)
    _one_line(err)
    assert str(path) in str(err.value)


def test_encrypted_zip_member_is_a_checkpoint_error(tmp_path):
    """A zip member whose general-purpose flag says 'encrypted': zipfile raised RuntimeError (a traceback)."""
    from rvc_mlx.checkpoint import load_checkpoint
    from rvc_mlx.errors import CheckpointError

    import torch

    path = tmp_path / "m.pth"
    torch.save({"w": torch.ones(3)}, path)
    data = bytearray(path.read_bytes())
    at = 0
    while (at := data.find(b"PK\x03\x04", at)) >= 0:
        data[at + 6] |= 1  # encrypted flag of each local header
        at += 4
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        data[at + 8] |= 1  # ... and of each central directory entry
        at += 4
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _one_line(err)


def _direct_map_offset(data: bytes) -> int:
    """Where an IVF-flat index's direct-map type byte is: after its header, nlist, nprobe and flat quantizer."""
    d = struct.unpack("<i", data[4:8])[0]
    nlist = struct.unpack("<Q", data[37:45])[0]
    return 37 + 16 + 37 + 8 + nlist * d * 4


def test_index_direct_maps_and_repeated_ids_are_checked(tmp_path):
    """Long run (seed 1, case 14406): a direct-map type byte set to 1 (array) with no array loaded, then faiss
    raised RuntimeError on reconstruct (a traceback). A direct map in the file is never trusted (rebuilt from the
    lists), its size must be the vector count, and every id must occur once."""
    import faiss

    from rvc_mlx.errors import InputError
    from rvc_mlx.retrieval import FeatureIndex

    _, ivf = seeds.build_index(tmp_path)
    data = ivf.read_bytes()
    at = _direct_map_offset(data)
    assert data[at:at + 9] == b"\x00" + struct.pack("<Q", 0)  # no direct map, as RVC writes it
    bad = tmp_path / "dm.index"
    bad.write_bytes(data[:at] + b"\x01" + data[at + 1:])
    with pytest.raises(InputError, match="direct map size") as err:
        FeatureIndex.load(bad)
    _one_line(err)
    # a file with a direct map of the right size but garbage entries: rows still come from the lists
    index = faiss.read_index(str(ivf))
    index.make_direct_map()
    with_map = tmp_path / "with-map.index"
    faiss.write_index(index, str(with_map))
    mapped = with_map.read_bytes()
    n = index.ntotal
    assert mapped[at] == 1 and struct.unpack("<Q", mapped[at + 1:at + 9])[0] == n
    garbage = mapped[:at + 9] + struct.pack("<q", 2**40) * n + mapped[at + 9 + 8 * n:]
    bad.write_bytes(garbage)
    loaded = FeatureIndex.load(bad)
    np.testing.assert_array_equal(loaded.rows(np.arange(n)), faiss.read_index(str(ivf)).reconstruct_n(0, n))
    # one id stored twice (another vector then has none)
    last_id = len(data) - 8
    assert struct.unpack("<q", data[last_id:])[0] != 0
    bad.write_bytes(data[:last_id] + struct.pack("<q", 0))  # id 0 is also in some list
    with pytest.raises(InputError, match="vector ids repeat") as err:
        FeatureIndex.load(bad)
    _one_line(err)
