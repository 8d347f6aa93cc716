"""create_app: where the pieces meet. Read top to bottom, it is the request path:

client -> security headers -> CORS -> rate limit -> API key -> gzip -> route -> catalog -> upstream
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from draco import __version__, errors, openapi, routes
from draco.auth import KeyRing, fingerprint
from draco.catalog import Catalog
from draco.latency import Latencies
from draco.metrics import Metrics, MetricsMiddleware
from draco.middleware import (
    ApiKeyMiddleware,
    CORSMiddleware,
    GZipMiddleware,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
)
from draco.ratelimit import Limiter, MemoryStore, RedisStore, TrustedHosts
from draco.settings import Settings, key_problems, read_key_file
from draco.shared import SharedCatalog

SWEEP_EVERY = 300  # seconds between sweeps of idle rate-limit entries
KEY_FILE_POLL = 2  # seconds between checks of API_KEYS_FILE for changes

log = logging.getLogger("draco.security")


def upstream_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The one client for every upstream: HTTP/2, TLS verification always on."""
    return httpx.AsyncClient(
        http2=True,
        verify=True,  # never configurable
        timeout=settings.http_timeout,
        limits=httpx.Limits(
            max_connections=settings.http_max_connections,
            max_keepalive_connections=settings.http_max_keepalive_connections,
        ),
        headers={"User-Agent": f"draco/{__version__}"},
        transport=transport,
    )


class Draco(Starlette):
    """Starlette holding draco's parts as plain attributes, which the routes read on
    every request (`app.state` looks each name up through __getattr__ after a failed
    attribute lookup, about 0.4 µs a time)."""

    settings: Settings
    limiter: Limiter
    latencies: Latencies
    catalog: Catalog  # set by the lifespan

    def build_middleware_stack(self):
        """The user middleware around errors.ErrorMiddleware, in place of Starlette's
        ServerErrorMiddleware and ExceptionMiddleware: SecurityHeadersMiddleware,
        outermost, already turns an unhandled error into the generic 500, and
        Starlette's pair would cost every request a Request object and two send wrappers."""
        app = errors.ErrorMiddleware(self.router)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, clock=time.time) -> Draco:
    trusted = TrustedHosts(settings.trusted_hosts)
    ring = KeyRing(settings.api_keys)
    if settings.rate_limit_storage == "memory":
        store = MemoryStore(settings.rate_limit_max_clients)
    else:  # one window per client across every instance, timed by the Redis server's clock
        store = RedisStore(
            settings.rate_limit_storage, settings.rate_limit_redis_failure, settings.rate_limit_max_clients
        )
        clock = None
    limiter = Limiter(settings.rate_limit_requests, settings.rate_limit_period, store, clock)

    # /docs, /redoc and /openapi.json exist only in debug mode: otherwise they are 404
    # like any unknown path. /metrics exists only when METRICS_ENABLED.
    table = routes.ROUTES + (openapi.routes(settings) if settings.debug else [])
    metrics = Metrics() if settings.metrics_enabled else None
    if metrics:
        table.append(Route("/metrics", metrics.endpoint, methods=["GET"]))

    middleware = [
        Middleware(SecurityHeadersMiddleware, enabled=settings.enable_security_headers, production=not settings.debug),
        *([Middleware(MetricsMiddleware, metrics=metrics, routes=table)] if metrics else []),
        Middleware(CORSMiddleware, origins=settings.cors_origins, allow_credentials=settings.cors_allow_credentials),
    ]
    if settings.rate_limit_enabled:
        exempt = ("/health", "/docs", "/redoc", "/openapi.json") if settings.debug else ("/health",)
        costs = dict.fromkeys(("/servers/latency", "/servers/fastest"), settings.latency_weight)  # they probe hosts
        middleware.append(Middleware(RateLimitMiddleware, limiter=limiter, trusted=trusted, exempt=exempt, costs=costs))
    if settings.enable_api_key_auth:
        protected = ("/api/",) if settings.metrics_public else ("/api/", "/metrics")
        middleware.append(Middleware(ApiKeyMiddleware, ring=ring, trusted=trusted, prefixes=protected))
    middleware.append(Middleware(GZipMiddleware, minimum=500))

    @contextlib.asynccontextmanager
    async def lifespan(app: Draco):
        client = upstream_client(settings, transport)
        shared = None
        if settings.catalog_storage != "memory":
            # A refresh may take HTTP_TIMEOUT; the lease outlives it, then frees itself.
            shared = SharedCatalog(settings.catalog_storage, lease_seconds=settings.http_timeout + 5)
        catalog = Catalog(settings, client, clock=clock or time.time, shared=shared)
        catalog.restore()
        app.catalog = catalog
        if settings.enable_api_key_auth:
            log.info("API keys in use: %s", ", ".join(fingerprint(key) for key in settings.api_keys))
        background = [asyncio.create_task(_sweep(store, limiter))]
        if settings.api_keys_file:
            background.append(asyncio.create_task(_watch_keys(settings.api_keys_file, ring, settings)))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await catalog.close()
            await client.aclose()
            for redis_user in (shared, store):
                if hasattr(redis_user, "client"):
                    await redis_user.client.aclose()

    app = Draco(
        debug=False,  # never Starlette's traceback pages, whatever DEBUG says
        routes=table,
        middleware=middleware,
        lifespan=lifespan,
    )
    app.settings = settings
    app.limiter = limiter
    app.latencies = Latencies(settings)
    if metrics:
        metrics.app = app
    return app


def reload_keys(path: str, ring: KeyRing, settings: Settings) -> bool:
    """Swap in the keys of `path`; a file that fails the key rules keeps the old ring."""
    try:
        keys = read_key_file(path)
        problems = key_problems(keys, settings.enable_api_key_auth)
    except (OSError, UnicodeDecodeError) as exc:
        problems = [f"cannot read it ({type(exc).__name__})"]
    if problems:
        log.error("API_KEYS_FILE rejected, keeping the %d keys in use: %s", len(ring), "; ".join(problems))
        return False
    ring.replace(keys)
    log.warning("API keys reloaded: %s", ", ".join(fingerprint(key) for key in keys) or "none")
    return True


async def _watch_keys(path: str, ring: KeyRing, settings: Settings) -> None:
    """Reload the key ring on SIGHUP, and when the file changes (checked every 2 s)."""
    hangup = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # only in the main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup.set)

    def stamp():
        with contextlib.suppress(OSError):
            found = os.stat(path)
            return found.st_mtime_ns, found.st_size, found.st_ino

    seen = stamp()
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KEY_FILE_POLL):
                await hangup.wait()
        current = stamp()
        if hangup.is_set() or current != seen:
            hangup.clear()
            seen = current
            reload_keys(path, ring, settings)


async def _sweep(store, limiter: Limiter) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        await store.sweep(time.time(), limiter.period)
