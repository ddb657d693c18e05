"""Batch durability (``rvc-mlx batch`` and ``service.corpus``): after ``kill -9`` at random points a rerun leaves
the folder equal to a clean run's (names and bytes, deterministic mode) with no file converted twice; a full
device (a real tmpfs where this machine lets the test mount one, and an injected ENOSPC mid-write) is one line per
file, no partial output, and stops the batch; an unwritable output folder, an input that vanishes mid-batch, two
batches in one folder from two processes, silent takes and over-long inputs each end as documented.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_mlx import audio as audio_io
from rvc_mlx.atomic import TEMP_SUFFIX
from rvc_mlx.service import corpus
from tests.cli_support import batch_args as _args
from tests.cli_support import batch_options, run_cli
from tests.cli_support import batch_paths as _paths
from tests.cli_support import wav_outputs as _outputs
from tests.reference import hubert_models
from tests.reference.rvc_pipeline import ReferenceModels

SR16 = 16000
CLIPS = {"a.wav": 0.4, "b.wav": 0.3, "sub/c.flac": 0.5, "d.wav": 0.35, "e.wav": 0.3}
OUTPUTS = sorted(Path(name).with_suffix(".wav").as_posix() for name in CLIPS)
KILLS = 3  # kill -9 rounds before the run that completes
KILL_SEED = 16
REPO = Path(__file__).resolve().parents[1]

OPTIONS = batch_options()


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("durable") / "in"
    (root / "sub").mkdir(parents=True)
    for i, (name, seconds) in enumerate(CLIPS.items()):
        sf.write(root / name, hubert_models.speech_like(int(SR16 * seconds), seed=30 + i), SR16)
    return root


def _names(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _temporaries(folder: Path) -> list[str]:
    return [n for n in _names(folder) if TEMP_SUFFIX in n]


@pytest.fixture(scope="module")
def clean(models, corpus_dir, tmp_path_factory):
    """A clean, uninterrupted ``rvc-mlx batch`` run in a child process: its wall time, outputs and file names."""
    out = tmp_path_factory.mktemp("clean") / "out"
    start = time.monotonic()
    proc = _batch(corpus_dir, out, models)
    code = proc.wait(timeout=600)
    seconds = time.monotonic() - start
    assert code == 0, proc.stderr.read()
    assert sorted(_outputs(out)) == OUTPUTS
    return seconds, _outputs(out), _names(out)


def _batch(src: Path, out: Path, models, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rvc_mlx", "batch", str(src), str(out), *map(str, _args(models)), *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every output: a file converted again gets a new inode (atomic rename)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*.wav")}


# -- kill -9 ------------------------------------------------------------------------------------------------------


def test_kill_9_at_random_points_then_rerun_equals_a_clean_run(models, corpus_dir, clean, tmp_path):
    clean_seconds, clean_outputs, clean_names = clean
    out = tmp_path / "out"
    rng = random.Random(KILL_SEED)
    kept: dict[str, tuple[int, int]] = {}
    for round_ in range(KILLS):
        workers = ("--workers", "2") if round_ % 2 else ()
        proc = _batch(corpus_dir, out, models, *workers)
        time.sleep(rng.uniform(0.2, 0.9) * clean_seconds * (1.6 if workers else 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        # whatever is there is complete and right; what was there before was not converted again
        outputs = _outputs(out) if out.exists() else {}
        assert outputs == {k: clean_outputs[k] for k in outputs}
        stamps = _stamps(out) if out.exists() else {}
        assert {k: stamps[k] for k in kept} == kept
        kept = stamps
        if (out / corpus.MANIFEST).exists():
            json.loads((out / corpus.MANIFEST).read_text())  # never half-written
    # what a kill inside a write leaves (the window is too short to hit by timing): a hidden temporary with
    # partial bytes, next to an output of this batch; a user's own hidden file must survive the cleanup
    out.mkdir(exist_ok=True)
    orphan = out / f".{OUTPUTS[0]}.0123abcd{TEMP_SUFFIX}.wav"
    orphan.write_bytes(b"RIFF\x00partial")
    users = out / ".notes.part.wav"
    users.write_bytes(b"mine")
    proc = _batch(corpus_dir, out, models)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _outputs(out) == clean_outputs
    assert {k: _stamps(out)[k] for k in kept} == kept  # finished before a kill: never converted twice
    assert not orphan.exists() and users.read_bytes() == b"mine"
    assert _names(out) == sorted(clean_names + [users.name])
    states = {k: v["state"] for k, v in json.loads((out / corpus.MANIFEST).read_text())["files"].items()}
    assert set(states.values()) <= {"done"}
    print(f"kill -9 rounds: {KILLS}, outputs kept across kills: {len(kept)} of {len(OUTPUTS)}")


def test_a_killed_coordinators_workers_are_gone_before_a_rerun_starts(models, corpus_dir, tmp_path):
    """``kill -9`` of a ``--workers 2`` coordinator: its workers die with it (Linux) or finish and exit, and a new
    batch takes the folder only when none is left (they hold the workers lock)."""
    out = tmp_path / "out"
    proc = _batch(corpus_dir, out, models, "--workers", "2")
    deadline = time.monotonic() + 120
    while not list(out.glob("*.wav")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    children = _children(proc.pid)
    assert len(children) >= 2, "the workers did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# -- full device --------------------------------------------------------------------------------------------------


def _enospc_after(n_ok: int, monkeypatch):
    """Make every audio write after the first ``n_ok`` fail as a full disk does: part of the file, then ENOSPC."""
    real = audio_io._encode
    calls = []

    def encode(tmp, audio, sr, fmt):
        calls.append(tmp)
        if len(calls) <= n_ok:
            return real(tmp, audio, sr, fmt)
        with open(tmp, "wb") as f:
            f.write(b"RIFF\x24\x00\x00\x00WAVEfmt ")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    monkeypatch.setattr(audio_io, "_encode", encode)
    return calls


def test_disk_full_mid_write_stops_the_batch_with_one_line_and_no_partial_output(models, corpus_dir, clean,
                                                                                 tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    calls = _enospc_after(2, monkeypatch)
    code, text, err = run_cli(["batch", corpus_dir, out, *_args(models)], capsys)
    assert code == 1 and len(calls) == 3  # the third write failed; nothing more was started
    assert "2 converted" in text and "1 failed" in text and f"{len(OUTPUTS) - 3} not started" in text
    failed = [line for line in err.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 1 and "no space left on the device" in failed[0] and "Traceback" not in err
    assert "stopped: the output device is full" in err
    assert _temporaries(out) == []
    assert _outputs(out) == {k: clean[1][k] for k in _outputs(out)} and len(_outputs(out)) == 2
    monkeypatch.undo()  # space freed: the same command converts the rest
    code, text, err = run_cli(["batch", corpus_dir, out, *_args(models)], capsys)
    assert code == 0, err
    assert f"{len(OUTPUTS) - 2} converted, 2 skipped" in text
    assert _outputs(out) == clean[1] and _names(out) == clean[2]


def test_a_real_full_device_is_one_line_per_file_and_no_partial_output(models, corpus_dir, clean, tmpfs, capsys):
    """A real tmpfs with room for one output and the 1 MB write headroom."""
    out = tmpfs("1084k") / "out"
    code, text, err = run_cli(["batch", corpus_dir, out, *_args(models)], capsys)
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 1 and "no space left on the device" in failed[0] and "MB free" in failed[0]
    assert "Traceback" not in err and _temporaries(out) == []
    written = _outputs(out)
    assert 0 < len(written) < len(OUTPUTS) and written == {k: clean[1][k] for k in written}


# -- folders, vanishing inputs, two batches --------------------------------------------------------------------


def test_unwritable_output_folders_are_one_line(models, corpus_dir, tmp_path, capsys, tmpfs):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    code, text, err = run_cli(["batch", corpus_dir, a_file / "out", *_args(models)], capsys)
    assert code == 1 and text == "" and err.count("\n") == 1
    assert "cannot create the output folder (Not a directory)" in err
    read_only = tmpfs("64k", "ro")
    code, text, err = run_cli(["batch", corpus_dir, read_only, *_args(models)], capsys)
    assert code == 1 and text == "" and err.count("\n") == 1
    assert "cannot write to this folder (Read-only file system)" in err


def test_an_input_that_vanishes_mid_batch_fails_alone(models, corpus_dir, clean, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.wav", "b.wav", "d.wav"):
        (src / name).write_bytes((corpus_dir / name).read_bytes())
    files = corpus.find_inputs(src)

    def on_event(event):
        if event["event"] == "started" and (src / "b.wav").exists():
            (src / "b.wav").unlink()  # gone after planning, before its turn (a is longest: first)

    summary = corpus.convert_corpus(files, tmp_path / "out", OPTIONS, _paths(models), in_dir=src,
                                    on_event=on_event)
    assert sorted(summary.converted) == ["a.wav", "d.wav"]
    assert [(name, error.endswith("b.wav: file not found")) for name, error in summary.failed] == [("b.wav", True)]
    assert _outputs(tmp_path / "out") == {k: clean[1][k] for k in ("a.wav", "d.wav")}


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from rvc_mlx.service import corpus
    if sys.argv[1] == "batch":
        lock = corpus._FolderLock(Path(sys.argv[2])).__enter__()
    else:
        fd = corpus.hold_worker_lock(sys.argv[2])
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
""")


