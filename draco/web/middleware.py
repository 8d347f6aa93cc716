"""Pure ASGI middleware: security headers, request guard, client address, CORS, rate
limit, API key. Each works around any inner app and adds its own headers; app.py
composes them, outermost first."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

# The rate limit and the key check judge the path the router matches (scope["path"] less
# root_path), by the router's own function, so no prefix can route around them.
from starlette._utils import get_route_path as route_path
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from draco.security.address import TrustedHosts, address_text, client_address, client_key
from draco.security.keys import KeyRing, fingerprint
from draco.security.limiter import Decision, Limiter
from draco.web.errors import error_response

log = logging.getLogger("draco.security")

Headers = list[tuple[bytes, bytes]]


def header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def client(scope: Scope) -> str:
    """Whom the rate limit counts and the logs name (see ClientAddressMiddleware)."""
    peer = scope.get("client")
    return client_key(peer[0] if peer else None)


def adding(send: Send, headers: Headers) -> Send:
    """`send`, adding `headers` to the response."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *headers]
        await send(message)

    return send_with_headers


class SecurityHeadersMiddleware:
    """Outermost: every response leaves through here, so each one gets the hardened
    headers and loses any `Server` header, and an unhandled exception becomes the
    generic 500 envelope (logged; nothing of it reaches the client)."""

    def __init__(self, app: ASGIApp, *, enabled: bool = True, production: bool = True):
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
        self.dropped = {b"server", *headers} if enabled else {b"server"}  # ours are set here, once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [h for h in message.get("headers", []) if h[0] not in self.dropped]  # ASGI: lower case
                message["headers"] = kept + self.headers
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            await error_response(500, "An internal error occurred.")(scope, receive, send_secured)


class RequestGuardMiddleware:
    """Refuses what hypercorn and h11 let through: a request with both Transfer-Encoding
    and Content-Length, or with two Content-Lengths, whose body two servers could frame
    differently (RFC 9112 section 6.3; request smuggling), with 400; and a request head
    over `max_head` bytes however it arrived, with 431. Over HTTP/1 either answer
    closes the connection, so nothing sent behind it is read as a request."""

    def __init__(self, app: ASGIApp, *, max_head: int = 16 * 1024):
        self.app, self.max_head = app, max_head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = len(scope.get("raw_path") or scope["path"]) + len(scope["query_string"]) + len(scope["method"])
        lengths = chunked = 0
        for name, value in scope["headers"]:
            head += len(name) + len(value) + 4
            lengths += name == b"content-length"
            chunked |= name == b"transfer-encoding"
        if lengths > 1 or (lengths and chunked):
            response = error_response(400, "The request's length is ambiguous (Content-Length with Transfer-Encoding).")
        elif head > self.max_head:
            response = error_response(431, f"The request head is over {self.max_head} bytes.")
        else:
            return await self.app(scope, receive, send)
        if scope["http_version"] in ("1.0", "1.1"):
            response.headers["Connection"] = "close"
        await response(scope, receive, send)


class ClientAddressMiddleware:
    """Resolves the client once, into scope["client"] as uvicorn's proxy-headers middleware does
    (security/address.py). hypercorn's ProxyFixMiddleware trusts a number of hops, not addresses."""

    def __init__(self, app: ASGIApp, *, trusted: TrustedHosts):
        self.app, self.trusted = app, trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
            address = client_address(peer[0] if peer else None, forwarded, self.trusted)
            scope["client"] = (address_text(address), 0) if address else None
        await self.app(scope, receive, send)


