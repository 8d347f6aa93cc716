"""Debug gating, and an OpenAPI document kept true by comparing it with what runs."""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import urljoin

import httpx
import jsonschema
import pytest
from conftest import NOWHERE, PROVIDERS, upstream_env
from openapi_spec_validator import validate
from starlette.routing import Route

from draco.app import create_app
from draco.probe.methods import methods_available
from draco.settings import load
from draco.web import openapi

DOC_PATHS = [
    "/docs",
    "/redoc",
    "/openapi.json",
    "/docs/assets/swagger-ui.css",
    "/redoc/assets/redoc.standalone.js",
]


@pytest.fixture(scope="module")
def debug_service(module_upstreams):
    from conftest import Draco

    process = Draco(
        {**upstream_env(module_upstreams), "DEBUG": "true", "RATE_LIMIT_REQUESTS": "10000"}
    )
    yield process
    process.close()


@pytest.fixture(scope="module")
def spec(debug_service):
    return httpx.get(debug_service.url("/openapi.json")).json()


def test_without_debug_the_doc_paths_are_404_like_any_unknown_path(service):
    unknown = httpx.get(service.url("/no-such-page"))
    for path in DOC_PATHS:
        answer = httpx.get(service.url(path))
        assert (answer.status_code, answer.content) == (404, unknown.content)
        assert sorted(answer.headers.keys()) == sorted(unknown.headers.keys())


def test_with_debug_the_docs_and_their_assets_are_served_offline(debug_service):
    for path in DOC_PATHS:
        assert httpx.get(debug_service.url(path)).status_code == 200, path
    for page in ("/docs", "/redoc"):
        assert all(httpx.get(url).status_code == 200 for url in referenced(debug_service.url(page)))


def referenced(page: str) -> list[str]:
    """Every URL the page at `page` loads (assets and the document), resolved as a browser would."""
    html = httpx.get(page).text
    found = re.findall(r'(?:src|href|spec-url)="([^"]+)"|url: "([^"]+)"', html)
    assert len(found) >= 2, html
    return [urljoin(page, a or b) for a, b in found]


def test_behind_a_root_path_the_docs_load_their_assets_and_the_document(start_draco, tmp_path):
    config = tmp_path / "hypercorn.toml"
    config.write_text('root_path = "/draco"\n')
    draco = start_draco({"DEBUG": "true"}, args=["--demo", "--config", str(config)])
    for page in ("/draco/docs", "/draco/redoc"):
        urls = referenced(draco.url(page))
        assert all(url.startswith(draco.url("/draco/")) for url in urls), urls
        assert all(httpx.get(url).status_code == 200 for url in urls), urls


def test_the_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def test_the_document_describes_exactly_the_route_table(spec):
    """One path per provider (and `all`), where the route has a {provider}."""
    app = create_app(load({**NOWHERE, "DEBUG": "true"}))
    table = {r.path for r in app.routes if isinstance(r, Route)} - {
        "/openapi.json",
        "/docs",
        "/redoc",
    }
    expanded = {path.replace("{provider}", name) for path in table for name in (*PROVIDERS, "all")}
    # A report names one provider's server, so `all` has no reports path.
    assert set(spec["paths"]) == expanded - {"/api/all/servers/{identifier}/reports"}
    for path, item in spec["paths"].items():
        (method,) = item
        assert method == ("post" if path.endswith("/reports") else "get")
        declared = {p["name"] for p in item[method]["parameters"] if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path))


def method_choices(spec) -> list[str]:
    parameters = spec["paths"]["/api/nordvpn/servers/latency"]["get"]["parameters"]
    return next(p["schema"]["enum"] for p in parameters if p["name"] == "method")


def test_the_document_offers_exactly_the_latency_methods_this_host_runs(
    spec, start_draco, upstreams
):
    assert sorted(method_choices(spec)) == sorted(["auto", *methods_available()])
    # A host without fping on its PATH: fping is neither offered nor accepted.
    env = {**upstream_env(upstreams), "DEBUG": "true", "PATH": "/nonexistent"}
    without = start_draco(env)
    assert "fping" not in method_choices(httpx.get(without.url("/openapi.json")).json())
    refused = httpx.get(without.url("/api/nordvpn/servers/latency"), params={"method": "fping"})
    assert refused.status_code == 422
    assert refused.json()["details"][0]["loc"] == ["query", "method"]


def _concrete(path: str) -> str:
    return path.replace("{country_code}", "DE").replace("{identifier}", "de1.nordvpn.example")


