"""The endpoints, each declared once in `Api.endpoints` (the route table and the OpenAPI
document are built from it): read the declared parameters, ask the catalog, answer.
Catalog answers are encoded once per list version and query (dataset.render), carry a
strong ETag, Age and X-Data-Status, and a client whose copy is current gets a 304."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from draco import models
from draco.catalog.cache import Catalog
from draco.catalog.dataset import Dataset, Rendered, render
from draco.models import (
    Changes,
    Country,
    Detail,
    Freshness,
    Health,
    LatencyRun,
    Page,
    Peer,
    ProviderSummary,
    Ready,
    Server,
)
from draco.probe.runs import Latencies, Target
from draco.settings import Settings
from draco.web import configs
from draco.web.errors import RequestValidationError
from draco.web.params import (
    COUNTRY,
    EXCLUDE,
    FILTER_PARAMS,
    FILTERS,
    PAGE,
    TOP_LIMIT,
    Choice,
    Filter,
    Integer,
    Param,
    Text,
    read,
)

API = "/api"  # every path under it is behind the API key
ALL = "all"  # every provider at once
OPERATIONAL_LOAD = 3  # a server reporting this load or less is not in operation
_UNKNOWN = float("inf")  # sorts after every measured value


@attrs.frozen
class Endpoint:
    """One GET endpoint, as an ASGI app: its errors go to the app's exception handlers
    (Starlette would wrap a route function in a second handler of its own)."""

    path: str
    handler: Callable[..., Awaitable[Response]]
    summary: str
    answer: Any  # the type of a 200 answer (models.py), for the document
    params: tuple[Param, ...] = ()
    catalog: bool = True  # a catalog answer: ETag, Age, X-Data-Status, 304
    text: bool = False  # text/plain too, when JSON is not asked for
    weight: int = 1  # what a request costs in the rate limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        values = read(self.params, scope["query_string"], request.path_params)
        response = await self.handler(request, **values)
        await response(scope, receive, send)

    def route(self) -> Route:
        return Route(self.path, self, methods=["GET"], name=self.handler.__name__)


def accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "")


def uncached_json(request: Request, body: Any, status: int = 200) -> Response:
    """An answer that is not cached (health, the provider index, measurements)."""
    content = models.encode(body)
    headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    compressed = models.gzipped(content) if accepts_gzip(request) else None
    if compressed:
        content = compressed
        headers["Content-Encoding"] = "gzip"
    return Response(content, status, headers, "application/json")


def _matches(header: str, etags: tuple[str, ...]) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or not tags.isdisjoint(etags)


def matching(servers: Sequence[Server], chosen: list[tuple[Filter, Any]]) -> Sequence[Server]:
    if not chosen:
        return servers
    return [s for s in servers if all(f.keep(s, value) for f, value in chosen)]


def operational(servers: Iterable[Server], exclude: frozenset[str] = frozenset()) -> list[Server]:
    """Servers in operation (load above OPERATIONAL_LOAD, or unknown), by load."""
    pool = [
        s
        for s in servers
        if (s.load is None or s.load > OPERATIONAL_LOAD) and s.country_code not in exclude
    ]
    pool.sort(key=lambda s: _UNKNOWN if s.load is None else s.load)
    return pool


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def with_latency(
    servers: Iterable[Server], latencies: Mapping[tuple[str, str], float | None]
) -> list[Server]:
    """The servers carrying their measured latency, fastest first, unreachable last."""
    timed = [
        msgspec.structs.replace(s, latency=_ms(latencies.get((s.provider, s.identifier))))
        for s in servers
    ]
    timed.sort(key=lambda s: _UNKNOWN if s.latency is None else s.latency)
    return timed


class Api:
    """The endpoints, over the catalog and the latency runs."""

    def __init__(
        self, settings: Settings, catalog: Catalog, latencies: Latencies, methods: Sequence[str]
    ):
        self.settings = settings
        self.catalog = catalog
        self.latencies = latencies
        self.methods = tuple(methods)
        page_size = Param(
            "page_size",
            Integer(1, settings.max_page_size, "servers per page"),
            default=settings.default_page_size,
        )
        method = Param(
            "method",
            Choice(("auto", *methods), "auto: the first of " + ", ".join(methods)),
            default="auto",
        )
        latency_limit = Param(
            "limit", Integer(0, 5000, "how many to measure; 0 for all"), default=100
        )
        measure_count = Param(
            "measure_count",
            Integer(0, 5000, "how many to measure, least loaded first; 0 for all"),
            default=100,
        )
        identifier = Param("identifier", Text(253, "the server's identifier"), where="path")
        provider = f"{API}/{{provider}}"
        # Starlette tries routes in order: the catalog first; each named /servers/... route
        # before /servers/{country_code}, which would match it too.
        self.endpoints = [
            Endpoint(
                path=f"{provider}/servers",
                handler=self.servers,
                summary="A page of servers",
                answer=list[Server],
                params=(PAGE, page_size, *FILTER_PARAMS),
            ),
            Endpoint(
                path=f"{provider}/servers/paginated",
                handler=self.servers_paginated,
                summary="A page with totals",
                answer=Page,
                params=(PAGE, page_size, *FILTER_PARAMS),
            ),
            Endpoint(
                path=f"{provider}/servers/top",
                handler=self.servers_top,
                summary="Operational servers (load above 3) ranked by latency, then load",
                answer=list[Server],
                params=(TOP_LIMIT, COUNTRY, *FILTER_PARAMS),
            ),
            Endpoint(
                path=f"{provider}/servers/latency",
                handler=self.servers_latency,
                summary="Measure latency (costs LATENCY_WEIGHT requests); "
                "fastest first, unreachable last",
                answer=LatencyRun,
                params=(COUNTRY, latency_limit, method),
                catalog=False,
                weight=settings.latency_weight,
            ),
            Endpoint(
                path=f"{provider}/servers/fastest",
                handler=self.servers_fastest,
                summary="The fastest operational servers that answered "
                "(costs LATENCY_WEIGHT requests)",
                answer=list[Server],
                params=(TOP_LIMIT, COUNTRY, measure_count, EXCLUDE, method, *FILTER_PARAMS),
                catalog=False,
                weight=settings.latency_weight,
            ),
            Endpoint(
                path=f"{provider}/servers/{{country_code}}",
                handler=self.servers_by_country,
                summary="The servers of one country",
                answer=list[Server],
                params=(attrs.evolve(COUNTRY, where="path"), *FILTER_PARAMS),
            ),
            Endpoint(
                path=f"{provider}/servers/{{identifier}}/wireguard",
                handler=self.wireguard,
                summary="The [Peer] section for a WireGuard client "
                "(JSON with Accept: application/json)",
                answer=Peer,
                params=(identifier,),
                catalog=False,
                text=True,
            ),
            Endpoint(
                path=f"{provider}/countries",
                handler=self.countries,
                summary="Countries with servers, by code",
                answer=list[Country],
            ),
            Endpoint(
                path=f"{provider}/changes",
                handler=self.changes,
                summary="What changed between the last two accepted lists",
                answer=Changes,
            ),
            Endpoint(
                path=f"{API}/providers",
                handler=self.providers,
                summary="The providers and the freshness of their lists",
                answer=list[ProviderSummary],
                catalog=False,
            ),
            Endpoint(
                path="/health",
                handler=self.health,
                summary="Liveness: the process runs",
                answer=Health,
                catalog=False,
            ),
            Endpoint(
                path="/health/ready",
                handler=self.ready,
                summary="Readiness: every provider the deployment uses can be served",
                answer=Ready,
                catalog=False,
            ),
        ]

    def active(self, request: Request, filters: dict[str, Any]) -> list[tuple[Filter, Any]]:
        """The filters asked for; a 422 for one the provider's list cannot answer."""
        chosen = [(f, filters[f.param.name]) for f in FILTERS if filters[f.param.name] is not None]
        name = request.path_params["provider"]
        problems = []
        for f, _ in chosen:
            if not f.answered_by(self.catalog.providers.get(name)):
                able = [p.name for p in self.catalog.providers.values() if f.answered_by(p)]
                message = f"{name} does not say {f.needs}; the providers that do: {', '.join(able)}"
                problems.append(Detail(["query", f.param.name], message, "unsupported_filter"))
        if problems:
            raise RequestValidationError(problems)
        return chosen

    async def dataset(self, request: Request) -> Dataset:
        name = request.path_params["provider"]
        if name == ALL:
            return await self.catalog.union()
        if name not in self.catalog.providers:
            raise HTTPException(404, "Unknown provider.")
        return await self.catalog.get(name)

    def respond(self, request: Request, data: Dataset, rendered: Rendered) -> Response:
        """200 with the encoded body (gzipped when asked), or 304 when the client's copy is
        current."""
        use_gzip = rendered.gzipped is not None and accepts_gzip(request)
        etag = rendered.etag(compressed=use_gzip)
        status = b"stale" if self.catalog.is_stale(data) else b"fresh"
        headers = [
            (b"etag", etag.encode()),
            (b"age", b"%d" % self.catalog.age(data)),
            (b"x-data-status", status),
            (b"cache-control", b"private, no-cache"),
            (b"vary", b"Accept-Encoding"),
        ]
        asked = request.headers.get("if-none-match")
        if asked is not None and _matches(asked, (rendered.etag(compressed=False), etag)):
            response = Response(status_code=304)
        elif use_gzip:
            response = Response(rendered.gzipped, media_type="application/json")
            headers.append((b"content-encoding", b"gzip"))
        else:
            response = Response(rendered.body, media_type="application/json")
        response.raw_headers += headers
        return response

    async def health(self, request: Request) -> Response:
        providers = self.catalog.health()
        # 200 while anything can be served: a load balancer must not pull a sidecar that serves.
        down = all(p.servers == 0 and p.last_failure for p in providers.values())
        body = Health("unhealthy" if down else "healthy", self.settings.app_version, providers)
        return uncached_json(request, body, 503 if down else 200)

    async def ready(self, request: Request) -> Response:
        ready = self.settings.ready_providers
        waiting = [name for name in ready if not self.catalog.servable(name)]
        self.catalog.warm(waiting)  # the probe itself drives their retries
        if waiting:
            raise HTTPException(503, f"Not ready: nothing to serve yet for {', '.join(waiting)}.")
        return uncached_json(request, Ready("ready", list(ready)))

    def freshness(self, data: Dataset | None) -> Freshness:
        if data is None:
            return "none"
        return "stale" if self.catalog.is_stale(data) else "fresh"

    async def providers(self, request: Request) -> Response:
        """What each provider offers and how fresh its list is, without fetching anything."""
        index = []
        for name, provider in self.catalog.providers.items():
            data = self.catalog.status[name].data
            summary = ProviderSummary(
                name=name,
                servers=len(data.servers) if data else 0,
                countries=len(data.countries) if data else 0,
                reports_load="load" in provider.reports,
                reports_status=provider.reports_status,
                ordering=provider.ordering,
                data_age=self.catalog.age(data) if data else None,
                status=self.freshness(data),
                filters=[f.param.name for f in FILTERS if f.answered_by(provider)],
            )
            index.append(summary)
        return uncached_json(request, index)

    async def servers(
        self, request: Request, page: int, page_size: int, **filters: Any
    ) -> Response:
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        # The answer is a slice of at most the whole list (a filtered list is shorter): the
        # pages that end past it share one rendered entry, however large a page_size asks.
        total = len(data.servers)
        start = min((page - 1) * page_size, total)
        stop = min(start + page_size, total)
        key = ("servers", start, stop, *filters.values())
        return self.respond(
            request, data, render(data, key, lambda: matching(data.servers, chosen)[start:stop])
        )

    async def servers_paginated(
        self, request: Request, page: int, page_size: int, **filters: Any
    ) -> Response:
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        result = models.paginate(matching(data.servers, chosen), page, page_size)
        if page > max(result.total_pages, 1):
            raise HTTPException(404, f"Page {page} is past the last page ({result.total_pages}).")
        key = ("paginated", page, page_size, *filters.values())
        return self.respond(request, data, render(data, key, lambda: result))

    async def servers_by_country(
        self, request: Request, country_code: str, **filters: Any
    ) -> Response:
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        key = ("country", country_code, *filters.values())
        rendered = render(data, key, lambda: matching(data.pool(country_code), chosen))
        if rendered.empty:
            match = " match." if chosen else "."
            raise HTTPException(404, f"No servers in country {country_code}{match}")
        return self.respond(request, data, rendered)

    async def servers_top(
        self, request: Request, limit: int, country_code: str | None, **filters: Any
    ) -> Response:
        chosen = self.active(request, filters)
        data = await self.dataset(request)

        def build() -> list[Server]:
            pool = matching(data.pool(country_code), chosen)
            return with_latency(operational(pool), self.latencies.known())[:limit]

        # a new measurement may change the ranking
        measured = self.latencies.measured.generation
        key = ("top", country_code, limit, measured, *filters.values())
        rendered = render(data, key, build)
        if rendered.empty:
            raise HTTPException(404, "No operational servers match.")
        return self.respond(request, data, rendered)

    async def countries(self, request: Request) -> Response:
        data = await self.dataset(request)
        return self.respond(request, data, render(data, ("countries",), lambda: data.countries))

    async def _measured(self, data: Dataset, chosen: Sequence[Server], method: str) -> list[Server]:
        """`chosen` probed (or taken from the cache), fastest first, unreachable last."""
        targets = [Target(s.provider, s.identifier, s.ipv4, s.identifier) for s in chosen]
        return with_latency(chosen, await self.latencies.run(data.provider, targets, method))

    async def servers_latency(
        self, request: Request, country_code: str | None, limit: int, method: str
    ) -> Response:
        method = self.methods[0] if method == "auto" else method
        data = await self.dataset(request)
        pool = data.pool(country_code)
        if not pool:
            raise HTTPException(404, f"No servers in country {country_code}.")
        chosen = pool[:limit] if limit else pool
        measured = await self._measured(data, chosen, method)
        answered = sum(s.latency is not None for s in measured)
        run = LatencyRun(
            total_servers=len(pool),
            measured=len(chosen),
            successful=answered,
            failed=len(chosen) - answered,
            method=method,
            servers=measured,
        )
        return uncached_json(request, run)

    async def servers_fastest(
        self,
        request: Request,
        limit: int,
        country_code: str | None,
        measure_count: int,
        exclude: str,
        method: str,
        **filters: Any,
    ) -> Response:
        method = self.methods[0] if method == "auto" else method
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        pool = matching(data.pool(country_code), chosen)
        excluded = frozenset(code for code in exclude.replace(",", "-").split("-") if code)
        candidates = operational(pool, excluded)  # lowest load first: measured first
        if not candidates:
            raise HTTPException(404, "No operational servers match.")
        to_measure = candidates[:measure_count] if measure_count else candidates
        measured = await self._measured(data, to_measure, method)
        fastest = [s for s in measured if s.latency is not None][:limit]
        if not fastest:
            raise HTTPException(404, "No server answered the latency probe.")
        return uncached_json(request, fastest)

    async def wireguard(self, request: Request, identifier: str) -> Response:
        """The [Peer] a client pastes under its own [Interface]. draco never asks for,
        takes or returns a private key: this endpoint takes no query parameter at all."""
        data = await self.dataset(request)
        wanted = identifier.lower()
        server = data.by_identifier.get(wanted)
        if server is None:
            raise HTTPException(404, f"No server {wanted}.")
        provider = self.catalog.providers[server.provider]
        try:
            if "application/json" in request.headers.get("accept", ""):
                return uncached_json(request, configs.peer(server, provider))
            text = configs.wg_quick(server, provider)
        except configs.UnwritableError as exc:
            raise HTTPException(404, f"No config for {wanted}: {exc}.") from None
        return Response(text, 200, {"Cache-Control": "no-store"}, "text/plain")

    async def changes(self, request: Request) -> Response:
        name = request.path_params["provider"]
        if name not in self.catalog.providers:
            message = "Changes are kept per provider." if name == ALL else "Unknown provider."
            raise HTTPException(404, message)
        status = self.catalog.status[name]
        changes = status.changes
        if changes is None or status.data is None:
            raise HTTPException(404, "Fewer than two lists have been accepted so far.")
        # Encoded once per list (a full swap of 6,300 servers is megabytes), like a page.
        return self.respond(
            request, status.data, render(status.data, ("changes",), lambda: changes)
        )
