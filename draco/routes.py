"""The route functions: read parameters, ask the catalog, answer.

Catalog answers are encoded once per list version and query (catalog.render) and
carry a strong ETag, Age and X-Data-Status.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import parse_qsl

import attrs
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from draco import latency
from draco.catalog import Dataset, Rendered, render
from draco.errors import RequestValidationError
from draco.models import Server, encode, paginate

_COUNTRY = re.compile(r"[A-Z]{2}")
_INTEGER = re.compile(r"-?[0-9]{1,9}")


class Query:
    """Reads and checks request parameters, collecting every problem into one 422."""

    def __init__(self, query_string: bytes, path: dict | None = None):
        self.params = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
        self.path = path or {}
        self.details: list[dict] = []

    def _fail(self, where: str, name: str, msg: str, kind: str) -> None:
        self.details.append({"loc": [where, name], "msg": msg, "type": kind})

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.params.get(name)
        if raw is None:
            return default
        if not _INTEGER.fullmatch(raw):
            self._fail("query", name, "Input should be a valid integer", "int_parsing")
        elif int(raw) < lo:
            self._fail("query", name, f"Input should be greater than or equal to {lo}", "greater_than_equal")
        elif int(raw) > hi:
            self._fail("query", name, f"Input should be less than or equal to {hi}", "less_than_equal")
        else:
            return int(raw)
        return default

    def country(self, name: str = "country_code", where: str = "query") -> str | None:
        raw = (self.path if where == "path" else self.params).get(name)
        if raw is not None and not _COUNTRY.fullmatch(raw):
            self._fail(where, name, "String should match pattern '^[A-Z]{2}$'", "string_pattern_mismatch")
            return None
        return raw

    def countries(self, name: str) -> frozenset[str]:
        """A list of country codes separated by '-' or ',' (exclude=BR-US)."""
        raw = self.params.get(name, "")
        codes = frozenset(code for code in re.split(r"[-,]", raw) if code)
        if not all(_COUNTRY.fullmatch(code) for code in codes):
            self._fail("query", name, "Input should be country codes like BR-US", "string_pattern_mismatch")
            return frozenset()
        return codes

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        raw = self.params.get(name, choices[0])
        if raw not in choices:
            self._fail("query", name, f"Input should be {', '.join(choices)}", "enum")
            return choices[0]
        return raw

    def check(self) -> None:
        if self.details:
            raise RequestValidationError(self.details)


@functools.lru_cache(maxsize=1024)  # the same few query strings come again and again
def page_params(query_string: bytes, default_size: int, max_size: int) -> tuple[int, int]:
    query = Query(query_string)
    page = query.integer("page", 1, 1, 1_000_000)
    page_size = query.integer("page_size", default_size, 1, max_size)
    query.check()
    return page, page_size


ALL = "all"  # every provider at once


async def dataset(request: Request) -> Dataset:
    name = request.path_params["provider"]
    catalog = request.app.catalog
    if name == ALL:
        return await catalog.union()
    if name not in catalog.providers:
        raise HTTPException(404, "Unknown provider.")
    return await catalog.get(name)


def _matches(header: str, etags: tuple[str, ...]) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or not tags.isdisjoint(etags)


class Encoded:
    """An answer whose body and headers are ready: nothing left to do but send them."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def respond(request: Request, data: Dataset, rendered: Rendered) -> Encoded:
    """200 with the encoded body (gzip when asked), or 304 when the client's copy is current."""
    catalog = request.app.catalog
    accept, if_none_match = b"", None
    for name, value in request.scope["headers"]:
        if name == b"accept-encoding":
            accept = value
        elif name == b"if-none-match":
            if_none_match = value.decode("latin-1")
    use_gzip = rendered.gzipped is not None and b"gzip" in accept
    etag = rendered.etag[:-1] + '-gzip"' if use_gzip else rendered.etag
    headers = [
        (b"etag", etag.encode()),
        (b"age", b"%d" % max(0, catalog.clock() - data.fetched_at)),
        (b"x-data-status", b"stale" if catalog.is_stale(data) else b"fresh"),
        (b"cache-control", b"private, no-cache"),
        (b"vary", b"Accept-Encoding"),
    ]
    if if_none_match and _matches(if_none_match, (rendered.etag, etag)):
        return Encoded(304, headers, b"")
    body = rendered.gzipped if use_gzip else rendered.body
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if use_gzip:
        headers.append((b"content-encoding", b"gzip"))
    return Encoded(200, headers, body)


