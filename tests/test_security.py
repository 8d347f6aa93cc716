"""The security layers, black-box, over a real hypercorn process."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from conftest import KEY, NOWHERE, OTHER_KEY, upstream_env

from draco.app import create_app
from draco.catalog.cache import Catalog
from draco.settings import load
from draco.web.middleware import SecurityHeadersMiddleware

ORIGIN = "https://app.example.com"
HARDENED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
    "permissions-policy": "geolocation=(), microphone=(), camera=()",
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "cross-origin-opener-policy": "same-origin",
    "x-permitted-cross-domain-policies": "none",
}


def from_address(address: str, **kwargs) -> httpx.Client:
    """A client whose connections come from `address` (any of 127.0.0.0/8 works on loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10, **kwargs)


@pytest.fixture
def secured(start_draco, upstreams):
    env = {
        **upstream_env(upstreams),
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS": f'["{KEY}", "{OTHER_KEY}"]',
        "RATE_LIMIT_REQUESTS": "10",
        "RATE_LIMIT_PERIOD": "10",
        "CORS_ORIGINS": f'["{ORIGIN}"]',
        "TRUSTED_HOSTS": '["127.0.0.1"]',
    }
    return start_draco(env)


# --- API keys --------------------------------------------------------------------


def test_a_missing_key_is_401_and_a_wrong_key_403_in_the_envelope(secured):
    with from_address("127.0.0.2") as client:
        missing = client.get(secured.url("/api/nordvpn/servers"))
        wrong = client.get(secured.url("/api/nordvpn/servers"), headers={"X-API-Key": "x" * 40})
        right = client.get(secured.url("/api/nordvpn/servers"), headers={"X-API-Key": OTHER_KEY})
    assert missing.status_code == 401
    assert missing.json()["error"] == "Unauthorized"
    assert missing.headers["www-authenticate"] == 'APIKey header="X-API-Key"'
    assert wrong.status_code == 403
    assert wrong.json()["error"] == "Forbidden"
    assert right.status_code == 200


def raw_status(draco, request: bytes, source: str = "127.0.0.3") -> int:
    """Send exact bytes (which no HTTP client library would send) and read the status."""
    with socket.create_connection(
        (draco.host, draco.port), source_address=(source, 0), timeout=10
    ) as sock:
        sock.sendall(request)
        return int(sock.recv(65536).split(b" ", 2)[1])


@pytest.mark.parametrize(
    "value", [b"\xff\xfe garbage", "ключ".encode(), b"k" * 8000, b" " + KEY.encode() + b"\x7f"]
)
def test_any_key_bytes_are_a_403_never_a_500(secured, value):
    request = b"GET /api/nordvpn/countries HTTP/1.1\r\nHost: x\r\nX-API-Key: " + value + b"\r\n\r\n"
    assert raw_status(secured, request) == 403


def test_a_key_with_a_nul_byte_is_refused_by_the_http_parser_not_a_500(secured):
    request = b"GET /api/nordvpn/countries HTTP/1.1\r\nHost: x\r\nX-API-Key: a\x00b\r\n\r\n"
    assert raw_status(secured, request) == 400


def test_the_key_is_never_read_from_the_query_string(secured):
    with from_address("127.0.0.4") as client:
        assert (
            client.get(
                secured.url("/api/nordvpn/servers"), params={"api_key": KEY, "X-API-Key": KEY}
            ).status_code
            == 401
        )


def test_two_key_headers_are_refused(secured):
    with from_address("127.0.0.5") as client:
        response = client.get(
            secured.url("/api/nordvpn/servers"), headers=[("X-API-Key", KEY), ("X-API-Key", KEY)]
        )
    assert response.status_code == 403


def test_health_needs_no_key_and_is_never_limited(secured):
    with from_address("127.0.0.6") as client:
        statuses = {client.get(secured.url("/health")).status_code for _ in range(25)}
    assert statuses == {200}


def test_auth_failures_are_logged_with_the_client_and_a_fingerprint_never_the_key(secured):
    wrong = "w" * 40
    with from_address("127.0.0.7") as client:
        client.get(secured.url("/api/nordvpn/servers"), headers={"X-API-Key": wrong})
        client.get(secured.url("/api/nordvpn/servers"), headers={"X-API-Key": KEY})
    logs = secured.logs()
    assert "WARNING draco.security: invalid API key" in logs
    assert "127.0.0.7" in logs
    assert wrong not in logs
    assert KEY not in logs


