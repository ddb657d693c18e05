"""``rvc-mlx serve``: the web UI and the HTTP API, one FastAPI app over the service layer (the ``[web]`` extra).

  settings.py   what the server is started with (address, token, limits), checked before anything starts
  app.py        ``create_app(settings)``: the FastAPI app, the service objects it holds, errors in one shape
  security.py   ASGI middleware: body size cap, Host allowlist, Origin / Sec-Fetch-Site checks, token
  api.py        REST routes under ``/v1``
  compat.py     the routes of rvc-python's API (what SillyTavern's RVC extension speaks)
  ui.py         the Gradio UI, mounted on the same app
  run.py        bind, print the ready line, serve with uvicorn

Importing this package loads neither FastAPI nor Gradio nor MLX; ``add_commands`` registers ``serve``.
"""

from __future__ import annotations


def add_commands(sub) -> None:
    from .settings import add_arguments

    p = sub.add_parser("serve", help="web UI and HTTP API (needs the [web] extra: pip install 'rvc-mlx[web]')")
    add_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from .run import serve
    from .settings import settings_from_args

    return serve(settings_from_args(args))
