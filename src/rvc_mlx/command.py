"""The ``rvc-mlx`` command: gathers the subcommands of every front end (``build_parser()`` + ``main()``).

Front ends (``cli``, ``export``, ``bench``, ``live``, ``serve``, ``train.command``; ``parity`` is the library behind
``dump``/``compare``) each register their subcommands with ``add_commands(subparsers)`` and import only the
service layer and the library, never each other; this module is the one place that knows them all. User errors
(``RvcMlxError``) print one line to stderr and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, bench, cli, export, live, serve
from .errors import RvcMlxError
from .train import command as train

FRONT_ENDS = (cli, export, bench, live, serve, train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvc-mlx", description="RVC voice conversion on Apple's MLX")
    parser.add_argument("--version", action="version", version=f"rvc-mlx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for front_end in FRONT_ENDS:
        front_end.add_commands(sub)
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