def _json(body, status: int = 200) -> Response:
    """An uncached JSON answer (health, the provider index, measurements)."""
    return Response(encode(body), status, {"Cache-Control": "no-store"}, "application/json")


def _page_params(request: Request) -> tuple[int, int]:
    settings = request.app.settings
    return page_params(request.scope["query_string"], settings.default_page_size, settings.max_page_size)


async def health(request: Request) -> Response:
    settings, catalog = request.app.settings, request.app.catalog
    providers = catalog.health()
    # 200 while anything can be served: a load balancer must not pull a sidecar that serves.
    down = all(p["servers"] == 0 and p["last_failure"] for p in providers.values())
    body = {"status": "unhealthy" if down else "healthy", "version": settings.app_version, "providers": providers}
    return _json(body, 503 if down else 200)


async def providers(request: Request) -> Response:
    """What each provider offers and how fresh its list is, without fetching anything."""
    catalog = request.app.catalog
    index = []
    for name, provider in catalog.providers.items():
        data = catalog.status[name].data
        index.append(
            {
                "name": name,
                "servers": len(data.servers) if data else 0,
                "countries": len(data.countries) if data else 0,
                "reports_load": provider.reports_load,
                "reports_status": provider.reports_status,
                "ordering": provider.ordering,
                "data_age": max(0, int(catalog.clock() - data.fetched_at)) if data else None,
                "status": "none" if data is None else "stale" if catalog.is_stale(data) else "fresh",
            }
        )
    return _json(index)


async def servers(request: Request) -> Response:
    page, page_size = _page_params(request)
    data = await dataset(request)
    rendered = render(data, ("servers", page, page_size), lambda: paginate(data.servers, page, page_size).data)
    return respond(request, data, rendered)


async def servers_paginated(request: Request) -> Response:
    page, page_size = _page_params(request)
    data = await dataset(request)
    result = paginate(data.servers, page, page_size)
    if page > max(result.total_pages, 1):
        raise HTTPException(404, f"Page {page} is past the last page ({result.total_pages}).")
    return respond(request, data, render(data, ("paginated", page, page_size), lambda: result))


async def servers_by_country(request: Request) -> Response:
    query = Query(b"", request.path_params)
    code = query.country(where="path")
    query.check()
    data = await dataset(request)
    if code not in data.by_country:
        raise HTTPException(404, f"No servers in country {code}.")
    return respond(request, data, render(data, ("country", code), lambda: data.by_country[code]))


_UNKNOWN = float("inf")


def operational(data: Dataset, code: str | None, exclude=frozenset()) -> list[Server]:
    """Servers with load above 3 or unknown (3 or less means not in operation), by load."""
    pool = data.by_country.get(code, ()) if code else data.servers
    pool = [s for s in pool if (s.load is None or s.load > 3) and s.country_code not in exclude]
    pool.sort(key=lambda s: _UNKNOWN if s.load is None else s.load)
    return pool


def with_latency(servers, latencies: dict) -> list[Server]:
    """The servers carrying their measured latency, fastest first, unreachable last."""
    timed = [attrs.evolve(s, latency=_ms(latencies.get((s.provider, s.identifier)))) for s in servers]
    timed.sort(key=lambda s: _UNKNOWN if s.latency is None else s.latency)
    return timed


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