# --- the rate limit ----------------------------------------------------------------


def test_n_requests_are_allowed_then_429_with_retry_after_and_the_headers(secured):
    with from_address("127.0.0.8", headers={"X-API-Key": KEY}) as client:
        answers = [client.get(secured.url("/api/nordvpn/countries")) for _ in range(11)]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    assert [a.headers["x-ratelimit-remaining"] for a in answers[:10]] == [
        str(9 - i) for i in range(10)
    ]
    refused = answers[-1]
    assert refused.json()["error"] == "Too Many Requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert refused.headers["ratelimit-policy"] == '"default";q=10;w=10'
    assert refused.headers["ratelimit"] == f'"default";r=0;t={refused.headers["retry-after"]}'
    assert int(refused.headers["x-ratelimit-reset"]) - time.time() <= 11
    assert refused.headers["x-ratelimit-limit"] == "10"


def test_unauthenticated_requests_count_against_the_limit(secured):
    with from_address("127.0.0.9") as client:
        statuses = [client.get(secured.url("/api/nordvpn/servers")).status_code for _ in range(11)]
    assert statuses == [401] * 10 + [429]


def test_forwarded_for_from_an_untrusted_peer_is_ignored(secured):
    with from_address("127.0.0.10", headers={"X-API-Key": KEY}) as client:
        statuses = [
            client.get(
                secured.url("/api/nordvpn/countries"),
                headers={"X-Forwarded-For": f"198.51.100.{i}"},
            ).status_code
            for i in range(11)
        ]
    assert statuses == [200] * 10 + [429]  # one forged address per request resets nothing


def test_behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client(secured):
    with from_address("127.0.0.1", headers={"X-API-Key": KEY}) as proxy:
        # The client forges a leftmost entry each time; the proxy appends what it saw.
        forged = [
            proxy.get(
                secured.url("/api/nordvpn/countries"),
                headers={"X-Forwarded-For": f"1.1.1.{i}, 203.0.113.7"},
            )
            for i in range(11)
        ]
        other = proxy.get(
            secured.url("/api/nordvpn/countries"), headers={"X-Forwarded-For": "203.0.113.8"}
        )
    assert [r.status_code for r in forged] == [200] * 10 + [429]
    assert other.status_code == 200


def test_a_trailing_slash_is_a_404_never_a_redirect_built_from_the_host_header(secured):
    request = (
        b"GET /api/nordvpn/servers/ HTTP/1.1\r\nHost: evil.example\r\nX-API-Key: "
        + KEY.encode()
        + b"\r\n\r\n"
    )
    with socket.create_connection(
        (secured.host, secured.port), source_address=("127.0.0.16", 0), timeout=10
    ) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"evil.example" not in answer
    assert b"\r\nlocation:" not in answer.lower()


# --- headers -------------------------------------------------------------------------


def test_every_kind_of_response_carries_the_hardened_headers_and_no_server(secured):
    with from_address("127.0.0.12") as client:
        ok = client.get(secured.url("/api/nordvpn/countries"), headers={"X-API-Key": KEY})
        unauthorised = client.get(secured.url("/api/nordvpn/countries"))
        missing = client.get(secured.url("/nothing"))
        not_allowed = client.post(secured.url("/api/nordvpn/servers"), headers={"X-API-Key": KEY})
        invalid = client.get(secured.url("/api/nordvpn/servers?page=0"), headers={"X-API-Key": KEY})
        for _ in range(10):
            limited = client.get(secured.url("/api/nordvpn/countries"), headers={"X-API-Key": KEY})
    answers = [ok, unauthorised, missing, not_allowed, invalid, limited]
    assert [a.status_code for a in answers] == [200, 401, 404, 405, 422, 429]
    for answer in answers:
        assert "server" not in answer.headers
        assert {k: answer.headers.get(k) for k in HARDENED} == HARDENED
    for error in answers[1:]:
        assert error.headers["cache-control"] == "no-store"


def test_debug_mode_drops_hsts_and_csp_only(start_draco, upstreams):
    draco = start_draco({**upstream_env(upstreams), "DEBUG": "true"})
    headers = httpx.get(draco.url("/health")).headers
    assert "strict-transport-security" not in headers
    assert "content-security-policy" not in headers
    assert headers["x-frame-options"] == "DENY"


def test_security_headers_can_be_switched_off_but_server_stays_hidden(start_draco, upstreams):
    draco = start_draco({**upstream_env(upstreams), "ENABLE_SECURITY_HEADERS": "false"})
    headers = httpx.get(draco.url("/health")).headers
    assert not set(HARDENED) & set(headers)
    assert "server" not in headers


