"""Live audio I/O: sound devices, a pluggable audio backend, and the session that feeds a streaming engine.

Three parts:

- :func:`list_devices` / :func:`find_device`: PortAudio's devices through ``sounddevice`` (the optional ``live``
  extra), imported only inside functions so that this module loads without it.
- A :class:`Backend` moves audio between devices and two callbacks, block by block: :class:`SounddeviceBackend`
  (one duplex stream when both devices share a host API, else an input and an output stream) and
  :class:`FakeBackend` (a thread on a paced, optionally time-scaled clock; for tests and machines without audio).
- :class:`LiveSession` joins a backend to a streaming engine (``rvc_mlx.stream.StreamConverter`` or anything with
  its ``sample_rate``, ``block_size``, ``process``, ``latency`` and ``stats``).

Threads. The backend's callbacks run on PortAudio's (or the fake's) threads and only copy samples into and out of
two bounded rings. ``engine.process`` (MLX) runs only in the thread that calls :meth:`LiveSession.run`: MLX gets one
owner thread (DESIGN.md §9).

Latency model (sample indices, as the fake backend records them). Output sample ``n`` carries input sample
``n - prefill·block - engine lag``: the output ring starts with ``prefill`` blocks of silence (1 for a duplex
stream, 2 for split streams, whose callbacks are not in step). On a real device the block is first captured whole
(+1 block of wall time) and both devices add their own latency, which gives the usual
``2·block + crossfade + 10 ms + devices`` for a duplex stream (``engine.latency.estimate_ms``).

Keeping it bounded. When the engine falls behind, the session processes only the newest whole input block and drops
the older ones (counted in ``engine.stats.drops``), and before queueing a block it trims the output backlog to the
prefill (also counted as drops), so a slow spell costs audio, never latency. An output callback that finds too
little in the ring plays silence for the rest (an underrun, counted).
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .errors import RvcMlxError

LIVE_EXTRA = ("live audio needs the 'live' extra: pip install 'rvc-mlx[live]' and PortAudio "
              "(Debian: apt install libportaudio2)")
KINDS = ("input", "output")

InputCallback = Callable[[np.ndarray], None]    # (frames,) float32 mono, captured
OutputCallback = Callable[[np.ndarray], None]   # (frames,) float32 mono, to fill in place


class DeviceError(RvcMlxError):
    """An audio device is missing, ambiguous, refuses to open, cannot run at the rate, or failed mid-stream."""


# -- devices (sounddevice / PortAudio) -------------------------------------------------------------------------------


def _sounddevice():
    """The ``sounddevice`` module, or one clear error when it or the PortAudio library is missing."""
    try:
        import sounddevice
    except (ImportError, OSError):  # OSError: "PortAudio library not found"
        raise DeviceError(LIVE_EXTRA) from None
    return sounddevice


def _pa_message(err: Exception) -> str:
    """PortAudio's message without the error-code tuple sounddevice sometimes adds."""
    msg = err.args[0] if err.args else str(err)
    return str(msg).strip().rstrip(".")


def list_devices() -> list[dict]:
    """Every PortAudio device: ``index, name, hostapi, max_input_channels, max_output_channels,
    default_samplerate`` (Hz), ``default_input``/``default_output`` (bool: the system default)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in, default_out = (int(i) for i in sd.default.device)
    except sd.PortAudioError as e:
        raise DeviceError(f"cannot list audio devices: {_pa_message(e)}") from None
    found = []
    for d in devices:
        found.append({
            "index": int(d["index"]),
            "name": str(d["name"]),
            "hostapi": str(hostapis[d["hostapi"]]["name"]),
            "max_input_channels": int(d["max_input_channels"]),
            "max_output_channels": int(d["max_output_channels"]),
            "default_samplerate": float(d["default_samplerate"]),
            "default_input": int(d["index"]) == default_in,
            "default_output": int(d["index"]) == default_out,
        })
    return found


def format_devices(devices: list[dict]) -> str:
    """A table of :func:`list_devices`' result; ``>``/``<`` mark the default input/output."""
    if not devices:
        return "no audio devices found\n"
    lines = [f"{'':2}{'#':>3}  {'in':>3} {'out':>3} {'rate':>6}  {'host API':<12} name"]
    for d in devices:
        mark = (">" if d["default_input"] else " ") + ("<" if d["default_output"] else " ")
        lines.append(f"{mark}{d['index']:>3}  {d['max_input_channels']:>3} {d['max_output_channels']:>3} "
                     f"{d['default_samplerate']:>6.0f}  {d['hostapi']:<12} {d['name']}")
    return "\n".join(lines) + "\n"


