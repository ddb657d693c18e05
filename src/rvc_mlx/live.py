"""``rvc-mlx live``: realtime voice conversion from a microphone to speakers, or block by block over a file.

    rvc-mlx live --list-devices
    rvc-mlx live -m voice.pth --input-device 2 --output-device "USB" --block-time 0.2 --pitch 12
    rvc-mlx live -m voice.pth --input-file talk.wav --output-file out.wav    # the same engine, no devices

A front end over ``rvc_mlx.stream`` (the streaming engine) and ``rvc_mlx.devices`` (sound devices and the live
session). Live, the engine runs in this (the main) thread; the audio callbacks only copy samples. The status line
shows the per-block compute time, the load (compute time as % of the block), blocks dropped to keep the latency
bounded, output underruns and the end-to-end latency estimate (``2·block + crossfade + 10 ms`` plus the devices).
With ``--input-file`` the file's sample rate stands for the device's, the output has the input's rate and length,
and the per-block timings say whether this machine would keep up live. Live audio needs the ``live`` extra
(sounddevice) and the PortAudio library.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

F0_METHODS = ("rmvpe", "fcpe", "pm")  # the estimators the engine runs per block (rvc_mlx.stream)


@dataclass(frozen=True)
class Flag:
    """A numeric flag of ``live``: parsed and range-checked here (one-line errors), not by argparse.
    ``lo``/``hi`` are inclusive (None: unbounded); they match the engine's ``StreamOptions.RANGES``."""

    name: str
    type: type
    default: float | int | None
    lo: float | None
    hi: float | None
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


FLAGS = (
    Flag("block_time", float, 0.25, 0.02, 1.5, "SECONDS", "audio per block; latency is about 2 blocks + crossfade"),
    Flag("crossfade_time", float, 0.05, 0.01, 0.15, "SECONDS", "crossfade between blocks (SOLA)"),
    Flag("extra_time", float, 2.5, 0.05, 5.0, "SECONDS", "past audio HuBERT sees with each block (more: better "
         "quality, more compute per block)"),
    Flag("threshold", float, -60.0, -60.0, 0.0, "DB", "silence gate: input quieter than this is muted (-60: off)"),
    Flag("pitch", float, 0.0, -24.0, 24.0, "SEMITONES", "transpose (+12: one octave up)"),
    Flag("index_rate", float, 0.0, 0.0, 1.0, "RATE", "how much of the voice's index to blend in (needs an index)"),
    Flag("rms_mix_rate", float, 0.0, 0.0, 1.0, "RATE", "0 follows the input's loudness, 1 keeps the output's"),
    Flag("sid", int, 0, 0, None, "ID", "speaker of a multi-speaker voice"),
    Flag("sample_rate", int, None, 16000, 192000, "HZ", "device sample rate (default: the voice's; with --input-file "
         "the file is resampled to it)"),
    Flag("duration", float, None, 0.0, None, "SECONDS", "stop after this much audio (default: until Ctrl-C)"),
)
ENGINE_FIELDS = ("block_time", "crossfade_time", "extra_time", "threshold", "pitch", "index_rate", "rms_mix_rate",
                 "sid", "sample_rate")


def _fmt(x) -> str:
    return f"{x:g}"


def parse_flags(args) -> dict:
    """The numeric flags as numbers, each checked against its range; ``InputError`` (one line) otherwise."""
    values = {}
    for f in FLAGS:
        raw = getattr(args, f.name)
        if raw is None:
            values[f.name] = f.default
            continue
        try:
            value = f.type(raw)
        except ValueError:
            kind = "a whole number" if f.type is int else "a number"
            raise InputError(f"{f.flag} must be {kind}, got {raw!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{f.flag} must be a finite number, got {raw!r}")
        if (f.lo is not None and value < f.lo) or (f.hi is not None and value > f.hi):
            if f.hi is None:
                raise InputError(f"{f.flag} must be at least {_fmt(f.lo)}, got {raw}")
            raise InputError(f"{f.flag} must be within {_fmt(f.lo)}..{_fmt(f.hi)}, got {raw}")
        values[f.name] = value
    if values["duration"] is not None and values["duration"] <= 0:
        raise InputError(f"--duration must be positive, got {args.duration}")
    return values


def stream_options(args, values: dict, sample_rate: int | None = None):
    """The engine's ``StreamOptions`` from the flags (``sample_rate`` overrides ``--sample-rate``)."""
    from .stream import StreamOptions

    fields = {name: values[name] for name in ENGINE_FIELDS}
    if sample_rate is not None:
        fields["sample_rate"] = sample_rate
    return StreamOptions(f0_method=args.f0_method, deterministic=args.deterministic, **fields).validate()