async def servers_top(request: Request) -> Response:
    query = Query(request.scope["query_string"])
    limit = query.integer("limit", 10, 1, 50)
    code = query.country()
    query.check()
    data = await dataset(request)
    latencies = request.app.latencies
    key = ("top", code, limit, latencies.runs_done)  # a new measurement may change the ranking
    rendered = render(data, key, lambda: with_latency(operational(data, code), latencies.known())[:limit])
    if rendered.body == b"[]":
        raise HTTPException(404, "No operational servers match.")
    return respond(request, data, rendered)


def _method(query: Query) -> str:
    method = query.choice("method", ("auto", "icmp", "tcp", "fping"))
    available = latency.methods_available()
    if method == "auto":
        return available[0]
    if method not in available:
        message = f"Input should be one of the methods available here: {', '.join(available)}"
        query.details.append({"loc": ["query", "method"], "msg": message, "type": "enum"})
    return method


async def _measured(request: Request, data: Dataset, chosen, method: str) -> list[Server]:
    """`chosen` probed (or taken from the cache), fastest first, unreachable last."""
    targets = [(s.provider, s.identifier, s.ipv4, s.identifier) for s in chosen]
    return with_latency(chosen, await request.app.latencies.run(data.provider, targets, method))


async def servers_latency(request: Request) -> Response:
    query = Query(request.scope["query_string"])
    code = query.country()
    limit = query.integer("limit", 100, 0, 5000)
    method = _method(query)
    query.check()
    data = await dataset(request)
    pool = data.by_country.get(code, ()) if code else data.servers
    if not pool:
        raise HTTPException(404, f"No servers in country {code}.")
    chosen = pool[:limit] if limit else pool
    measured = await _measured(request, data, chosen, method)
    answered = sum(s.latency is not None for s in measured)
    body = {
        "total_servers": len(pool),
        "measured": len(chosen),
        "successful": answered,
        "failed": len(chosen) - answered,
        "method": method,
        "servers": measured,
    }
    return _json(body)


async def servers_fastest(request: Request) -> Response:
    query = Query(request.scope["query_string"])
    limit = query.integer("limit", 10, 1, 50)
    code = query.country()
    measure_count = query.integer("measure_count", 100, 0, 5000)
    exclude = query.countries("exclude")
    method = _method(query)
    query.check()
    data = await dataset(request)
    pool = operational(data, code, exclude)  # lowest load first: measured first
    if not pool:
        raise HTTPException(404, "No operational servers match.")
    chosen = pool[:measure_count] if measure_count else pool
    measured = await _measured(request, data, chosen, method)
    fastest = [s for s in measured if s.latency is not None][:limit]
    if not fastest:
        raise HTTPException(503, "No server answered the latency probe.")
    return _json(fastest)


async def countries(request: Request) -> Response:
    data = await dataset(request)
    return respond(request, data, render(data, ("countries",), lambda: data.countries))


class Endpoint:
    """A route function served as a plain ASGI app. Starlette would wrap a function in
    an exception handler of its own on every request (one more Request object and send
    wrapper); errors raised here reach errors.ErrorMiddleware around the router."""

    def __init__(self, handler):
        self.handler, self.__name__ = handler, handler.__name__

    async def __call__(self, scope, receive, send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def get(path: str, handler) -> Route:
    return Route(path, Endpoint(handler), methods=["GET"])


# Starlette tries routes in order: the most requested first. The named /servers/...
# routes stay before /servers/{country_code}, which would match them too; /api/providers
# and /health match no pattern above them.
ROUTES = [
    get("/api/{provider}/servers", servers),
    get("/api/{provider}/servers/paginated", servers_paginated),
    get("/api/{provider}/servers/top", servers_top),
    get("/api/{provider}/servers/latency", servers_latency),
    get("/api/{provider}/servers/fastest", servers_fastest),
    get("/api/{provider}/servers/{country_code}", servers_by_country),
    get("/api/{provider}/countries", countries),
    get("/api/providers", providers),
    get("/health", health),
]
