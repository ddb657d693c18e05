"""Training step 1 (``prepare``) against RVC's own pieces.

The reference below follows RVC WebUI's ``PreProcess.pipeline`` with rvc==0.3.5's ``Slicer`` (``rvc.lib.slicer2``),
scipy's Butterworth + ``lfilter`` and ``librosa.resample`` (its default soxr_hq). One difference, on purpose: RVC's
loop numbers the last segment of each slice one too high, so the next slice's first segment overwrites it; the
reference (like rvc-mlx and Applio) gives every segment its own number.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from rvc_mlx.errors import InputError
from rvc_mlx.train import prepare as P

GT_TOL = 1e-5  # max-abs, segments at the model rate (measured: 0.0, bit-equal)
WAV16K_TOL = 1e-5  # max-abs, 16 kHz segments (measured: 0.0, bit-equal)


# ---------------------------------------------------------------------------------------------------------------
# made-up recordings


def _burst(n: int, sr: int, rng) -> np.ndarray:
    """A voiced-speech-like burst: gliding harmonics, syllable-rate envelope, some breath noise."""
    t = np.arange(n) / sr
    f0 = rng.uniform(100, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(h * phase) / h for h in range(1, HARMONICS + 1))
    envelope = (0.35 + 0.65 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)) ** 2)
    envelope *= np.abs(np.sin(np.pi * np.arange(n) / max(n - 1, 1))) ** 0.2  # soft onset and release
    x = envelope * voiced + 0.05 * rng.standard_normal(n)
    return x / np.abs(x).max() * rng.uniform(0.2, 0.8)


HARMONICS = 6
SILENCES = (0.05, 0.2, 0.35, 0.45, 0.6, 0.9, 1.2, 2.0)  # s: shorter and longer than min interval, 1x and 2x max kept
BURSTS = (0.3, 0.8, 1.6, 3.0, 5.0, 9.0)  # s: shorter than a segment, a few segments, many


def take(sr: int, seed: int, n_parts: int = 9) -> np.ndarray:
    """Bursts separated by silences of several lengths (a noise floor of -90..-50 dB, or exact zeros), with
    leading and trailing silence: float64 (N,) at ``sr``."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(n_parts):
        gap = int(rng.choice(SILENCES) * sr) if k else int(rng.uniform(0.3, 1.2) * sr)
        floor = 0.0 if rng.random() < 0.2 else 10 ** (rng.uniform(-90, -50) / 20)
        parts.append(floor * rng.standard_normal(gap))
        parts.append(_burst(int(rng.choice(BURSTS) * sr), sr, rng))
    parts.append(1e-4 * rng.standard_normal(int(rng.uniform(0.2, 1.5) * sr)))
    return np.concatenate(parts)


def _wav(path, x, sr):
    sf.write(str(path), np.asarray(x, np.float32), sr, subtype="FLOAT")
    return path


# ---------------------------------------------------------------------------------------------------------------
# the independent reference


def _rvc_slicer(sr):
    from rvc.lib.slicer2 import Slicer

    return Slicer(sr=sr, threshold=-42, min_length=1500, min_interval=400, hop_size=15, max_sil_kept=500)


def rvc_reference(paths, sr, overlap=0.3):
    """RVC's preprocessing of ``paths`` (in this order) -> {"i_j": (gt float32, 16k float32)}."""
    import librosa
    from scipy import signal

    b, a = signal.butter(N=5, Wn=48, btype="high", fs=sr)
    slicer = _rvc_slicer(sr)
    per = 3.7
    tail = per + overlap
    out = {}
    for idx0, path in enumerate(paths):
        x, file_sr = sf.read(str(path), dtype="float32")
        if x.ndim == 2:  # mono as the mean of the channels (FFmpeg's ``-ac 1`` in RVC's loader for stereo)
            x = x.mean(axis=1, dtype=np.float32)
        if file_sr != sr:  # rvc-mlx resamples on reading with soxr HQ, as librosa does (without its length fix)
            x = librosa.resample(x, orig_sr=file_sr, target_sr=sr, fix=False)
        x = signal.lfilter(b, a, x)
        idx1 = 0
        for piece in slicer.slice(x):
            i = 0
            while True:
                start = int(sr * (per - overlap) * i)
                i += 1
                last = not len(piece[start:]) > tail * sr
                seg = piece[start:] if last else piece[start:start + int(per * sr)]
                peak = np.abs(seg).max()
                if 0 < peak <= 2.5:
                    seg = seg / peak * (0.9 * 0.75) + (1 - 0.75) * seg
                    out[f"{idx0}_{idx1}"] = (seg.astype(np.float32),
                                             librosa.resample(seg, orig_sr=sr, target_sr=16000).astype(np.float32))
                idx1 += 1
                if last:
                    break
    return out


