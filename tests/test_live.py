"""Live mode without sound hardware: the session's latency model, bounded lag, device faults, and the front end.

A stand-in engine (passthrough, optionally slow) has the streaming engine's attributes; ``FakeBackend`` calls the
callbacks once per block on a paced, time-scaled clock and records what it played. The input signal is the sample
index + 1 (exact in float32), so every non-silent output sample says which input sample it carries and the lag of
an output block is ``its index - that sample's index``.

Measured here: the session adds exactly its prefill to the engine's lag (duplex 1 block, split streams 2); an
engine slower than real time keeps the lag bounded by dropping blocks, while queueing every block (``drop_late``
off) lets it grow without bound. A real PortAudio stream is opened (ALSA null device, subprocess) when
sounddevice and libportaudio2 are installed.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from rvc_mlx import devices, live
from rvc_mlx.command import main
from rvc_mlx.devices import DeviceError, FakeBackend, LiveSession, Ring

SR = 16000
BLOCK_TIME = 0.1
B = int(SR * BLOCK_TIME)  # 1600 samples per block
RUN_TIMEOUT_S = 20  # a session that does not end by itself fails the test instead of hanging it


class StandInLatency:
    def __init__(self, block_ms: float, engine_ms: float):
        self.block_ms, self.engine_ms = block_ms, engine_ms

    def estimate_ms(self, input_device_ms: float = 0.0, output_device_ms: float = 0.0) -> float:
        return 2 * self.block_ms + self.engine_ms + input_device_ms + output_device_ms


class StandInStats:
    def __init__(self, block_ms: float):
        self.block_ms, self.blocks, self.drops = block_ms, 0, 0
        self.compute_ms = collections.deque(maxlen=2048)

    def summary(self) -> dict:
        t = np.array(self.compute_ms) if self.compute_ms else np.zeros(1)
        p50, p95 = np.percentile(t, [50, 95])
        return {"blocks": self.blocks, "drops": self.drops, "p50_ms": float(p50), "p95_ms": float(p95),
                "max_ms": float(t.max()), "rtf_p50": p50 / self.block_ms, "rtf_p95": p95 / self.block_ms,
                "load": float(t[-1]) / self.block_ms}


class StandInEngine:
    """The streaming engine's contract, passing audio through: ``process`` sleeps ``delay`` s (wall) first and
    records the thread it ran in; ``interrupt_at``: raise KeyboardInterrupt at that block (a Ctrl-C)."""

    def __init__(self, sample_rate: int = SR, block_time: float = BLOCK_TIME, delay: float = 0.0,
                 interrupt_at: int | None = None):
        self.sample_rate = sample_rate
        self.block_size = int(round(block_time * sample_rate))
        block_ms = 1000.0 * self.block_size / sample_rate
        self.latency = StandInLatency(block_ms, engine_ms=60.0)
        self.stats = StandInStats(block_ms)
        self.delay, self.interrupt_at = delay, interrupt_at
        self.threads = set()
        self.warmed = False

    def process(self, block: np.ndarray) -> np.ndarray:
        assert block.shape == (self.block_size,) and block.dtype == np.float32
        self.threads.add(threading.get_ident())
        if self.interrupt_at is not None and self.stats.blocks >= self.interrupt_at:
            raise KeyboardInterrupt
        t0 = time.perf_counter()
        if self.delay:
            time.sleep(self.delay)
        self.stats.blocks += 1
        self.stats.compute_ms.append(1000 * (time.perf_counter() - t0))
        return block.copy()

    def warmup(self) -> None:
        self.warmed = True

    def reset(self) -> None:
        pass


def index_signal(n: int) -> np.ndarray:
    """Sample i holds i + 1 (0 is silence); float32 is exact up to 2**24."""
    assert n < 2**24
    return np.arange(1, n + 1, dtype=np.float32)


def block_lags(played: np.ndarray, block: int) -> list[tuple[int, int]]:
    """(output block number, lag in samples) of every non-silent output block, checking that each is one
    contiguous piece of the input (the session moves whole blocks)."""
    lags = []
    for j in range(played.size // block):
        piece = played[j * block:(j + 1) * block]
        if not piece.any():
            continue
        source = piece.astype(np.int64) - 1
        assert np.array_equal(np.diff(source), np.ones(block - 1)), f"output block {j} is not contiguous"
        lags.append((j, j * block - int(source[0])))
    return lags


def run_in_thread(session: LiveSession, **kw):
    """``session.run(**kw)`` in a helper thread with a timeout: (result, exception)."""
    box = {}

    def target():
        try:
            box["result"] = session.run(**kw)
        except BaseException as e:  # handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(RUN_TIMEOUT_S)
    assert not t.is_alive(), "the session did not end by itself"
    return box.get("result"), box.get("error")


# -- the ring ------------------------------------------------------------------------------------------------------


def test_ring_is_a_bounded_fifo_that_drops_the_oldest():
    ring = Ring(10)
    assert ring.write(np.arange(4)) == 0 and len(ring) == 4
    out = np.zeros(3, np.float32)
    assert ring.read_into(out) == 3 and out.tolist() == [0, 1, 2]
    assert ring.write(np.arange(4, 14)) == 1  # 11 samples for 10 places: the oldest (3) goes
    out = np.zeros(12, np.float32)
    assert ring.read_into(out) == 10 and out[:10].tolist() == list(range(4, 14))
    ring.write(np.arange(25))  # more than the whole ring: its last 10 samples
    assert ring.discard(4) == 4 and len(ring) == 6
    out = np.zeros(6, np.float32)
    ring.read_into(out)
    assert out.tolist() == list(range(19, 25))


# -- latency: passthrough ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("duplex, prefill_blocks", [(True, 1), (False, 2)])
def test_passthrough_output_is_the_input_delayed_by_the_prefill(duplex, prefill_blocks):
    """Output sample n carries input sample n - prefill·block, exactly: nothing dropped, nothing underrun, and
    the engine ran only in the thread that called run()."""
    n_blocks = 30
    signal = index_signal(n_blocks * B)
    engine = StandInEngine()
    backend = FakeBackend(signal, time_scale=4.0, duplex=duplex, latency=(5.0, 7.0))  # a block every 25 ms
    session = LiveSession(engine, backend)
    summary = session.run(duration=(n_blocks + 3) * BLOCK_TIME)

    lag = prefill_blocks * B
    assert session.buffer_lag == lag
    played = backend.recorded()
    assert played.size >= lag + signal.size
    assert not played[:lag].any()
    np.testing.assert_array_equal(played[lag:lag + signal.size], signal)
    assert summary["drops"] == 0 and summary["underruns"] == 0 and summary["interrupted"] is False
    assert engine.threads == {threading.get_ident()}
    # the estimate: capture (1 block) + prefill + engine + devices
    extra = (prefill_blocks - 1) * 1000 * BLOCK_TIME
    assert summary["latency_ms"] == pytest.approx(2 * 100 + 60 + 5 + 7 + extra)
    assert backend._threads == []  # closed


# -- latency: an engine slower than real time ----------------------------------------------------------------------


def slow_run(drop_late: bool, n_blocks: int = 200):
    """200 blocks through an engine that needs 1.5 block periods per block (clock x5: a period is 20 ms)."""
    time_scale = 5.0
    period = BLOCK_TIME / time_scale
    engine = StandInEngine(delay=1.5 * period)
    backend = FakeBackend(index_signal(n_blocks * B), time_scale=time_scale)
    session = LiveSession(engine, backend, drop_late=drop_late, ring_blocks=4 if drop_late else n_blocks + 10)
    summary = session.run(duration=n_blocks * BLOCK_TIME)
    lags = block_lags(backend.recorded(), B)
    early = max(lag for j, lag in lags if 20 <= j < 30)  # "after 20 blocks"
    end = max(lag for _, lag in lags[-10:])
    return summary, session, engine, early, end


def test_slow_engine_drops_blocks_and_the_lag_stays_bounded():
    summary, session, engine, early, end = slow_run(drop_late=True)
    assert end <= early + B, f"lag grew from {early / B:.1f} to {end / B:.1f} blocks"
    assert end <= 4 * B
    assert summary["drops"] > 0 and engine.stats.drops == session.drops == summary["drops"]
    assert summary["underruns"] > 0  # the output had gaps instead of delay


def test_without_dropping_the_lag_grows():
    """The same run with every block queued: the bound above is what dropping buys (the check would fail)."""
    summary, _, _, early, end = slow_run(drop_late=False)
    assert summary["drops"] == 0
    assert end > early + 10 * B, f"lag only went from {early / B:.1f} to {end / B:.1f} blocks"


def test_output_backlog_is_trimmed_to_the_prefill():
    """Split streams whose output clock runs 5 % slow: output piles up and is trimmed, so the lag stays bounded."""
    n_blocks = 100
    engine = StandInEngine()
    backend = FakeBackend(index_signal(n_blocks * B), time_scale=5.0, duplex=False, output_ppm=-50_000)
    session = LiveSession(engine, backend)
    summary = session.run(duration=n_blocks * BLOCK_TIME)
    lags = block_lags(backend.recorded(), B)
    assert summary["drops"] > 0
    assert max(lag for _, lag in lags) <= 3 * B


# -- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, words", [("raise", "was lost"), ("stop", "no audio from the input device")])
def test_device_lost_mid_stream_ends_with_one_clear_error(loss, words):
    engine = StandInEngine()
    backend = FakeBackend(index_signal(100 * B), time_scale=10.0, lose_after=10, loss=loss)
    session = LiveSession(engine, backend, stall_timeout=0.3)
    t0 = time.monotonic()
    result, error = run_in_thread(session, duration=60.0)
    assert result is None and isinstance(error, DeviceError)
    assert words in str(error) and "\n" not in str(error)
    assert time.monotonic() - t0 < 5
    assert backend._threads == []


def test_ctrl_c_ends_cleanly_with_the_streams_closed():
    engine = StandInEngine(interrupt_at=5)
    backend = FakeBackend(index_signal(100 * B), time_scale=10.0)
    result, error = run_in_thread(LiveSession(engine, backend), duration=60.0)
    assert error is None and result["interrupted"] is True and result["blocks"] == 5
    assert backend._threads == []


def test_refused_device_is_one_line():
    with pytest.raises(DeviceError, match="^cannot open audio device 'fake': device unavailable$"):
        LiveSession(StandInEngine(), FakeBackend(refuse=True)).run(duration=1.0)


def test_status_reports_load_drops_and_latency():
    seen = []
    engine = StandInEngine(delay=0.004)
    session = LiveSession(engine, FakeBackend(index_signal(60 * B), time_scale=10.0), status_interval=0.1)
    session.run(duration=60 * BLOCK_TIME, on_status=seen.append)
    assert len(seen) >= 3
    last = seen[-1]
    assert last.blocks > 0 and 3.5 < last.load < 15  # ~4 ms per 100 ms block (the clock runs x10)
    line = last.format()
    assert "load" in line and "drops" in line and "underruns" in line and "latency ~260 ms" in line


# -- the command line ----------------------------------------------------------------------------------------------


def run_cli(argv, capsys):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rvc-mlx: error: "), err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--block-time", "3"], "--block-time must be within 0.02..1.5, got 3"),
    (["--block-time", "0.01"], "--block-time must be within 0.02..1.5"),
    (["--crossfade-time", "0.2"], "--crossfade-time must be within 0.01..0.15"),
    (["--extra-time", "6"], "--extra-time must be within 0.05..5"),
    (["--threshold", "3"], "--threshold must be within -60..0"),
    (["--pitch", "30"], "--pitch must be within -24..24"),
    (["--pitch", "up"], "--pitch must be a number, got 'up'"),
    (["--index-rate", "1.5"], "--index-rate must be within 0..1"),
    (["--rms-mix-rate", "-0.1"], "--rms-mix-rate must be within 0..1"),
    (["--sid", "1.5"], "--sid must be a whole number"),
    (["--sid", "-1"], "--sid must be at least 0"),
    (["--block-time", "nan"], "--block-time must be a finite number"),
    (["--duration", "0"], "--duration must be positive"),
    (["--sample-rate", "8000"], "--sample-rate must be within 16000..192000"),
    (["--input-file", "in.wav"], "--input-file and --output-file go together"),
    (["--output-file", "out.wav"], "--input-file and --output-file go together"),
    (["--input-file", "missing.wav", "--output-file", "out.wav"], "missing.wav: input audio not found"),
])
def test_bad_flags_are_one_line_with_exit_code_1(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["live", "-m", "voice", *argv], capsys)
    assert code == 1
    assert message in one_error_line(err)


def test_live_needs_a_voice(capsys):
    code, _, err = run_cli(["live"], capsys)
    assert code == 1 and "needs a voice: -m/--model" in one_error_line(err)


def test_file_output_format_is_checked_before_converting(capsys, tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, np.full(SR, 0.1, np.float32), SR)
    code, _, err = run_cli(["live", "-m", "voice", "--input-file", src, "--output-file", tmp_path / "out.xyz"],
                           capsys)
    assert code == 1 and "cannot write format 'xyz'" in one_error_line(err)


def test_list_devices_without_sounddevice_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import sounddevice -> ImportError
    code, _, err = run_cli(["live", "--list-devices"], capsys)
    assert code == 1
    assert one_error_line(err) == f"rvc-mlx: error: {devices.LIVE_EXTRA}"


def sounddevice_works() -> bool:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def test_list_devices_as_installed(capsys):
    """Whatever this machine has: the one-line message without PortAudio, else a listing (maybe empty)."""
    code, out, err = run_cli(["live", "--list-devices"], capsys)
    if sounddevice_works():
        assert code == 0 and err == ""
        assert out == "no audio devices found\n" or out.splitlines()[0].split()[:3] == ["#", "in", "out"]
    else:
        assert code == 1 and one_error_line(err) == f"rvc-mlx: error: {devices.LIVE_EXTRA}"


def test_device_lookup_by_index_and_name():
    listing = [
        {"index": 0, "name": "Built-in Microphone", "hostapi": "Core Audio", "max_input_channels": 1,
         "max_output_channels": 0, "default_samplerate": 48000.0, "default_input": True, "default_output": False},
        {"index": 1, "name": "USB Headset", "hostapi": "Core Audio", "max_input_channels": 1,
         "max_output_channels": 2, "default_samplerate": 48000.0, "default_input": False, "default_output": True},
        {"index": 2, "name": "USB Headset Mic", "hostapi": "Core Audio", "max_input_channels": 2,
         "max_output_channels": 0, "default_samplerate": 44100.0, "default_input": False, "default_output": False},
    ]
    find = devices.find_device
    assert find(None, "input", listing)["index"] == 0 and find(None, "output", listing)["index"] == 1
    assert find(2, "input", listing)["index"] == 2 and find("2", "input", listing)["index"] == 2
    assert find("usb headset", "input", listing)["index"] == 1  # an exact name wins over substrings
    assert find("headset", "output", listing)["index"] == 1  # only one of them can play
    assert find("micro", "input", listing)["index"] == 0
    for spec, kind, message in [("USB", "input", "input device 'USB' is ambiguous: #1 'USB Headset' (Core Audio), "
                                 "#2 'USB Headset Mic' (Core Audio); give its index"),
                                ("Speakers", "output", "no output device matches 'Speakers'"),
                                (7, "input", "no audio device #7"),
                                (0, "output", "audio device #0 'Built-in Microphone' has no output channels")]:
        with pytest.raises(DeviceError) as err:
            find(spec, kind, listing)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    no_default = [dict(d, default_input=False) for d in listing]
    with pytest.raises(DeviceError, match="no default input device; choose one with --input-device"):
        find(None, "input", no_default)


@pytest.fixture
def fake_live(monkeypatch):
    """``rvc-mlx live`` with the stand-in engine and a fake device (set ``.backend`` before running)."""
    state = SimpleNamespace(backend=None, engine=None, options=None)

    def options(args, values, sample_rate=None):
        state.options = dict(values, f0_method=args.f0_method, sample_rate=sample_rate or values["sample_rate"])
        return SimpleNamespace(**state.options)

    def engine(args, opts):
        state.engine = StandInEngine(sample_rate=opts.sample_rate or SR, block_time=opts.block_time)
        return state.engine

    monkeypatch.setattr(live, "stream_options", options)
    monkeypatch.setattr(live, "load_engine", engine)
    monkeypatch.setattr(live, "make_backend", lambda args: state.backend)
    return state


def test_cli_live_runs_a_session_and_reports(fake_live, capsys):
    fake_live.backend = FakeBackend(index_signal(20 * B), time_scale=4.0)
    code, out, err = run_cli(["live", "-m", "voice", "--duration", "1", "--block-time", "0.1", "--pitch", "3",
                              "--f0-method", "fcpe"], capsys)
    assert code == 0, err
    assert fake_live.options["pitch"] == 3.0 and fake_live.options["f0_method"] == "fcpe"
    assert fake_live.engine.warmed and fake_live.engine.stats.blocks >= 5
    assert "live: fake (duplex, 16000 Hz, 1600 frames per block" in out
    assert re.search(r"live: 1\.0 s of audio, drops \d+, underruns \d+, latency ~260 ms", out), out
    assert "real time: yes" in out


def test_cli_refused_device_is_one_line(fake_live, capsys):
    fake_live.backend = FakeBackend(refuse=True)
    code, _, err = run_cli(["live", "-m", "voice"], capsys)
    assert code == 1
    assert one_error_line(err) == "rvc-mlx: error: cannot open audio device 'fake': device unavailable"


def test_cli_lost_device_is_one_line(fake_live, capsys):
    fake_live.backend = FakeBackend(index_signal(40 * B), time_scale=10.0, lose_after=5)
    code, _, err = run_cli(["live", "-m", "voice"], capsys)
    assert code == 1
    assert one_error_line(err) == "rvc-mlx: error: audio device 'fake' was lost (unplugged)"


def test_cli_file_mode_keeps_rate_and_length_and_reports_timing(fake_live, capsys, tmp_path):
    pytest.importorskip("rvc_mlx.stream")  # stream_file
    src, dst = tmp_path / "in.wav", tmp_path / "out.flac"
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(1.23 * 44100)) / 44100)).astype(np.float32)
    sf.write(src, audio, 44100)
    code, out, err = run_cli(["live", "-m", "voice", "--input-file", src, "--output-file", dst,
                              "--block-time", "0.2"], capsys)
    assert code == 0, err
    result, rate = sf.read(dst, dtype="float32")
    assert rate == 44100 and result.shape == audio.shape
    np.testing.assert_allclose(result, audio, atol=1e-4)  # passthrough stand-in, 16-bit FLAC
    assert fake_live.engine.warmed and fake_live.engine.stats.blocks == 7  # ceil(1.23 / 0.2)
    assert f"{dst}: written (1.23 s at 44100 Hz)" in out
    assert "blocks: 7 of 200 ms; compute per block p50" in out and "real time: yes" in out


def test_cli_file_mode_resamples_to_sample_rate(fake_live, capsys, tmp_path):
    pytest.importorskip("rvc_mlx.stream")
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, np.full(22050, 0.2, np.float32), 22050)
    code, _, err = run_cli(["live", "-m", "voice", "--input-file", src, "--output-file", dst], capsys)
    assert code == 1 and "22050 Hz cannot stand for a device rate" in one_error_line(err)
    code, _, err = run_cli(["live", "-m", "voice", "--input-file", src, "--output-file", dst,
                            "--sample-rate", "16000"], capsys)
    assert code == 0, err
    result, rate = sf.read(dst)
    assert rate == 16000 and result.shape == (16000,)


def test_status_line_rewrites_on_a_terminal_and_prints_lines_otherwise():
    status = [devices.LiveStatus(seconds=s, blocks=int(s * 10), compute_ms=40.0, compute_p95_ms=50.0, load=16.0,
                                 drops=0, underruns=0, xruns=0, latency_ms=560.0) for s in (0.5, 1.0, 5.5)]
    tty = io.StringIO()
    line = live.StatusLine(tty, tty=True)
    for s in status:
        line(s)
    line.finish()
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("\n")
    plain = io.StringIO()
    line = live.StatusLine(plain, tty=False, plain_every=5.0)
    for s in status:
        line(s)
    assert "\r" not in plain.getvalue() and len(plain.getvalue().splitlines()) == 2  # at 0.5 s and 5.5 s


def test_flags_match_the_engine_options():
    stream = pytest.importorskip("rvc_mlx.stream")
    flags = {f.name: f for f in live.FLAGS}
    for name, (lo, hi) in stream.StreamOptions.RANGES.items():
        assert (flags[name].lo, flags[name].hi) == (lo, hi), name
    defaults = stream.StreamOptions()
    for name in live.ENGINE_FIELDS:
        assert flags[name].default == getattr(defaults, name), name
    assert set(live.F0_METHODS) == set(stream.STREAM_F0_METHODS)


# -- a real PortAudio stream (ALSA null device) --------------------------------------------------------------------

SMOKE = textwrap.dedent("""
    import json, sys, numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests.test_live import StandInEngine
    from rvc_mlx.devices import DeviceError, LiveSession, SounddeviceBackend, list_devices
    backend = SounddeviceBackend()
    summary = LiveSession(StandInEngine(48000, 0.1), backend).run(duration=0.5)
    try:
        SounddeviceBackend("no such device").resolve()
        unknown = None
    except DeviceError as e:
        unknown = str(e)
    print(json.dumps({"devices": [d["name"] for d in list_devices()], "summary": summary,
                      "closed": backend._streams == [], "device_ms": backend.latency_ms(),
                      "description": backend.description, "unknown": unknown}))
