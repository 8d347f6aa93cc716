"""The endpoints, each declared once in `Api.endpoints` (the route table and the OpenAPI
document are built from it): read the declared parameters, ask the catalog, answer.
Catalog answers are encoded once per list version and query (dataset.render), carry a
strong ETag (with the list's version), X-List-Version, Age and X-Data-Status, and a
client whose copy is current gets a 304."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from draco.catalog.dataset import Dataset, Rendered, entity_tag, render
from draco.catalog.guard import Entry
from draco.catalog.history import VERSION, Composed, Kept, TooOld
from draco.catalog.reports import INSTANCE, MOST_BODY, Aside, Quarantine
from draco.models import (
    ChangeKind,
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
    Report,
    ReportAnswer,
    Reports,
    Server,
    ServerChange,
)
from draco.probe.runs import Latencies, Target
from draco.providers import Provider
from draco.providers.base import LAST_PORT
from draco.settings import Settings
from draco.web import configs
from draco.web.errors import RequestValidationError
from draco.web.params import (
    COUNTRY,
    FAMILY,
    FEATURES,
    FIELDS,
    FILTER_OF,
    FILTER_PARAMS,
    FILTERS,
    NEAR,
    PAGE,
    TOP_LIMIT,
    Boolean,
    Choice,
    Filter,
    Integer,
    Param,
    Pattern,
    Point,
    PortIn,
    Reader,
    Text,
    spelled,
)
from draco.web.shaping import (
    matching,
    nearest,
    only,
    operational,
    set_aside,
    spread,
    with_latency,
)

API = "/api"  # every path under it is behind the API key
ALL = "all"  # every provider at once
JSON = "application/json"

SEED = Param(
    "seed",
    Pattern("^[ -~]{1,64}$", "order by rendezvous hashing of this and each identifier"),
)
SHOWN = Param("include_quarantined", Boolean("show servers your reports set aside"), default=False)
SINCE = Param("since", Pattern(VERSION, "a version, as X-List-Version gave it"))
SHAPING = (*FILTER_PARAMS, SEED, SHOWN, FIELDS)  # what every list answer takes
PORT = Param("port", Integer(1, LAST_PORT, "the Endpoint's port: one the provider's servers use"))
VIA = Param("via", Text(253, "multi-hop: the identifier of the server the chain enters at"))
FORMAT = Param(
    "format",
    Choice(tuple(configs.FORMATS), "the client's format (else JSON if Accept asks, wg-quick)"),
)
MULTIHOP = FEATURES["multihop"].field  # what a provider reports when it can chain
ONE_PROVIDERS = (PORT, VIA)  # asked of one provider's path, never of `all`


def offered(param: Param, provider: Provider | None) -> Param | None:
    """`param` as `provider` accepts it (None: `all`): a filter with only what its list
    answers, the ports its servers use; None when it accepts none of it. A port and a
    chain are one provider's: `all` takes neither."""
    if param in FILTER_PARAMS:
        return FILTER_OF[param.name].offered(provider)
    if provider is None:
        return None if param in ONE_PROVIDERS else param
    if param is PORT:
        return attrs.evolve(PORT, accepts=PortIn(provider, PORT.accepts.description))
    if param is VIA and MULTIHOP not in provider.reports:
        return None
    return param


@attrs.frozen
class Endpoint:
    """One endpoint, as an ASGI app: its errors go to the app's exception handlers
    (Starlette would wrap a route function in a second handler of its own)."""

    path: str
    handler: Callable[..., Awaitable[Response]]
    summary: str
    answer: Any  # the type of a 200 answer (models.py), for the document
    params: tuple[Param, ...] = ()
    catalog: bool = True  # a catalog answer: ETag, Age, X-Data-Status, 304
    weight: int = 1  # what a request costs in the rate limit
    method: str = "GET"
    body: Any = None  # the type of the JSON body a POST takes, for the document
    # a 200's media types besides JSON's `answer`, each with the structs it may hold (none:
    # text), for the document
    media: Mapping[str, tuple[Any, ...]] = attrs.field(factory=dict)
    reader: Reader = attrs.field(  # the params, ready to be read; made once
        init=False, default=attrs.Factory(lambda self: Reader(self.params), takes_self=True)
    )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        values = self.reader.read(scope["query_string"], request.path_params)
        response = await self.handler(request, **values)
        await response(scope, receive, send)

    def route(self) -> Route:
        return Route(self.path, self, methods=[self.method], name=self.handler.__name__)


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
    return Response(content, status, headers, JSON)


