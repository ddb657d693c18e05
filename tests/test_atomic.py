"""Atomic outputs get the umask's permissions (0o644 files / 0o755 folders under umask 022), not mkstemp's 0o600."""

import os
import stat

import numpy as np
import pytest

from rvc_mlx import audio, store
from rvc_mlx.atomic import atomic_write, publish_modes, staging_dir
from rvc_mlx.f0 import report


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_atomic_writer_follows_the_umask(tmp_path, umask):
    want = 0o666 & ~umask
    store.save(tmp_path / "m.safetensors", {"w": np.zeros(2, np.float32)}, {"kind": "rmvpe"})
    audio.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    report.write_csv(tmp_path / "f0.csv", np.array([0.0, 220.0], np.float32))
    for name in ("m.safetensors", "a.wav", "f0.csv"):
        assert _mode(tmp_path / name) == want, (name, oct(_mode(tmp_path / name)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "f0.csv", "m.safetensors"]


def test_writer_that_makes_a_private_file_still_gives_the_umask_mode(tmp_path, umask):
    def private(tmp):
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        os.close(fd)

    atomic_write(tmp_path / "out.bin", private)
    assert _mode(tmp_path / "out.bin") == 0o666 & ~umask


def test_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "out.txt").write_text("old")

    def boom(tmp):
        open(tmp, "w").write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.txt", boom)
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"] and (tmp_path / "out.txt").read_text() == "old"


def test_staging_folder_is_published_with_the_umask_modes(tmp_path, umask):
    folder = staging_dir(tmp_path, "bundle")
    (folder / "sub").mkdir(mode=0o700)
    fd = os.open(folder / "sub" / "f.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    publish_modes(folder)
    for path, want in ((folder, 0o777), (folder / "sub", 0o777), (folder / "sub" / "f.bin", 0o666)):
        assert _mode(path) == want & ~umask, (path.name, oct(_mode(path)))


def test_voice_library_folder_follows_the_umask(tmp_path, umask, monkeypatch):
    from rvc_mlx.service.voices import VoiceLibrary

    voice = tmp_path / "tiny.safetensors"
    store.save(voice, {"w": np.zeros(2, np.float32)}, {"kind": "voice", "feature_dim": 768})
    library = VoiceLibrary(tmp_path / "voices")
    library.add(voice, name="tiny")
    folder = library.folder("tiny")
    assert _mode(folder) == 0o777 & ~umask
    for f in folder.iterdir():
        assert _mode(f) == 0o666 & ~umask, f.name
