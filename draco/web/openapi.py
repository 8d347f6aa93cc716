"""The OpenAPI 3.1 document (DEBUG=true only), and the /docs and /redoc pages when the docs
extra is installed. Nothing is declared a second time: paths, parameters and their bounds
come from the endpoints (routes.py, params.py), schemas from the models (msgspec)."""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from draco import models
from draco.models import Error
from draco.providers import REGISTRY
from draco.settings import Settings, installed, needs
from draco.web.params import ALWAYS
from draco.web.routes import ALL, API, JSON, Endpoint, offered

log = logging.getLogger("draco")

_ERRORS = {
    "400": "A request whose length is ambiguous (Content-Length with Transfer-Encoding)",
    "401": "No X-API-Key header",
    "403": "The X-API-Key is not valid",
    "404": "Not found",
    "422": "Invalid parameters (with details)",
    "429": "Rate limit exceeded; see Retry-After",
    "431": "A request head over 16 KiB",
    "500": "Internal error",
    "503": "The provider's list is unavailable",
}
_CATALOG_HEADERS = {
    "ETag": {"schema": {"type": "string"}},
    "X-List-Version": {"schema": {"type": "string"}, "description": "the list's version"},
    "Age": {"schema": {"type": "integer"}, "description": "seconds since the list was fetched"},
    "X-Data-Status": {"schema": {"enum": ["fresh", "stale"]}},
}


SERVER = "#/components/schemas/Server"


def _either_server(schema: Any) -> Any:
    """`schema` with each Server in it a Server, or (with fields=) only some of its
    fields: those of a Server, the identifier always among them."""
    if isinstance(schema, list | tuple):
        return [_either_server(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("$ref") == SERVER:
        return {"anyOf": [schema, {"$ref": SERVER + "Fields"}]}
    return {key: _either_server(value) for key, value in schema.items()}


def _answered(
    endpoint: Endpoint, answer: dict[str, Any], shape_of: dict[Any, dict[str, Any]]
) -> dict[str, Any]:
    """The 200's content: JSON (the answer, or any other struct written as JSON), and each
    other media type with the structs written in it (a string where none is)."""
    content = _json_content(answer)
    for media, shapes in endpoint.media.items():
        schemas = [shape_of[shape] for shape in shapes]
        if media == JSON:
            schemas = [answer, *(s for s in schemas if s != answer)]
        if not schemas:
            content[media] = {"schema": {"type": "string"}}
        else:
            content[media] = {"schema": schemas[0] if len(schemas) == 1 else {"anyOf": schemas}}
    return content


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ONLY = {  # answers some endpoints give, besides those every one may give
    "POST": {"415": "The body is not application/json"},
    "changes": {"410": "The version is older than the history kept (the message names the oldest)"},
}


def document(settings: Settings, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    bodies = [endpoint.body for endpoint in endpoints if endpoint.body is not None]
    shapes = list(dict.fromkeys(s for e in endpoints for ss in e.media.values() for s in ss))
    types = [*(endpoint.answer for endpoint in endpoints), *shapes, *bodies, Error]
    found, schemas = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    for name, schema in schemas.items():  # msgspec sends every field, unless told to omit them
        if not getattr(models, name).__struct_config__.omit_defaults:
            schema["required"] = list(schema["properties"])
    fields = schemas["Server"] | {"required": [ALWAYS]}
    schemas = _either_server(schemas) | {"ServerFields": fields}
    answers = _either_server(found[: len(endpoints)])
    shape_of = dict(zip(shapes, found[len(endpoints) : len(endpoints) + len(shapes)], strict=True))
    requests = iter(found[len(endpoints) + len(shapes) : -1])
    error = _json_content(found[-1])
    paths: dict[str, dict[str, Any]] = {}
    for endpoint, answer in zip(endpoints, answers, strict=True):
        ok: dict[str, Any] = {"description": "OK", "content": _answered(endpoint, answer, shape_of)}
        responses = {"200": ok}
        if endpoint.catalog:
            ok["headers"] = _CATALOG_HEADERS
            responses["304"] = {"description": "Not modified (If-None-Match matched the ETag)"}
        refusals = (
            _ERRORS | _ONLY.get(endpoint.method, {}) | _ONLY.get(endpoint.handler.__name__, {})
        )
        responses |= {
            code: {"description": text, "content": error} for code, text in refusals.items()
        }
        operation: dict[str, Any] = {"summary": endpoint.summary, "responses": responses}
        if endpoint.body is not None:
            body = {"required": True, "content": _json_content(next(requests))}
            operation["requestBody"] = body
        if endpoint.path.startswith(API + "/") and settings.enable_api_key_auth:
            operation["security"] = [{"ApiKey": []}]
        # One path per provider, each with exactly the filters that provider's list answers.
        providers: list[str | None] = [*REGISTRY, ALL] if "{provider}" in endpoint.path else [None]
        if endpoint.method == "POST":
            providers = list(REGISTRY)  # one provider's server is reported, never `all`'s
        for provider in providers:
            narrowed = (offered(param, REGISTRY.get(provider or ALL)) for param in endpoint.params)
            parameters = [param.document() for param in narrowed if param is not None]
            path = endpoint.path.replace("{provider}", provider or "")
            paths.setdefault(path, {})[endpoint.method.lower()] = operation | {
                "parameters": parameters
            }
    security = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    info = {"title": settings.app_name, "version": settings.app_version}
    return {
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": security},
    }


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>{head}</head>
<body>{body}</body></html>"""
_SWAGGER = (  # relative URLs: the pages also work under a path prefix (hypercorn's root_path)
    '<link rel="stylesheet" href="docs/assets/swagger-ui.css">',
    '<div id="ui"></div><script src="docs/assets/swagger-ui-bundle.js"></script>'
    '<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"})</script>',
)
_REDOC = (
    "",
    '<redoc spec-url="openapi.json"></redoc>'
    '<script src="redoc/assets/redoc.standalone.js"></script>',
)


def routes(settings: Settings, endpoints: Sequence[Endpoint]) -> list[BaseRoute]:
    """/openapi.json, and the pages when the docs extra is installed. The document names
    the server by the root_path it is served under (hypercorn's `root_path`)."""
    spec = document(settings, endpoints)

    async def openapi(request: Request) -> Response:
        served = {**spec, "servers": [{"url": request.scope.get("root_path") or "/"}]}
        return Response(models.encode(served), media_type="application/json")

    found: list[BaseRoute] = [Route("/openapi.json", openapi, methods=["GET"])]
    if not installed("docs"):
        log.warning("%s; /openapi.json alone is served", needs("DEBUG: /docs and /redoc", "docs"))
        return found
    import openapi_ui_bundles  # the docs extra

    def page(head: str, body: str) -> HTMLResponse:
        """Built once: a response is an ASGI app that can be sent again and again."""
        title = html.escape(settings.app_name)
        return HTMLResponse(_PAGE.format(title=title, head=head, body=body))

    swagger = openapi_ui_bundles.swagger_ui.static_path
    return [
        *found,
        Route("/docs", page(*_SWAGGER), methods=["GET"]),
        Route("/redoc", page(*_REDOC), methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=swagger)),
        Mount("/redoc/assets", StaticFiles(directory=openapi_ui_bundles.redoc.static_path)),
    ]
