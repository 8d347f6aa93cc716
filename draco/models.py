"""The one schema every provider is normalised into, the answers built from it, and
the one JSON encoder. The OpenAPI document takes its schemas from these classes."""

from __future__ import annotations

import collections
import gzip
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Ordering = Literal["load", "upstream", "weight"]  # the default order of a provider's list
Freshness = Literal["fresh", "stale", "none"]  # of a provider's list; none: nothing to serve
CountryCode = Annotated[str, Meta(pattern="^[A-Z]{2}$", description="ISO 3166-1 alpha-2, upper case")]


class Server(msgspec.Struct, frozen=True):
    # The first seven fields, in this order, are the original service's schema.
    provider: str
    country: str
    country_code: CountryCode
    identifier: Annotated[str, Meta(description="the server's hostname, or the provider's name for it")]
    public_key: Annotated[str, Meta(description="WireGuard public key, 32 bytes in base64")]
    load: Annotated[int, Meta(ge=0, le=100)] | None = None
    latency: Annotated[float | None, Meta(description="milliseconds, when measured")] = None
    city: str | None = None
    ipv4: str | None = None
    include_in_country: Annotated[bool, Meta(description="false: left out of country queries")] = True
    p2p: Annotated[bool | None, Meta(description="peer-to-peer traffic allowed (NordVPN, Windscribe)")] = None
    owned: Annotated[bool | None, Meta(description="hardware the provider owns (Mullvad)")] = None
    free: Annotated[bool | None, Meta(description="open to free accounts (Windscribe)")] = None


_WIREGUARD_NAMES = {"public_key": "PublicKey", "endpoint": "Endpoint", "allowed_ips": "AllowedIPs", "note": "Note"}


class Country(msgspec.Struct, frozen=True):
    code: str
    name: str
    display: str


class Page(msgspec.Struct, frozen=True):
    total: Annotated[int, Meta(description="servers in the whole list")]
    page: int
    page_size: int
    total_pages: int
    data: Annotated[Sequence[Server], Meta(description="this page's servers")]


class Provider(msgspec.Struct, frozen=True):
    name: str
    servers: int
    countries: int
    reports_load: bool
    reports_status: Annotated[bool, Meta(description="whether the upstream says which servers are online")]
    ordering: Ordering
    data_age: Annotated[int | None, Meta(description="seconds since the list was fetched")]
    status: Freshness
    filters: Annotated[list[str], Meta(description="the filters its list can answer")]


class LatencyRun(msgspec.Struct, frozen=True):
    total_servers: Annotated[int, Meta(description="servers that match the query")]
    measured: Annotated[int, Meta(description="servers probed (or taken from the cache)")]
    successful: int
    failed: Annotated[int, Meta(description="servers that did not answer within the timeout")]
    method: Annotated[str, Meta(description="the method that ran: icmp, fping or tcp")]
    servers: list[Server]


class ProviderHealth(msgspec.Struct, frozen=True):
    servers: int
    data_age: Annotated[int | None, Meta(description="seconds since the list was fetched")]
    serving_stale: bool
    last_success: Annotated[float | None, Meta(description="Unix time of the last accepted refresh")]
    last_failure: Annotated[str | None, Meta(description="the class of the last failure: timeout, http_503...")]
    last_failure_at: float | None


class Health(msgspec.Struct, frozen=True):
    status: Literal["healthy", "unhealthy"]
    version: str
    providers: dict[str, ProviderHealth]


class Peer(msgspec.Struct, frozen=True, omit_defaults=True, rename=_WIREGUARD_NAMES):
    """A WireGuard [Peer] section, to paste under the client's own [Interface]."""

    public_key: str
    endpoint: str
    allowed_ips: str
    note: Annotated[str | None, Meta(description="what else the provider needs from the client")] = None


class KeyChange(msgspec.Struct, frozen=True):
    identifier: str
    old_key: str
    new_key: str


class Changes(msgspec.Struct, frozen=True):
    """What changed between a provider's last two accepted lists, fetched at `previous` and `current`."""

    provider: str
    previous: Annotated[float, Meta(description="Unix time of the previous list")]
    current: Annotated[float, Meta(description="Unix time of the current list")]
    added: list[Server]
    removed: list[Server]
    rekeyed: list[KeyChange]


class Ready(msgspec.Struct, frozen=True):
    status: Literal["ready"]
    providers: Annotated[list[str], Meta(description="READY_PROVIDERS: each has a list to serve")]


class Detail(msgspec.Struct, frozen=True):
    loc: list[str]
    msg: str
    type: str


class Error(msgspec.Struct, frozen=True, omit_defaults=True):
    error: str
    message: str
    details: list[Detail] | None = None


encode = msgspec.json.Encoder().encode  # the one JSON encoder
GZIP_MINIMUM = 500  # bytes: a smaller body is not worth compressing


def gzipped(body: bytes) -> bytes | None:
    """The one gzip decision: `body` compressed when it is worth it, else None."""
    return gzip.compress(body, 6, mtime=0) if len(body) >= GZIP_MINIMUM else None


def countries(servers: Sequence[Server]) -> list[Country]:
    """Distinct countries sorted by code; the most common spelling of a name wins."""
    names: dict[str, str] = {}
    for (code, name), _ in collections.Counter((s.country_code, s.country) for s in servers).most_common():
        names.setdefault(code, name)  # most common first; ties in the order first seen
    return [Country(code, names[code], f"{code} - {names[code]}") for code in sorted(names)]


def paginate(items: Sequence[Server], page: int, page_size: int) -> Page:
    total = len(items)
    start = (page - 1) * page_size
    return Page(total, page, page_size, -(-total // page_size), items[start : start + page_size])
