"""Each middleware alone, around a bare inner app, with no other draco layer present."""

from __future__ import annotations

import asyncio
import gzip
import logging

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from draco.catalog.dataset import make_dataset, render
from draco.models import GZIP_MINIMUM, gzipped
from draco.security.address import TrustedHosts
from draco.security.keys import KeyRing
from draco.security.limiter import Limiter, MemoryStore
from draco.web.metrics import MetricsMiddleware
from draco.web.middleware import (
    ApiKeyMiddleware,
    ClientAddressMiddleware,
    CORSMiddleware,
    RateLimitMiddleware,
    RequestGuardMiddleware,
    SecurityHeadersMiddleware,
    route_path,
)

ORIGIN = "https://app.example.com"
KEY = "k" * 40
KEY_FIELD, PREFLIGHT = "X-API-Key", "Access-Control-Request-Method"


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    """The inner app: 200, and the client it was given."""
    body = str(scope.get("client")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def get(
    app,
    path: str = "/api/x",
    *,
    peer: str = "203.0.113.9",
    method: str = "GET",
    root: str = "",
    **headers: str,
):
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 4000), root_path=root)
        async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(go())


def test_security_headers_alone_harden_every_response():
    response = get(SecurityHeadersMiddleware(bare))
    assert response.headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" in response.headers
    assert response.headers["content-type"] == "text/plain"