def _hold(kind: str, folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(folder), str(seconds)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_two_batches_in_one_folder_from_two_processes(models, corpus_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    other = _hold("batch", out, 60)
    try:
        code, text, err = run_cli(["batch", corpus_dir, out, *_args(models)], capsys)
    finally:
        other.kill()
        other.wait()
    assert code == 1 and text == "" and "another batch is writing to this folder" in err
    assert _outputs(out) == {}
    # a worker of a killed batch still finishing its file: the new batch waits for it, then gives up in one line
    monkeypatch.setattr(corpus, "WORKERS_GONE_WAIT_S", 1.0)
    orphan = _hold("worker", out, 60)
    try:
        code, text, err = run_cli(["batch", corpus_dir, out, *_args(models)], capsys)
    finally:
        orphan.kill()
        orphan.wait()
    assert code == 1 and "worker processes of an earlier batch in this folder are still running" in err
    assert _outputs(out) == {}
    # once it is gone the folder is free (the lock files stay)
    src = tmp_path / "in"
    src.mkdir()
    (src / "b.wav").write_bytes((corpus_dir / "b.wav").read_bytes())
    code, text, err = run_cli(["batch", src, out, *_args(models)], capsys)
    assert code == 0 and "1 converted" in text, err


# -- silent takes, over-long inputs -----------------------------------------------------------------------------


def test_silent_takes_are_skipped_and_reported_not_failed(models, corpus_dir, clean, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.wav").write_bytes((corpus_dir / "a.wav").read_bytes())
    sf.write(src / "zeros.wav", np.zeros(SR16), SR16)
    sf.write(src / "denormal.wav", np.full(SR16, 1e-39, np.float32), SR16, subtype="FLOAT")
    assert sf.read(src / "denormal.wav", dtype="float32")[0][0] == np.float32(1e-39)  # kept as written
    out = tmp_path / "out"
    code, text, err = run_cli(["batch", src, out, *_args(models)], capsys)
    assert code == 0, err
    assert "1 converted, 0 skipped (already exist), 2 skipped (silent), 0 failed" in text
    skipped = sorted(line for line in err.splitlines() if line.startswith("  skipped: "))
    assert skipped == [f"  skipped: {src / n}: audio is silent (no output written)"
                       for n in ("denormal.wav", "zeros.wav")]
    assert _outputs(out) == {"a.wav": clean[1]["a.wav"]}
    states = {k: v["state"] for k, v in json.loads((out / corpus.MANIFEST).read_text())["files"].items()}
    assert states == {"a.wav": "done", "zeros.wav": "silent", "denormal.wav": "silent"}
    # one file asked for by name is still refused in one line
    code, text, err = run_cli(["infer", *_args(models)[:-1], "-i", src / "zeros.wav", "-o", tmp_path / "z.wav"],
                              capsys)
    assert code == 1 and err.strip() == f"rvc-mlx: error: {src / 'zeros.wav'}: audio is silent"
    assert not (tmp_path / "z.wav").exists()


def test_inputs_longer_than_the_limit_are_refused_while_decoding(models, tmp_path, capsys, monkeypatch):
    clip = tmp_path / "long.wav"
    sf.write(clip, hubert_models.speech_like(SR16 * 2, seed=3), SR16)
    monkeypatch.setenv(audio_io.MAX_SECONDS_ENV, str(1.5 / 3600))  # 1.5 s
    code, text, err = run_cli(["infer", *_args(models)[:-1], "-i", clip, "-o", tmp_path / "o.wav"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert f"{clip}: longer than 0.000416667 h" in err and audio_io.MAX_SECONDS_ENV in err
    assert not (tmp_path / "o.wav").exists()
    monkeypatch.setenv(audio_io.MAX_SECONDS_ENV, str(2.5 / 3600))
    assert audio_io.read(clip)[0].shape == (SR16 * 2,)
    monkeypatch.setenv(audio_io.MAX_SECONDS_ENV, "many")
    code, _, err = run_cli(["infer", *_args(models)[:-1], "-i", clip, "-o", tmp_path / "o.wav"], capsys)
    assert code == 1 and "not a number of hours" in err