def _matches(header: str, etags: tuple[str, ...]) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or not tags.isdisjoint(etags)


@attrs.frozen
class Shape:
    """How a list answer is cut and ordered for one request: the filters asked for, the
    servers the client's reports set aside, and a seed to spread replicas."""

    chosen: list[tuple[Filter, Any]]
    seed: str | None
    aside: Aside
    shown: bool  # include_quarantined: keep those set aside, saying until when
    near: Point | None = None  # nearest first, each with its distance
    fields: frozenset[str] | None = None  # only these fields of each server

    def key(self) -> tuple[Any, ...]:
        """What the answer depends on, besides the list: part of its render-cache key."""
        values = tuple((f.param.name, value) for f, value in self.chosen)
        aside = tuple(sorted(self.aside.items())) if self.aside else ()
        return (values, self.seed, aside, self.shown and bool(aside), self.fields)

    def keep(self, servers: Sequence[Server]) -> Sequence[Server]:
        return set_aside(matching(servers, self.chosen), self.aside, shown=self.shown)

    def order(
        self,
        servers: Sequence[Server],
        usual: Callable[[Sequence[Server]], Sequence[Server]] = lambda servers: servers,
    ) -> Sequence[Server]:
        """Nearest first with `near` (servers at one place in the seed's order), the seed's
        own order with `seed`, else the `usual` one."""
        if self.near is not None:
            return nearest(servers, self.near, self.seed)
        if self.seed:
            return spread(servers, self.seed)
        return usual(servers)

    def written(self, servers: Sequence[Server]) -> Sequence[Server] | list[dict[str, Any]]:
        """The servers as the answer writes them: with `fields`, only those."""
        return servers if self.fields is None else only(servers, self.fields)


