"""The one upstream exchange: HTTP/2, TLS verified, one deadline, a size cap, conditional."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import zlib
from collections.abc import Callable
from http import HTTPStatus

import attrs
import httpx

from draco import __version__
from draco.catalog.dataset import NO_VALIDATORS, Dataset, Validators, make_dataset
from draco.exceptions import VPNAPIError, VPNServiceError
from draco.providers import Provider
from draco.settings import Settings

log = logging.getLogger("draco.catalog")
INFLATE_STEP = 1 << 20  # bytes inflated at a time, at most
GZIP = zlib.MAX_WBITS | 16  # zlib's window for a gzip member


@attrs.frozen
class NotModified:
    """The upstream's 304: the list held is still what it serves; `data` is that list,
    renewed as fetched now."""

    data: Dataset


def upstream_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The one client for every upstream: HTTP/2, TLS verification always on."""
    limits = httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=settings.http_max_keepalive_connections,
    )
    return httpx.AsyncClient(
        http2=True,
        verify=True,  # always
        timeout=settings.http_timeout,
        limits=limits,
        headers={"User-Agent": f"draco/{__version__}", "Accept-Encoding": "gzip"},
        transport=transport,
    )


def failure_class(exc: BaseException) -> str:
    """What /health and the metrics call a failed refresh."""
    if isinstance(exc, VPNServiceError):
        return exc.reason
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.TransportError):
        return "connection"
    return "error"


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date (from `now`); None if
    neither."""
    if value and value.isdecimal():  # isdigit() would pass "²", which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value) if value else None
    except ValueError:
        return None
    return max(0.0, when.timestamp() - now) if when and when.tzinfo else None


async def read_capped(response: httpx.Response, cap: int) -> bytearray:
    """The body, refusing more than `cap` bytes: declared, before reading any, or actual, after
    gzip. Inflated here a MiB at a time: httpx's decoders inflate each chunk whole, so a few
    KiB of nested gzip would take gigabytes before any cap is checked; and they drop every
    gzip member after the first, where RFC 1952 makes a body a series of members."""
    declared = response.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > cap:
        raise VPNAPIError("oversized")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise VPNAPIError("unsupported_encoding")
    inflate = zlib.decompressobj(GZIP) if encoding == "gzip" else None
    body = bytearray()
    try:
        async for raw in response.aiter_raw():
            pending = raw
            while pending:
                if inflate is None:
                    chunk = pending
                    pending = b""
                else:
                    if inflate.eof:  # the next member
                        inflate = zlib.decompressobj(GZIP)
                    chunk = inflate.decompress(pending, INFLATE_STEP)
                    pending = inflate.unconsumed_tail or inflate.unused_data
                body += chunk
                if len(body) > cap:
                    raise VPNAPIError("oversized")
    except zlib.error:
        raise VPNAPIError("invalid_encoding") from None
    if inflate and not inflate.eof:
        raise VPNAPIError("invalid_encoding")  # a gzip stream cut short
    return body


async def fetch(
    client: httpx.AsyncClient,
    settings: Settings,
    provider: Provider,
    current: Dataset | None,
    clock: Callable[[], float],
) -> Dataset | NotModified:
    """The provider's list, parsed, or NotModified when the upstream answers 304."""
    validators = current.validators if current else NO_VALIDATORS
    conditions = {"If-None-Match": validators.etag, "If-Modified-Since": validators.last_modified}
    headers = {name: value for name, value in conditions.items() if value}
    # One deadline for the whole exchange: httpx's own timeouts are per read, and
    # a body trickling a byte at a time would never trip them.
    async with asyncio.timeout(settings.http_timeout):
        url = provider.url(settings.api_url(provider.name))
        request = client.stream("GET", url, params=provider.params(settings), headers=headers)
        async with request as response:
            if response.status_code == HTTPStatus.NOT_MODIFIED and current:
                renewed = attrs.evolve(current, fetched_at=clock(), provisional=False)
                return NotModified(renewed)
            if response.status_code != HTTPStatus.OK:
                after = retry_after(response.headers.get("retry-after"), clock())
                raise VPNAPIError(f"http_{response.status_code}", retry_after=after)
            body = await read_capped(response, settings.upstream_max_bytes)
    fetched_at = clock()
    parsed = await asyncio.to_thread(provider.parse, body)
    del body
    if parsed.skipped:
        log.info("%s: skipped %d malformed entries", provider.name, parsed.skipped)
    given = Validators(response.headers.get("etag"), response.headers.get("last-modified"))
    return make_dataset(provider.name, parsed.servers, fetched_at, validators=given)
