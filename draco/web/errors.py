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
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: list[Detail] | None = None,
) -> Response:
    body = encode(Error(http.HTTPStatus(status).phrase, message, details))
    headers = {**(headers or {}), "Cache-Control": "no-store"}
    return Response(body, status, headers, "application/json")


_MESSAGES = {
    404: "The requested resource was not found.",
    405: "The method is not allowed for this resource.",
}


# Starlette calls each handler with the class it is registered for (HANDLERS, below);
# anything else is not the handler's to answer, and goes on to the outermost layer.


async def http_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        raise exc
    status = exc.status_code
    given = exc.detail if exc.detail != http.HTTPStatus(status).phrase else None
    message = given or _MESSAGES.get(status, "Request failed.")
    return error_response(status, message, exc.headers)


async def service_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, VPNServiceError):
        raise exc
    log.warning("%s on %s: %s", type(exc).__name__, request.url.path, exc)
    return error_response(exc.status, exc.public)


MOST_DETAILS = 20  # problems listed in one 422: a query of thousands stays a small answer


async def validation_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):
        raise exc
    found = len(exc.details)
    message = "The request parameters are invalid."
    if found > MOST_DETAILS:
        message = f"The request parameters are invalid: {found} problems, the first "
        message += f"{MOST_DETAILS} listed."
    return error_response(422, message, details=exc.details[:MOST_DETAILS])


# Starlette's ExceptionMiddleware finds a handler by the error's class or a base class.
HANDLERS: dict[type[Exception], ExceptionHandler] = {
    HTTPException: http_error,
    VPNServiceError: service_error,
    RequestValidationError: validation_error,
}