def find_device(spec: int | str | None, kind: str, devices: list[dict] | None = None) -> dict:
    """The ``kind`` ("input" | "output") device that ``spec`` names: None (the system default), an index, or a
    case-insensitive substring of the name (an exact name wins over substrings). One-line ``DeviceError`` for an
    unknown, ambiguous or wrong-direction device."""
    if kind not in KINDS:
        raise ValueError(kind)
    devices = list_devices() if devices is None else devices
    channels = f"max_{kind}_channels"
    hint = "(rvc-mlx live --list-devices lists them)"
    usable = [d for d in devices if d[channels] > 0]
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        default = [d for d in usable if d[f"default_{kind}"]]
        if not default:
            raise DeviceError(f"no default {kind} device; choose one with --{kind}-device {hint}")
        return default[0]
    text = str(spec).strip()
    if isinstance(spec, int) or text.lstrip("-").isdigit():
        index = int(text)
        match = [d for d in devices if d["index"] == index]
        if not match:
            raise DeviceError(f"no audio device #{index} {hint}")
        if match[0][channels] == 0:
            raise DeviceError(f"audio device #{index} '{match[0]['name']}' has no {kind} channels {hint}")
        return match[0]
    matches = [d for d in usable if text.lower() in d["name"].lower()]
    exact = [d for d in matches if d["name"].lower() == text.lower()]
    if len(exact) == 1:
        return exact[0]
    if not matches:
        raise DeviceError(f"no {kind} device matches '{text}' {hint}")
    if len(matches) > 1:
        names = ", ".join(f"#{d['index']} '{d['name']}' ({d['hostapi']})" for d in matches[:6])
        raise DeviceError(f"{kind} device '{text}' is ambiguous: {names}; give its index")
    return matches[0]


# -- backends --------------------------------------------------------------------------------------------------------


class Backend(Protocol):
    """Moves audio between devices and two callbacks, one block (``block_size`` frames) at a time.

    ``open`` resolves and opens the devices (one-line ``DeviceError`` when it cannot); ``start`` starts the
    callbacks; ``close`` stops them (idempotent, never blocks for long). ``on_output(buf)`` must fill ``buf`` in
    place and is called before ``on_input`` of the same period. ``failure()`` is a one-line message once a stream
    died on its own (device lost), else None. After ``open``: ``duplex`` (one stream with both directions, so the
    callbacks are in step), ``latency_ms()`` -> (input ms, output ms) the devices report, ``xruns`` (over/underruns
    the devices reported), ``description``.
    """

    duplex: bool
    xruns: int
    description: str

    def open(self, sample_rate: int, block_size: int, on_input: InputCallback, on_output: OutputCallback) -> None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def failure(self) -> str | None: ...

    def latency_ms(self) -> tuple[float, float]: ...