def read_outputs(exp):
    """{"i_j": (gt, 16k)} from an experiment folder, checking each file's rate and float32 format."""
    out = {}
    for p in sorted((exp / P.GT_DIR).glob("[0-9]*.wav")):
        gt, sr_gt = sf.read(str(p), dtype="float32")
        w16, sr16 = sf.read(str(exp / P.WAVS_16K_DIR / p.name), dtype="float32")
        assert sf.info(str(p)).subtype == "FLOAT" and sr16 == P.FEATURE_RATE
        out[p.stem] = (gt, w16)
    assert sorted(p.name for p in (exp / P.WAVS_16K_DIR).glob("[0-9]*.wav")) == sorted(f"{k}.wav" for k in out)
    return out


def compare(ours, ref):
    """(same names and lengths, max-abs at the model rate, max-abs at 16 kHz)."""
    same = ours.keys() == ref.keys() and all(
        len(ours[k][0]) == len(ref[k][0]) and len(ours[k][1]) == len(ref[k][1]) for k in ref)
    if not same:
        return False, np.inf, np.inf
    gt = max(float(np.abs(ours[k][0] - ref[k][0]).max()) for k in ref)
    w16 = max(float(np.abs(ours[k][1] - ref[k][1]).max()) for k in ref)
    return True, gt, w16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three takes at 40 kHz (one of them stereo) and one at 44.1 kHz; names sort differently from creation."""
    folder = tmp_path_factory.mktemp("dataset")
    sr = 40000
    _wav(folder / "b_take.wav", take(sr, 1), sr)
    _wav(folder / "a_take.wav", take(sr, 2, n_parts=8), sr)
    _wav(folder / "d_44k.wav", take(44100, 4, n_parts=6), 44100)
    stereo = take(sr, 3, n_parts=6)
    sf.write(str(folder / "c_stereo.wav"), np.stack([stereo, stereo], 1).astype(np.float32), sr, subtype="FLOAT")
    return folder, sr


# ---------------------------------------------------------------------------------------------------------------
# the slicer


@pytest.mark.parametrize("sr", P.SAMPLE_RATES)
@pytest.mark.parametrize("seed", range(4))
def test_slicer_equals_rvc(sr, seed):
    x = take(sr, 10 + seed)
    expected = _rvc_slicer(sr).slice(x)
    base = x.__array_interface__["data"][0]  # rvc's pieces are views: their offsets are the boundaries
    starts = [(c.__array_interface__["data"][0] - base) // x.itemsize for c in expected]
    bounds = P.Slicer(sr).bounds(x)
    assert len(bounds) >= 4
    assert bounds == [(s, s + len(c)) for s, c in zip(starts, expected)]
    assert all(np.array_equal(a, b) for a, b in zip(P.Slicer(sr).slice(x), expected))


def test_slicer_edge_cases():
    sr = 40000
    for x in (np.zeros(5 * sr), np.zeros(50), 1e-3 * np.ones(3 * sr), np.r_[np.zeros(sr), 0.5 * np.ones(sr)],
              np.r_[0.5 * np.ones(2 * sr), np.zeros(2 * sr)]):
        expected = [len(c) for c in _rvc_slicer(sr).slice(x)]
        assert [b - a for a, b in P.Slicer(sr).bounds(x)] == expected
    with pytest.raises(InputError):
        P.Slicer(sr, min_length_ms=100, min_interval_ms=400)


def test_16k_resampling_equals_librosa():
    import librosa

    rng = np.random.default_rng(0)
    worst = 0.0
    for sr in P.SAMPLE_RATES:
        for n in (1, 3, 7, 12345, 148000, 177601):
            x = rng.standard_normal(n) * 0.3
            ours, ref = P.to_16k(x, sr), librosa.resample(x, orig_sr=sr, target_sr=16000).astype(np.float32)
            assert ours.dtype == np.float32 and ours.shape == ref.shape
            worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst <= 1e-7, worst  # measured 0.0


# ---------------------------------------------------------------------------------------------------------------
# the whole step


def _run(dataset, tmp_path, **kw):
    folder, sr = dataset
    exp = tmp_path / "exp"
    report = P.prepare(folder, exp, sr, **kw)
    return report, exp


def test_prepare_equals_rvc_reference(dataset, tmp_path):
    folder, sr = dataset
    calls = []
    report, exp = _run(dataset, tmp_path, progress=lambda *a: calls.append(a))
    ref = rvc_reference(sorted(folder.iterdir()), sr)
    same, gt, w16 = compare(read_outputs(exp), ref)
    assert same, "file names or segment lengths differ"
    assert gt <= GT_TOL and w16 <= WAV16K_TOL, (gt, w16)
    assert len(ref) > 20 and report.segments == report.written == len(ref)
    assert report.files == report.processed == 4 and report.resampled == 1 and report.reused == 0
    assert report.seconds == pytest.approx(sum(len(v[0]) for v in ref.values()) / sr)
    assert [c[:2] for c in calls] == [(i, 4) for i in range(1, 5)]
    assert {s.reason for s in report.skipped} <= {P.FILTERED}


def _filtfilt_highpass(x, sr):
    from scipy import signal

    b, a = signal.butter(N=P.HIGHPASS_ORDER, Wn=P.HIGHPASS_HZ, btype="high", fs=sr)
    return signal.filtfilt(b, a, x)


@pytest.mark.parametrize("fault", ["filtfilt", "overlap 0.2", "alpha 0.7"])
def test_seeded_fault_is_caught(dataset, tmp_path, monkeypatch, fault):
    """The comparison above fails when one step is wrong."""
    if fault == "filtfilt":
        monkeypatch.setattr(P, "highpass", _filtfilt_highpass)
    elif fault == "overlap 0.2":
        monkeypatch.setattr(P, "OVERLAP_SECONDS", 0.2)
    else:
        monkeypatch.setattr(P, "NORM_ALPHA", 0.7)
    folder, sr = dataset
    _, exp = _run(dataset, tmp_path)
    same, gt, w16 = compare(read_outputs(exp), rvc_reference(sorted(folder.iterdir()), sr))
    # measured: filtfilt and overlap 0.2 change segment lengths (filtfilt moves the filtered audio by up to 0.53,
    # which moves the slicer's cuts); alpha 0.7 keeps the names and lengths, max-abs 0.025 (gt) / 0.024 (16 kHz)
    assert not same or (gt > 100 * GT_TOL and w16 > 100 * WAV16K_TOL), (fault, gt, w16)


# ---------------------------------------------------------------------------------------------------------------
# skips, resume, errors


@pytest.fixture
def mixed(tmp_path):
    """A dataset with one good take and one of each kind of bad input."""
    sr = 32000
    folder = tmp_path / "mixed"
    folder.mkdir()
    _wav(folder / "0_good.wav", take(sr, 5, n_parts=4), sr)
    _wav(folder / "1_silent.wav", np.zeros(3 * sr), sr)
    loud = _burst(5 * sr, sr, np.random.default_rng(0))
    _wav(folder / "2_loud.wav", 3.0 * loud / np.abs(loud).max(), sr)  # float WAV keeps peaks above 1
    (folder / "3_notes.wav").write_text("not audio\n")
    _wav(folder / "4_quiet.wav", 1e-4 * np.random.default_rng(1).standard_normal(2 * sr), sr)
    _wav(folder / "5_short.wav", 0.3 * np.ones(sr // 50), sr)
    _wav(folder / "6_more.wav", take(sr, 6, n_parts=3), sr)
    (folder / ".DS_Store").write_bytes(b"\0\1")
    (folder / "subfolder").mkdir()
    return folder, sr


def _mtimes(exp):
    return {p.relative_to(exp): p.stat().st_mtime_ns
            for d in (P.GT_DIR, P.WAVS_16K_DIR) for p in (exp / d).iterdir()}


def test_skips_are_reported_and_write_nothing(mixed, tmp_path):
    report, exp = _run(mixed, tmp_path)
    by_file = {}
    for s in report.skipped:
        by_file.setdefault(s.source, set()).add(s.reason)
        assert "\n" not in s.detail and s.source in s.detail
    assert by_file == {"1_silent.wav": {P.SILENT}, "2_loud.wav": {P.FILTERED}, "3_notes.wav": {P.UNREADABLE},
                       "4_quiet.wav": {P.SILENT}, "5_short.wav": {P.TOO_SHORT}}
    assert all(s.segment and s.segment.startswith("2_") for s in report.skipped if s.source == "2_loud.wav")
    names = sorted(p.name for p in (exp / P.GT_DIR).iterdir())
    assert names == sorted(p.name for p in (exp / P.WAVS_16K_DIR).iterdir())
    assert {n.split("_")[0] for n in names} == {"0", "6"}  # idx0: position among the 7 files by name
    assert report.files == 7 and report.segments == len(names)
    assert "skipped" in report.summary()


def test_resume_does_no_work_and_redoes_a_deleted_output(mixed, tmp_path):
    first, exp = _run(mixed, tmp_path)
    before = _mtimes(exp)
    second, _ = _run(mixed, tmp_path)
    assert second.processed == 0 and second.reused == 6 and second.written == 0  # the unreadable file is retried
    assert second.segments == first.segments and second.skipped == first.skipped
    assert _mtimes(exp) == before
    victim = next(p for p in sorted(before) if p.name.startswith("6_"))
    (exp / victim).unlink()
    third, _ = _run(mixed, tmp_path)
    after = _mtimes(exp)
    redone = {p for p in before if p.name.startswith("6_")}
    assert third.processed == 1 and third.written == len(redone) // 2 and after.keys() == before.keys()
    assert all(after[p] != before[p] for p in redone)  # only file 6 was redone
    assert all(after[p] == before[p] for p in before if p not in redone)
    # a take removed from the dataset takes its outputs with it
    folder, _ = mixed
    (folder / "6_more.wav").unlink()
    fourth, _ = _run(mixed, tmp_path)
    assert fourth.processed == 0 and fourth.removed == len(redone)
    assert _mtimes(exp) == {p: t for p, t in before.items() if p not in redone}
    # a damaged record is redone, not trusted
    manifest = json.loads((exp / P.MANIFEST).read_text())
    manifest["files"]["0_good.wav"]["outputs"] = "0_0"
    (exp / P.MANIFEST).write_text(json.dumps(manifest))
    fifth, _ = _run(mixed, tmp_path)
    assert fifth.processed == 1 and fifth.segments == fourth.segments


def test_speaker_subfolders_make_a_multi_speaker_set(tmp_path):
    sr = 32000
    folder = tmp_path / "voices"
    for sub, seed in (("bob", 3), ("alice", 4), ("", 5)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        _wav(folder / sub / f"take{seed}.wav", take(sr, seed, n_parts=2), sr)
    (folder / "empty").mkdir()  # no recordings: not a speaker
    report, exp = _run((folder, sr), tmp_path)
    assert report.speakers == {"voices": 0, "alice": 1, "bob": 2} and report.files == 3
    assert "3 speakers" in report.summary()
    manifest = json.loads((exp / P.MANIFEST).read_text())
    assert {k: (r["index"], r["speaker"]) for k, r in manifest["files"].items()} == {
        "take5.wav": (0, 0), "alice/take4.wav": (1, 1), "bob/take3.wav": (2, 2)}
    assert P.segment_speakers(exp) == {0: 0, 1: 1, 2: 2}
    assert {p.name.split("_")[0] for p in (exp / P.GT_DIR).iterdir()} == {"0", "1", "2"}
    # a new speaker sorting first moves the ids of the others; the files after it are re-cut under new indices
    (folder / "aaron").mkdir()
    _wav(folder / "aaron" / "take6.wav", take(sr, 6, n_parts=2), sr)
    again, _ = _run((folder, sr), tmp_path)
    assert again.speakers == {"voices": 0, "aaron": 1, "alice": 2, "bob": 3}
    assert P.segment_speakers(exp) == {0: 0, 1: 1, 2: 2, 3: 3} and again.reused == 1
    outputs = {o for r in json.loads((exp / P.MANIFEST).read_text())["files"].values() for o in r["outputs"]}
    assert {p.stem for p in (exp / P.GT_DIR).iterdir()} == outputs and {o.split("_")[0] for o in outputs} == set("0123")


def test_bad_input_is_one_line(tmp_path):
    def message(*args):
        with pytest.raises(InputError) as e:
            P.prepare(*args)
        assert "\n" not in str(e.value)
        return str(e.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.wav").write_bytes(b"")
    assert "no audio files" in message(empty, tmp_path / "exp", 40000) and str(empty) in message(empty, tmp_path, 40000)
    assert "not found" in message(tmp_path / "missing", tmp_path / "exp", 40000)
    assert "40000" in message(empty, tmp_path / "exp", 44100)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    assert "no usable audio" in message(junk, tmp_path / "exp2", 40000)


def test_runtime_imports_neither_torch_nor_librosa():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from rvc_mlx.train import prepare as P; "
            "P.to_16k(np.ones(4000), 40000); P.Slicer(40000).bounds(np.ones(40000)); "
            "bad = [m for m in ('torch', 'librosa') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
