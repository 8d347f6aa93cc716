"""Every read endpoint, its parameter bounds and its errors, over HTTP/1.1 and h2c
against a real `python -m draco serve` and a real fake upstream."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import msgspec
import pytest
from conftest import PROVIDERS, demo_payload

from draco.providers import REGISTRY

ORIGINAL = ["provider", "country", "country_code", "identifier", "public_key", "load", "latency"]
FIELDS = [
    *ORIGINAL,
    "city",
    "ipv4",
    "include_in_country",
    "p2p",
    "owned",
    "free",
    "ipv6",
    "daita",
    "quic",
    "virtual",
    "multihop_port",
    "latitude",
    "longitude",
    "distance",
    "quarantined_until",
]  # the original schema, then draco's additions
EVERY = (*PROVIDERS, "all")  # each endpoint is tested for every provider and for their union


def expected(provider: str):
    if provider == "all":
        return [s for name in PROVIDERS for s in expected(name)]
    servers, _ = REGISTRY[provider].parse(demo_payload(provider))
    return servers


def test_speaks_the_protocol_asked_for(service, client):
    response = client.get(service.url("/health"))
    assert response.http_version == client.expected_version


def test_health_reports_status_and_version(service, client):
    body = client.get(service.url("/health")).json()
    assert body["status"] == "healthy"
    assert body["version"] == "0.1.0"
    assert set(body["providers"]) >= set(PROVIDERS)


@pytest.mark.parametrize("provider", EVERY)
def test_servers_lists_the_first_page_in_the_original_schema(service, client, provider):
    response = client.get(service.url(f"/api/{provider}/servers"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    servers = response.json()
    assert [list(s) for s in servers] == [FIELDS] * len(servers)
    assert [s["identifier"] for s in servers] == [s.identifier for s in expected(provider)][:100]


def test_each_provider_has_its_default_order(service, client):
    def identifiers(provider):
        return [
            s["identifier"]
            for s in client.get(
                service.url(f"/api/{provider}/servers"), params={"page_size": 1000}
            ).json()
        ]

    loads = [s["load"] for s in client.get(service.url("/api/nordvpn/servers")).json()]
    assert loads == sorted(loads)  # NordVPN: least loaded first
    assert identifiers("surfshark") == [
        c["connectionName"] for c in json.loads(demo_payload("surfshark"))
    ]
    relays = json.loads(demo_payload("mullvad"))["wireguard"]["relays"]
    by_weight = sorted((r for r in relays if r["active"]), key=lambda r: -r["weight"])
    assert identifiers("mullvad") == [r["hostname"] for r in by_weight]  # Mullvad: heaviest first
    hosts = [
        h["hostname"] for loc in json.loads(demo_payload("ivpn"))["wireguard"] for h in loc["hosts"]
    ]
    assert identifiers("ivpn") == hosts  # IVPN: upstream order
    assert identifiers("all") == [
        s.identifier for s in expected("all")
    ]  # the union, provider by provider


@pytest.mark.parametrize("provider", EVERY)
def test_page_and_page_size_select_a_slice(service, client, provider):
    everything = [s.identifier for s in expected(provider)]
    got = client.get(
        service.url(f"/api/{provider}/servers"), params={"page": 2, "page_size": 7}
    ).json()
    assert [s["identifier"] for s in got] == everything[7:14]
    past = client.get(
        service.url(f"/api/{provider}/servers"), params={"page": 999, "page_size": 10}
    )
    assert past.status_code == 200
    assert past.json() == []


@pytest.mark.parametrize(
    ("params", "loc", "kind"),
    [
        ({"page": "0"}, "page", "greater_than_equal"),
        ({"page": "x"}, "page", "int_parsing"),
        ({"page": "1.5"}, "page", "int_parsing"),
        ({"page": "1.0"}, "page", "int_parsing"),
        ({"page_size": "1e2"}, "page_size", "int_parsing"),
        ({"p2p": "1"}, "p2p", "bool_parsing"),
        ({"p2p": "True"}, "p2p", "bool_parsing"),
        ({"page_size": "0"}, "page_size", "greater_than_equal"),
        ({"page_size": "1001"}, "page_size", "less_than_equal"),
        ({"page_size": "99999999999999999999"}, "page_size", "less_than_equal"),
    ],
)
def test_bad_parameters_are_422_with_details(service, client, params, loc, kind):
    response = client.get(service.url("/api/nordvpn/servers"), params=params)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "Unprocessable Entity"
    assert body["details"] == [
        {"loc": ["query", loc], "msg": body["details"][0]["msg"], "type": kind}
    ]


def test_every_bad_parameter_is_reported_at_once(service, client):
    asked = {"page": "-1", "page_size": "abc", "private_key": "x"}
    response = client.get(service.url("/api/nordvpn/servers"), params=asked)
    locs = [d["loc"] for d in response.json()["details"]]
    assert locs == [
        ["query", "private_key"],
        ["query", "page"],
        ["query", "page_size"],
    ]  # unknown names first


def test_page_size_bounds_are_inclusive(service, client):
    assert (
        client.get(service.url("/api/nordvpn/servers"), params={"page_size": 1}).status_code == 200
    )
    assert (
        client.get(service.url("/api/nordvpn/servers"), params={"page_size": 1000}).status_code
        == 200
    )


@pytest.mark.parametrize("provider", EVERY)
def test_paginated_has_the_envelope(service, client, provider):
    total = len(expected(provider))
    body = client.get(
        service.url(f"/api/{provider}/servers/paginated"), params={"page_size": 10}
    ).json()
    assert list(body) == ["total", "page", "page_size", "total_pages", "data"]
    assert (body["total"], body["page"], body["page_size"]) == (total, 1, 10)
    assert body["total_pages"] == -(-total // 10)
    assert len(body["data"]) == 10


def test_paginated_past_the_last_page_is_404(service, client):
    last = client.get(
        service.url("/api/surfshark/servers/paginated"), params={"page_size": 10}
    ).json()["total_pages"]
    assert (
        client.get(
            service.url("/api/surfshark/servers/paginated"), params={"page": last, "page_size": 10}
        ).status_code
        == 200
    )
    past = client.get(
        service.url("/api/surfshark/servers/paginated"), params={"page": last + 1, "page_size": 10}
    )
    assert past.status_code == 404
    assert past.json()["error"] == "Not Found"
    none = client.get(
        service.url("/api/surfshark/servers/paginated"), params={"identifier": "nowhere.example"}
    )
    assert none.status_code == 200
    assert none.json()["total_pages"] == 0


@pytest.mark.parametrize("provider", EVERY)
def test_country_lists_only_that_country(service, client, provider):
    want = [
        s.identifier for s in expected(provider) if s.country_code == "DE" and s.include_in_country
    ]
    got = client.get(service.url(f"/api/{provider}/servers/DE")).json()
    assert [s["identifier"] for s in got] == want
    assert want


@pytest.mark.parametrize("code", ["de", "DEU", "D1", "%C3%84%C3%84"])
def test_country_code_must_be_two_upper_case_letters(service, client, code):
    response = client.get(service.url(f"/api/nordvpn/servers/{code}"))
    assert response.status_code == 422
    assert response.json()["details"][0]["loc"] == ["path", "country_code"]


def test_country_without_servers_is_404(service, client):
    response = client.get(service.url("/api/nordvpn/servers/ZZ"))
    assert response.status_code == 404
    assert response.json()["message"] == "No servers in country ZZ."


@pytest.mark.parametrize("provider", EVERY)
def test_top_leaves_out_servers_with_load_3_or_less_and_ranks_by_load(service, client, provider):
    top = client.get(service.url(f"/api/{provider}/servers/top"), params={"limit": 50}).json()
    operational = [s for s in expected(provider) if s.load is None or s.load > 3]
    operational.sort(
        key=lambda s: (s.load is None, s.load or 0)
    )  # no latency measured: by load, unknown last
    assert [s["identifier"] for s in top] == [s.identifier for s in operational[:50]]
    assert all(s["load"] is None or s["load"] > 3 for s in top)


def test_top_filters_by_country_and_limits(service, client):
    top = client.get(
        service.url("/api/nordvpn/servers/top"), params={"limit": 2, "country_code": "FR"}
    ).json()
    assert len(top) == 2
    assert {s["country_code"] for s in top} == {"FR"}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 51}, {"country_code": "fr"}])
def test_top_parameters_are_checked(service, client, params):
    assert client.get(service.url("/api/nordvpn/servers/top"), params=params).status_code == 422


def test_top_with_nothing_operational_is_404(service, client):
    assert (
        client.get(
            service.url("/api/nordvpn/servers/top"), params={"country_code": "ZZ"}
        ).status_code
        == 404
    )


@pytest.mark.parametrize("provider", EVERY)
def test_countries_are_sorted_by_code_with_display(service, client, provider):
    countries = client.get(service.url(f"/api/{provider}/countries")).json()
    assert [c["code"] for c in countries] == sorted({s.country_code for s in expected(provider)})
    assert all(
        c["display"] == f"{c['code']} - {c['name']}" and list(c) == ["code", "name", "display"]
        for c in countries
    )


def test_the_provider_index_tells_what_each_provider_offers(service, client):
    client.get(service.url("/api/ivpn/servers"))
    index = {p["name"]: p for p in client.get(service.url("/api/providers")).json()}
    assert list(index) == list(PROVIDERS)
    ivpn = index["ivpn"]
    assert (ivpn["servers"], ivpn["countries"]) == (
        len(expected("ivpn")),
        len({s.country_code for s in expected("ivpn")}),
    )
    assert ivpn["status"] == "fresh"
    assert 0 <= ivpn["data_age"] < 60
    assert index["mullvad"]["reports_load"] is False
    assert index["nordvpn"]["reports_load"] is True
    assert (index["surfshark"]["reports_status"], index["nordvpn"]["ordering"]) == (False, "load")


def test_the_index_reports_none_for_a_list_never_fetched(start_draco):
    draco = start_draco({})  # every upstream is a closed port: nothing can be fetched
    index = httpx.get(draco.url("/api/providers")).json()
    assert {p["status"] for p in index} == {"none"}
    assert {p["data_age"] for p in index} == {None}


def test_unknown_provider_is_404_in_the_envelope(service, client):
    response = client.get(service.url("/api/expressvpn/servers"))
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found", "message": "Unknown provider."}


def test_unknown_path_is_404_in_the_envelope(service, client):
    response = client.get(service.url("/nothing/here"))
    assert response.status_code == 404
    assert response.json() == {
        "error": "Not Found",
        "message": "The requested resource was not found.",
    }


@pytest.mark.parametrize(
    "path", ["/health", "/api/nordvpn/servers", "/api/nordvpn/servers/DE", "/api/nordvpn/countries"]
)
def test_head_answers_like_get_without_a_body(service, client, path):
    # /health reports ages in whole seconds, so its length may change between two
    # requests: HEAD must match the GET before it or the one after it.
    before, head, after = (client.request(m, service.url(path)) for m in ("GET", "HEAD", "GET"))
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] in {
        before.headers["content-length"],
        after.headers["content-length"],
    }


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(service, client, method):
    response = client.request(method, service.url("/api/nordvpn/servers"))
    assert response.status_code == 405
    assert response.json()["error"] == "Method Not Allowed"
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_large_responses_are_gzipped_when_asked(service, client):
    plain = client.get(service.url("/api/nordvpn/servers"), headers={"Accept-Encoding": "identity"})
    zipped = client.get(service.url("/api/nordvpn/servers"), headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(plain.content)
    assert zipped.json() == plain.json()
    assert "Accept-Encoding" in zipped.headers["vary"]


def test_answers_built_per_request_are_compressed_by_the_same_rule(service, client):
    plain = client.get(service.url("/api/providers"), headers={"Accept-Encoding": "identity"})
    zipped = client.get(service.url("/api/providers"), headers={"Accept-Encoding": "gzip"})
    assert len(plain.content) >= 500
    assert zipped.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["vary"]
    ageless = [
        [{**p, "data_age": None} for p in r.json()] for r in (plain, zipped)
    ]  # a second may pass between
    assert ageless[0] == ageless[1]


def test_small_responses_are_not_compressed(service, client):
    response = client.get(
        service.url("/api/nordvpn/servers"),
        params={"page_size": 1},
        headers={"Accept-Encoding": "gzip"},
    )
    assert "content-encoding" not in response.headers


def test_no_server_header_on_any_response(service, client):
    for path in ("/health", "/api/nordvpn/servers", "/nope", "/api/nordvpn/servers?page=0"):
        assert "server" not in client.get(service.url(path)).headers


def test_catalog_answers_carry_an_etag_and_304_when_current(service, client):
    first = client.get(service.url("/api/nordvpn/servers"), headers={"Accept-Encoding": "identity"})
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert not etag.startswith("W/")
    assert (
        first.headers["cache-control"] == "private, no-cache"
    )  # kept by the client alone, and revalidated
    again = client.get(
        service.url("/api/nordvpn/servers"),
        headers={"If-None-Match": etag, "Accept-Encoding": "identity"},
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag


@pytest.mark.parametrize(
    ("presented", "status"),
    [
        ("W/{etag}", 304),
        ('"other", {etag}', 304),
        ("*", 304),
        ('"other"', 200),
        ('W/"other", "more"', 200),
    ],
)
def test_if_none_match_compares_weakly_and_takes_a_list_or_a_star(
    service, client, presented, status
):
    url, identity = service.url("/api/nordvpn/servers"), {"Accept-Encoding": "identity"}
    etag = client.get(url, headers=identity).headers["etag"]
    again = client.get(url, headers={**identity, "If-None-Match": presented.format(etag=etag)})
    assert again.status_code == status
    assert again.headers["etag"] == etag


def test_etag_differs_by_query_and_by_encoding(service, client):
    one = client.get(
        service.url("/api/nordvpn/servers"),
        params={"page_size": 10},
        headers={"Accept-Encoding": "identity"},
    )
    two = client.get(
        service.url("/api/nordvpn/servers"),
        params={"page_size": 11},
        headers={"Accept-Encoding": "identity"},
    )
    zipped = client.get(
        service.url("/api/nordvpn/servers"),
        params={"page_size": 10},
        headers={"Accept-Encoding": "gzip"},
    )
    assert len({one.headers["etag"], two.headers["etag"], zipped.headers["etag"]}) == 3


# --- answers bounded however they are asked -----------------------------------------------


def test_a_422_lists_the_first_20_problems_and_says_how_many_there_were(service):
    query = "&".join(base36(i) for i in range(3000))  # 3,000 names in a 12 KB query
    answer = httpx.get(service.url(f"/api/nordvpn/servers?{query}"))
    assert answer.status_code == 422
    body = answer.json()
    assert len(body["details"]) == 20
    assert "3000 problems, the first 20 listed" in body["message"]
    assert len(answer.content) < 2500


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "q" + (digits[n // 36 // 36] + digits[n // 36 % 36] + digits[n % 36]).lstrip("0")


def _app_with_a_list(**env: str):
    """The routes over a catalog holding the NordVPN demo list, in-process."""
    from starlette.applications import Starlette

    from draco.catalog.cache import Catalog
    from draco.catalog.reports import MemoryQuarantine
    from draco.probe.runs import Latencies
    from draco.settings import load
    from draco.web.errors import HANDLERS
    from draco.web.routes import Api

    settings = load(env)
    catalog = Catalog(settings, httpx.AsyncClient(), {"nordvpn": REGISTRY["nordvpn"]})
    servers = REGISTRY["nordvpn"].parse(demo_payload("nordvpn")).servers
    accept(catalog, make(servers, catalog.clock()))
    api = Api(settings, catalog, Latencies(settings), ["tcp"], MemoryQuarantine(600))
    routes = [endpoint.route() for endpoint in api.endpoints]
    return Starlette(routes=routes, exception_handlers=HANDLERS), catalog


def _get_all(app, paths: list[str]) -> list[httpx.Response]:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(go())


def test_pages_past_the_end_of_the_list_share_one_rendered_answer():
    """A client asking for ever larger pages cannot fill the render cache: every page that
    ends past the list is the same slice, kept once."""
    app, catalog = _app_with_a_list()
    total = len(catalog.status["nordvpn"].data.servers)
    sizes = [total + n for n in range(0, 500, 7)]
    answers = _get_all(app, [f"/api/nordvpn/servers?page_size={size}" for size in sizes])
    assert {len(a.json()) for a in answers} == {total}
    assert len({a.headers["etag"] for a in answers}) == 1
    assert len(catalog.status["nordvpn"].data.rendered) == 1


def accept(catalog, data) -> None:
    """`data` through the catalog's one door, as an upstream's list."""
    assert asyncio.run(catalog._consider("nordvpn", data, "upstream")) == "ok"


def test_changes_are_encoded_once_per_list_and_revalidated_with_a_304():
    app, catalog = _app_with_a_list(CACHE_MAX_CHURN="1")  # a swap of every key: let it in
    status = catalog.status["nordvpn"]
    old = status.data
    swapped = [msgspec.structs.replace(s, public_key=key_of(i)) for i, s in enumerate(old.servers)]
    accept(catalog, make(swapped, old.fetched_at + 1))
    first, again = _get_all(app, ["/api/nordvpn/changes"] * 2)
    assert first.status_code == 200
    changed = first.json()["servers"]
    assert [c["change"] for c in changed] == ["rekeyed"] * len(swapped)
    assert again.content == first.content
    assert list(status.data.rendered) == [("changes", old.version)]
    (not_modified,) = _get_all_with(app, "/api/nordvpn/changes", first.headers["etag"])
    assert not_modified.status_code == 304


def key_of(n: int) -> str:
    return base64.b64encode(n.to_bytes(32, "big")).decode()


def make(servers, fetched_at: float):
    from draco.catalog.dataset import make_dataset

    return make_dataset("nordvpn", servers, fetched_at)


def _get_all_with(app, path: str, etag: str) -> list[httpx.Response]:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
            return [await client.get(path, headers={"If-None-Match": etag})]

    return asyncio.run(go())