class SounddeviceBackend:
    """Real devices through PortAudio (``sounddevice``): float32, ``blocksize`` = the engine's block.

    Input is recorded mono (or as stereo mixed down, for devices that cannot record one channel); the mono output
    is copied to every channel of a stereo output. ``input_device``/``output_device``: as :func:`find_device` takes
    them. ``latency``: PortAudio's suggested latency ("low", "high" or seconds).
    """

    def __init__(self, input_device: int | str | None = None, output_device: int | str | None = None,
                 latency: str | float = "low"):
        self.input_device = input_device
        self.output_device = output_device
        self.latency = latency
        self.duplex = False
        self.xruns = 0
        self.description = ""
        self._streams = []
        self._closing = False
        self._failure: str | None = None
        self._latency_ms = (0.0, 0.0)

    def resolve(self) -> tuple[dict, dict]:
        """The (input, output) devices, looked up without opening them."""
        devices = list_devices()
        return find_device(self.input_device, "input", devices), find_device(self.output_device, "output", devices)

    def _channels(self, sd, device: dict, kind: str, sample_rate: int) -> int:
        """1 channel when the device runs mono at the rate, else 2; one-line error when the rate is unsupported."""
        check = sd.check_input_settings if kind == "input" else sd.check_output_settings
        available = device[f"max_{kind}_channels"]
        wanted = (1, 2) if kind == "input" else (min(2, available), 1)
        err = None
        for channels in wanted:
            if channels > available:
                continue
            try:
                check(device=device["index"], channels=channels, dtype="float32", samplerate=sample_rate)
                return channels
            except (sd.PortAudioError, ValueError) as e:
                err = e
        hint = f"; try --sample-rate {device['default_samplerate']:.0f}" if \
            round(device["default_samplerate"]) != sample_rate else ""
        raise DeviceError(f"{kind} device #{device['index']} '{device['name']}' cannot run at {sample_rate} Hz "
                          f"({_pa_message(err)}){hint}")

    def open(self, sample_rate: int, block_size: int, on_input: InputCallback, on_output: OutputCallback) -> None:
        sd = _sounddevice()
        self._closing, self._failure, self.xruns = False, None, 0
        dev_in, dev_out = self.resolve()
        ch_in = self._channels(sd, dev_in, "input", sample_rate)
        ch_out = self._channels(sd, dev_out, "output", sample_rate)
        self.duplex = dev_in["hostapi"] == dev_out["hostapi"]
        mono_out = np.zeros(block_size, np.float32)

        def capture(indata, status):
            on_input(indata[:, 0].copy() if ch_in == 1 else indata.mean(axis=1, dtype=np.float32))

        def play(outdata, frames):
            buf = mono_out[:frames] if frames <= block_size else np.zeros(frames, np.float32)
            on_output(buf)
            outdata[:] = buf[:, None]

        def guarded(body):
            def callback(*args):
                status = args[-1]
                if status.input_overflow or status.output_underflow:
                    self.xruns += 1
                try:
                    body(*args[:-1])
                except Exception as e:  # a callback must not raise into PortAudio; report it instead
                    self._failure = f"audio callback failed: {e}"
                    raise sd.CallbackAbort from None
            return callback

        def finished():
            if not self._closing and self._failure is None:
                self._failure = "the audio stream stopped on its own (device disconnected?)"

        common = dict(samplerate=sample_rate, blocksize=block_size, dtype="float32", latency=self.latency,
                      finished_callback=finished)
        try:
            if self.duplex:
                self._streams = [sd.Stream(
                    device=(dev_in["index"], dev_out["index"]), channels=(ch_in, ch_out),
                    callback=guarded(lambda i, o, frames, t: (play(o, frames), capture(i, None))), **common)]
            else:
                self._streams = [
                    sd.InputStream(device=dev_in["index"], channels=ch_in,
                                   callback=guarded(lambda i, frames, t: capture(i, None)), **common),
                    sd.OutputStream(device=dev_out["index"], channels=ch_out,
                                    callback=guarded(lambda o, frames, t: play(o, frames)), **common)]
        except (sd.PortAudioError, ValueError) as e:
            self.close()
            raise DeviceError(f"cannot open audio device '{dev_in['name']}' / '{dev_out['name']}': "
                              f"{_pa_message(e)}") from None
        if self.duplex:
            lat_in, lat_out = self._streams[0].latency
        else:
            lat_in, lat_out = self._streams[0].latency, self._streams[1].latency
        self._latency_ms = (1000.0 * lat_in, 1000.0 * lat_out)  # kept: closed streams cannot be asked
        mode = "duplex" if self.duplex else "split input/output"
        self.description = (f"{dev_in['hostapi']} '{dev_in['name']}' -> {dev_out['hostapi']} '{dev_out['name']}' "
                            f"({mode}, {sample_rate} Hz, {block_size} frames per block)")

    def start(self) -> None:
        sd = _sounddevice()
        try:
            for s in self._streams:
                s.start()
        except sd.PortAudioError as e:
            self.close()
            raise DeviceError(f"cannot start audio stream: {_pa_message(e)}") from None

    def close(self) -> None:
        self._closing = True
        for s in self._streams:
            try:
                s.abort(ignore_errors=True)
                s.close(ignore_errors=True)
            except Exception:  # closing a lost device may fail; there is nothing left to do with it
                pass
        self._streams = []

    def failure(self) -> str | None:
        if self._failure is None and not self._closing:
            try:
                dead = any(not s.stopped and not s.active for s in self._streams)
            except Exception as e:  # querying a vanished device
                dead, self._failure = True, f"audio stream failed: {_pa_message(e)}"
            if dead and self._failure is None:
                self._failure = "the audio stream stopped on its own (device disconnected?)"
        return self._failure

    def latency_ms(self) -> tuple[float, float]:
        return self._latency_ms


