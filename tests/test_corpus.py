"""Corpus batches (service.corpus, ``rvc-mlx batch --workers N / --ray``): parallel and Ray outputs equal the
sequential run byte for byte (deterministic mode), a worker or Ray actor killed mid-run has its file retried,
the manifest refuses a rerun with other settings (``--force`` converts again), and bad input fails in one line.

Ray runs on a local cluster bound to 127.0.0.1 that the module starts once and shuts down.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import soundfile as sf

from rvc_mlx.service import corpus
from tests.cli_support import batch_args as _args
from tests.cli_support import batch_options, run_cli
from tests.cli_support import batch_paths as _paths
from tests.cli_support import wav_outputs as _outputs
from tests.reference import hubert_models
from tests.reference.rvc_pipeline import ReferenceModels

SR16 = 16000
CLIP_SECONDS = (0.3, 0.8, 0.5, 0.4, 0.7, 0.6)  # different lengths: longest-first order differs from name order
BAD = "zz-not-audio.wav"

OPTIONS = batch_options()


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """Six short speech-like clips (one in a subfolder, one flac) and a .wav that is not audio."""
    root = tmp_path_factory.mktemp("corpus") / "in"
    (root / "sub").mkdir(parents=True)
    for i, seconds in enumerate(CLIP_SECONDS):
        name = "sub/c5.flac" if i == 5 else f"c{i}.wav"
        sf.write(root / name, hubert_models.speech_like(int(SR16 * seconds), seed=10 + i), SR16)
    (root / BAD).write_bytes(b"RIFF not really audio" * 20)
    return root


@pytest.fixture(scope="module")
def sequential(models, corpus_dir, tmp_path_factory):
    """The reference: ``rvc-mlx batch`` in this process, one file after another."""
    out = tmp_path_factory.mktemp("seq") / "out"
    capsys = _Capture()
    code, text, err = capsys.run(["batch", corpus_dir, out, *_args(models)])
    assert code == 1, err  # the bad file fails
    assert "6 converted, 0 skipped" in text and "1 failed" in text
    outputs = _outputs(out)
    assert sorted(outputs) == ["c0.wav", "c1.wav", "c2.wav", "c3.wav", "c4.wav", "sub/c5.wav"]
    return out, outputs


class _Capture:
    """run_cli for module-scoped fixtures (no capsys there): stdout/stderr captured through files."""

    def run(self, argv):
        import contextlib
        import io

        from rvc_mlx.command import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for this module (2 CPUs, loopback, no dashboard) started the way batches start it."""
    pytest.importorskip("ray")
    ray, started = corpus.ray_init("local", 2)
    assert started
    yield ray
    ray.shutdown()


def _check_failed_bad_file(summary_err: str):
    assert BAD in summary_err and "cannot decode audio" in summary_err


# -- byte-identical outputs -----------------------------------------------------------------------------------