class Api:
    """The endpoints, over the catalog, the latency runs and the clients' reports."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        latencies: Latencies,
        methods: Sequence[str],
        quarantine: Quarantine,
    ):
        self.settings = settings
        self.catalog = catalog
        self.latencies = latencies
        self.methods = tuple(methods)
        self.quarantine = quarantine
        self.endpoints = self._declare(settings, methods)

    def _declare(self, settings: Settings, methods: Sequence[str]) -> list[Endpoint]:
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
        return [
            Endpoint(
                path=f"{provider}/servers",
                handler=self.servers,
                summary="A page of servers",
                answer=list[Server],
                params=(PAGE, page_size, *SHAPING),
            ),
            Endpoint(
                path=f"{provider}/servers/paginated",
                handler=self.servers_paginated,
                summary="A page with totals",
                answer=Page,
                params=(PAGE, page_size, *SHAPING),
            ),
            Endpoint(
                path=f"{provider}/servers/top",
                handler=self.servers_top,
                summary="Operational servers (load above 3) ranked by latency, then load",
                answer=list[Server],
                params=(TOP_LIMIT, COUNTRY, *SHAPING),
            ),
            Endpoint(
                path=f"{provider}/servers/latency",
                handler=self.servers_latency,
                summary="Measure latency (costs LATENCY_WEIGHT requests); "
                "fastest first, unreachable last",
                answer=LatencyRun,
                params=(COUNTRY, latency_limit, method, FIELDS),
                catalog=False,
                weight=settings.latency_weight,
            ),
            Endpoint(
                path=f"{provider}/servers/fastest",
                handler=self.servers_fastest,
                summary="The fastest operational servers that answered "
                "(costs LATENCY_WEIGHT requests)",
                answer=list[Server],
                params=(TOP_LIMIT, COUNTRY, measure_count, method, *SHAPING),
                catalog=False,
                weight=settings.latency_weight,
            ),
            Endpoint(
                path=f"{provider}/servers/{{country_code}}",
                handler=self.servers_by_country,
                summary="The servers of one country",
                answer=list[Server],
                params=(attrs.evolve(COUNTRY, where="path"), *SHAPING),
            ),
            Endpoint(
                path=f"{provider}/servers/{{identifier}}/wireguard",
                handler=self.wireguard,
                summary="The peer for a WireGuard client, in its format "
                "(wg-quick's [Peer]; JSON with Accept: application/json)",
                answer=Peer,
                media=configs.shapes(),
                params=(identifier, FAMILY, PORT, VIA, FORMAT),
                catalog=False,
            ),
            Endpoint(
                path=f"{provider}/servers/{{identifier}}/reports",
                handler=self.report,
                summary="Report a server you could not connect to (or could again): "
                "set aside for you for REPORT_QUARANTINE seconds, or lifted",
                answer=ReportAnswer,
                params=(identifier,),
                catalog=False,
                method="POST",
                body=Report,
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
                summary="What changed since a version of the list (the last change without)",
                answer=Changes,
                params=(SINCE,),
            ),
            Endpoint(
                path=f"{API}/providers",
                handler=self.providers,
                summary="The providers, the freshness of their lists and their versions",
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

    def unanswered(self, name: str, f: Filter, value: Any) -> list[Detail]:
        """A 422 detail for each part of `value` (each word of a list) that provider `name`'s
        list cannot answer, naming the providers that can."""
        provider = self.catalog.providers.get(name)
        parts = [frozenset({w}) for w in sorted(value)] if isinstance(value, frozenset) else [value]
        problems = []
        for part in parts:
            missing = f.missing(provider, part)
            if missing:
                able = [p.name for p in self.catalog.providers.values() if not f.missing(p, part)]
                asked = ",".join(sorted(part)) if isinstance(part, frozenset) else part
                message = (
                    f"{name} does not say {', '.join(missing)} ({f.param.name}={asked}); "
                    f"the providers that do: {', '.join(able) or 'none'}"
                )
                problems.append(Detail(["query", f.param.name], message, "unsupported_filter"))
        return problems

    def active(self, request: Request, filters: dict[str, Any]) -> list[tuple[Filter, Any]]:
        """The filters asked for; a 422 for one the provider's list cannot answer."""
        chosen = [(f, value) for f in FILTERS if (value := filters[f.param.name]) is not None]
        name = request.path_params["provider"]
        problems = [detail for f, value in chosen for detail in self.unanswered(name, f, value)]
        if problems:
            raise RequestValidationError(problems)
        return chosen

    def scope(self, request: Request) -> str:
        """Whose reports apply: the API key's digest, or the instance with keys off."""
        if not self.settings.enable_api_key_auth:
            return INSTANCE
        presented = request.headers.get("x-api-key", "").encode()
        return hashlib.sha256(presented).hexdigest()[:32]

    async def aside(self, request: Request) -> Aside:
        """The servers the client's reports set aside (none to look up while no client has
        set any aside)."""
        if self.quarantine.unused():
            return {}
        return await self.quarantine.aside(self.scope(request), self.catalog.clock())

    async def shape(self, request: Request, asked: dict[str, Any]) -> Shape:
        seed = asked.pop(SEED.name)
        shown = asked.pop(SHOWN.name)
        fields = asked.pop(FIELDS.name)
        chosen = self.active(request, asked)
        aside = await self.aside(request)
        return Shape(
            chosen=chosen,
            seed=seed,
            aside=aside,
            shown=shown,
            near=asked[NEAR.name],
            fields=fields,
        )

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
        plain = entity_tag(data.version, rendered.digest, compressed=False)
        etag = entity_tag(data.version, rendered.digest, compressed=True) if use_gzip else plain
        status = b"stale" if self.catalog.is_stale(data) else b"fresh"
        headers = [
            (b"etag", etag.encode()),
            (b"x-list-version", data.version.encode()),
            (b"age", b"%d" % self.catalog.age(data)),
            (b"x-data-status", status),
            (b"cache-control", b"private, no-cache"),
            (b"vary", b"Accept-Encoding"),
        ]
        asked = request.headers.get("if-none-match")
        if asked is not None and _matches(asked, (plain, etag)):
            response = Response(status_code=304)
        elif use_gzip:
            response = Response(rendered.gzipped, media_type=JSON)
            headers.append((b"content-encoding", b"gzip"))
        else:
            response = Response(rendered.body, media_type=JSON)
        response.raw_headers += headers
        return response

    async def health(self, request: Request) -> Response:
        providers = self.catalog.health()
        # 200 while anything can be served: a load balancer must not pull a sidecar that serves.
        down = all(p.servers == 0 and p.last_failure for p in providers.values())
        counts = self.quarantine.counts()
        body = Health(
            status="unhealthy" if down else "healthy",
            version=self.settings.app_version,
            providers=providers,
            reports=Reports(scopes=counts.scopes, servers=counts.servers),
        )
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
                filters=[f.param.name for f in FILTERS if f.offered(provider)],
                features=[w for w, f in FEATURES.items() if f.field in provider.reports],
                wireguard_port=provider.wireguard_port,
                wireguard_ports=[[first, last] for first, last in provider.wireguard_ports],
                version=data.version if data else None,
            )
            index.append(summary)
        return uncached_json(request, index)

    async def servers(self, request: Request, page: int, page_size: int, **asked: Any) -> Response:
        shape = await self.shape(request, asked)
        data = await self.dataset(request)
        # The answer is a slice of at most the whole list (a filtered list is shorter): the
        # pages that end past it share one rendered entry, however large a page_size asks.
        total = len(data.servers)
        start = min((page - 1) * page_size, total)
        stop = min(start + page_size, total)
        rendered = render(
            data,
            ("servers", start, stop, shape.key()),
            lambda: shape.written(shape.order(shape.keep(data.servers))[start:stop]),
        )
        return self.respond(request, data, rendered)

    async def servers_paginated(
        self, request: Request, page: int, page_size: int, **asked: Any
    ) -> Response:
        shape = await self.shape(request, asked)
        data = await self.dataset(request)
        result = models.paginate(shape.order(shape.keep(data.servers)), page, page_size)
        if page > max(result.total_pages, 1):
            raise HTTPException(404, f"Page {page} is past the last page ({result.total_pages}).")
        key = ("paginated", page, page_size, shape.key())
        written = msgspec.structs.replace(result, data=shape.written(result.data))
        return self.respond(request, data, render(data, key, lambda: written))

    async def servers_by_country(
        self, request: Request, country_code: str, **asked: Any
    ) -> Response:
        shape = await self.shape(request, asked)
        data = await self.dataset(request)
        key = ("country", country_code, shape.key())
        rendered = render(
            data, key, lambda: shape.written(shape.order(shape.keep(data.pool(country_code))))
        )
        if rendered.empty:
            match = " match." if shape.chosen else "."
            raise HTTPException(404, f"No servers in country {country_code}{match}")
        return self.respond(request, data, rendered)

    async def servers_top(
        self, request: Request, limit: int, country_code: str | None, **asked: Any
    ) -> Response:
        shape = await self.shape(request, asked)
        data = await self.dataset(request)

        def build() -> Sequence[Server] | list[dict[str, Any]]:
            pool = operational(shape.keep(data.pool(country_code)))
            # near or a replica's seed, else by latency (then load), as every replica ranks
            ranked = shape.order(pool, lambda pool: with_latency(pool, self.latencies.known()))
            return shape.written(ranked[:limit])

        # a new measurement may change the ranking
        measured = self.latencies.measured.generation
        key = ("top", country_code, limit, measured, shape.key())
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
        self,
        request: Request,
        country_code: str | None,
        limit: int,
        method: str,
        fields: frozenset[str] | None,
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
        if fields is not None:
            run = msgspec.structs.replace(run, servers=only(measured, fields))
        return uncached_json(request, run)

    async def servers_fastest(
        self,
        request: Request,
        limit: int,
        country_code: str | None,
        measure_count: int,
        method: str,
        **asked: Any,
    ) -> Response:
        method = self.methods[0] if method == "auto" else method
        shape = await self.shape(request, asked)
        data = await self.dataset(request)
        # least loaded first, or the nearest with `near`: those are measured
        candidates = operational(shape.keep(data.pool(country_code)))
        if shape.near is not None:
            candidates = nearest(candidates, shape.near, shape.seed)
        if not candidates:
            raise HTTPException(404, "No operational servers match.")
        to_measure = candidates[:measure_count] if measure_count else candidates
        measured = await self._measured(data, to_measure, method)
        answered = [s for s in measured if s.latency is not None]  # fastest first
        if not answered:
            raise HTTPException(404, "No server answered the latency probe.")
        if shape.seed:
            answered = spread(answered, shape.seed)
        return uncached_json(request, shape.written(answered[:limit]))

    async def wireguard(
        self,
        request: Request,
        identifier: str,
        family: str | None,
        port: int | None,
        via: str | None,
        format: str | None,  # the parameter's name in the API, though a builtin's too
    ) -> Response:
        """The peer a client adds to its own interface, in the client's format. draco never
        asks for, takes or returns a private key: a placeholder stands for it."""
        named = self.catalog.providers.get(request.path_params["provider"])
        if named is not None:  # refused before any lookup, as its document bounds them
            _refuse(self.peer_problems(named, family=family, port=port, via=via))
        elif port is not None or via is not None:
            where = ["query", PORT.name if port is not None else VIA.name]
            message = "A port or a chain is asked of one provider: /api/{provider}/servers/..."
            raise _invalid(where, message, "one_provider")
        data = await self.dataset(request)
        aside = await self.aside(request)
        server = _unset_aside(data, aside, identifier)
        provider = self.catalog.providers[server.provider]
        if named is None:  # `all`: what the server's own provider can do
            _refuse(self.peer_problems(provider, family=family, port=None, via=None))
        entry = None
        if via is not None:
            entry = _unset_aside(data, aside, via)
            if entry.identifier == server.identifier:
                raise _invalid(
                    ["query", "via"], "A chain enters and leaves at two servers.", "same"
                )
        try:
            peering = configs.peering(server, provider, family=family, port=port, via=entry)
        except configs.UnwritableError as exc:
            raise HTTPException(404, f"No config for {server.identifier}: {exc}.") from None
        usual = "json" if JSON in request.headers.get("accept", "") else "wg-quick"
        written = configs.FORMATS[format or usual]
        return Response(written.write(peering), 200, {"Cache-Control": "no-store"}, written.media)

    def peer_problems(
        self, provider: Provider, *, family: str | None, port: int | None, via: str | None
    ) -> list[Detail]:
        """What the server's provider cannot do of what the peer asks: each a 422 detail."""
        problems = []
        if family is not None:
            problems += self.unanswered(provider.name, FILTER_OF[FAMILY.name], family)
        if port is not None and not provider.listens_on(port):
            ports = spelled(provider.wireguard_ports)
            message = f"{provider.name}'s servers listen on {ports}; not {port}"
            problems.append(Detail(["query", PORT.name], message, "port"))
        if via is not None and MULTIHOP not in provider.reports:
            able = [p.name for p in self.catalog.providers.values() if MULTIHOP in p.reports]
            message = (
                f"{provider.name} publishes no multi-hop; the providers that do: {', '.join(able)}"
            )
            problems.append(Detail(["query", VIA.name], message, "unsupported_filter"))
        if via is not None and port is not None:
            message = "A chain's port is its exit's multi-hop port: ask for port or via, not both"
            problems.append(Detail(["query", PORT.name], message, "port"))
        return problems

    async def report(self, request: Request, identifier: str) -> Response:
        """A client's word on a server: `unreachable` or `handshake_failed` set it aside
        for the client, `ok` lifts that."""
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != JSON:
            raise HTTPException(415, "A report is JSON: send Content-Type: application/json.")
        body = await _bounded(request, MOST_BODY)
        if body is None:
            raise _invalid(["body"], f"A report is at most {MOST_BODY} bytes.", "too_long")
        try:
            report = msgspec.json.decode(body, type=Report)
        except msgspec.DecodeError as exc:
            raise _invalid(["body"], str(exc), "invalid_report") from None
        name = request.path_params["provider"]
        if name not in self.catalog.providers:
            raise HTTPException(404, "Reports are kept per provider.")
        data = await self.catalog.get(name)
        server = data.by_identifier.get(identifier.lower())
        if server is None:
            raise HTTPException(404, f"No server {identifier.lower()}.")
        where = (server.provider, server.identifier)
        scope = self.scope(request)
        until = await self.quarantine.report(scope, where, report.outcome, self.catalog.clock())
        answer = ReportAnswer(name, server.identifier, report.outcome, until)
        return uncached_json(request, answer)

    async def changes(self, request: Request, since: str | None) -> Response:
        name = request.path_params["provider"]
        if name not in self.catalog.providers:
            message = "Changes are kept per provider." if name == ALL else "Unknown provider."
            raise HTTPException(404, message)
        status = self.catalog.status[name]
        data = status.data
        history = status.history
        if data is None or history.latest is None:
            raise HTTPException(404, "No list has been accepted so far.")
        if since is None:  # the last change
            if history.previous is None:
                raise HTTPException(404, "Fewer than two versions have been accepted so far.")
            since = history.previous.version
        found = history.lookup(since)
        if isinstance(found, TooOld):
            oldest = found.oldest
            message = f"Version {since} is older than the history kept; the oldest: {oldest}."
            raise HTTPException(410, message)
        if not isinstance(found, Kept):
            raise _invalid(["query", "since"], f"{since} is not a version of this list.", "unknown")
        # Composed and encoded once per (since, current) pair, like a page.
        key = ("changes", since)
        rendered = render(data, key, lambda: _changes(name, history.since(found)))
        return self.respond(request, data, rendered)