class FakeBackend:
    """A hardware-free device: a thread calls the callbacks once per block on a paced clock.

    ``signal``: what the "microphone" records, float32 (N,) at the session's rate (silence after its end; None: all
    silence). ``time_scale``: clock speed (10: a block period lasts block/10 of real time). ``duplex=False`` runs
    input and output on two threads, the output clock off by ``output_ppm`` (parts per million; > 0: faster).
    Faults: ``refuse`` (``open`` raises), ``lose_after`` blocks then ``loss`` = "raise" (the device reports a
    failure) or "stop" (its callbacks silently stop). ``latency`` (in ms, out ms) is what it reports.
    After the run: ``recorded()`` is everything played (float32), ``in_blocks``/``out_blocks`` count callbacks.
    """

    def __init__(self, signal: np.ndarray | None = None, time_scale: float = 1.0, duplex: bool = True,
                 output_ppm: float = 0.0, latency: tuple[float, float] = (0.0, 0.0), refuse: bool = False,
                 lose_after: int | None = None, loss: str = "raise", name: str = "fake"):
        if loss not in ("raise", "stop"):
            raise ValueError(f"loss must be 'raise' or 'stop', not {loss!r}")
        self.signal = None if signal is None else np.asarray(signal, np.float32).reshape(-1)
        self.time_scale = float(time_scale)
        self.duplex = duplex
        self.output_ppm = output_ppm
        self.refuse = refuse
        self.lose_after = lose_after
        self.loss = loss
        self.name = name
        self.xruns = 0
        self.description = ""
        self.in_blocks = 0
        self.out_blocks = 0
        self._latency = latency
        self._played: list[np.ndarray] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._failure: str | None = None

    def open(self, sample_rate: int, block_size: int, on_input: InputCallback, on_output: OutputCallback) -> None:
        if self.refuse:
            raise DeviceError(f"cannot open audio device '{self.name}': device unavailable")
        self.sample_rate, self.block_size = sample_rate, block_size
        self._on_input, self._on_output = on_input, on_output
        mode = "duplex" if self.duplex else "split input/output"
        self.description = (f"{self.name} ({mode}, {sample_rate} Hz, {block_size} frames per block, "
                            f"clock x{self.time_scale:g})")

    def _input_block(self, k: int) -> np.ndarray:
        b = self.block_size
        block = np.zeros(b, np.float32)
        if self.signal is not None and k * b < self.signal.size:
            piece = self.signal[k * b:(k + 1) * b]
            block[:piece.size] = piece
        return block

    def _clock(self, directions: tuple[str, ...], ppm: float) -> None:
        period = self.block_size / self.sample_rate / self.time_scale / (1.0 + ppm * 1e-6)
        t0 = time.perf_counter()
        k = 0
        try:
            while not self._stop.is_set():
                if self.lose_after is not None and k >= self.lose_after:
                    if self.loss == "raise":
                        self._failure = f"audio device '{self.name}' was lost (unplugged)"
                    return
                if self._stop.wait(max(0.0, t0 + (k + 1) * period - time.perf_counter())):
                    return
                if "output" in directions:
                    out = np.zeros(self.block_size, np.float32)
                    self._on_output(out)
                    self._played.append(out)
                    self.out_blocks += 1
                if "input" in directions:
                    self._on_input(self._input_block(k))
                    self.in_blocks += 1
                k += 1
        except Exception as e:  # a failing callback ends this "device" as PortAudio would
            self._failure = f"audio callback failed: {e}"

    def start(self) -> None:
        self._stop.clear()
        plans = [(("output", "input"), 0.0)] if self.duplex else [(("input",), 0.0), (("output",), self.output_ppm)]
        self._threads = [threading.Thread(target=self._clock, args=plan, name=f"fake-audio-{'-'.join(plan[0])}",
                                          daemon=True) for plan in plans]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        self._threads = []

    def failure(self) -> str | None:
        return self._failure

    def latency_ms(self) -> tuple[float, float]:
        return self._latency

    def recorded(self) -> np.ndarray:
        """Everything the fake device played, float32 (out_blocks·block,)."""
        return np.concatenate(self._played) if self._played else np.zeros(0, np.float32)


# -- the session -----------------------------------------------------------------------------------------------------