def test_every_documented_bound_is_the_one_enforced(spec, debug_service):
    checked = 0
    for path, item in spec["paths"].items():
        for parameter in item.get("get", {"parameters": []})["parameters"]:
            schema = parameter["schema"]
            if parameter["in"] != "query" or schema.get("type") != "integer":
                continue
            url = debug_service.url(_concrete(path))
            spans = [(s["minimum"], s["maximum"]) for s in schema.get("anyOf", [schema])]

            def inside(value: int, spans=spans) -> bool:
                return any(a <= value <= b for a, b in spans)

            for first, last in spans:  # a port's ranges: each bound, and the gaps between
                for value in (first, last, first - 1, last + 1):
                    status = httpx.get(url, params={parameter["name"]: value}).status_code
                    assert (status != 422) == inside(value), (path, parameter["name"], value)
            checked += 1
    # 8 everywhere (page and page_size twice, limit on top, fastest and latency,
    # measure_count), max_load on 5 paths where a provider reports load, and a peer's port
    # on each provider's path (not on `all`'s): 4 providers with load, `all`, 2 without
    assert checked == 4 * 14 + 13 + 2 * 9


def _validator(spec, schema) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


@pytest.mark.parametrize(
    ("template", "provider", "params", "status"),
    [
        ("/health", "", {}, 200),
        ("/api/providers", "", {}, 200),
        ("/api/{provider}/servers", "all", {"page_size": 5}, 200),
        ("/api/{provider}/servers/{country_code}", "mullvad", {}, 200),
        ("/api/{provider}/servers", "nordvpn", {"page_size": 5}, 200),
        ("/api/{provider}/servers/paginated", "surfshark", {"page_size": 5}, 200),
        ("/api/{provider}/servers/top", "nordvpn", {"limit": 3}, 200),
        ("/api/{provider}/servers/{country_code}", "surfshark", {}, 200),
        ("/api/{provider}/countries", "nordvpn", {}, 200),
        ("/api/{provider}/servers", "nordvpn", {"page": 0}, 422),
        ("/api/{provider}/servers/paginated", "nordvpn", {"page": 999}, 404),
        ("/api/{provider}/servers", "unknown", {}, 404),
        ("/api/{provider}/servers/{identifier}/wireguard", "nordvpn", {}, 200),
        ("/api/{provider}/changes", "nordvpn", {}, 404),
    ],
)
def test_real_answers_validate_against_the_documented_schemas(
    spec, debug_service, template, provider, params, status
):
    path = _concrete(template.replace("{provider}", provider))
    answer = httpx.get(
        debug_service.url(path), params=params, headers={"Accept": "application/json"}
    )
    assert answer.status_code == status
    documented = spec["paths"][
        template.replace("{provider}", provider.replace("unknown", "nordvpn"))
    ]
    documented = documented["get"]["responses"][str(status)]
    _validator(spec, documented["content"]["application/json"]["schema"]).validate(answer.json())


def test_the_access_log_is_written_in_debug_mode_only(debug_service, service):
    httpx.get(debug_service.url("/access-log-probe"))
    httpx.get(service.url("/access-log-probe"))
    assert "access-log-probe" in debug_service.logs()
    assert "access-log-probe" not in service.logs()


def test_the_doc_pages_are_outside_the_rate_limit_and_their_assets_inside():
    app = create_app(load({**NOWHERE, "DEBUG": "true", "RATE_LIMIT_REQUESTS": "10"}))

    async def go():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
            for path in ("/docs", "/redoc", "/openapi.json"):
                answers = [await client.get(path) for _ in range(12)]
                assert {a.status_code for a in answers} == {200}
                assert "x-ratelimit-limit" not in answers[-1].headers, path
            asset = await client.get("/docs/assets/swagger-ui.css")
            assert asset.headers["x-ratelimit-limit"] == "10"

    asyncio.run(go())


def _get(app, path: str, root: str = "") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000), root_path=root)
        async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
            return await client.get(root + path)

    return asyncio.run(go())


@pytest.mark.parametrize(("root", "server"), [("", "/"), ("/draco", "/draco")])
def test_the_document_names_the_server_by_the_root_path_it_is_served_under(root, server):
    app = create_app(load({**NOWHERE, "DEBUG": "true"}))
    assert _get(app, "/openapi.json", root).json()["servers"] == [{"url": server}]


def test_debug_without_the_docs_extra_serves_the_document_alone(monkeypatch, caplog):
    monkeypatch.setattr(openapi, "installed", lambda extra: extra != "docs")
    with caplog.at_level(logging.WARNING, "draco"):
        app = create_app(load({**NOWHERE, "DEBUG": "true"}))
    assert _get(app, "/openapi.json").status_code == 200
    assert _get(app, "/docs").status_code == 404
    assert _get(app, "/redoc").status_code == 404
    assert "pip install 'draco[docs]'" in caplog.text