def test_two_workers_equal_the_sequential_run(models, corpus_dir, sequential, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = run_cli(["batch", corpus_dir, out, *_args(models), "--workers", "2"], capsys)
    assert code == 1
    assert "6 converted, 0 skipped (already exist), 1 failed" in text
    _check_failed_bad_file(err)
    assert "Traceback" not in err
    assert _outputs(out) == sequential[1]
    manifest = json.loads((out / corpus.MANIFEST).read_text())
    states = {k: v["state"] for k, v in manifest["files"].items()}
    assert states == {**{k: "done" for k in sequential[1]}, BAD: "failed"}
    assert manifest["settings"]["options"]["deterministic"] is True
    assert set(manifest["settings"]["models"]) == {"voice", "hubert"}  # pm needs no f0 model
    # the rerun skips every output (no file converted twice) and tries the bad file again
    code, text, _ = run_cli(["batch", corpus_dir, out, *_args(models), "--workers", "2"], capsys)
    assert code == 1 and "0 converted, 6 skipped" in text and "1 failed" in text


def test_ray_equals_the_sequential_run(models, corpus_dir, sequential, ray_cluster, tmp_path, capsys):
    nodes = ray_cluster.nodes()
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert ray_cluster.cluster_resources()["CPU"] == 2
    out = tmp_path / "out"
    code, text, err = run_cli(["batch", corpus_dir, out, *_args(models), "--ray"], capsys)
    assert code == 1, err
    assert "6 converted, 0 skipped (already exist), 1 failed" in text
    _check_failed_bad_file(err)
    assert _outputs(out) == sequential[1]
    assert ray_cluster.is_initialized()  # a cluster the caller started is left running


# -- killed workers ---------------------------------------------------------------------------------------------


def _killer(victims: list, backend: str):
    """on_event hook: SIGKILL the worker that got the second file handed out (mid-run), once."""
    started = []

    def on_event(event):
        if event["event"] == "started":
            started.append(event["file"])
            if len(started) == 2 and not victims:
                victims.append((event["file"], event["worker"]))
                os.kill(event["worker"], signal.SIGKILL)
    return on_event, started


@pytest.mark.parametrize("backend", ["process", "ray"])
def test_killed_worker_has_its_file_retried(models, corpus_dir, sequential, tmp_path, backend, request):
    ray = None
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
        ray = "local"
    files = corpus.find_inputs(corpus_dir)
    victims = []
    on_event, started = _killer(victims, backend)
    out = tmp_path / "out"
    summary = corpus.convert_corpus(files, out, OPTIONS, _paths(models), in_dir=corpus_dir, workers=2, ray=ray,
                                    on_event=on_event)
    (victim, pid), = victims
    assert pid != os.getpid()
    assert [name for name, _ in summary.retried] == [victim]
    reason = summary.retried[0][1]
    assert str(pid) in reason and ("SIGKILL" in reason if backend == "process" else "died" in reason)
    assert started.count(victim) == 2 and len(started) == 8  # 7 files + the retry; nothing else twice
    assert sorted(summary.converted) == sorted(sequential[1]) and [f for f, _ in summary.failed] == [BAD]
    assert _outputs(out) == sequential[1]
    assert summary.backend == backend and summary.workers == 2
    manifest = json.loads((out / corpus.MANIFEST).read_text())
    assert manifest["files"][Path(victim).with_suffix(".wav").as_posix()] == {
        "input": victim, "state": "done", "retried": 1, "seconds": manifest["files"][
            Path(victim).with_suffix(".wav").as_posix()]["seconds"]}


# -- manifest and resume ----------------------------------------------------------------------------------------


def test_other_settings_are_refused_unless_forced(models, corpus_dir, sequential, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "c0.wav").write_bytes((corpus_dir / "c0.wav").read_bytes())
    out = tmp_path / "out"
    code, text, _ = run_cli(["batch", src, out, *_args(models)], capsys)
    assert code == 0 and "1 converted" in text
    before = _outputs(out)
    assert before == {k: sequential[1][k] for k in before}
    code, text, err = run_cli(["batch", src, out, *_args(models), "--pitch", "12"], capsys)
    assert code == 1 and text == ""
    assert err.count("\n") == 1 and "other settings (pitch 0.0 -> 12.0)" in err and "--force" in err
    assert _outputs(out) == before
    code, text, _ = run_cli(["batch", src, out, *_args(models), "--pitch", "12", "--force"], capsys)
    assert code == 0 and "1 converted, 0 skipped" in text
    after = _outputs(out)
    assert sorted(after) == sorted(before) and all(after[k] != before[k] for k in before)
    manifest = json.loads((out / corpus.MANIFEST).read_text())
    assert manifest["settings"]["options"]["pitch"] == 12.0
    # same settings again: everything skipped; outputs unmanaged by a manifest are skipped too (the old rule)
    code, text, _ = run_cli(["batch", src, out, *_args(models), "--pitch", "12"], capsys)
    assert code == 0 and "0 converted, 1 skipped" in text


def test_bad_batch_requests_fail_in_one_line(models, corpus_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = run_cli(["batch", corpus_dir, out, *_args(models), "--workers", "0"], capsys)
    assert code == 1 and err.strip() == "rvc-mlx: error: --workers must be at least 1 (got 0)"
    assert not any(out.rglob("*.wav"))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    code, _, err = run_cli(["batch", corpus_dir, out, *_args(models), "--ray"], capsys)
    assert code == 1 and err.strip() == "rvc-mlx: error: Ray is not installed: pip install 'rvc-mlx[ray]'"
    assert not any(out.rglob("*.wav"))
    monkeypatch.delitem(sys.modules, "ray")
    # another batch holding the folder's lock
    import fcntl

    out.mkdir(exist_ok=True)
    fd = os.open(out / corpus.LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        code, _, err = run_cli(["batch", corpus_dir, out, *_args(models)], capsys)
    finally:
        os.close(fd)
    assert code == 1 and "another batch is writing to this folder" in err
    assert not any(out.rglob("*.wav"))


def test_clashing_outputs_and_longest_first_order(corpus_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(src / name, hubert_models.speech_like(int(SR16 * (0.3 if name == "a.wav" else 0.9))), SR16)
    (src / "a.flac").write_bytes((src / "a.wav").read_bytes())
    items, clashes = corpus.plan(corpus.find_inputs(src), tmp_path / "out", "wav", src)
    assert [i.key for i in items] == ["a.wav", "b.wav"]  # a.flac sorts first and owns a.wav
    assert [c[0] for c in clashes] == ["a.wav"] and "also the output of a.flac" in clashes[0][1]
    assert [round(i.seconds, 2) for i in items] == [0.3, 0.9]
    lengths = {p.name: corpus.estimate_seconds(p) for p in corpus.find_inputs(corpus_dir)}
    assert lengths["c1.wav"] == pytest.approx(0.8) and lengths["c5.flac"] == pytest.approx(0.6)
    assert lengths[BAD] == pytest.approx(len((corpus_dir / BAD).read_bytes()) / corpus.BYTES_PER_SECOND)
