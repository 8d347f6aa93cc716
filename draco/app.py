"""create_app: where the pieces meet. Read top to bottom, it is the request path:

client -> security headers -> request guard -> client address -> metrics -> CORS -> rate limit -> API key
       -> Starlette's error handlers -> route (JSON, gzipped when asked) -> catalog -> upstream
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from draco.catalog.cache import Catalog
from draco.catalog.fetch import upstream_client
from draco.catalog.shared import SharedCatalog
from draco.probe.methods import methods_available
from draco.probe.runs import Latencies
from draco.security.address import TrustedHosts
from draco.security.keys import KeyRing, fingerprint, watch
from draco.security.limiter import Limiter, MemoryStore, Store
from draco.security.redis_store import RedisStore
from draco.settings import Settings
from draco.web import middleware, openapi
from draco.web.errors import HANDLERS
from draco.web.metrics import Metrics, MetricsMiddleware
from draco.web.routes import Api

SWEEP_EVERY = 300  # seconds between sweeps of idle rate-limit entries

log = logging.getLogger("draco.security")


def create_app(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, clock: Callable[[], float] = time.time
) -> Starlette:
    ring = KeyRing(settings.api_keys)
    store: Store = MemoryStore(settings.rate_limit_max_clients)
    if settings.rate_limit_storage != "memory":  # one window per client across every instance
        store = RedisStore(settings.rate_limit_storage, settings.rate_limit_redis_failure,
                           settings.rate_limit_max_clients)  # fmt: skip
    limiter = Limiter(settings.rate_limit_requests, settings.rate_limit_period, store, clock)
    shared = None
    if settings.catalog_storage != "memory":  # a refresh may take HTTP_TIMEOUT; the lease outlives it
        shared = SharedCatalog(settings.catalog_storage, lease_seconds=settings.http_timeout + 5)
    catalog = Catalog(settings, upstream_client(settings, transport), clock=clock, shared=shared)
    latencies = Latencies(settings)
    api = Api(settings, catalog, latencies, methods_available())
    metrics = Metrics(catalog, latencies, store)

    # /docs, /redoc and /openapi.json only in debug mode, /metrics only when enabled: else 404.
    docs = openapi.routes(settings, api.endpoints) if settings.debug else []
    routes: list[BaseRoute] = [endpoint.route() for endpoint in api.endpoints] + docs
    if settings.metrics_enabled:
        routes.append(metrics.route())

    pages = [route.path for route in docs if isinstance(route, Route)]  # not the asset mounts
    weighty = dict.fromkeys(("/servers/latency", "/servers/fastest"), settings.latency_weight)  # they probe hosts
    protected = ("/api/",) if settings.metrics_public else ("/api/", "/metrics")
    layers = [  # outermost first, each with its switch
        (True, Middleware(middleware.SecurityHeadersMiddleware, enabled=settings.enable_security_headers,
                          production=not settings.debug)),
        (True, Middleware(middleware.RequestGuardMiddleware)),
        (True, Middleware(middleware.ClientAddressMiddleware, trusted=TrustedHosts(settings.trusted_hosts))),
        (settings.metrics_enabled, Middleware(MetricsMiddleware, requests=metrics.requests, routes=routes)),
        (True, Middleware(middleware.CORSMiddleware, origins=settings.cors_origins,
                          allow_credentials=settings.cors_allow_credentials)),
        (settings.rate_limit_enabled, Middleware(middleware.RateLimitMiddleware, limiter=limiter,
                                                 exempt=("/health", "/health/ready", *pages), costs=weighty)),
        (settings.enable_api_key_auth, Middleware(middleware.ApiKeyMiddleware, ring=ring, prefixes=protected)),
    ]  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        catalog.restore()
        catalog.warm(settings.ready_providers)
        if settings.enable_api_key_auth:
            log.info("API keys in use: %s", ", ".join(fingerprint(key) for key in settings.api_keys))
        background = [asyncio.create_task(_sweep(limiter))]
        if settings.api_keys_file:
            background.append(asyncio.create_task(watch(settings.api_keys_file, ring, settings.enable_api_key_auth)))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await catalog.close()
            await catalog.client.aclose()
            if isinstance(store, RedisStore):
                await store.client.aclose()

    # debug=False: never Starlette's traceback pages, whatever DEBUG says. HANDLERS: the error envelope.
    app = Starlette(debug=False, routes=routes, middleware=[layer for enabled, layer in layers if enabled],
                    exception_handlers=HANDLERS, lifespan=lifespan)  # fmt: skip
    app.router.redirect_slashes = False  # Starlette would build the redirect from the client's Host header
    return app


async def _sweep(limiter: Limiter) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        await limiter.store.sweep(limiter.clock(), limiter.period)
