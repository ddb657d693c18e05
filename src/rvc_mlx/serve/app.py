"""``create_app(settings)``: one FastAPI app serving the REST API (``/v1``), rvc-python's routes and the web UI.

The app holds the service objects in ``app.state.services`` (``Services``); routes stay thin over them. Every
error leaves as one JSON shape, ``{"error": code, "detail": one line}``, with the status from ``STATUS``.
MLX never runs in this process: jobs run on the ``JobManager``'s spawned worker.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import (AudioError, CheckpointError, ConversionError, DiskFullError, FormatError, InputError,
                      OutputError, RvcMlxError)
from ..service.db import Database
from ..service.jobs import JobManager, QueueFull
from ..service.presets import PresetStore
from ..service.voices import Conflict, NotFound, VoiceLibrary
from .security import SecurityMiddleware, TooLarge
from .settings import ServeSettings

log = logging.getLogger("rvc_mlx.serve")

# error class -> (HTTP status, error code); the first match in order wins
STATUS = (
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (QueueFull, 429, "queue_full"),
    (TooLarge, 413, "too_large"),
    (AudioError, 422, "invalid_audio"),
    (FormatError, 422, "invalid_model"),
    (CheckpointError, 422, "invalid_model"),
    (ConversionError, 422, "invalid_model"),
    (InputError, 400, "invalid_input"),
    (DiskFullError, 507, "insufficient_storage"),
    (OutputError, 500, "output_error"),
    (RvcMlxError, 400, "error"),
)
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
              422: "invalid_request", 429: "queue_full", 507: "insufficient_storage"}
# a failed job's error class (by name) -> its status, for requests that waited on the job
def _subclasses(cls) -> list:
    return [cls] + [c for sub in cls.__subclasses__() for c in _subclasses(sub)]


JOB_ERROR_STATUS = {cls.__name__: next((status, code) for base, status, code in STATUS if issubclass(cls, base))
                    for cls in {c for base, _, _ in STATUS for c in _subclasses(base)}}


@dataclass
class Services:
    settings: ServeSettings
    library: VoiceLibrary
    db: Database
    presets: PresetStore
    jobs: JobManager


def error_response(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def status_of(exc: RvcMlxError) -> tuple[int, str]:
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            return status, code
    return 400, "error"


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RvcMlxError)
    async def _rvc_error(request: Request, exc: RvcMlxError):
        status, code = status_of(exc)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
        return error_response(status, code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "error"), detail,
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")


def create_app(settings: ServeSettings | None = None, start_jobs: bool = True) -> FastAPI:
    """The whole server. ``start_jobs=False`` builds it without starting the worker (schema inspection)."""
    from . import api, compat, docs

    settings = (settings or ServeSettings()).check()
    home = settings.home
    db = Database(home / "rvc-mlx.sqlite3")
    services = Services(settings, VoiceLibrary(home / "voices"), db, PresetStore(db),
                        JobManager(home, db, max_queue=settings.max_queue))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_jobs:
            services.jobs.start()
        try:
            yield
        finally:
            services.jobs.close()

    app = FastAPI(title="rvc-mlx", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="RVC voice conversion on MLX: convert audio with voices from the library, "
                              "manage voices, presets and jobs. Errors are always `{error, detail}`.")
    app.state.services = services
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(compat.router)
    docs.install(app)
    if settings.ui:
        from .ui import mount_ui

        mount_ui(app, services)
    app.add_middleware(SecurityMiddleware, settings=settings)
    app.openapi = lambda: _openapi(app)
    return app


ERROR_SCHEMA = {"title": "ErrorBody", "type": "object", "required": ["error", "detail"],
                "properties": {"error": {"type": "string", "title": "Error"},
                               "detail": {"type": "string", "title": "Detail"}}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema with its 422 body described as what we send (``{error, detail}``, not its list)."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in schemas:
            schemas["HTTPValidationError"] = ERROR_SCHEMA
        app.openapi_schema = schema
    return app.openapi_schema
