"""Prometheus metrics (METRICS_ENABLED=true, the metrics extra), served at /metrics. No
label ever takes a value the client chose: routes are the route table's templates
("unmatched" otherwise), methods come from a fixed list, statuses are the ones draco sent.
Only app.py imports this module, and only when metrics are enabled."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from draco.catalog.cache import Catalog
from draco.catalog.reports import Quarantine
from draco.probe.runs import Latencies
from draco.security.limiter import Store

_METHODS = {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"}


class Metrics:
    """The request counter, and a collector that reads the parts at each scrape."""

    PATH = "/metrics"

    def __init__(
        self, catalog: Catalog, latencies: Latencies, store: Store, quarantine: Quarantine
    ):
        self.catalog = catalog
        self.latencies = latencies
        self.store = store
        self.quarantine = quarantine
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "draco_requests",
            "Requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        catalog = self.catalog
        by_provider = ["provider"]
        by_outcome = ["provider", "outcome"]
        fetches = CounterMetricFamily(
            "draco_upstream_fetches", "Upstream refreshes by outcome", labels=by_outcome
        )
        age = GaugeMetricFamily(
            "draco_catalog_age_seconds", "Age of each provider's list", labels=by_provider
        )
        size = GaugeMetricFamily(
            "draco_catalog_servers", "Servers in each provider's list", labels=by_provider
        )
        stale = GaugeMetricFamily(
            "draco_catalog_stale", "1 while a provider's list is stale", labels=by_provider
        )
        held = GaugeMetricFamily(
            "draco_catalog_held", "1 while a list over the churn budget is held", labels=by_provider
        )
        for name, status in catalog.status.items():
            for outcome, count in status.outcomes.items():
                fetches.add_metric([name, outcome], count)
            held.add_metric([name], float(status.trust.hold is not None))
            if status.data is not None:
                age.add_metric([name], catalog.clock() - status.data.fetched_at)
                size.add_metric([name], len(status.data.servers))
                stale.add_metric([name], float(catalog.is_stale(status.data)))
        runs = CounterMetricFamily(
            "draco_latency_runs", "Latency measurement runs by method", labels=["method"]
        )
        for method, count in self.latencies.runs_by_method.items():
            runs.add_metric([method], count)
        tracked = GaugeMetricFamily(
            "draco_ratelimit_tracked_clients", "Clients the rate limiter tracks"
        )
        tracked.add_metric([], self.store.tracked())
        counts = self.quarantine.counts()
        scopes = GaugeMetricFamily("draco_reports_scopes", "API keys with servers set aside")
        scopes.add_metric([], counts.scopes)
        aside = GaugeMetricFamily("draco_reports_servers", "Servers set aside (in this process)")
        aside.add_metric([], counts.servers or 0)
        yield from (fetches, age, size, stale, held, runs, tracked, scopes, aside)

    def route(self) -> Route:
        async def metrics(_request: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return Route(self.PATH, metrics, methods=["GET"])


class MetricsMiddleware:
    """Counts every response in `requests`, including those refused before routing (401,
    403, 429)."""

    def __init__(self, app: ASGIApp, *, requests: Counter, routes: Sequence[BaseRoute]):
        self.app = app
        self.requests = requests
        self.routes = routes

    def template(self, scope: Scope) -> str:
        for route in self.routes:
            if isinstance(route, Route) and route.matches(scope)[0] != Match.NONE:
                return route.path
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = HTTPStatus.INTERNAL_SERVER_ERROR  # unless the app answers

        async def counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.requests.labels(self.template(scope), method, str(int(status))).inc()
