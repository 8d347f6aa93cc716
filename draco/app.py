"""create_app: where the pieces meet. Read top to bottom, it is the request path:

client -> security headers -> request guard -> client address -> (metrics) -> CORS
       -> rate limit -> API key -> Starlette's error handlers -> route -> catalog -> upstream
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
from draco.catalog.reports import MemoryQuarantine, Quarantine, RedisQuarantine
from draco.catalog.shared import SharedCatalog
from draco.probe.methods import methods_available
from draco.probe.runs import Latencies
from draco.security.address import TrustedHosts
from draco.security.keys import KeyRing, fingerprint, watch
from draco.security.limiter import Limiter, MemoryStore, Store
from draco.security.redis_store import RedisStore
from draco.settings import Settings
from draco.web import openapi
from draco.web.errors import HANDLERS
from draco.web.middleware import (
    ApiKeyMiddleware,
    ClientAddressMiddleware,
    CORSMiddleware,
    RateLimitMiddleware,
    RequestGuardMiddleware,
    SecurityHeadersMiddleware,
)
from draco.web.routes import API, Api

SWEEP_EVERY = 300  # seconds between sweeps of idle rate-limit entries
LEASE_MARGIN = 5  # seconds a refresh lease outlives HTTP_TIMEOUT

log = logging.getLogger("draco.security")


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    ring = KeyRing(settings.api_keys)
    store = _rate_limit_store(settings)
    limiter = Limiter(settings.rate_limit_requests, settings.rate_limit_period, store, clock)
    client = upstream_client(settings, transport)
    catalog = Catalog(settings, client, clock=clock, shared=_shared_catalog(settings))
    latencies = Latencies(settings)
    quarantine = _quarantine(settings)
    api = Api(settings, catalog, latencies, methods_available(), quarantine)

    routes: list[BaseRoute] = [endpoint.route() for endpoint in api.endpoints]
    # /openapi.json (and /docs, /redoc with the docs extra) only in debug mode, /metrics only
    # when enabled: else 404, like any unknown path.
    docs = openapi.routes(settings, api.endpoints) if settings.debug else []
    routes += docs
    pages = [route.path for route in docs if isinstance(route, Route)]  # not the asset mounts
    exempt = ["/health", "/health/ready", *pages]
    costs = [(e.route(), e.weight) for e in api.endpoints if e.weight > 1]  # they probe hosts
    posts = [e.route() for e in api.endpoints if e.method == "POST"]  # CORS lets them POST
    protected = [API + "/"]
    counting = []  # the metrics layer, when METRICS_ENABLED
    if settings.metrics_enabled:
        from draco.web.metrics import Metrics, MetricsMiddleware  # the metrics extra

        metrics = Metrics(catalog, latencies, store, quarantine)
        routes.append(metrics.route())
        counting.append(Middleware(MetricsMiddleware, requests=metrics.requests, routes=routes))
        if not settings.metrics_public:
            protected.append(Metrics.PATH)

    # Outermost first: each layer, and the setting that turns it on.
    layers = [
        Middleware(
            SecurityHeadersMiddleware,
            enabled=settings.enable_security_headers,
            production=not settings.debug,
        ),
        Middleware(RequestGuardMiddleware),
        Middleware(ClientAddressMiddleware, trusted=TrustedHosts(settings.trusted_hosts)),
        *counting,  # every answer from here inwards is counted, refusals included
        Middleware(
            CORSMiddleware,
            origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            posts=posts,
        ),
    ]
    if settings.rate_limit_enabled:
        layers.append(Middleware(RateLimitMiddleware, limiter=limiter, exempt=exempt, costs=costs))
    if settings.enable_api_key_auth:
        layers.append(Middleware(ApiKeyMiddleware, ring=ring, prefixes=tuple(protected)))

    app = Starlette(
        debug=False,  # never Starlette's traceback pages, whatever DEBUG says
        routes=routes,
        middleware=layers,
        exception_handlers=HANDLERS,  # the error envelope
        lifespan=_lifespan(settings, catalog, ring, limiter, quarantine),
    )
    app.router.redirect_slashes = False  # Starlette would build the redirect from the Host header
    app.state.catalog = catalog  # for `draco` itself and its tests: never reached by a request
    return app


def _rate_limit_store(settings: Settings) -> Store:
    if settings.rate_limit_storage == "memory":
        return MemoryStore(settings.rate_limit_max_clients)
    # One window per client across every instance.
    return RedisStore(
        settings.rate_limit_storage,
        settings.rate_limit_redis_failure,
        settings.rate_limit_max_clients,
    )


def _shared_catalog(settings: Settings) -> SharedCatalog | None:
    if settings.catalog_storage == "memory":
        return None
    lease = settings.http_timeout + LEASE_MARGIN  # a refresh may take HTTP_TIMEOUT
    return SharedCatalog(settings.catalog_storage, lease_seconds=lease)


def _quarantine(settings: Settings) -> Quarantine:
    """Where the servers reports set aside are kept: shared with the catalog, or here."""
    if settings.catalog_storage == "memory":
        return MemoryQuarantine(settings.report_quarantine)
    return RedisQuarantine(settings.catalog_storage, settings.report_quarantine)


def _lifespan(
    settings: Settings,
    catalog: Catalog,
    ring: KeyRing,
    limiter: Limiter,
    quarantine: Quarantine,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """Start: restore and fetch the lists, sweep idle clients, watch the key file and the
    operator's word on held lists. Stop: cancel all that, close every connection."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await catalog.restore()
        catalog.warm(settings.ready_providers)
        if settings.enable_api_key_auth:
            keys = ", ".join(fingerprint(key) for key in settings.api_keys)
            log.info("API keys in use: %s", keys)
        background = [asyncio.create_task(_sweep(limiter))]
        if settings.api_keys_file:
            required = settings.enable_api_key_auth
            watching = watch(settings.api_keys_file, ring, required=required)
            background.append(asyncio.create_task(watching))
        if settings.snapshot_dir or catalog.shared:  # where `draco hold` leaves its word
            background.append(asyncio.create_task(catalog.follow_verdicts()))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await catalog.close()
            await catalog.client.aclose()
            if isinstance(limiter.store, RedisStore):
                await limiter.store.client.aclose()
            if isinstance(quarantine, RedisQuarantine):
                await quarantine.close()

    return lifespan


async def _sweep(limiter: Limiter) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        await limiter.store.sweep(limiter.clock(), limiter.period)
