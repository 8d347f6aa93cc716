"""The domain errors. Each carries a fixed public message: nothing from an
exception's text, an upstream URL or body ever reaches a client."""

from __future__ import annotations


class VPNServiceError(Exception):
    status = 500
    public = "An internal error occurred."

    def __init__(self, reason: str = "error", detail: str = "", retry_after: float | None = None):
        super().__init__(reason)
        self.reason = (
            reason  # a failure class for logs and /health: timeout, http_503, oversized...
        )
        self.detail = detail  # for the log only
        self.retry_after = retry_after  # seconds the upstream asked us to wait


class VPNAPIError(VPNServiceError):
    """The upstream is unreachable, answered non-2xx, or sent more than the size cap."""

    status = 503
    public = "The server list is temporarily unavailable. Try again later."


class VPNDataError(VPNServiceError):
    """The upstream sent a payload of the wrong shape, or a list the sanity guard refused."""