def test_an_unhandled_error_is_a_bare_500_with_the_headers():
    async def broken(scope, receive, send):
        raise RuntimeError("secret detail /etc/passwd")

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(
        SecurityHeadersMiddleware(broken)(
            {"type": "http", "method": "GET", "path": "/x", "headers": []}, None, send
        )
    )
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 500
    assert headers[b"x-frame-options"] == b"DENY"
    assert (
        body["body"] == b'{"error":"Internal Server Error","message":"An internal error occurred."}'
    )


def test_a_server_header_or_a_second_hardened_header_from_inside_is_dropped():
    async def leaky(scope, receive, send):
        headers = [
            (b"server", b"leaky/1.0"),
            (b"x-frame-options", b"SAMEORIGIN"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(SecurityHeadersMiddleware(leaky)({"type": "http", "headers": []}, None, send))
    names = [name for name, _ in sent[0]["headers"]]
    assert b"server" not in names
    assert names.count(b"x-frame-options") == 1
    assert b"content-length" in names
    assert dict(sent[0]["headers"])[b"x-frame-options"] == b"DENY"


def test_an_error_in_a_route_leaves_the_whole_stack_as_the_generic_500(caplog, monkeypatch):
    """create_app's own stack, in process: the error is logged and never sent, the app
    does not raise, and the response carries the hardened headers of every response."""
    environ = {
        **NOWHERE,
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS": f'["{KEY}"]',
        "CORS_ORIGINS": f'["{ORIGIN}"]',
    }

    async def broken(_catalog, _name):
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(Catalog, "get", broken)
    app = create_app(load(environ))

    async def request():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
                return await client.get(
                    "/api/nordvpn/servers", headers={"X-API-Key": KEY, "Origin": ORIGIN}
                )

    response = asyncio.run(request())
    assert response.status_code == 500
    assert response.json() == {
        "error": "Internal Server Error",
        "message": "An internal error occurred.",
    }
    assert all(response.headers[name] == value for name, value in HARDENED.items())
    assert response.headers["cache-control"] == "no-store"
    assert "server" not in response.headers
    assert "secret detail" in caplog.text
    assert "secret" not in response.text


# --- CORS ----------------------------------------------------------------------------


def test_a_preflight_from_an_allowed_origin_needs_no_key(secured):
    with from_address("127.0.0.13") as client:
        response = client.options(
            secured.url("/api/nordvpn/servers"),
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
    assert response.headers["access-control-allow-headers"] == "X-API-Key, Content-Type, Accept"
    assert response.headers["access-control-max-age"] == "86400"


@pytest.mark.parametrize(
    ("origin", "method", "asked"),
    [
        ("https://evil.example", "GET", "x-api-key"),
        ("null", "GET", ""),
        (ORIGIN, "DELETE", ""),
        (ORIGIN, "GET", "x-api-key, authorization"),
    ],
)
def test_a_preflight_that_is_not_allowed_is_400_without_allow_origin(
    secured, origin, method, asked
):
    with from_address("127.0.0.14") as client:
        response = client.options(
            secured.url("/api/nordvpn/servers"),
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": asked,
            },
        )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
    assert response.json()["error"] == "Bad Request"


def test_refusals_to_an_allowed_origin_carry_cors_headers_so_browsers_can_read_them(secured):
    with from_address("127.0.0.15", headers={"Origin": ORIGIN}) as client:
        unauthorised = client.get(secured.url("/api/nordvpn/servers"))
        forbidden = client.get(secured.url("/api/nordvpn/servers"), headers={"X-API-Key": "x" * 40})
        for _ in range(9):
            limited = client.get(secured.url("/api/nordvpn/servers"))
    assert [unauthorised.status_code, forbidden.status_code, limited.status_code] == [401, 403, 429]
    for answer in (unauthorised, forbidden, limited):
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "Retry-After" in answer.headers["access-control-expose-headers"]


def test_a_simple_request_from_another_origin_gets_no_allow_origin(secured):
    response = httpx.get(
        secured.url("/api/nordvpn/countries"),
        headers={"Origin": "https://evil.example", "X-API-Key": KEY},
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["vary"].count("Origin") == 1


def test_a_preflight_is_refused_when_no_origin_is_allowed_at_all(service):
    response = httpx.options(
        service.url("/api/nordvpn/servers"),
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
