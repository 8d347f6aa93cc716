"""The OpenAPI 3.1 document, and the /docs and /redoc pages (DEBUG=true only).

tests/test_openapi.py keeps it true: its paths equal the route table, its bounds
are the ones the routes enforce, and real responses validate against its schemas.
"""

from __future__ import annotations

import html

import openapi_ui_bundles
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from draco.providers import REGISTRY
from draco.settings import Settings


def _object(**properties) -> dict:
    """An object schema whose listed properties are all present in every answer."""
    return {"type": "object", "required": list(properties), "properties": properties}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(name: str) -> dict:
    return {"type": "array", "items": _ref(name)}


INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
OPTIONAL_STR = {"type": ["string", "null"]}
SCHEMAS = {
    "Server": _object(
        provider=STR,
        country=STR,
        country_code={"type": "string", "pattern": "^[A-Z]{2}$"},
        identifier={"type": "string", "description": "the server's hostname"},
        public_key={"type": "string", "description": "WireGuard public key, 32 bytes in base64"},
        load={"type": ["integer", "null"], "minimum": 0, "maximum": 100},
        latency={"type": ["number", "null"], "description": "milliseconds, when measured"},
        city=OPTIONAL_STR,
        ipv4=OPTIONAL_STR,
    ),
    "Page": _object(total=INT, page=INT, page_size=INT, total_pages=INT, data=_list("Server")),
    "Country": _object(code=STR, name=STR, display=STR),
    "Provider": _object(
        name=STR,
        servers=INT,
        countries=INT,
        reports_load=BOOL,
        reports_status={"type": "boolean", "description": "whether the upstream says which servers are online"},
        ordering={"enum": ["load", "upstream", "weight"]},
        data_age={"type": ["integer", "null"], "description": "seconds since the list was fetched"},
        status={"enum": ["fresh", "stale", "none"]},
    ),
    "LatencyRun": _object(
        total_servers=INT,
        measured=INT,
        successful=INT,
        failed=INT,
        method={"enum": ["icmp", "fping", "tcp"]},
        servers=_list("Server"),
    ),
    "Health": _object(
        status={"enum": ["healthy", "unhealthy"]},
        version=STR,
        providers={"type": "object", "additionalProperties": {"type": "object"}},
    ),
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": STR,
            "message": STR,
            "details": {
                "type": "array",
                "items": _object(loc={"type": "array", "items": STR}, msg=STR, type=STR),
            },
        },
    },
}

_ERRORS = {
    "401": "No X-API-Key header",
    "403": "The X-API-Key is not valid",
    "404": "Not found",
    "422": "Invalid parameters (with details)",
    "429": "Rate limit exceeded; see Retry-After",
    "500": "Internal error",
    "503": "The provider's list is unavailable",
}


def _param(name: str, schema: dict, doc: str, where: str = "query") -> dict:
    return {"name": name, "in": where, "required": where == "path", "description": doc, "schema": schema}


def _integer(name: str, default: int, lo: int, hi: int, doc: str) -> dict:
    return _param(name, {"type": "integer", "minimum": lo, "maximum": hi, "default": default}, doc)


def _country(where: str) -> dict:
    return _param("country_code", {"type": "string", "pattern": "^[A-Z]{2}$"}, "ISO 3166-1 alpha-2, upper case", where)


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _operation(summary: str, schema: dict, parameters: list, *, catalog: bool = True) -> dict:
    responses = {"200": {"description": "OK", "content": _json(schema)}}
    if catalog:
        responses["304"] = {"description": "Not modified (If-None-Match matched the ETag)"}
        responses["200"]["headers"] = {
            "ETag": {"schema": {"type": "string"}},
            "Age": {"schema": {"type": "integer"}, "description": "seconds since the list was fetched"},
            "X-Data-Status": {"schema": {"enum": ["fresh", "stale"]}},
        }
    responses |= {code: {"description": text, "content": _json(_ref("Error"))} for code, text in _ERRORS.items()}
    return {"get": {"summary": summary, "parameters": parameters, "responses": responses}}


