"""The server's guards, as one pure ASGI middleware (so they also cover the mounted UI):

1. **Body size**: a declared ``Content-Length`` above the cap is refused before the body is read; a body
   without one is counted as it streams and cut off at the cap (413), so no upload is ever stored whole.
2. **Host allowlist** (DNS rebinding): ``localhost``, IP literals and ``--allow-host`` names only.
3. **Cross-site requests**: unsafe methods need an ``Origin`` equal to the request's own host (or none), and no
   ``Sec-Fetch-Site: cross-site|same-site``.
4. **Token** (when set): ``Authorization: Bearer T``, ``X-API-Key: T`` or the login cookie, compared in
   constant time; ``/v1/health`` and ``/login`` stay open. Browsers asking for a page are sent to ``/login``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from urllib.parse import parse_qs, urlsplit

from ..errors import RvcMlxError
from .settings import ServeSettings

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
OPEN_PATHS = ("/v1/health", "/login", "/favicon.ico")
COOKIE = "rvc_mlx_token"
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>rvc-mlx: sign in</title></head>
<body style="font-family: sans-serif; max-width: 28em; margin: 4em auto">
<h1>rvc-mlx</h1><p>This server needs its access token (the one given to <code>rvc-mlx serve --token</code>).</p>
<form method="post" action="/login"><input type="password" name="token" autofocus style="width: 100%">
<p><button type="submit">Sign in</button></p></form>{error}</body></html>"""


class TooLarge(RvcMlxError):
    """A request body or an input is larger than the server accepts (HTTP 413)."""


def _host_name(host_header: str) -> str:
    """The name part of a Host header value (``[::1]:7865`` -> ``::1``, ``a.b:80`` -> ``a.b``)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class SecurityMiddleware:
    def __init__(self, app, settings: ServeSettings):
        self.app, self.settings = app, settings
        self.names = {"localhost", *(h.lower() for h in settings.allowed_hosts)}
        self.token = settings.token.encode() if settings.token else None

    def host_allowed(self, host_header: str) -> bool:
        name = _host_name(host_header)
        return bool(name) and (name in self.names or _is_ip(name))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        path = scope.get("path", "/")
        host = headers.get("host", "")
        if scope["type"] == "websocket":
            if not self.host_allowed(host) or not self._same_origin(headers, host) or (
                    self.token is not None and not self._authorized(headers)):
                return await send({"type": "websocket.close", "code": 1008})
            return await self.app(scope, receive, send)
        if not self.host_allowed(host):
            return await _reply(send, 400, "bad_host", f"Host {host!r} is not served here (use --allow-host NAME)")
        if method not in SAFE_METHODS and not self._same_origin(headers, host):
            return await _reply(send, 403, "bad_origin", f"cross-site request from {headers.get('origin')!r} refused")
        if self.token is not None and path not in OPEN_PATHS and not self._authorized(headers):
            wants_page = method == "GET" and "text/html" in headers.get("accept", "")
            if wants_page:
                return await _redirect(send, "/login")
            return await _reply(send, 401, "unauthorized", "this server needs a token: 'Authorization: Bearer T'",
                                [(b"www-authenticate", b"Bearer")])
        if path == "/login":
            return await self._login(scope, receive, send, method)
        limit = self.settings.max_upload_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _reply(send, 413, "too_large", f"request body of {int(declared):,} bytes is over the "
                                f"{self.settings.max_upload_mb:g} MB limit")
        return await self._capped(scope, receive, send, limit)

    @staticmethod
    def _same_origin(headers: dict, host: str) -> bool:
        origin = headers.get("origin")
        if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
            return False
        return headers.get("sec-fetch-site") not in ("cross-site", "same-site")

    def _authorized(self, headers: dict) -> bool:
        auth = headers.get("authorization", "")
        candidates = [auth[7:].strip()] if auth.lower().startswith("bearer ") else []
        candidates.append(headers.get("x-api-key", ""))
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                candidates.append(value)
        return any(c and hmac.compare_digest(c.encode(), self.token) for c in candidates)

    async def _capped(self, scope, receive, send, limit: int):
        """Run the app with the body counted; past ``limit`` the read fails and the client gets 413, whatever
        the app made of the failed read (FastAPI turns body errors into its own 400)."""
        seen = 0
        exceeded = started = False
        message_413 = f"request body is over the {self.settings.max_upload_mb:g} MB limit"

        async def counting_receive():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise TooLarge(message_413)
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded:
                if not started:
                    started = True
                    await _reply(send, 413, "too_large", message_413)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except TooLarge:
            if not started:
                await _reply(send, 413, "too_large", message_413)

    async def _login(self, scope, receive, send, method: str):
        if method != "POST":
            return await _html(send, 200, LOGIN_PAGE.format(error=""))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > 4096:
                return await _reply(send, 413, "too_large", "login form too large")
            if not message.get("more_body"):
                break
        token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0]
        if self.token is None or not hmac.compare_digest(token.encode(), self.token):
            return await _html(send, 401, LOGIN_PAGE.format(error="<p>Wrong token.</p>"))
        cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
        return await _redirect(send, "/ui/", [(b"set-cookie", cookie.encode())])


async def _reply(send, status: int, code: str, detail: str, extra=()):
    body = json.dumps({"error": code, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


async def _html(send, status: int, text: str):
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send, location: str, extra=()):
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode()), (b"content-length", b"0"), *extra]})
    await send({"type": "http.response.body", "body": b""})
