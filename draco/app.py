"""create_app: where the pieces meet. Read top to bottom, it is the request path:

client -> security headers -> CORS -> rate limit -> API key -> gzip -> route -> catalog -> upstream
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware

from draco import __version__, errors, openapi, routes
from draco.auth import KeyRing
from draco.catalog import Catalog
from draco.latency import Latencies
from draco.middleware import (
    ApiKeyMiddleware,
    CORSMiddleware,
    GZipMiddleware,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
)
from draco.ratelimit import Limiter, MemoryStore, TrustedHosts
from draco.settings import Settings

SWEEP_EVERY = 300  # seconds between sweeps of idle rate-limit entries


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


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, clock=time.time) -> Starlette:
    trusted = TrustedHosts(settings.trusted_hosts)
    ring = KeyRing(settings.api_keys)
    store = MemoryStore(settings.rate_limit_max_clients)
    limiter = Limiter(settings.rate_limit_requests, settings.rate_limit_period, store, clock)

    middleware = [
        Middleware(SecurityHeadersMiddleware, enabled=settings.enable_security_headers, production=not settings.debug),
        Middleware(CORSMiddleware, origins=settings.cors_origins, allow_credentials=settings.cors_allow_credentials),
    ]
    if settings.rate_limit_enabled:
        exempt = ("/health", "/docs", "/redoc", "/openapi.json") if settings.debug else ("/health",)
        costs = dict.fromkeys(("/servers/latency", "/servers/fastest"), settings.latency_weight)  # they probe hosts
        middleware.append(Middleware(RateLimitMiddleware, limiter=limiter, trusted=trusted, exempt=exempt, costs=costs))
    if settings.enable_api_key_auth:
        middleware.append(Middleware(ApiKeyMiddleware, ring=ring, trusted=trusted))
    middleware.append(Middleware(GZipMiddleware, minimum=500))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        client = upstream_client(settings, transport)
        catalog = Catalog(settings, client, clock=clock)
        catalog.restore()
        app.state.catalog = catalog
        sweeper = asyncio.create_task(_sweep(store, limiter))
        try:
            yield
        finally:
            sweeper.cancel()
            await catalog.close()
            await client.aclose()

    app = Starlette(
        debug=False,  # never Starlette's traceback pages, whatever DEBUG says
        # /docs, /redoc and /openapi.json exist only in debug mode: otherwise they are
        # 404 like any unknown path.
        routes=routes.ROUTES + (openapi.routes(settings) if settings.debug else []),
        middleware=middleware,
        exception_handlers=errors.HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.limiter = limiter
    app.state.keyring = ring
    app.state.latencies = Latencies(settings)
    return app


async def _sweep(store: MemoryStore, limiter: Limiter) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        await store.sweep(limiter.clock(), limiter.period)
