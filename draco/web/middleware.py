"""Pure ASGI middleware: security headers, request guard, client address, CORS, rate
limit, API key. Each works around any inner app and adds its own headers; app.py
composes them, outermost first."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from draco.security.address import TrustedHosts, address_text, client_address, rate_limit_key
from draco.security.keys import KeyRing, fingerprint
from draco.security.limiter import Decision, Limiter
from draco.web.errors import error_response

log = logging.getLogger("draco.security")

Headers = list[tuple[bytes, bytes]]
HTTP1 = ("1.0", "1.1")  # scope["http_version"] of a connection that a response may close
MAX_HEAD = 16 * 1024  # bytes of request line and headers, as hypercorn's h11 allows
HSTS_SECONDS = 365 * 86400
PREFLIGHT_CACHE_SECONDS = 86400


def header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def route_path(scope: Scope) -> str:
    """The path the router matches: scope["path"] less the root_path it starts with, as
    Starlette's router computes it (tests/test_middleware.py holds the two together), so
    no prefix can route around the layers that judge paths."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def client_host(scope: Scope) -> str | None:
    """The client, as ClientAddressMiddleware resolved it; None for a unix socket."""
    client = scope.get("client")
    return client[0] if client else None


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
    generic 500 envelope (logged; nothing of it reaches the client). A websocket
    handshake the app refuses gets the same headers and the envelope, where the
    server can send a denial response (ASGI's websocket.http.response extension)."""

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
            hsts = b"max-age=%d; includeSubDomains" % HSTS_SECONDS
            headers[b"strict-transport-security"] = hsts
            headers[b"content-security-policy"] = b"default-src 'none'; frame-ancestors 'none'"
        self.headers = list(headers.items()) if enabled else []
        self.dropped = {b"server", *(name for name, _ in self.headers)}  # ours are set here, once

    def secured(self, headers: Headers) -> Headers:
        """`headers` (ASGI: names in lower case) with ours in place of any of the same name."""
        return [h for h in headers if h[0] not in self.dropped] + self.headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            return await self.app(scope, receive, self.denying(scope, send))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = self.secured(message.get("headers", []))
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            await error_response(500, "An internal error occurred.")(scope, receive, send_secured)

    def denying(self, scope: Scope, send: Send) -> Send:
        """`send`, answering a handshake closed before it was accepted with a 403 that
        carries our headers and the envelope, instead of the server's bare 403."""
        if "websocket.http.response" not in scope.get("extensions", {}):
            return send
        accepted = False

        async def send_denial(message: Message) -> None:
            nonlocal accepted
            accepted |= message["type"] == "websocket.accept"
            if accepted or message["type"] != "websocket.close":
                return await send(message)
            denial = error_response(403, "This resource does not take websocket connections.")
            headers = self.secured(denial.raw_headers)
            start = {"type": "websocket.http.response.start", "status": 403, "headers": headers}
            await send(start)
            return await send({"type": "websocket.http.response.body", "body": denial.body})

        return send_denial


class RequestGuardMiddleware:
    """Refuses what hypercorn and h11 let through: a request with both Transfer-Encoding
    and Content-Length, or with two Content-Lengths, whose body two servers could frame
    differently (RFC 9112 section 6.3; request smuggling), with 400; and a request head
    over `max_head` bytes however it arrived, with 431. Over HTTP/1 either answer
    closes the connection, so nothing sent behind it is read as a request."""

    HEADER_FRAMING = len(b": \r\n")  # what each header line adds to the head

    def __init__(self, app: ASGIApp, *, max_head: int = MAX_HEAD):
        self.app = app
        self.max_head = max_head

    def head_size(self, scope: Scope) -> int:
        request_line = len(scope.get("raw_path") or scope["path"]) + len(scope["query_string"])
        fields = sum(
            len(name) + len(value) + self.HEADER_FRAMING for name, value in scope["headers"]
        )
        return request_line + len(scope["method"]) + fields

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        names = [name for name, _ in scope["headers"]]
        lengths = names.count(b"content-length")
        chunked = b"transfer-encoding" in names
        if lengths > 1 or (lengths == 1 and chunked):
            message = "The request's length is ambiguous (Content-Length with Transfer-Encoding)."
            response = error_response(400, message)
        elif self.head_size(scope) > self.max_head:
            response = error_response(431, f"The request head is over {self.max_head} bytes.")
        else:
            return await self.app(scope, receive, send)
        if scope["http_version"] in HTTP1:
            response.headers["Connection"] = "close"
        return await response(scope, receive, send)


class ClientAddressMiddleware:
    """Resolves the client once, into scope["client"], as uvicorn's proxy-headers middleware
    does (security/address.py). hypercorn's ProxyFixMiddleware trusts a number of hops,
    not addresses."""

    def __init__(self, app: ASGIApp, *, trusted: TrustedHosts):
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            forwarded = [
                v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"
            ]
            address = client_address(client_host(scope), forwarded, self.trusted)
            scope["client"] = (address_text(address), 0) if address else None
        await self.app(scope, receive, send)


class CORSMiddleware:
    """An exact origin allow-list. A preflight is answered here, before any key check (browsers
    send no custom header on one): 204 when its origin, method and headers are allowed, else 400
    in the error envelope (Starlette's answers that in plain text), without Allow-Origin."""

    METHODS = ("GET", "HEAD", "OPTIONS")
    HEADERS = ("X-API-Key", "Content-Type", "Accept")
    EXPOSED = (
        "ETag",
        "X-List-Version",
        "Age",
        "X-Data-Status",
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "RateLimit",
        "RateLimit-Policy",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        origins: Iterable[str],
        allow_credentials: bool = False,
        posts: Sequence[BaseRoute] = (),
    ):
        self.app = app
        self.origins = {origin.encode() for origin in origins}
        self.posts = tuple(posts)  # the routes that take a POST: a preflight may ask for it
        self.credentials = (
            [(b"access-control-allow-credentials", b"true")] if allow_credentials else []
        )
        self.allowed_headers = {name.lower() for name in self.HEADERS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None:
            return await self.app(scope, receive, send)
        allowed = origin in self.origins
        requested = header(scope, b"access-control-request-method")
        if scope["method"] == "OPTIONS" and requested is not None:
            preflight = self.preflight(origin if allowed else None, requested, scope)
            return await preflight(scope, receive, send)
        headers = [(b"vary", b"Origin")]
        if allowed:
            headers.append((b"access-control-allow-origin", origin))
            headers.append((b"access-control-expose-headers", ", ".join(self.EXPOSED).encode()))
            headers += self.credentials
        return await self.app(scope, receive, adding(send, headers))

    def methods(self, scope: Scope) -> tuple[str, ...]:
        """What a request to this path may be sent as: POST only where a route takes it."""
        as_post = {**scope, "method": "POST"}
        takes_post = any(route.matches(as_post)[0] == Match.FULL for route in self.posts)
        return (*self.METHODS, "POST") if takes_post else self.METHODS

    def preflight(self, origin: bytes | None, method: bytes, scope: Scope) -> Response:
        asked = (header(scope, b"access-control-request-headers") or b"").decode("latin-1")
        asked_headers = {name.strip().lower() for name in asked.split(",") if name.strip()}
        methods = self.methods(scope)
        method_allowed = method.decode("latin-1") in methods
        if origin is None or not method_allowed or not asked_headers <= self.allowed_headers:
            return error_response(400, "CORS preflight refused.", {"Vary": "Origin"})
        response = Response(status_code=204)
        response.raw_headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-max-age", b"%d" % PREFLIGHT_CACHE_SECONDS),
            (b"access-control-allow-methods", ", ".join(methods).encode()),
            (b"access-control-allow-headers", ", ".join(self.HEADERS).encode()),
            (b"vary", b"Origin"),
            *self.credentials,
        ]
        return response


class RateLimitMiddleware:
    """Counts every request but those on `exempt` paths; a request that `costs` routes
    match is counted as their weight (an endpoint that probes hosts). Adds the
    rate-limit headers to every counted response, and answers 429 with Retry-After
    once the window is full."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: Limiter,
        exempt: Iterable[str] = ("/health",),
        costs: Sequence[tuple[BaseRoute, int]] = (),
    ):
        self.app = app
        self.limiter = limiter
        self.exempt = frozenset(exempt)
        self.costs = tuple(costs)
        self.policy = (
            b"ratelimit-policy",
            b'"default";q=%d;w=%d' % (limiter.limit, limiter.period),
        )

    def cost(self, scope: Scope) -> int:
        matched = (weight for route, weight in self.costs if route.matches(scope)[0] != Match.NONE)
        return next(matched, 1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in self.exempt:
            return await self.app(scope, receive, send)
        key = rate_limit_key(client_host(scope))
        decision = await self.limiter.hit(key, self.cost(scope))
        headers = self.headers(decision)
        if decision.allowed:
            return await self.app(scope, receive, adding(send, headers))
        log.info("rate limit exceeded by %s on %s", key, scope["path"])
        response = error_response(429, "Too many requests. Retry after the time in Retry-After.")
        response.raw_headers += [(b"retry-after", b"%d" % decision.reset), *headers]
        return await response(scope, receive, send)

    def headers(self, decision: Decision) -> Headers:
        """X-RateLimit-* and the IETF fields of draft-ietf-httpapi-ratelimit-headers-10."""
        remaining = max(0, decision.remaining)
        reset_at = math.ceil(self.limiter.clock()) + decision.reset
        return [
            (b"x-ratelimit-limit", b"%d" % decision.limit),
            (b"x-ratelimit-remaining", b"%d" % remaining),
            (b"x-ratelimit-reset", b"%d" % reset_at),
            self.policy,
            (b"ratelimit", b'"default";r=%d;t=%d' % (remaining, decision.reset)),
        ]


class ApiKeyMiddleware:
    """X-API-Key on every path under `prefixes`: missing gives 401, wrong gives 403."""

    def __init__(self, app: ASGIApp, *, ring: KeyRing, prefixes: tuple[str, ...]):
        self.app = app
        self.ring = ring
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not route_path(scope).startswith(self.prefixes):
            return await self.app(scope, receive, send)
        presented = [value for name, value in scope["headers"] if name == b"x-api-key"]
        if len(presented) == 1 and self.ring.verify(presented[0]):
            return await self.app(scope, receive, send)
        who = client_host(scope)
        if not presented or presented == [b""]:
            log.warning("missing API key from %s on %s", who, scope["path"])
            response = error_response(401, "An API key is required in the X-API-Key header.")
            response.headers["WWW-Authenticate"] = 'APIKey header="X-API-Key"'
        else:
            key = fingerprint(presented[0])
            log.warning("invalid API key %s from %s on %s", key, who, scope["path"])
            response = error_response(403, "The API key is not valid.")
        return await response(scope, receive, send)
