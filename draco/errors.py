"""The exception hierarchy and the one error envelope: {"error": ..., "message": ...}.

Nothing from an exception's text, an upstream URL or body, or a stack trace ever
goes into a response; each class carries its own fixed public message.
"""

from __future__ import annotations

import http
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from draco.models import encode

log = logging.getLogger("draco")


class VPNServiceError(Exception):
    status = 500
    public = "An internal error occurred."

    def __init__(self, reason: str = "error"):
        super().__init__(reason)
        self.reason = reason  # a failure class for logs and /health: timeout, http_503, oversized...


class VPNAPIError(VPNServiceError):
    """The upstream is unreachable, answered non-2xx, or sent more than the size cap."""

    status = 503
    public = "The server list is temporarily unavailable. Try again later."

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class VPNDataError(VPNServiceError):
    """The upstream sent a payload of the wrong shape, or a list the sanity guard refused."""

    def __init__(self, reason: str = "invalid_data", detail: str = ""):
        super().__init__(reason)
        self.detail = detail


class RequestValidationError(Exception):
    def __init__(self, details: list[dict]):
        super().__init__("invalid request")
        self.details = details


def error_response(status: int, message: str, headers=None, details=None) -> Response:
    body = {"error": http.HTTPStatus(status).phrase, "message": message}
    if details is not None:
        body["details"] = details
    response = Response(encode(body), status, headers, media_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


_MESSAGES = {
    404: "The requested resource was not found.",
    405: "The method is not allowed for this resource.",
}


async def http_error(_request: Request, exc: HTTPException) -> Response:
    message = exc.detail if exc.detail != http.HTTPStatus(exc.status_code).phrase else None
    return error_response(exc.status_code, message or _MESSAGES.get(exc.status_code, "Request failed."), exc.headers)


async def service_error(request: Request, exc: VPNServiceError) -> Response:
    log.warning("%s on %s: %s", type(exc).__name__, request.url.path, exc)
    return error_response(exc.status, exc.public)


async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
    return error_response(422, "The request parameters are invalid.", details=exc.details)


HANDLERS = {
    HTTPException: http_error,
    VPNServiceError: service_error,
    RequestValidationError: validation_error,
}


class ErrorMiddleware:
    """Innermost layer: an exception that HANDLERS names (by its class or a base)
    becomes that handler's envelope; any other goes on up to SecurityHeadersMiddleware,
    which logs it and answers the generic 500. Starlette's ExceptionMiddleware does the
    same but builds a Request and wraps send on every request; here nothing is done
    until an error occurs. Every handled error is raised before a route sends anything."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            handler = next((HANDLERS[cls] for cls in type(exc).__mro__ if cls in HANDLERS), None)
            if handler is None or scope["type"] != "http":
                raise
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
