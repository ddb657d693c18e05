"""The core ``rvc-mlx`` subcommands (convert, blend, info, infer, batch, pitch, demo, download, dump, compare,
voice, preset).

A front end: every subcommand calls the service layer or the library. ``rvc_mlx.command`` gathers these and the
other front ends' subcommands into the one ``rvc-mlx`` command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .errors import RvcMlxError
from .service.args import add_conversion_options, converter_from_args, options_from_args
from .service import tasks
from .service.voices import INFO_FIELDS, model_facts


def cmd_convert(args) -> int:
    from . import store
    from .convert import convert_file

    out = Path(args.output) if args.output else Path(args.input).with_suffix(".safetensors")
    if out.resolve() == Path(args.input).resolve():
        raise RvcMlxError(f"{out}: output would overwrite the input")
    weights, config = convert_file(args.input, kind=args.kind)
    store.save(out, weights, config, dtype=args.dtype)
    if args.dtype == "bfloat16" and config["kind"] in ("rmvpe", "crepe", "fcpe"):
        print("note: bfloat16 weights move a pitch model's F0 (voicing and octave flips); float16 does not "
              "(README: Half-precision models)", file=sys.stderr)
    print(f"{out}: {config['kind']} model, {sum(w.size for w in weights.values()):,} parameters"
          + (f", stored as {args.dtype}" if args.dtype != "float32" else ""))
    return 0


def cmd_blend(args) -> int:
    from . import store
    from .blend import blend_voices

    out = Path(args.output)
    if out.suffix == "":
        out = out.with_suffix(".safetensors")
    if out.suffix.lower() != ".safetensors":
        raise RvcMlxError(f"{out}: blend writes a converted voice; name the output NAME.safetensors")
    if out.resolve() in (Path(args.a).resolve(), Path(args.b).resolve()):
        raise RvcMlxError(f"{out}: output would overwrite an input")
    weights, config = blend_voices(args.a, args.b, args.ratio)
    store.save(out, weights, config)
    blend = config["blend"]
    if blend["method"] == "converted":
        print("note: an input is a converted .safetensors, so the fused weights were blended (close to, not the "
              "same as, blending the two .pth files)", file=sys.stderr)
    print(f"{out}: {blend['ratio']:g} x {blend['a']} + {1 - blend['ratio']:g} x {blend['b']} "
          f"({config['version']}, {config['sample_rate']} Hz, {config['n_speakers']} speakers)")
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


def cmd_infer(args) -> int:
    src, out = Path(args.input), Path(args.output)
    if not src.is_file():
        raise RvcMlxError(f"{src}: input audio not found")
    fmt = args.format or (out.suffix.lstrip(".").lower() or "wav")
    options = options_from_args(args)
    tasks.convert_file(converter_from_args(args, options), options, src, out, fmt)
    print(f"{out}: written")
    return 0


def cmd_batch(args) -> int:
    from tqdm import tqdm

    from .service.args import paths_from_args
    from .service.corpus import convert_corpus, find_inputs

    in_dir = Path(args.input_dir)
    files = find_inputs(in_dir)
    options = options_from_args(args)
    paths = paths_from_args(args, options.f0_method)
    bar = tqdm(total=len(files), desc="converting", unit="file", disable=args.quiet)

    def on_event(event):
        if event["event"] in ("skipped", "done", "failed", "silent"):
            bar.update(1)
        elif event["event"] == "planned" and event["failed"]:
            bar.update(event["failed"])
        elif event["event"] == "retry":
            bar.write(f"retrying {event['file']}: {event['reason']}", file=sys.stderr)
        elif event["event"] in ("stopped", "warning"):
            bar.write(f"{event.get('reason') or event.get('message')}", file=sys.stderr)

    try:
        summary = convert_corpus(files, args.output_dir, options, paths, in_dir=in_dir, fmt=args.format or "wav",
                                 workers=args.workers, ray=args.ray, overwrite=args.overwrite, force=args.force,
                                 on_event=on_event)
    finally:
        bar.close()
    counts = [f"{len(summary.converted)} converted", f"{len(summary.skipped)} skipped (already exist)"]
    if summary.silent:
        counts.append(f"{len(summary.silent)} skipped (silent)")
    counts.append(f"{len(summary.failed)} failed")
    if summary.retried:
        counts.append(f"{len(summary.retried)} retried after a worker died")
    if summary.not_started:
        counts.append(f"{len(summary.not_started)} not started")
    print("batch: " + ", ".join(counts))
    for name, reason in summary.retried:
        print(f"  retried: {name} ({reason})", file=sys.stderr)
    for _, reason in summary.silent:
        print(f"  skipped: {reason} (no output written)", file=sys.stderr)
    for _, error in summary.failed:
        print(f"  failed: {error}", file=sys.stderr)
    if summary.stopped:
        print(f"  stopped: the output device is full; free some space and run the same command again to convert "
              f"the {len(summary.not_started)} files not started (finished outputs are kept)", file=sys.stderr)
    for warning in summary.warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_download(args) -> int:
    from .hub import BASE_MODELS, DEFAULT_DOWNLOADS, download, download_names

    names = download_names(args.models, args.embedder) or list(DEFAULT_DOWNLOADS)
    if "all" in names:
        names = list(BASE_MODELS)
    for name in names:
        path = download(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def cmd_pitch(args) -> int:
    from .f0 import report
    from .service.models import f0_model_paths

    models = f0_model_paths(args.method, rmvpe=args.rmvpe, crepe=args.crepe, fcpe=args.fcpe)
    f0, audio = tasks.pitch_contour_of(Path(args.input), args.method, models, args.filter_radius)
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


def cmd_voice(args) -> int:
    from .service.voices import VoiceLibrary

    library = VoiceLibrary()
    if args.action == "list":
        voices = [v.to_dict() for v in library.list()]
        if args.json:
            print(json.dumps(voices, indent=2))
        for v in [] if args.json else voices:
            index = "index" if v["has_index"] else "no index"
            print(f"{v['name']}: {v['version']} {v['sample_rate']} Hz, f0 {'yes' if v['use_f0'] else 'no'}, {index}")
        if not voices and not args.json:
            print(f"no voices in {library.root} (add one: rvc-mlx voice add VOICE.pth [--index FILE])")
        return 0
    if args.action == "add":
        voice = library.add(args.target, name=args.name, index=args.index, replace=args.replace)
        print(f"{voice.name}: added ({voice.version}, {voice.sample_rate} Hz{', with index' if voice.index else ''})")
        return 0
    if args.action == "remove":
        library.remove(args.target)
        print(f"{args.target}: removed")
        return 0
    print(json.dumps(library.get(args.target).to_dict(), indent=2))
    return 0


def cmd_preset(args) -> int:
    from .service.args import given_options
    from .service.db import Database
    from .service.presets import PresetStore

    presets = PresetStore(Database())
    if args.action == "list":
        for p in presets.list():
            default = f" (default for {', '.join(p['default_for'])})" if p["default_for"] else ""
            print(f"{p['name']}: {json.dumps(p['options'])}{default}")
        return 0
    if args.name is None:
        raise RvcMlxError(f"preset {args.action}: a preset name is needed")
    if args.action == "save":
        options = given_options(args)
        if not options:
            raise RvcMlxError("preset save: give at least one option, e.g. --pitch 12 --index-rate 0.5")
        print(f"{args.name}: {json.dumps(presets.save(args.name, options)['options'])}")
    elif args.action == "delete":
        presets.delete(args.name)
        print(f"{args.name}: deleted")
    elif args.action == "default":
        if not args.voice:
            raise RvcMlxError("preset default: name the voice with --voice")
        presets.set_voice_default(args.voice, None if args.name == "none" else args.name)
        print(f"{args.voice}: default preset {args.name}")
    else:
        print(json.dumps(presets.get(args.name), indent=2))
    return 0


def cmd_dump(args) -> int:
    from . import audio as audio_io
    from .parity import dump, save_dump

    src = Path(args.input)
    if not src.is_file():
        raise RvcMlxError(f"{src}: input audio not found")
    options = options_from_args(args)
    audio, sr = audio_io.read(src)
    audio = audio_io.check(audio, sr, str(src))
    converter = converter_from_args(args, options)
    stages, info = dump(converter, audio, sr, options)
    info["input"] = src.name
    save_dump(args.output, stages, info)
    print(f"{args.output}: {len(stages)} stages ({', '.join(stages)})")
    return 0


def cmd_compare(args) -> int:
    from .parity import compare, load_dump, parse_tolerances, write_report

    a, b = load_dump(args.a), load_dump(args.b)
    cmp = compare(a, b, parse_tolerances(args.tolerance))
    print(cmp.summary())
    if args.report:
        write_report(args.report, cmp, a, b)
        print(f"{args.report}: report written")
    return 0 if cmp.first_divergent is None else 2


def add_commands(sub) -> None:
    """Register the core subcommands on the ``rvc-mlx`` command's subparsers."""
    from .blend import DEFAULT_RATIO
    from .f0 import METHOD_MODULES
    from .hub import download_help
    from .service.args import add_base_model_flags, add_option_flags

    p = sub.add_parser("convert", help="convert a .pth/.pt checkpoint (or HuBERT directory) to .safetensors")
    p.add_argument("input", help="RVC voice .pth, hubert_base.pt, rmvpe.pt, CREPE/FCPE weights, or a HF directory")
    p.add_argument("-o", "--output", help="output .safetensors (default: next to the input)")
    p.add_argument("--kind", choices=("voice", "hubert", "rmvpe", "crepe", "fcpe"), help="skip auto-detection")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="store float tensors as this: float16/bfloat16 files are half the size; loading upcasts "
                        "them and compute stays float32 (the parity cost is in the README)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "blend", help="blend two voices (Applio's model blender): ratio x A + (1 - ratio) x B",
        description="Blend two voices of the same architecture as Applio's model blender does: two .pth files are "
        "blended tensor by tensor (weight-norm parts separately, in float32, stored as float16) and the blend is "
        "converted. If an input is an already converted .safetensors, the converted (weight-norm fused) weights "
        "are blended instead, which is close to but not the same as blending the .pth files. Speaker tables of "
        "different sizes are cut to the smaller one. Writes a converted .safetensors voice.")
    p.add_argument("a", help="voice A: an RVC .pth or a converted .safetensors")
    p.add_argument("b", help="voice B, of the same architecture (sample rate, version, f0, vocoder)")
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO, help=f"share of A, 0..1 (default {DEFAULT_RATIO})")
    p.add_argument("-o", "--output", required=True,
                   help="the blended voice, written as a converted .safetensors (suffix added if missing)")
    p.set_defaults(func=cmd_blend)

    p = sub.add_parser("info", help="describe a model file (.pth or converted .safetensors)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("infer", help="convert one audio file with a voice model")
    p.add_argument("-i", "--input", required=True, help="input audio file")
    p.add_argument("-o", "--output", required=True, help="output audio file")
    add_conversion_options(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("batch", help="convert every audio file in a folder")
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    add_conversion_options(p)
    p.add_argument("--overwrite", action="store_true", help="convert even when the output exists")
    p.add_argument("--force", action="store_true",
                   help="the output folder was converted with other settings: convert every file again")
    p.add_argument("--workers", type=int, metavar="N",
                   help="convert in N spawned processes (default 1: this one; with --ray: the cluster's CPUs)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray (pip install 'rvc-mlx[ray]'): a local cluster, or ADDRESS (auto, "
                   "ray://host:10001); every node must see IN, OUT and the models at the same paths")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("pitch", help="estimate the pitch (F0) of an audio file: CSV and an optional plot",
                       description="Estimate the pitch contour a conversion uses and write it as CSV "
                       "(time,f0,voiced), a valid infer --f0-file. " + tasks.PITCH_RULE)
    p.add_argument("-i", "--input", required=True, help="input audio file")
    p.add_argument("--method", default="rmvpe", choices=sorted(METHOD_MODULES), help="estimator (default rmvpe)")
    p.add_argument("--filter-radius", type=int, metavar="N",
                   help="harvest only: the conversion's median filter option (default 3, as infer's)")
    p.add_argument("-o", "--output", help="CSV of time,f0,voiced (default: standard output)")
    p.add_argument("--plot", help="PNG: the contour over a spectrogram")
    add_base_model_flags(p, ("rmvpe", "crepe", "fcpe"))
    p.set_defaults(func=cmd_pitch)

    p = sub.add_parser("demo", help="run the whole pipeline offline on a bundled clip with UNTRAINED models")
    p.add_argument("-o", "--output", default="demo-output.wav", help="where to write the result")
    p.add_argument("--pitch", type=float, default=0.0, help="transpose in semitones")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="fetch and convert base models (embedders, RMVPE, FCPE, CREPE)",
                       description=download_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="base model names (above) or all (default: hubert_base rmvpe)")
    p.add_argument("--embedder", action="append", default=[], metavar="NAME",
                   help="the embedder a voice names (Applio's embedder_model), e.g. japanese-hubert-base")
    p.add_argument("--force", action="store_true", help="download and convert again")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("dump", help="run a conversion and save every pipeline stage (parity with ports)")
    p.add_argument("-i", "--input", required=True, help="input audio file")
    p.add_argument("-o", "--output", required=True, help="stage dump to write (.safetensors)")
    add_conversion_options(p)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("compare", help="compare two stage dumps; exit 2 and name the first divergent stage")
    p.add_argument("a", help="reference stage dump (A)")
    p.add_argument("b", help="stage dump to check (B)")
    p.add_argument("--report", help="write a self-contained HTML report with figures")
    p.add_argument("--tolerance", action="append", metavar="KIND.BOUND=VALUE",
                   help="override a tolerance, e.g. features.rel_rmse=1e-4 (repeatable)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("voice", help="the voice library ($RVC_MLX_HOME/voices): list, add, info, remove")
    p.add_argument("action", choices=("list", "add", "info", "remove"))
    p.add_argument("target", nargs="?", help="add: a .pth, .safetensors or .zip; info/remove: a voice name")
    p.add_argument("--name", help="add: the voice's name (default: from the file name)")
    p.add_argument("--index", help="add: the voice's .index")
    p.add_argument("--replace", action="store_true", help="add: replace a voice of the same name")
    p.add_argument("--json", action="store_true", help="list: print JSON")
    p.set_defaults(func=_needs_target(cmd_voice, ("add", "info", "remove")))

    p = sub.add_parser("preset", help="named option sets: list, show, save NAME [options], delete, default")
    p.add_argument("action", choices=("list", "show", "save", "delete", "default"))
    p.add_argument("name", nargs="?", help="the preset ('default': the preset name, or none)")
    p.add_argument("--voice", help="default: the library voice whose default preset this becomes")
    add_option_flags(p)
    p.set_defaults(func=cmd_preset)


def _needs_target(func, actions):
    def run(args):
        if args.action in actions and not args.target:
            raise RvcMlxError(f"voice {args.action}: name the {'file' if args.action == 'add' else 'voice'}")
        return func(args)

    return run