""")


@pytest.mark.skipif(not sounddevice_works(), reason="needs sounddevice and libportaudio2")
def test_sounddevice_backend_opens_and_closes_an_alsa_null_device(tmp_path):
    """The null PCM has no clock (callbacks run as fast as they can, input is NaN): this checks the plumbing of
    open, start, callbacks and close, not timing."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text("pcm.!default { type null }\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", SMOKE, str(root)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(home)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "default" in report["devices"] and report["closed"] is True
    assert report["summary"]["seconds"] >= 0.5 and report["summary"]["interrupted"] is False
    assert report["summary"]["latency_ms"] == pytest.approx(260 + sum(report["device_ms"]))
    assert "duplex, 48000 Hz, 4800 frames per block" in report["description"]
    assert report["unknown"].startswith("no input device matches 'no such device'")


SIGINT_SCRIPT = textwrap.dedent("""
    import json, signal, sys, threading
    # a parent started in the background (``cmd &``) passes SIGINT on as ignored, and Python then installs no
    # KeyboardInterrupt handler: install it, as an interactive terminal's foreground process has it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, sys.argv[1])
    from tests.test_live import B, StandInEngine, index_signal
    from rvc_mlx.devices import FakeBackend, LiveSession
    backend = FakeBackend(index_signal(1000 * B))  # real time: 100 ms blocks
    print("running", flush=True)
    summary = LiveSession(StandInEngine(), backend).run(duration=60.0)
    print(json.dumps({"interrupted": summary["interrupted"], "blocks": summary["blocks"],
                      "closed": backend._threads == [],
                      "threads": sorted(t.name for t in threading.enumerate())}))
""")


def test_sigint_stops_a_running_session_cleanly(tmp_path):
    """A real Ctrl-C (SIGINT to the process) while the session waits for audio: it returns, devices closed."""
    import signal

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.8)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["interrupted"] is True and report["closed"] is True and report["blocks"] >= 3
    assert report["threads"] == ["MainThread"]
