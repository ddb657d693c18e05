"""The ``rvc-mlx`` command line: ``build_parser()`` + ``main()``; every subcommand calls library functions.

User errors (``RvcMlxError``) print one line to stderr and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
