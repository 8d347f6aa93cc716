"""The golden set: representative requests across endpoints, errors, CORS, 429, 401, 304 and
gzip, answered by the whole app over demo data at a fixed time, compared with the answers
recorded in tests/golden/answers.json (status, every header but Date, body).

A change that alters an answer on purpose re-records the set
(`DRACO_RECORD_GOLDEN=1 pytest tests/test_golden.py`) and says why in its commit."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import KEY, OTHER_KEY

from draco.app import create_app
from draco.catalog import demo
from draco.settings import Settings

GOLDEN = Path(__file__).parent / "golden" / "answers.json"
NOW = 1_800_000_000.0
ORIGIN = "https://app.example.com"


def _settings(**changes: Any) -> Settings:
    base = Settings(
        enable_api_key_auth=True,
        api_keys=(KEY,),
        cors_origins=(ORIGIN,),
        rate_limit_requests=10,
        rate_limit_period=60,
    )
    return demo.settings(attrs.evolve(base, **changes))


# (name, settings, method, path, headers); each request comes from its own client address
# unless its name starts with "burst", so the rate-limit headers are the same at every run.
WITH_KEY = {"x-api-key": KEY}
GZIP = {**WITH_KEY, "accept-encoding": "gzip"}
PREFLIGHT = {"origin": ORIGIN, "access-control-request-method": "GET"}
REQUESTS: list[tuple[str, str, str, str, dict[str, str]]] = [
    ("health", "main", "GET", "/health", {}),
    ("ready", "main", "GET", "/health/ready", {}),
    ("providers", "main", "GET", "/api/providers", WITH_KEY),
    ("page", "main", "GET", "/api/nordvpn/servers?page_size=3", WITH_KEY),
    ("page gzip", "main", "GET", "/api/nordvpn/servers?page_size=20", GZIP),
    ("paginated", "main", "GET", "/api/nordvpn/servers/paginated?page=2&page_size=2", WITH_KEY),
    ("paginated past the end", "main", "GET", "/api/nordvpn/servers/paginated?page=999", WITH_KEY),
    ("country", "main", "GET", "/api/mullvad/servers/SE", WITH_KEY),
    ("country without servers", "main", "GET", "/api/mullvad/servers/ZZ", WITH_KEY),
    ("country in lower case", "main", "GET", "/api/mullvad/servers/se", WITH_KEY),
    ("top", "main", "GET", "/api/nordvpn/servers/top?limit=2", WITH_KEY),
    ("top by country", "main", "GET", "/api/ivpn/servers/top?limit=2&country_code=DE", WITH_KEY),
    ("countries", "main", "GET", "/api/nordvpn/countries", WITH_KEY),
    ("countries gzip", "main", "GET", "/api/surfshark/countries", GZIP),
    ("peer text", "main", "GET", "/api/mullvad/servers/se-sto-wg-002/wireguard", WITH_KEY),
    (
        "peer json",
        "main",
        "GET",
        "/api/mullvad/servers/SE-STO-WG-002/wireguard",
        {**WITH_KEY, "accept": "application/json"},
    ),
    (
        "peer by hostname",
        "main",
        "GET",
        "/api/surfshark/servers/at-1.prod.surfshark.example/wireguard",
        WITH_KEY,
    ),
    ("peer with a note", "main", "GET", "/api/airvpn/servers/sample0/wireguard", WITH_KEY),
    ("peer unknown", "main", "GET", "/api/mullvad/servers/nope/wireguard", WITH_KEY),
    (
        "peer with a parameter",
        "main",
        "GET",
        "/api/mullvad/servers/se-sto-wg-002/wireguard?key=x",
        WITH_KEY,
    ),
    ("all", "main", "GET", "/api/all/servers?page_size=2", WITH_KEY),
    ("all filtered", "main", "GET", "/api/all/servers?p2p=true&page_size=2", WITH_KEY),
    ("filter city", "main", "GET", "/api/mullvad/servers?city=vienna", WITH_KEY),
    (
        "filter prefix",
        "main",
        "GET",
        "/api/ivpn/servers?identifier_prefix=de&page_size=2",
        WITH_KEY,
    ),
    ("filter unsupported", "main", "GET", "/api/mullvad/servers?max_load=40", WITH_KEY),
    ("page zero", "main", "GET", "/api/nordvpn/servers?page=0", WITH_KEY),
    ("page as a float", "main", "GET", "/api/nordvpn/servers?page=1.0", WITH_KEY),
    ("boolean as 1", "main", "GET", "/api/nordvpn/servers?p2p=1", WITH_KEY),
    ("unknown parameters", "main", "GET", "/api/nordvpn/servers?bogus=1&other=2", WITH_KEY),
    ("unknown provider", "main", "GET", "/api/unknown/servers", WITH_KEY),
    ("unknown path", "main", "GET", "/nope", {}),
    ("trailing slash", "main", "GET", "/api/nordvpn/servers/", WITH_KEY),
    ("method not allowed", "main", "POST", "/api/nordvpn/servers", WITH_KEY),
    ("head", "main", "HEAD", "/api/nordvpn/countries", WITH_KEY),
    ("changes before two lists", "main", "GET", "/api/nordvpn/changes", WITH_KEY),
    ("changes of all", "main", "GET", "/api/all/changes", WITH_KEY),
    ("latency", "main", "GET", "/api/nordvpn/servers/latency?limit=2&method=tcp", WITH_KEY),
    ("fastest", "main", "GET", "/api/nordvpn/servers/fastest?measure_count=2&method=tcp", WITH_KEY),
    (
        "not modified",
        "main",
        "GET",
        "/api/nordvpn/countries",
        {**WITH_KEY, "if-none-match": "{countries}"},
    ),
    (
        "not modified, weak and listed",
        "main",
        "GET",
        "/api/nordvpn/countries",
        {**WITH_KEY, "if-none-match": '"other", W/{countries}'},
    ),
    ("modified", "main", "GET", "/api/nordvpn/countries", {**WITH_KEY, "if-none-match": '"other"'}),
    ("no key", "main", "GET", "/api/nordvpn/countries", {}),
    ("wrong key", "main", "GET", "/api/nordvpn/countries", {"x-api-key": OTHER_KEY}),
    ("empty key", "main", "GET", "/api/nordvpn/countries", {"x-api-key": ""}),
    ("preflight", "main", "OPTIONS", "/api/nordvpn/servers", PREFLIGHT),
    (
        "preflight with headers",
        "main",
        "OPTIONS",
        "/api/nordvpn/servers",
        {**PREFLIGHT, "access-control-request-headers": "X-API-Key, Accept"},
    ),
    (
        "preflight from elsewhere",
        "main",
        "OPTIONS",
        "/api/nordvpn/servers",
        {**PREFLIGHT, "origin": "https://evil.example"},
    ),
    (
        "preflight asking a header",
        "main",
        "OPTIONS",
        "/api/nordvpn/servers",
        {**PREFLIGHT, "access-control-request-headers": "X-Other"},
    ),
    ("cors allowed", "main", "GET", "/api/nordvpn/countries", {**WITH_KEY, "origin": ORIGIN}),
    ("cors allowed, no key", "main", "GET", "/api/nordvpn/countries", {"origin": ORIGIN}),
    (
        "cors elsewhere",
        "main",
        "GET",
        "/api/nordvpn/countries",
        {**WITH_KEY, "origin": "https://evil.example"},
    ),
    ("burst 1", "main", "GET", "/api/nordvpn/countries", WITH_KEY),
    *[(f"burst {n}", "main", "GET", "/api/nordvpn/countries", WITH_KEY) for n in range(2, 12)],
    (
        "ambiguous length",
        "main",
        "GET",
        "/api/nordvpn/countries",
        {**WITH_KEY, "content-length": "0", "transfer-encoding": "chunked"},
    ),
    (
        "head too large",
        "main",
        "GET",
        "/api/nordvpn/countries",
        {**WITH_KEY, "x-filler": "a" * 17000},
    ),
    ("docs off", "main", "GET", "/docs", {}),
    ("openapi off", "main", "GET", "/openapi.json", {}),
    ("open health", "open", "GET", "/health", {}),
    ("open page", "open", "GET", "/api/windscribe/servers?page_size=2", {}),
    ("open free filter", "open", "GET", "/api/windscribe/servers?free=true&page_size=1", {}),
    ("open owned filter", "open", "GET", "/api/mullvad/servers?owned=true&page_size=1", {}),
    ("open countries", "open", "GET", "/api/airvpn/countries", {}),
    ("debug openapi", "debug", "GET", "/openapi.json", {}),
    ("debug docs", "debug", "GET", "/docs", {}),
    ("debug redoc", "debug", "GET", "/redoc", {}),
]
CONFIGS = {
    "main": {},
    "open": {"enable_api_key_auth": False, "api_keys": (), "rate_limit_enabled": False},
    "debug": {"enable_api_key_auth": False, "api_keys": (), "debug": True},
}


async def _call(
    app: Any, method: str, path: str, headers: dict[str, str], peer: str
) -> dict[str, Any]:
    """One request through the ASGI app, every message of the answer kept as sent."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": (peer, 40000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    header_list = sorted([k.decode(), v.decode()] for k, v in start["headers"] if k != b"date")
    for entry in header_list:  # Starlette lists allowed methods from a set: in any order
        if entry[0] == "allow":
            entry[1] = ", ".join(sorted(entry[1].split(", ")))
    if dict(header_list).get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    try:
        text: Any = (
            json.loads(body)
            if "json" in dict(header_list).get("content-type", "")
            else body.decode()
        )
    except (ValueError, UnicodeDecodeError):
        text = {"base64": base64.b64encode(body).decode()}
    return {"status": start["status"], "headers": header_list, "body": text}


async def _until_ready(app: Any) -> None:
    for _ in range(500):
        if (await _call(app, "GET", "/health/ready", {}, "127.0.0.1"))["status"] == 200:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the demo catalog did not load")


async def _record() -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for config, changes in CONFIGS.items():
        settings = _settings(**changes)
        app = create_app(settings, transport=demo.transport(), clock=lambda: NOW)
        async with app.router.lifespan_context(app):
            await _until_ready(app)
            for index, (name, where, method, path, headers) in enumerate(REQUESTS):
                if where != config:
                    continue
                peer = "198.51.100.200" if name.startswith("burst") else f"203.0.113.{index}"
                etag = next(
                    (
                        h[1]
                        for h in answers.get("countries", {}).get("headers", [])
                        if h[0] == "etag"
                    ),
                    "",
                )
                filled = {k: v.replace("{countries}", etag) for k, v in headers.items()}
                answers[name] = {"request": [method, path, filled]} | await _call(
                    app, method, path, filled, peer
                )
    return answers


def test_the_golden_answers_are_unchanged():
    answers = asyncio.run(_record())
    if os.environ.get("DRACO_RECORD_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert len(golden) >= 40
    assert list(answers) == list(golden)
    for name, answer in answers.items():
        assert answer == golden[name], name


def test_the_golden_set_covers_every_kind_of_answer():
    golden = json.loads(GOLDEN.read_text())
    statuses = {answer["status"] for answer in golden.values()}
    assert {200, 204, 304, 400, 401, 403, 404, 405, 422, 429, 431} <= statuses
    assert any(["content-encoding", "gzip"] in answer["headers"] for answer in golden.values())
    assert any(h[0] == "access-control-allow-origin" for a in golden.values() for h in a["headers"])


@pytest.mark.parametrize("name", ["page", "countries"])
def test_a_golden_answer_carries_the_catalog_headers(name):
    headers = dict(json.loads(GOLDEN.read_text())[name]["headers"])
    assert {"etag", "age", "x-data-status", "cache-control"} <= set(headers)