def test_security_headers_alone_let_an_error_after_the_start_end_the_response():
    """Once the status has gone out no 500 can follow it: the error goes on to the
    server, which cuts the response short."""

    async def breaks_midway(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("midway")

    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    with pytest.raises(RuntimeError, match="midway"):
        asyncio.run(
            SecurityHeadersMiddleware(breaks_midway)(
                {"type": "http", "method": "GET", "path": "/"}, None, send
            )
        )
    assert [m["status"] for m in messages] == [200]


def sent(
    app,
    headers: list[tuple[bytes, bytes]],
    http_version: str = "1.1",
    query: bytes = b"",
    client=("203.0.113.9", 4000),
) -> tuple[int, dict[bytes, bytes], bytes]:
    """(status, headers, body) of one request given as a raw ASGI scope: a client library
    would not send the repeated or conflicting headers these tests need."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "http_version": http_version,
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": query,
        "headers": headers,
        "client": client,
    }
    asyncio.run(app(scope, receive, send))
    return (
        messages[0]["status"],
        dict(messages[0]["headers"]),
        b"".join(m.get("body", b"") for m in messages[1:]),
    )


def test_request_guard_alone_refuses_ambiguous_lengths_and_oversized_heads():
    app = RequestGuardMiddleware(bare, max_head=1024)
    both = sent(app, [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")])
    twice = sent(app, [(b"content-length", b"3"), (b"content-length", b"4")])
    over_h2 = sent(app, [(b"x-filler", b"x" * 1024)], "2")
    assert both[0] == twice[0] == 400
    assert both[1][b"connection"] == b"close"
    assert b'"error":"Bad Request"' in both[2]
    assert over_h2[0] == 431
    assert b"connection" not in over_h2[1]
    assert sent(app, [(b"content-length", b"3"), (b"x-filler", b"x" * 900)])[0] == 200


def test_request_guard_judges_every_header_whatever_its_place():
    app = RequestGuardMiddleware(bare, max_head=1024)
    late = sent(
        app, [(b"transfer-encoding", b"chunked"), (b"content-length", b"3"), (b"accept", b"*/*")]
    )
    many = sent(
        app, [(b"x-%d" % i, b"y" * 20) for i in range(60)]
    )  # 60 small fields, 1,620 bytes in all
    old = sent(app, [(b"content-length", b"3"), (b"content-length", b"3")], "1.0")
    assert late[0] == 400
    assert many[0] == 431
    assert old[0] == 400
    assert old[1][b"connection"] == b"close"


def test_request_guard_counts_the_head_as_it_arrives():
    """Request line and fields: method, path and query, and each field's name, value, ": " and
    CRLF."""
    app = RequestGuardMiddleware(bare, max_head=100)

    def status(filler: int) -> int:
        return sent(app, [(b"x-filler", b"x" * filler)], query=b"q=1")[0]

    assert status(100 - len(b"GET/q=1") - len(b"x-filler") - 4) == 200
    assert status(100 - len(b"GET/q=1") - len(b"x-filler") - 3) == 431


def test_metrics_alone_count_by_route_template_never_by_what_the_client_chose():
    registry = CollectorRegistry()
    requests = Counter("draco_requests", "", ["route", "method", "status"], registry=registry)

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("inner")

    routes = [Route("/api/{provider}/servers", bare)]
    get(MetricsMiddleware(bare, requests=requests, routes=routes), "/api/nordvpn/servers")
    get(MetricsMiddleware(bare, requests=requests, routes=routes), "/elsewhere", method="BREW")
    with pytest.raises(RuntimeError):
        get(MetricsMiddleware(failing, requests=requests, routes=routes), "/api/nordvpn/servers")

    def count(route: str, method: str, status: str) -> float | None:
        return registry.get_sample_value(
            "draco_requests_total", {"route": route, "method": method, "status": status}
        )

    assert count("/api/{provider}/servers", "GET", "200") == 1
    assert count("unmatched", "other", "200") == 1
    assert (
        count("/api/{provider}/servers", "GET", "500") == 1
    )  # an exception counts as the 500 it becomes


def test_client_address_alone_puts_the_rightmost_untrusted_entry_in_the_scope():
    app = ClientAddressMiddleware(bare, trusted=TrustedHosts(["127.0.0.1"]))
    behind_proxy = get(app, peer="127.0.0.1", **{"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    direct = get(app, peer="203.0.113.9", **{"X-Forwarded-For": "198.51.100.1"})
    assert behind_proxy.text == "('203.0.113.7', 0)"
    assert direct.text == "('203.0.113.9', 0)"  # an untrusted peer's header is ignored
    # A unix socket has no peer: the local proxy in front is trusted, and alone it is no client.
    forwarded = sent(app, [(b"x-forwarded-for", b"198.51.100.1")], client=None)[2]
    assert (forwarded, sent(app, [], client=None)[2]) == (b"('198.51.100.1', 0)", b"None")


def test_cors_alone_allows_its_origins_and_answers_preflights():
    app = CORSMiddleware(bare, origins=[ORIGIN])
    simple = get(app, Origin=ORIGIN)
    other = get(app, Origin="https://evil.example")
    preflight = get(app, method="OPTIONS", Origin=ORIGIN, **{PREFLIGHT: "GET"})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert simple.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in other.headers
    assert other.status_code == 200
    assert preflight.status_code == 204
    assert preflight.headers["access-control-max-age"] == "86400"
    assert (
        get(app, Origin=ORIGIN, **{PREFLIGHT: "GET"}).text == "('203.0.113.9', 4000)"
    )  # only OPTIONS is one


class Clock:
    now = 1_000_000.25

    def __call__(self) -> float:
        return self.now


def test_rate_limit_alone_counts_and_times_its_headers_by_the_injected_clock():
    clock = Clock()
    app = RateLimitMiddleware(bare, limiter=Limiter(10, 60, MemoryStore(), clock))
    answers = [get(app) for _ in range(11)]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    first, refused = answers[0].headers, answers[-1].headers
    assert first["ratelimit-policy"] == '"default";q=10;w=60'
    assert first["ratelimit"] == '"default";r=9;t=60'
    assert first["x-ratelimit-limit"] == "10"
    assert first["x-ratelimit-remaining"] == "9"
    assert first["x-ratelimit-reset"] == str(
        1_000_001 + 60
    )  # the clock's time, rounded up, plus the reset
    assert refused["retry-after"] == "60"
    assert refused["ratelimit"] == '"default";r=0;t=60'
    local = sent(app, [], client=None)  # a unix socket without a proxy: one client, "local"
    assert local[0] == 200
    assert local[1][b"x-ratelimit-remaining"] == b"9"


PROBING = Route("/api/{provider}/servers/latency", bare)


def test_a_request_the_probing_route_matches_costs_its_weight_and_any_other_costs_one():
    limiter = Limiter(10, 60, MemoryStore(), Clock())
    app = RateLimitMiddleware(bare, limiter=limiter, costs=[(PROBING, 4)])
    probing = get(app, "/api/x/servers/latency", peer="192.0.2.1")
    slashed = get(app, "/api/x/servers/latency/", peer="192.0.2.2")  # the router's 404
    other = get(app, "/api/x/servers", peer="192.0.2.3")
    assert probing.headers["x-ratelimit-remaining"] == "6"
    assert slashed.headers["x-ratelimit-remaining"] == "9"
    assert other.headers["x-ratelimit-remaining"] == "9"


def test_api_key_alone_refuses_a_missing_or_wrong_key(caplog):
    app = ApiKeyMiddleware(bare, ring=KeyRing([KEY]), prefixes=("/api/",))
    with caplog.at_level(logging.WARNING, "draco.security"):
        statuses = [get(app).status_code, get(app, **{KEY_FIELD: "w" * 40}).status_code]
    empty = get(app, **{KEY_FIELD: ""})  # an empty field is a missing key
    assert empty.status_code == 401
    assert empty.headers["www-authenticate"] == 'APIKey header="X-API-Key"'
    assert statuses == [401, 403]
    assert get(app, **{KEY_FIELD: KEY}).status_code == 200
    assert get(app, "/health").status_code == 200  # outside its prefixes
    assert "from 203.0.113.9" in caplog.text  # whom it names is the scope's client


def test_behind_a_root_path_the_layers_judge_the_path_the_router_matches():
    """hypercorn's root_path: Starlette routes /draco/api/x as /api/x, so the key check
    and the rate limit must see /api/x too, or the prefix would route around them."""
    keyed = ApiKeyMiddleware(bare, ring=KeyRing([KEY]), prefixes=("/api/",))
    assert [get(keyed, path, root="/draco").status_code for path in ("/draco/api/x", "/api/x")] == [
        401,
        401,
    ]
    assert get(keyed, "/draco/api/x", root="/draco", **{KEY_FIELD: KEY}).status_code == 200
    limited = RateLimitMiddleware(
        bare, limiter=Limiter(10, 60, MemoryStore(), Clock()), costs=[(PROBING, 4)]
    )
    assert "x-ratelimit-limit" not in get(limited, "/draco/health", root="/draco").headers  # exempt
    weighed = get(limited, "/draco/api/x/servers/latency", root="/draco")
    assert weighed.headers["x-ratelimit-remaining"] == "6"


@pytest.mark.parametrize(("size", "compressed"), [(GZIP_MINIMUM - 1, False), (GZIP_MINIMUM, True)])
def test_one_gzip_decision_for_pages_rendered_once_and_for_answers_built_per_request(
    size, compressed
):
    assert (gzipped(b"x" * size) is not None) == compressed
    rendered = render(
        make_dataset("x", [], 0.0), "k", lambda: "y" * (size - 2)
    )  # a JSON string: 2 quotes
    assert len(rendered.body) == size
    assert (rendered.gzipped is not None) == compressed
    if compressed:
        assert gzip.decompress(rendered.gzipped) == rendered.body


def test_every_header_a_layer_writes_has_a_lower_case_name():
    """ASGI writes field names in lower case, and the layers rely on it: the security-headers
    layer drops `server` and repeated hardened fields by their lower-case names."""
    cors = CORSMiddleware(bare, origins=[ORIGIN], allow_credentials=True)
    keyed = ApiKeyMiddleware(bare, ring=KeyRing([KEY]), prefixes=("/api/",))
    limited = RateLimitMiddleware(bare, limiter=Limiter(10, 60, MemoryStore(), Clock()))
    answers = [
        get(SecurityHeadersMiddleware(bare)),
        get(cors, Origin=ORIGIN),
        get(keyed),
        get(keyed, **{KEY_FIELD: "w"}),
    ]
    answers += [
        get(cors, method="OPTIONS", Origin=ORIGIN, **{PREFLIGHT: method})
        for method in ("GET", "PUT")
    ]
    answers += [get(limited) for _ in range(11)]  # the last one refused
    guard = sent(
        RequestGuardMiddleware(bare), [(b"content-length", b"1"), (b"content-length", b"2")]
    )
    names = [name for answer in answers for name, _ in answer.headers.raw] + list(guard[1])
    assert len(names) > 40
    assert all(name == name.lower() for name in names)


@given(
    path=st.lists(st.sampled_from(["api", "draco", "x", "", "dr"]), max_size=4).map("/".join),
    root=st.lists(st.sampled_from(["draco", "dr", "api", ""]), max_size=2).map("/".join),
    lead=st.booleans(),
)
def test_the_layers_see_the_path_the_router_matches(path, root, lead):
    """draco's route_path against the one Starlette's router uses (a private function of
    Starlette's, imported here only to hold the two together)."""
    from starlette._utils import get_route_path

    root = ("/" + root) if lead and root else root
    scope = {"type": "http", "path": "/" + path, "root_path": root}
    assert route_path(scope) == get_route_path(scope)
