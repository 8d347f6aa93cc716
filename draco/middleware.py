"""Pure ASGI middleware: security headers, CORS, rate limit, API key, gzip.

Each is a plain class: `__init__(app, ...)` and `async __call__(scope, receive,
send)`. app.py composes them, outermost first, so the cheapest gate rejects first.
"""

from __future__ import annotations

import gzip
import logging
import operator

from starlette.responses import Response

from draco.auth import KeyRing, fingerprint
from draco.errors import error_response
from draco.ratelimit import Limiter, TrustedHosts, client_key, scope_client

log = logging.getLogger("draco.security")


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


# The headers that inner layers (CORS, the rate limit) add to whatever response leaves:
# SecurityHeadersMiddleware, always outermost, puts this list in the scope and adds its
# contents to the response, so each request's response passes one send wrapper, not three.
ADDED = "draco.added_headers"
_NAME = operator.itemgetter(0)


class SecurityHeadersMiddleware:
    """Outermost: every response leaves through here, so each one gets the hardened
    headers and loses any `Server` header; an unhandled exception becomes the
    generic 500 envelope (nothing of it reaches the client)."""

    def __init__(self, app, *, enabled: bool = True, production: bool = True):
        self.app = app
        headers = {
            b"x-content-type-options": b"nosniff",
            b"x-frame-options": b"DENY",
            b"referrer-policy": b"strict-origin-when-cross-origin",
            b"permissions-policy": b"geolocation=(), microphone=(), camera=()",
            b"cross-origin-opener-policy": b"same-origin",
            b"x-permitted-cross-domain-policies": b"none",
        }
        if production:
            headers[b"strict-transport-security"] = b"max-age=31536000; includeSubDomains"
            headers[b"content-security-policy"] = b"default-src 'none'; frame-ancestors 'none'"
        self.headers = list(headers.items()) if enabled else []
        self.names = {b"server", *headers} if enabled else {b"server"}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        added = scope[ADDED] = []

        async def send_secured(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers", [])
                if not self.names.isdisjoint(map(_NAME, headers)):  # a Server header, or one of ours twice
                    headers = [header for header in headers if header[0] not in self.names]
                message["headers"] = [*headers, *added, *self.headers]
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            await error_response(500, "An internal error occurred.")(scope, receive, send_secured)


class CORSMiddleware:
    """An exact origin allow-list. A preflight from an allowed origin is answered here,
    before any key check (browsers never send custom headers on a preflight); a
    preflight from any other origin gets 400 and no Access-Control-Allow-Origin."""

    METHODS = ("GET", "HEAD", "OPTIONS")
    HEADERS = ("x-api-key", "content-type", "accept")
    EXPOSE = (
        b"ETag, Age, X-Data-Status, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, "
        b"RateLimit, RateLimit-Policy"
    )

    def __init__(self, app, *, origins: tuple[str, ...], allow_credentials: bool = False):
        self.app = app
        self.origins = {origin.encode() for origin in origins}
        self.credentials = [(b"access-control-allow-credentials", b"true")] if allow_credentials else []

    async def __call__(self, scope, receive, send):
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None:
            return await self.app(scope, receive, send)
        allowed = origin in self.origins
        requested = _header(scope, b"access-control-request-method")
        if scope["method"] == "OPTIONS" and requested is not None:
            return await self._preflight(scope, receive, send, origin if allowed else None, requested)
        added = scope[ADDED]
        added.append((b"vary", b"Origin"))
        if allowed:
            added += [
                (b"access-control-allow-origin", origin),
                (b"access-control-expose-headers", self.EXPOSE),
                *self.credentials,
            ]
        await self.app(scope, receive, send)

    async def _preflight(self, scope, receive, send, origin, method):
        asked = (_header(scope, b"access-control-request-headers") or b"").decode("latin-1").lower()
        asked_headers = {h.strip() for h in asked.split(",") if h.strip()}
        if origin is None or method.decode("latin-1") not in self.METHODS or not asked_headers <= set(self.HEADERS):
            response = error_response(400, "CORS preflight refused.", {"Vary": "Origin"})
        else:
            response = Response(status_code=204)
            response.raw_headers = [
                (b"access-control-allow-origin", origin),
                (b"access-control-allow-methods", ", ".join(self.METHODS).encode()),
                (b"access-control-allow-headers", b"X-API-Key, Content-Type, Accept"),
                (b"access-control-max-age", b"86400"),
                (b"vary", b"Origin"),
                *self.credentials,
            ]
        await response(scope, receive, send)


class RateLimitMiddleware:
    """Counts every request but those on `exempt` paths; `costs` maps a path suffix
    to the weight of an expensive endpoint. Adds the rate-limit headers to every
    counted response, and answers 429 with Retry-After once the window is full."""

    def __init__(self, app, *, limiter: Limiter, trusted: TrustedHosts, exempt=("/health",), costs=None):
        self.app, self.limiter, self.trusted = app, limiter, trusted
        self.exempt = frozenset(exempt)
        self.costs = costs or {}
        self.costly = tuple(self.costs)  # str.endswith takes them all at once

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        path = scope["path"]
        cost = 1
        if path.endswith(self.costly):  # one C call settles the common case
            cost = next(c for suffix, c in self.costs.items() if path.endswith(suffix))
        client = client_key(scope_client(scope, self.trusted))
        decision = await self.limiter.hit(client, cost)
        headers = self.limiter.headers(decision)
        if decision.allowed:
            scope[ADDED] += headers
            return await self.app(scope, receive, send)
        log.info("rate limit exceeded by %s on %s", client, path)
        response = error_response(429, "Too many requests. Retry after the time in Retry-After.")
        response.raw_headers += [(b"retry-after", b"%d" % decision.reset), *headers]
        await response(scope, receive, send)


class ApiKeyMiddleware:
    """X-API-Key on every path under `prefixes`: missing gives 401, wrong gives 403."""

    def __init__(self, app, *, ring: KeyRing, trusted: TrustedHosts, prefixes=("/api/",)):
        self.app, self.ring, self.trusted, self.prefixes = app, ring, trusted, prefixes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            return await self.app(scope, receive, send)
        presented = [value for name, value in scope["headers"] if name == b"x-api-key"]
        if len(presented) == 1 and self.ring.verify(presented[0]):
            return await self.app(scope, receive, send)
        client = client_key(scope_client(scope, self.trusted))
        if not presented or presented == [b""]:
            log.warning("missing API key from %s on %s", client, scope["path"])
            response = error_response(401, "An API key is required in the X-API-Key header.")
            response.headers["WWW-Authenticate"] = 'APIKey header="X-API-Key"'
        else:
            log.warning("invalid API key %s from %s on %s", fingerprint(presented[0]), client, scope["path"])
            response = error_response(403, "The API key is not valid.")
        await response(scope, receive, send)


class GZipMiddleware:
    """Compresses a single-message body of at least `minimum` bytes for clients that
    accept gzip. Bodies already encoded (catalog pages, compressed once per list
    version) and streamed bodies pass through; so does every request without gzip."""

    def __init__(self, app, *, minimum: int = 500, level: int = 6):
        self.app, self.minimum, self.level = app, minimum, level

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or b"gzip" not in (_header(scope, b"accept-encoding") or b""):
            return await self.app(scope, receive, send)
        held = None

        async def compressing(message):
            nonlocal held
            if message["type"] == "http.response.start":
                held = message  # until the body shows whether to compress
                return
            if held is not None and message["type"] == "http.response.body":
                held, start = None, held
                body, names = message.get("body", b""), {name for name, _ in start["headers"]}
                if len(body) >= self.minimum and not message.get("more_body") and b"content-encoding" not in names:
                    body = gzip.compress(body, self.level, mtime=0)
                    headers = [h for h in start["headers"] if h[0] != b"content-length"]
                    headers += [(b"content-encoding", b"gzip"), (b"content-length", b"%d" % len(body))]
                    start["headers"] = headers + [(b"vary", b"Accept-Encoding")]
                    message["body"] = body
                await send(start)
            await send(message)

        await self.app(scope, receive, compressing)
        if held is not None:  # a response that never sent a body
            await send(held)
