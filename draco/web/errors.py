"""The one error envelope, {"error": ..., "message": ...}, and the Starlette exception
handlers that turn draco's errors into it. Messages are fixed: nothing from an
exception's text, an upstream URL or body, or a stack trace goes into a response."""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from draco.exceptions import VPNServiceError
from draco.models import Detail, Error, encode

log = logging.getLogger("draco")


class RequestValidationError(Exception):
    def __init__(self, details: list[Detail]):
        super().__init__("invalid request")
        self.details = details


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, details: list[Detail] | None = None
) -> Response:
    body = encode(Error(http.HTTPStatus(status).phrase, message, details))
    return Response(body, status, {**(headers or {}), "Cache-Control": "no-store"}, "application/json")


_MESSAGES = {404: "The requested resource was not found.", 405: "The method is not allowed for this resource."}


async def http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.detail != http.HTTPStatus(exc.status_code).phrase else None
    return error_response(exc.status_code, message or _MESSAGES.get(exc.status_code, "Request failed."), exc.headers)


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VPNServiceError)
    log.warning("%s on %s: %s", type(exc).__name__, request.url.path, exc)
    return error_response(exc.status, exc.public)


async def validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "The request parameters are invalid.", details=exc.details)


# Starlette's ExceptionMiddleware finds a handler by the error's class or a base class.
HANDLERS: dict[type[Exception], ExceptionHandler] = {
    HTTPException: http_error,
    VPNServiceError: service_error,
    RequestValidationError: validation_error,
}
