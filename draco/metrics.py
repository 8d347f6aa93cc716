"""Prometheus metrics (METRICS_ENABLED=true), served at /metrics.

No label ever takes a value the client chose: routes are the templates of the
route table ("unmatched" otherwise), methods come from a fixed list, and statuses
are the ones draco sent.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

_METHODS = {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"}


class Metrics:
    def __init__(self):
        self.app = None  # set by create_app: its catalog, limiter and latencies are read at scrape
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "draco_requests", "Requests by route template, method and status", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(self)

    def collect(self):
        catalog, latencies = self.app.catalog, self.app.latencies
        fetches = CounterMetricFamily(
            "draco_upstream_fetches", "Upstream refreshes by outcome", labels=["provider", "outcome"]
        )
        age = GaugeMetricFamily("draco_catalog_age_seconds", "Age of each provider's list", labels=["provider"])
        size = GaugeMetricFamily("draco_catalog_servers", "Servers in each provider's list", labels=["provider"])
        stale = GaugeMetricFamily(
            "draco_catalog_stale", "1 while a provider's list is served stale", labels=["provider"]
        )
        for name, status in catalog.status.items():
            for outcome, count in status.outcomes.items():
                fetches.add_metric([name, outcome], count)
            if status.data is not None:
                age.add_metric([name], catalog.clock() - status.data.fetched_at)
                size.add_metric([name], len(status.data.servers))
                stale.add_metric([name], float(catalog.is_stale(status.data)))
        runs = CounterMetricFamily("draco_latency_runs", "Latency measurement runs by method", labels=["method"])
        for method, count in latencies.runs_by_method.items():
            runs.add_metric([method], count)
        tracked = GaugeMetricFamily("draco_ratelimit_tracked_clients", "Clients the rate limiter tracks")
        tracked.add_metric([], self.app.limiter.store.tracked())
        yield from (fetches, age, size, stale, runs, tracked)

    def describe(self):
        # Registering would otherwise call collect() now, before create_app sets the app.
        return []

    async def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every response, including those refused before routing (401, 403, 429)."""

    def __init__(self, app, *, metrics: Metrics, routes: list):
        self.app, self.metrics, self.routes = app, metrics, routes

    def template(self, scope) -> str:
        for route in self.routes:
            if route.matches(scope)[0] != Match.NONE:
                return route.path
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def counting(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(self.template(scope), method, str(status)).inc()