def document(settings: Settings) -> dict:
    provider = _param("provider", {"enum": [*REGISTRY, "all"]}, "a provider, or `all` for all in one list", "path")
    page = _integer("page", 1, 1, 1_000_000, "page number, from 1")
    method = _param(
        "method",
        {"enum": ["auto", "icmp", "tcp", "fping"], "default": "auto"},
        "auto picks the best available (icmp, then fping, then tcp)",
    )
    exclude = _param(
        "exclude",
        {"type": "string", "pattern": "^([A-Z]{2}([-,][A-Z]{2})*)?$"},
        "country codes to leave out, like BR-US",
    )
    page_size = _integer("page_size", settings.default_page_size, 1, settings.max_page_size, "servers per page")
    base = "/api/{provider}"
    paths = {
        "/health": _operation("Service health", _ref("Health"), [], catalog=False),
        "/api/providers": _operation(
            "The providers and the freshness of their lists", _list("Provider"), [], catalog=False
        ),
        f"{base}/servers": _operation("A page of servers", _list("Server"), [provider, page, page_size]),
        f"{base}/servers/paginated": _operation("A page with totals", _ref("Page"), [provider, page, page_size]),
        f"{base}/servers/top": _operation(
            "Operational servers (load above 3) ranked by latency, then load",
            _list("Server"),
            [provider, _integer("limit", 10, 1, 50, "how many"), _country("query")],
        ),
        f"{base}/servers/latency": _operation(
            "Measure latency (costs LATENCY_WEIGHT requests); fastest first, unreachable last",
            _ref("LatencyRun"),
            [provider, _country("query"), _integer("limit", 100, 0, 5000, "how many to measure; 0 for all"), method],
            catalog=False,
        ),
        f"{base}/servers/fastest": _operation(
            "The fastest operational servers that answered (costs LATENCY_WEIGHT requests)",
            _list("Server"),
            [
                provider,
                _integer("limit", 10, 1, 50, "how many"),
                _country("query"),
                _integer("measure_count", 100, 0, 5000, "how many to measure, least loaded first; 0 for all"),
                exclude,
                method,
            ],
            catalog=False,
        ),
        f"{base}/servers/{{country_code}}": _operation(
            "The servers of one country", _list("Server"), [provider, _country("path")]
        ),
        f"{base}/countries": _operation("Countries with servers, by code", _list("Country"), [provider]),
    }
    security = [{"ApiKey": []}] if settings.enable_api_key_auth else []
    for path, item in paths.items():
        if path.startswith("/api/"):
            item["get"]["security"] = security
    return {
        "openapi": "3.1.0",
        "info": {"title": settings.app_name, "version": settings.app_version},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>{head}</head>
<body>{body}</body></html>"""


def routes(settings: Settings) -> list:
    spec = document(settings)
    title = html.escape(settings.app_name)

    async def openapi_json(_request: Request) -> JSONResponse:
        return JSONResponse(spec)

    async def swagger(_request: Request) -> HTMLResponse:
        return HTMLResponse(
            _PAGE.format(
                title=title,
                head='<link rel="stylesheet" href="/docs/assets/swagger-ui.css">',
                body='<div id="ui"></div><script src="/docs/assets/swagger-ui-bundle.js"></script>'
                '<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"})</script>',
            )
        )

    async def redoc(_request: Request) -> HTMLResponse:
        return HTMLResponse(
            _PAGE.format(
                title=title,
                head="",
                body='<redoc spec-url="/openapi.json"></redoc>'
                '<script src="/redoc/assets/redoc.standalone.js"></script>',
            )
        )

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", swagger, methods=["GET"]),
        Route("/redoc", redoc, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=openapi_ui_bundles.swagger_ui.static_path)),
        Mount("/redoc/assets", StaticFiles(directory=openapi_ui_bundles.redoc.static_path)),
    ]