def load_engine(args, options):
    """A ``StreamConverter`` for the voice and models the flags name (as ``infer`` loads them)."""
    from .pipeline import VoiceConverter
    from .service.args import paths_from_args
    from .stream import StreamConverter

    paths = paths_from_args(args, options.f0_method)
    return StreamConverter(VoiceConverter.load(**paths.to_dict()), options)


def make_backend(args):
    """The sound devices the flags name, looked up now (so a wrong name fails before the models load)."""
    from .devices import SounddeviceBackend

    backend = SounddeviceBackend(_device(args.input_device), _device(args.output_device))
    backend.resolve()
    return backend


def _device(spec: str | None) -> int | str | None:
    if spec is None:
        return None
    return int(spec) if spec.strip().isdigit() else spec


# -- output --------------------------------------------------------------------------------------------------------


class StatusLine:
    """Prints ``LiveStatus`` lines: rewritten in place (carriage return) on a terminal, else a plain line every
    ``plain_every`` seconds of audio."""

    def __init__(self, stream=None, tty: bool | None = None, plain_every: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_every = plain_every
        self._width = 0
        self._next_plain = 0.0

    def __call__(self, status) -> None:
        line = status.format()
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = max(self._width, len(line))
        elif status.seconds >= self._next_plain:
            self._next_plain = status.seconds + self.plain_every
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


def timing_report(summary: dict, block_ms: float) -> list[str]:
    """Per-block timing lines for a ``stats.summary()``: blocks, p50/p95/max ms, RTF, and a real-time verdict."""
    lines = [f"blocks: {summary['blocks']} of {block_ms:.0f} ms; compute per block p50 {summary['p50_ms']:.1f} ms, "
             f"p95 {summary['p95_ms']:.1f} ms, max {summary['max_ms']:.1f} ms "
             f"(RTF p50 {summary['rtf_p50']:.2f}, p95 {summary['rtf_p95']:.2f})"]
    rtf = summary["rtf_p95"]
    if rtf < 0.7:
        verdict = f"yes: the p95 block takes {100 * rtf:.0f}% of the block time"
    elif rtf < 1.0:
        verdict = (f"marginal: the p95 block takes {100 * rtf:.0f}% of the block time (expect drops under load; "
                   f"try a shorter --extra-time or a longer --block-time)")
    else:
        verdict = (f"no: the p95 block takes {rtf:.2f}x the block time (try a shorter --extra-time or a longer "
                   f"--block-time)")
    return lines + [f"real time: {verdict}"]


# -- commands ------------------------------------------------------------------------------------------------------


def cmd_live(args) -> int:
    values = parse_flags(args)
    if args.list_devices:
        from .devices import format_devices, list_devices

        print(format_devices(list_devices()), end="")
        return 0
    if args.input_file is not None or args.output_file is not None:
        return run_file(args, values)
    if not args.model:
        raise InputError("live needs a voice: -m/--model (or --list-devices)")
    options = stream_options(args, values)
    _prepare_index(args, values)
    backend = make_backend(args)
    engine = load_engine(args, options)
    engine.warmup()
    return run_live(engine, backend, values["duration"])


def run_live(engine, backend, duration: float | None = None, out=None, status_stream=None) -> int:
    """Run a live session until ``duration`` s or Ctrl-C; print the status line and a closing summary."""
    from .devices import LiveSession

    out = out or sys.stdout
    session = LiveSession(engine, backend)
    status = StatusLine(status_stream)
    block_ms = 1000 * engine.block_size / engine.sample_rate
    shown = []

    def header(latency_ms: float) -> None:
        if not shown:  # the devices are known once the session has opened them
            shown.append(True)
            print(f"live: {backend.description}; latency ~{latency_ms:.0f} ms; Ctrl-C stops", file=out, flush=True)

    def on_status(st):
        header(st.latency_ms)
        status(st)

    try:
        summary = session.run(duration=duration, on_status=on_status)
    finally:
        status.finish()
    header(summary["latency_ms"])
    print(f"live: {summary['seconds']:.1f} s of audio, drops {summary['drops']}, underruns {summary['underruns']}, "
          f"latency ~{summary['latency_ms']:.0f} ms" + (" (stopped by Ctrl-C)" if summary["interrupted"] else ""),
          file=out)
    if summary["blocks"]:
        for line in timing_report(summary, block_ms):
            print(f"live: {line}", file=out)
    return 0


def run_file(args, values: dict) -> int:
    """``--input-file IN --output-file OUT``: the engine over a file, block by block, and its timings."""
    from . import audio as audio_io

    if args.input_file is None or args.output_file is None:
        raise InputError("--input-file and --output-file go together (convert IN to OUT block by block)")
    if values["duration"] is not None:
        raise InputError("--duration is for live audio; --input-file converts the whole file")
    if not args.model:
        raise InputError("live needs a voice: -m/--model")
    src, dst = Path(args.input_file), Path(args.output_file)
    if not src.is_file():
        raise InputError(f"{src}: input audio not found")
    if dst.resolve() == src.resolve():
        raise InputError(f"{dst}: output would overwrite the input")
    fmt = dst.suffix.lstrip(".").lower() or "wav"
    if fmt not in audio_io.WRITE_FORMATS:
        raise InputError(f"{dst}: cannot write format {fmt!r} (choose from {', '.join(audio_io.WRITE_FORMATS)})")
    audio, sr = audio_io.read(src)
    audio = audio_io.check(audio, sr, str(src))
    rate = values["sample_rate"] or sr
    if rate == sr and (rate % 100 or not 16000 <= rate <= 192000):
        raise InputError(f"{src}: {sr} Hz cannot stand for a device rate (the engine needs a multiple of 100 Hz "
                         f"within 16000..192000); add --sample-rate 48000 to resample it")
    options = stream_options(args, values, sample_rate=rate)
    if rate != sr:
        audio = audio_io.resample(audio, sr, rate)
    _prepare_index(args, values)
    from .stream import stream_file

    engine = load_engine(args, options)
    engine.warmup()
    result = stream_file(engine, audio)
    audio_io.write(dst, result, rate, fmt)
    summary = engine.stats.summary()
    print(f"{dst}: written ({result.shape[0] / rate:.2f} s at {rate} Hz)")
    for line in timing_report(summary, 1000 * engine.block_size / engine.sample_rate):
        print(line)
    print(f"latency live: ~{engine.latency.estimate_ms(0.0, 0.0):.0f} ms plus the devices' "
          f"(engine {engine.latency.engine_ms:.0f} ms)")
    return 0


def _prepare_index(args, values: dict) -> None:
    """Load an index only when it is blended in (a library voice's own index is skipped at --index-rate 0)."""
    args.no_index = values["index_rate"] == 0 and args.index is None
    if args.index is not None and values["index_rate"] == 0:
        print("note: --index has no effect at --index-rate 0", file=sys.stderr)


def add_commands(sub) -> None:
    """Register ``live`` on the ``rvc-mlx`` command's subparsers."""
    from .service.args import add_base_model_flags

    p = sub.add_parser("live", help="realtime conversion: microphone to speakers (or a file, block by block)",
                       description="Realtime voice conversion with RVC's streaming algorithm. Latency is about "
                       "2 x block + crossfade + 10 ms plus the devices'; each block must be converted within the "
                       "block time (the status line shows the load). Needs the 'live' extra and PortAudio for "
                       "devices; --input-file/--output-file runs the same engine on a file without devices.")
    p.add_argument("-m", "--model", help="voice: a name from the voice library, an RVC .pth or a converted "
                   ".safetensors")
    p.add_argument("--list-devices", action="store_true", help="list the sound devices and exit")
    p.add_argument("--input-device", metavar="DEVICE", help="microphone: index or part of the name (default: the "
                   "system's)")
    p.add_argument("--output-device", metavar="DEVICE", help="speakers: index or part of the name (default: the "
                   "system's)")
    for f in FLAGS:
        help_text = f.help
        if f.lo is not None and f.hi is not None:
            help_text += f"; {_fmt(f.lo)}..{_fmt(f.hi)}"
        if f.default is not None:
            help_text += f" (default {_fmt(f.default)})"
        p.add_argument(f.flag, dest=f.name, metavar=f.metavar, help=help_text)
    p.add_argument("--f0-method", default="rmvpe", choices=F0_METHODS, help="pitch estimator (default rmvpe)")
    p.add_argument("--index", help="faiss .index of the voice's training features (library voices: their own)")
    p.add_argument("--deterministic", action="store_true", help="zero all synthesis noise")
    add_base_model_flags(p, ("hubert", "rmvpe", "fcpe"))
    p.add_argument("--input-file", metavar="IN", help="convert this file block by block instead of a microphone")
    p.add_argument("--output-file", metavar="OUT", help="where --input-file's result goes (its rate and length)")
    p.set_defaults(func=cmd_live)
