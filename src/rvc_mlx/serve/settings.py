"""What ``rvc-mlx serve`` is started with, checked before anything starts (no FastAPI import here)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..hub import models_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7865
TOKEN_ENV = "RVC_MLX_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServeSettings:
    """``max_upload_mb``: cap on any request body; ``max_seconds``: cap on an input's duration;
    ``max_queue``: jobs waiting or running before new ones get 429; ``allowed_hosts``: extra Host names
    (reverse proxies); ``exit_after``: stop after this many seconds (scripts, tests); ``ui``: mount the web UI."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    home: Path = field(default_factory=models_dir)
    max_upload_mb: float = 200.0
    max_seconds: float = 600.0
    max_queue: int = 8
    max_batch_files: int = 100
    allowed_hosts: tuple[str, ...] = ()
    exit_after: float | None = None
    ui: bool = True

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> "ServeSettings":
        """Refuse settings that would be unsafe or cannot work (one line each)."""
        if not is_loopback(self.host) and not self.token:
            raise InputError(f"refusing to listen on {self.host} without a token: anyone who can reach it could "
                             f"use it; pass --token (or set {TOKEN_ENV}), or bind 127.0.0.1")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise InputError(f"the token must have at least {MIN_TOKEN_CHARS} characters")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be within 0..65535, got {self.port}")
        for name, value in (("--max-upload-mb", self.max_upload_mb), ("--max-seconds", self.max_seconds),
                            ("--max-queue", self.max_queue), ("--max-batch-files", self.max_batch_files)):
            if value <= 0:
                raise InputError(f"{name} must be positive, got {value}")
        return self


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_arguments(p) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; any other "
                   "address needs --token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--token", help=f"access token clients must send (header 'Authorization: Bearer T'); "
                   f"default ${TOKEN_ENV}")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest request body in MB (default 200)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="longest input audio in seconds (default 600)")
    p.add_argument("--max-queue", type=int, default=8, help="jobs waiting or running before 429 (default 8)")
    p.add_argument("--max-batch-files", type=int, default=100, help="files in one batch job (default 100)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another Host name clients use (e.g. behind a reverse proxy); repeatable")
    p.add_argument("--no-ui", action="store_true", help="serve the HTTP API only")
    p.add_argument("--exit-after", type=float, help="stop after this many seconds (for scripts and tests)")


def settings_from_args(args) -> ServeSettings:
    return ServeSettings(
        host=args.host, port=args.port, token=args.token or os.environ.get(TOKEN_ENV) or None,
        max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds, max_queue=args.max_queue,
        max_batch_files=args.max_batch_files, allowed_hosts=tuple(args.allow_host), exit_after=args.exit_after,
        ui=not args.no_ui,
    ).check()