class Ring:
    """A bounded FIFO of float32 samples shared by one writer and one reader thread (a lock around each copy).

    Writing more than fits overwrites the oldest samples; ``write`` returns how many were lost that way.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, np.float32)
        self._start = 0
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def write(self, x: np.ndarray) -> int:
        x = np.asarray(x, np.float32).reshape(-1)
        with self._lock:
            lost = 0
            if x.size >= self.capacity:
                lost = self._size + x.size - self.capacity
                self._buf[:] = x[-self.capacity:]
                self._start, self._size = 0, self.capacity
                return lost
            overflow = self._size + x.size - self.capacity
            if overflow > 0:
                self._start = (self._start + overflow) % self.capacity
                self._size -= overflow
                lost = overflow
            end = (self._start + self._size) % self.capacity
            first = min(x.size, self.capacity - end)
            self._buf[end:end + first] = x[:first]
            self._buf[:x.size - first] = x[first:]
            self._size += x.size
            return lost

    def read_into(self, out: np.ndarray) -> int:
        """Move up to ``len(out)`` of the oldest samples into ``out``; returns how many."""
        with self._lock:
            n = min(out.size, self._size)
            first = min(n, self.capacity - self._start)
            out[:first] = self._buf[self._start:self._start + first]
            out[first:n] = self._buf[:n - first]
            self._start = (self._start + n) % self.capacity
            self._size -= n
            return n

    def discard(self, n: int) -> int:
        """Drop up to ``n`` of the oldest samples; returns how many."""
        with self._lock:
            n = max(0, min(n, self._size))
            self._start = (self._start + n) % self.capacity
            self._size -= n
            return n


@dataclass(frozen=True)
class LiveStatus:
    """What a running session reports about every ``status_interval`` s. Times in ms; ``seconds``: audio captured;
    ``load``: recent median compute time per block as % of the block; ``drops``: blocks skipped or trimmed to keep
    the latency bounded; ``underruns``: output periods that found too little audio (played silence); ``xruns``:
    over/underruns the devices reported; ``latency_ms``: end-to-end estimate including the devices."""

    seconds: float
    blocks: int
    compute_ms: float
    compute_p95_ms: float
    load: float
    drops: int
    underruns: int
    xruns: int
    latency_ms: float

    def format(self) -> str:
        line = (f"{self.seconds:7.1f} s  block {self.compute_ms:6.1f} ms (p95 {self.compute_p95_ms:.1f})  "
                f"load {self.load:3.0f}%  drops {self.drops}  underruns {self.underruns}")
        if self.xruns:
            line += f"  xruns {self.xruns}"
        return line + f"  latency ~{self.latency_ms:.0f} ms"


class LiveSession:
    """Runs ``engine`` on a ``backend``'s audio, live. See the module docstring for the threads and latency.

    ``ring_blocks``: input ring size in blocks (capture beyond it, while the engine is stalled, is lost and counted
    as drops). ``prefill_blocks``: silence queued before the first output (default 1 for duplex, 2 for split
    streams). ``drop_late=False`` queues every input block and never trims output (latency then grows whenever the
    engine is slower than real time; kept to demonstrate why the default drops). ``stall_timeout``: seconds
    without input after which the device is taken as lost.
    """

    def __init__(self, engine, backend: Backend, ring_blocks: int = 4, prefill_blocks: int | None = None,
                 drop_late: bool = True, stall_timeout: float = 2.0, status_interval: float = 0.5):
        self.engine = engine
        self.backend = backend
        self.sample_rate = int(engine.sample_rate)
        self.block_size = int(engine.block_size)
        self.ring_blocks = max(2, int(ring_blocks))
        self.prefill_blocks = prefill_blocks
        self.drop_late = drop_late
        block_s = self.block_size / self.sample_rate
        self.stall_timeout = max(float(stall_timeout), 4 * block_s)
        self.status_interval = status_interval
        self.underruns = 0
        self.drops = 0
        self.blocks = 0
        self.captured = 0  # input samples the device delivered
        self._recent = collections.deque(maxlen=64)
        self._lost_samples = 0  # written by the input callback only
        self._lost_counted = 0
        self._last_input = time.monotonic()
        self._wake = threading.Event()
        self._in = self._out = None

    # callbacks (backend threads): copy only

    def _on_input(self, x: np.ndarray) -> None:
        self._lost_samples += self._in.write(x)
        self.captured += x.size
        self._last_input = time.monotonic()
        self._wake.set()

    def _on_output(self, out: np.ndarray) -> None:
        n = self._out.read_into(out)
        if n < out.size:
            out[n:] = 0.0
            self.underruns += 1

    # -- the owner thread --

    @property
    def buffer_lag(self) -> int:
        """Samples the session adds to the engine's own lag (the output prefill), in sample indices."""
        return self._prefill() * self.block_size

    def _prefill(self) -> int:
        if self.prefill_blocks is not None:
            return int(self.prefill_blocks)
        return 1 if getattr(self.backend, "duplex", True) else 2

    def latency_ms(self) -> float:
        """End-to-end estimate: the engine's formula with the devices' latency (+1 block for split streams)."""
        lat_in, lat_out = self.backend.latency_ms()
        extra = (self._prefill() - 1) * 1000.0 * self.block_size / self.sample_rate
        return float(self.engine.latency.estimate_ms(lat_in + extra, lat_out))

    def _count_drops(self, blocks: int) -> None:
        if blocks > 0:
            self.drops += blocks
            self.engine.stats.drops += blocks

    def _take_block(self) -> np.ndarray | None:
        """The block to process next: the newest whole block (older whole blocks dropped), or the oldest when
        ``drop_late`` is off; None when less than a block is waiting."""
        b = self.block_size
        lost = (self._lost_samples - self._lost_counted) // b  # input overwritten while the engine was stalled
        if lost > 0:
            self._lost_counted += lost * b
            self._count_drops(lost)
        whole = len(self._in) // b
        if whole == 0:
            return None
        if self.drop_late and whole > 1:
            self._in.discard((whole - 1) * b)
            self._count_drops(whole - 1)
        block = np.empty(b, np.float32)
        self._in.read_into(block)
        return block

    def _put_block(self, out: np.ndarray) -> None:
        out = np.asarray(out, np.float32).reshape(-1)
        limit = self._prefill() * self.block_size
        if self.drop_late and len(self._out) > limit:
            self._count_drops(self._out.discard(len(self._out) - limit) // self.block_size)
        self._out.write(out)

    def status(self) -> LiveStatus:
        recent = list(self._recent)
        med = statistics.median(recent) if recent else 0.0
        p95 = float(np.percentile(recent, 95)) if recent else 0.0
        block_ms = 1000.0 * self.block_size / self.sample_rate
        return LiveStatus(seconds=self.captured / self.sample_rate, blocks=self.blocks, compute_ms=med,
                          compute_p95_ms=p95, load=100.0 * med / block_ms, drops=self.drops,
                          underruns=self.underruns, xruns=int(getattr(self.backend, "xruns", 0)),
                          latency_ms=self.latency_ms())

    def summary(self) -> dict:
        """The engine's ``stats.summary()`` with the session's counts and latency estimate."""
        s = dict(self.engine.stats.summary())
        s.update(drops=self.engine.stats.drops, underruns=self.underruns,
                 xruns=int(getattr(self.backend, "xruns", 0)), seconds=round(self.captured / self.sample_rate, 3),
                 latency_ms=round(self.latency_ms(), 1))
        return s

    def run(self, duration: float | None = None, stop_event: threading.Event | None = None,
            on_status: Callable[[LiveStatus], None] | None = None) -> dict:
        """Open the backend, convert until ``duration`` seconds of audio were captured, ``stop_event`` is set or
        Ctrl-C, close the backend, and return :meth:`summary` (with ``interrupted``). Calls ``engine.process`` in
        this thread only. Raises ``DeviceError`` (one line) when a device cannot open or is lost mid-stream."""
        b = self.block_size
        self._in = Ring(self.ring_blocks * b)
        self._out = Ring((self.ring_blocks + 2) * b)
        self._wake.clear()
        interrupted = False
        self.backend.open(self.sample_rate, b, self._on_input, self._on_output)
        try:
            self._out.write(np.zeros(self._prefill() * b, np.float32))
            self._last_input = time.monotonic()
            self.backend.start()
            next_status = time.monotonic() + self.status_interval
            while True:
                if stop_event is not None and stop_event.is_set():
                    break
                failure = self.backend.failure()
                if failure:
                    raise DeviceError(failure)
                if duration is not None and self.captured >= duration * self.sample_rate:
                    break
                silent = time.monotonic() - self._last_input
                if silent > self.stall_timeout:
                    raise DeviceError(f"no audio from the input device for {silent:.1f} s (disconnected?)")
                self._wake.wait(0.05)
                self._wake.clear()
                block = self._take_block()
                if block is not None:
                    t0 = time.perf_counter()
                    out = self.engine.process(block)
                    self._recent.append(1000.0 * (time.perf_counter() - t0))
                    self.blocks += 1
                    self._put_block(out)
                if on_status is not None and time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.status_interval
                    on_status(self.status())
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.backend.close()
        return {**self.summary(), "interrupted": interrupted}