# What changed of a server both versions hold: (its key, its address).
CHANGED: dict[tuple[bool, bool], ChangeKind] = {
    (True, False): "rekeyed",
    (False, True): "readdressed",
    (True, True): "rekeyed and readdressed",
}


def _kind(old: Entry | None, new: Entry | None) -> ChangeKind:
    if old is None:
        return "added"
    if new is None:
        return "removed"
    return CHANGED[(old.key != new.key, old.addresses() != new.addresses())]


def _changes(provider: str, composed: Composed) -> Changes:
    servers = []
    for change in composed.changes:
        old, new = change.old, change.new
        servers.append(
            ServerChange(
                identifier=change.identity,
                change=_kind(old, new),
                old_key=old.key if old else None,
                new_key=new.key if new else None,
                old_address=old.address if old else None,
                new_address=new.address if new else None,
                old_ipv6=old.ipv6 if old else None,
                new_ipv6=new.ipv6 if new else None,
            )
        )
    return Changes(
        provider=provider,
        since=composed.since,
        current=composed.current,
        since_at=composed.since_at,
        current_at=composed.current_at,
        servers=servers,
    )


def _unset_aside(data: Dataset, aside: Aside, identifier: str) -> Server:
    """The server named so in `data`, unless the client's reports set it aside: a 404."""
    wanted = identifier.lower()
    server = data.by_identifier.get(wanted)
    if server is None:
        raise HTTPException(404, f"No server {wanted}.")
    if (server.provider, server.identifier) in aside:
        raise HTTPException(404, f"{wanted} is set aside by your reports.")
    return server


def _refuse(problems: list[Detail]) -> None:
    if problems:
        raise RequestValidationError(problems)


def _invalid(where: list[str], message: str, kind: str) -> RequestValidationError:
    return RequestValidationError([Detail(where, message, kind)])


async def _bounded(request: Request, most: int) -> bytes | None:
    """The request body, or None past `most` bytes (read no further)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > most:
            return None
    return bytes(body)