class CORSMiddleware:
    """An exact origin allow-list. A preflight is answered here, before any key check (browsers
    send no custom header on one): 204 when its origin, method and headers are allowed, else 400
    in the error envelope (Starlette's answers that in plain text), without Allow-Origin."""

    METHODS = ("GET", "HEAD", "OPTIONS")
    HEADERS = ("x-api-key", "content-type", "accept")
    EXPOSE = (b"ETag, Age, X-Data-Status, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, "
              b"X-RateLimit-Reset, RateLimit, RateLimit-Policy")  # fmt: skip

    def __init__(self, app: ASGIApp, *, origins: Iterable[str], allow_credentials: bool = False):
        self.app = app
        self.origins = {origin.encode() for origin in origins}
        self.credentials = [(b"access-control-allow-credentials", b"true")] if allow_credentials else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None:
            return await self.app(scope, receive, send)
        allowed = origin in self.origins
        requested = header(scope, b"access-control-request-method")
        if scope["method"] == "OPTIONS" and requested is not None:
            return await self._preflight(origin if allowed else None, requested, scope)(scope, receive, send)
        headers = [(b"vary", b"Origin")]
        if allowed:
            headers += [(b"access-control-allow-origin", origin), (b"access-control-expose-headers", self.EXPOSE)]
            headers += self.credentials
        await self.app(scope, receive, adding(send, headers))

    def _preflight(self, origin: bytes | None, method: bytes, scope: Scope) -> Response:
        asked = (header(scope, b"access-control-request-headers") or b"").decode("latin-1").lower()
        asked_headers = {h.strip() for h in asked.split(",") if h.strip()}
        if origin is None or method.decode("latin-1") not in self.METHODS or not asked_headers <= set(self.HEADERS):
            return error_response(400, "CORS preflight refused.", {"Vary": "Origin"})
        response = Response(status_code=204)
        response.raw_headers = [(b"access-control-allow-origin", origin), (b"access-control-max-age", b"86400"),
                                (b"access-control-allow-methods", ", ".join(self.METHODS).encode()),
                                (b"access-control-allow-headers", b"X-API-Key, Content-Type, Accept"),
                                (b"vary", b"Origin"), *self.credentials]  # fmt: skip
        return response


class RateLimitMiddleware:
    """Counts every request but those on `exempt` paths; `costs` maps a path suffix
    to the weight of an expensive endpoint (a trailing slash costs the same). Adds
    the rate-limit headers to every counted response, and answers 429 with
    Retry-After once the window is full."""

    def __init__(self, app: ASGIApp, *, limiter: Limiter, exempt: Iterable[str] = ("/health",),
                 costs: Mapping[str, int] | None = None):  # fmt: skip
        self.app, self.limiter, self.exempt, self.costs = app, limiter, frozenset(exempt), dict(costs or {})
        self.policy = (b"ratelimit-policy", b'"default";q=%d;w=%d' % (limiter.limit, limiter.period))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in self.exempt:
            return await self.app(scope, receive, send)
        path = route_path(scope).rstrip("/")
        cost = next((c for suffix, c in self.costs.items() if path.endswith(suffix)), 1)
        who = client(scope)
        decision = await self.limiter.hit(who, cost)
        headers = self.headers(decision)
        if decision.allowed:
            return await self.app(scope, receive, adding(send, headers))
        log.info("rate limit exceeded by %s on %s", who, scope["path"])
        response = error_response(429, "Too many requests. Retry after the time in Retry-After.")
        response.raw_headers += [(b"retry-after", b"%d" % decision.reset), *headers]
        await response(scope, receive, send)

    def headers(self, decision: Decision) -> Headers:
        """X-RateLimit-* and the IETF fields of draft-ietf-httpapi-ratelimit-headers-10."""
        remaining = max(0, decision.remaining)
        reset = math.ceil(self.limiter.clock()) + decision.reset
        return [(b"x-ratelimit-limit", b"%d" % decision.limit), (b"x-ratelimit-remaining", b"%d" % remaining),
                (b"x-ratelimit-reset", b"%d" % reset), self.policy,
                (b"ratelimit", b'"default";r=%d;t=%d' % (remaining, decision.reset))]  # fmt: skip


class ApiKeyMiddleware:
    """X-API-Key on every path under `prefixes`: missing gives 401, wrong gives 403."""

    def __init__(self, app: ASGIApp, *, ring: KeyRing, prefixes: tuple[str, ...] = ("/api/",)):
        self.app, self.ring, self.prefixes = app, ring, prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not route_path(scope).startswith(self.prefixes):
            return await self.app(scope, receive, send)
        presented = [value for name, value in scope["headers"] if name == b"x-api-key"]
        if len(presented) == 1 and self.ring.verify(presented[0]):
            return await self.app(scope, receive, send)
        if not presented or presented == [b""]:
            log.warning("missing API key from %s on %s", client(scope), scope["path"])
            response = error_response(401, "An API key is required in the X-API-Key header.")
            response.headers["WWW-Authenticate"] = 'APIKey header="X-API-Key"'
        else:
            log.warning("invalid API key %s from %s on %s", fingerprint(presented[0]), client(scope), scope["path"])
            response = error_response(403, "The API key is not valid.")
        await response(scope, receive, send)
