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
from draco.models import Changes, Country, Detail, Freshness, Health, LatencyRun, Page, Peer, Provider, Ready, Server
from draco.probe.runs import Latencies
from draco.settings import Settings
from draco.web import params
from draco.web.errors import RequestValidationError
from draco.web.params import COUNTRY, EXCLUDE, FILTER_PARAMS, FILTERS, PAGE, TOP_LIMIT, Filter, Param

ALL = "all"  # every provider at once
_UNKNOWN = float("inf")


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        values = params.read(self.params, scope["query_string"], request.path_params)
        response = await self.handler(request, **values)
        await response(scope, receive, send)

    def route(self) -> Route:
        return Route(self.path, self, methods=["GET"], name=self.handler.__name__)


def accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "")


def _json(request: Request, body: Any, status: int = 200) -> Response:
    """An answer that is not cached (health, the provider index, measurements)."""
    content, headers = models.encode(body), {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    compressed = models.gzipped(content) if accepts_gzip(request) else None
    if compressed:
        content, headers["Content-Encoding"] = compressed, "gzip"
    return Response(content, status, headers, "application/json")


def _matches(header: str, etags: tuple[str, ...]) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or not tags.isdisjoint(etags)


def matching(servers: Sequence[Server], chosen: list[tuple[Filter, Any]]) -> Sequence[Server]:
    return [s for s in servers if all(f.keep(s, value) for f, value in chosen)] if chosen else servers


def operational(servers: Iterable[Server], exclude: frozenset[str] = frozenset()) -> list[Server]:
    """Servers with load above 3 or unknown (3 or less means not in operation), by load."""
    pool = [s for s in servers if (s.load is None or s.load > 3) and s.country_code not in exclude]
    pool.sort(key=lambda s: _UNKNOWN if s.load is None else s.load)
    return pool


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def with_latency(servers: Iterable[Server], latencies: Mapping[tuple[str, str], float | None]) -> list[Server]:
    """The servers carrying their measured latency, fastest first, unreachable last."""
    timed = [msgspec.structs.replace(s, latency=_ms(latencies.get((s.provider, s.identifier)))) for s in servers]
    timed.sort(key=lambda s: _UNKNOWN if s.latency is None else s.latency)
    return timed


class Api:
    """The endpoints, over the catalog and the latency runs."""

    def __init__(self, settings: Settings, catalog: Catalog, latencies: Latencies, methods: Sequence[str]):
        self.settings, self.catalog, self.latencies, self.methods = settings, catalog, latencies, tuple(methods)
        paging = (PAGE, Param("page_size", params.integer(1, settings.max_page_size, "servers per page"),
                              settings.default_page_size))  # fmt: skip
        method = Param("method", params.choice(("auto", *methods), "auto: the first of " + ", ".join(methods)), "auto")
        measure = params.integer(0, 5000, "how many to measure, least loaded first; 0 for all")
        base = "/api/{provider}"
        # Starlette tries routes in order: the catalog first; each named /servers/... route
        # before /servers/{country_code}, which would match it too.
        self.endpoints = [
            Endpoint(f"{base}/servers", self.servers, "A page of servers", list[Server], paging + FILTER_PARAMS),
            Endpoint(f"{base}/servers/paginated", self.servers_paginated, "A page with totals", Page,
                     paging + FILTER_PARAMS),
            Endpoint(f"{base}/servers/top", self.servers_top,
                     "Operational servers (load above 3) ranked by latency, then load", list[Server],
                     (TOP_LIMIT, COUNTRY, *FILTER_PARAMS)),
            Endpoint(f"{base}/servers/latency", self.servers_latency,
                     "Measure latency (costs LATENCY_WEIGHT requests); fastest first, unreachable last", LatencyRun,
                     (COUNTRY, Param("limit", params.integer(0, 5000, "how many to measure; 0 for all"), 100), method),
                     catalog=False),
            Endpoint(f"{base}/servers/fastest", self.servers_fastest,
                     "The fastest operational servers that answered (costs LATENCY_WEIGHT requests)", list[Server],
                     (TOP_LIMIT, COUNTRY, Param("measure_count", measure, 100), EXCLUDE, method, *FILTER_PARAMS),
                     catalog=False),
            Endpoint(f"{base}/servers/{{country_code}}", self.servers_by_country, "The servers of one country",
                     list[Server], (attrs.evolve(COUNTRY, where="path"), *FILTER_PARAMS)),
            Endpoint(f"{base}/servers/{{identifier}}/wireguard", self.wireguard,
                     "The [Peer] section for a WireGuard client (JSON with Accept: application/json)", Peer,
                     (Param("identifier", params.text(253, "the server's identifier"), where="path"),), False, True),
            Endpoint(f"{base}/countries", self.countries, "Countries with servers, by code", list[Country]),
            Endpoint(f"{base}/changes", self.changes, "What changed between the last two accepted lists", Changes,
                     catalog=False),
            Endpoint("/api/providers", self.providers, "The providers and the freshness of their lists",
                     list[Provider], catalog=False),
            Endpoint("/health", self.health, "Liveness: the process runs", Health, catalog=False),
            Endpoint("/health/ready", self.ready, "Readiness: every provider the deployment uses can be served",
                     Ready, catalog=False),
        ]  # fmt: skip

    def active(self, request: Request, filters: dict[str, Any]) -> list[tuple[Filter, Any]]:
        """The filters asked for; a 422 for one the provider's list cannot answer."""
        chosen = [(f, filters[f.param.name]) for f in FILTERS if filters[f.param.name] is not None]
        name, details = request.path_params["provider"], []
        for f, _ in chosen:
            if not f.answered_by(self.catalog.providers.get(name)):
                able = ", ".join(p.name for p in self.catalog.providers.values() if f.answered_by(p))
                message = f"{name} does not say {f.needs}; the providers that do: {able}"
                details.append(Detail(["query", f.param.name], message, "unsupported_filter"))
        if details:
            raise RequestValidationError(details)
        return chosen

    async def dataset(self, request: Request) -> Dataset:
        name = request.path_params["provider"]
        if name == ALL:
            return await self.catalog.union()
        if name not in self.catalog.providers:
            raise HTTPException(404, "Unknown provider.")
        return await self.catalog.get(name)

    def respond(self, request: Request, data: Dataset, rendered: Rendered) -> Response:
        """200 with the encoded body (gzipped when asked), or 304 when the client's copy is current."""
        use_gzip = rendered.gzipped is not None and accepts_gzip(request)
        etag = rendered.etag[:-1] + '-gzip"' if use_gzip else rendered.etag
        status = b"stale" if self.catalog.is_stale(data) else b"fresh"
        headers = [(b"etag", etag.encode()), (b"age", b"%d" % self.catalog.age(data)), (b"x-data-status", status),
                   (b"cache-control", b"private, no-cache"), (b"vary", b"Accept-Encoding")]  # fmt: skip
        if "if-none-match" in request.headers and _matches(request.headers["if-none-match"], (rendered.etag, etag)):
            response = Response(status_code=304)
        else:
            response = Response(rendered.gzipped if use_gzip else rendered.body, media_type="application/json")
            headers += [(b"content-encoding", b"gzip")] if use_gzip else []
        response.raw_headers += headers
        return response

    async def health(self, request: Request) -> Response:
        providers = self.catalog.health()
        # 200 while anything can be served: a load balancer must not pull a sidecar that serves.
        down = all(p.servers == 0 and p.last_failure for p in providers.values())
        body = Health("unhealthy" if down else "healthy", self.settings.app_version, providers)
        return _json(request, body, 503 if down else 200)

    async def ready(self, request: Request) -> Response:
        waiting = [name for name in self.settings.ready_providers if not self.catalog.servable(name)]
        self.catalog.warm(waiting)  # the probe itself drives their retries
        if waiting:
            raise HTTPException(503, f"Not ready: nothing to serve yet for {', '.join(waiting)}.")
        return _json(request, Ready("ready", list(self.settings.ready_providers)))

    async def providers(self, request: Request) -> Response:
        """What each provider offers and how fresh its list is, without fetching anything."""
        index = []
        for name, p in self.catalog.providers.items():
            data = self.catalog.status[name].data
            servers, countries = (len(data.servers), len(data.countries)) if data else (0, 0)
            status: Freshness = "none" if data is None else "stale" if self.catalog.is_stale(data) else "fresh"
            age = self.catalog.age(data) if data else None
            filters = [f.param.name for f in FILTERS if f.answered_by(p)]
            index.append(Provider(name, servers, countries, "load" in p.reports, p.reports_status, p.ordering, age,
                                  status, filters))  # fmt: skip
        return _json(request, index)

    async def servers(self, request: Request, page: int, page_size: int, **filters: Any) -> Response:
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        key = ("servers", page, page_size, *filters.values())
        rendered = render(data, key, lambda: models.paginate(matching(data.servers, chosen), page, page_size).data)
        return self.respond(request, data, rendered)

    async def servers_paginated(self, request: Request, page: int, page_size: int, **filters: Any) -> Response:
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        result = models.paginate(matching(data.servers, chosen), page, page_size)
        if page > max(result.total_pages, 1):
            raise HTTPException(404, f"Page {page} is past the last page ({result.total_pages}).")
        key = ("paginated", page, page_size, *filters.values())
        return self.respond(request, data, render(data, key, lambda: result))

    async def servers_by_country(self, request: Request, country_code: str, **filters: Any) -> Response:
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        found = matching(data.pool(country_code), chosen)
        if not found:
            raise HTTPException(404, f"No servers in country {country_code}" + (" match." if chosen else "."))
        return self.respond(request, data, render(data, ("country", country_code, *filters.values()), lambda: found))

    async def servers_top(self, request: Request, limit: int, country_code: str | None, **filters: Any) -> Response:
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        # a new measurement may change the ranking
        key = ("top", country_code, limit, self.latencies.runs_done, *filters.values())
        pool = matching(data.pool(country_code), chosen)
        rendered = render(data, key, lambda: with_latency(operational(pool), self.latencies.known())[:limit])
        if rendered.body == b"[]":
            raise HTTPException(404, "No operational servers match.")
        return self.respond(request, data, rendered)

    async def countries(self, request: Request) -> Response:
        data = await self.dataset(request)
        return self.respond(request, data, render(data, ("countries",), lambda: data.countries))

    async def _measured(self, data: Dataset, chosen: Sequence[Server], method: str) -> list[Server]:
        """`chosen` probed (or taken from the cache), fastest first, unreachable last."""
        targets = [(s.provider, s.identifier, s.ipv4, s.identifier) for s in chosen]
        return with_latency(chosen, await self.latencies.run(data.provider, targets, method))

    async def servers_latency(self, request: Request, country_code: str | None, limit: int, method: str) -> Response:
        method = self.methods[0] if method == "auto" else method
        data = await self.dataset(request)
        pool = data.pool(country_code)
        if not pool:
            raise HTTPException(404, f"No servers in country {country_code}.")
        chosen = pool[:limit] if limit else pool
        measured = await self._measured(data, chosen, method)
        answered = sum(s.latency is not None for s in measured)
        return _json(request, LatencyRun(len(pool), len(chosen), answered, len(chosen) - answered, method, measured))

    async def servers_fastest(self, request: Request, limit: int, country_code: str | None, measure_count: int,
                              exclude: str, method: str, **filters: Any) -> Response:  # fmt: skip
        method = self.methods[0] if method == "auto" else method
        chosen = self.active(request, filters)
        data = await self.dataset(request)
        pool = matching(data.pool(country_code), chosen)
        excluded = frozenset(code for code in exclude.replace(",", "-").split("-") if code)
        candidates = operational(pool, excluded)  # lowest load first: measured first
        if not candidates:
            raise HTTPException(404, "No operational servers match.")
        measured = await self._measured(data, candidates[:measure_count] if measure_count else candidates, method)
        fastest = [s for s in measured if s.latency is not None][:limit]
        if not fastest:
            raise HTTPException(404, "No server answered the latency probe.")
        return _json(request, fastest)

    async def wireguard(self, request: Request, identifier: str) -> Response:
        """The [Peer] a client pastes under its own [Interface]. draco never asks for,
        takes or returns a private key: this endpoint takes no query parameter at all."""
        data = await self.dataset(request)
        wanted = identifier.lower()
        server = next((s for s in data.servers if s.identifier == wanted), None)
        if server is None:
            raise HTTPException(404, f"No server {wanted}.")
        provider = self.catalog.providers[server.provider]
        host = server.ipv4 if provider.endpoint == "ipv4" and server.ipv4 else server.identifier
        peer = Peer(server.public_key, f"{host}:{provider.wireguard_port}", "0.0.0.0/0, ::/0", provider.peer_note)
        if "application/json" in request.headers.get("accept", ""):
            return _json(request, peer)
        about = f"# {server.provider} {server.identifier}, {server.country}"
        lines = ["[Peer]", about, f"PublicKey = {peer.public_key}", f"Endpoint = {peer.endpoint}",
                 f"AllowedIPs = {peer.allowed_ips}"]  # fmt: skip
        lines += [f"# {peer.note}"] if peer.note else []
        return Response("\n".join(lines) + "\n", 200, {"Cache-Control": "no-store"}, "text/plain")

    async def changes(self, request: Request) -> Response:
        name = request.path_params["provider"]
        if name not in self.catalog.providers:
            raise HTTPException(404, "Changes are kept per provider." if name == ALL else "Unknown provider.")
        changes = self.catalog.status[name].changes
        if changes is None:
            raise HTTPException(404, "Fewer than two lists have been accepted so far.")
        return _json(request, changes)
