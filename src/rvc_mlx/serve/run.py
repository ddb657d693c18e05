"""Run the server: bind first (port 0 picks a free one), print one ready line with the URL, serve with uvicorn.

The ready line (``rvc-mlx: serving http://HOST:PORT/ ...``) is printed once the socket is bound, so a script can
start ``rvc-mlx serve --port 0`` and read where to connect. ``exit_after`` stops the server by itself.
"""

from __future__ import annotations

import socket
import sys
import threading

from ..errors import RvcMlxError
from .settings import ServeSettings

READY_PREFIX = "rvc-mlx: serving "


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise RvcMlxError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServeSettings) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise RvcMlxError(f"rvc-mlx serve needs the web extra ({e.name} is missing): "
                          "pip install 'rvc-mlx[web]'") from None
    settings.home.mkdir(parents=True, exist_ok=True)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    if settings.exit_after:
        timer = threading.Timer(settings.exit_after, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    ui = "UI /ui/, " if settings.ui else ""
    print(f"{READY_PREFIX}http://{shown}:{port}/ ({ui}API /v1, docs /docs)", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
