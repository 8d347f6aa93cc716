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
COUNTRY_CODE = "^[A-Z]{2}$"
COUNTRY_CODE_MEANS = "ISO 3166-1 alpha-2, upper case"
CountryCode = Annotated[str, Meta(pattern=COUNTRY_CODE, description=COUNTRY_CODE_MEANS)]
Identifier = Annotated[
    str, Meta(description="the server's hostname, or the provider's name for it")
]
PublicKey = Annotated[str, Meta(description="WireGuard public key, 32 bytes in base64")]
Load = Annotated[int, Meta(ge=0, le=100)]
Latency = Annotated[float | None, Meta(description="milliseconds, when measured")]
InCountry = Annotated[bool, Meta(description="false: left out of country queries")]
P2P = Annotated[bool | None, Meta(description="peer-to-peer traffic allowed (NordVPN, Windscribe)")]
Owned = Annotated[bool | None, Meta(description="hardware the provider owns (Mullvad)")]
Free = Annotated[bool | None, Meta(description="open to free accounts (Windscribe)")]
IPv6 = Annotated[str | None, Meta(description="the IPv6 entry address, when published")]
Daita = Annotated[bool | None, Meta(description="DAITA, traffic-analysis defence (Mullvad)")]
Quic = Annotated[bool | None, Meta(description="WireGuard over QUIC offered (Mullvad)")]
Virtual = Annotated[
    bool | None, Meta(description="a virtual location: the server stands elsewhere (Surfshark)")
]
MultihopPort = (
    Annotated[int, Meta(ge=1, le=65535, description="the port that chains to this server (IVPN)")]
    | None
)
Latitude = Annotated[float, Meta(ge=-90, le=90, description="degrees north")] | None
Longitude = Annotated[float, Meta(ge=-180, le=180, description="degrees east")] | None
Distance = Annotated[float, Meta(ge=0, description="with near: kilometres from there")] | None
SetAside = Annotated[
    float | None, Meta(description="with include_quarantined: set aside by your reports until")
]
DataAge = Annotated[int | None, Meta(description="seconds since the list was fetched")]
ReportsStatus = Annotated[
    bool, Meta(description="whether the upstream says which servers are online")
]
LastSuccess = Annotated[float | None, Meta(description="Unix time of the last accepted refresh")]
LastFailure = Annotated[
    str | None, Meta(description="the class of the last failure: timeout, http_503...")
]
BaselineSince = Annotated[
    float | None, Meta(description="Unix time of the list the churn budget counts from")
]
PeerNote = Annotated[str | None, Meta(description="what else the provider needs from the client")]


class Server(msgspec.Struct, frozen=True):
    # The first seven fields, in this order, are the original service's schema.
    provider: str
    country: str
    country_code: CountryCode
    identifier: Identifier
    public_key: PublicKey
    load: Load | None = None
    latency: Latency = None
    city: str | None = None
    ipv4: str | None = None
    include_in_country: InCountry = True
    p2p: P2P = None
    owned: Owned = None
    free: Free = None
    ipv6: IPv6 = None
    daita: Daita = None
    quic: Quic = None
    virtual: Virtual = None
    multihop_port: MultihopPort = None
    latitude: Latitude = None
    longitude: Longitude = None
    distance: Distance = None
    quarantined_until: SetAside = None


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


class ProviderSummary(msgspec.Struct, frozen=True):
    """A provider in /api/providers: what its list says, and how fresh it is."""

    name: str
    servers: int
    countries: int
    reports_load: bool
    reports_status: ReportsStatus
    ordering: Ordering
    data_age: DataAge
    status: Freshness
    filters: Annotated[list[str], Meta(description="the filters its list can answer")]
    features: Annotated[list[str], Meta(description="the words features= can ask of it")]
    wireguard_port: Annotated[int, Meta(description="the [Peer] Endpoint's port by default")]
    wireguard_ports: Annotated[
        list[list[int]], Meta(description="the ports port= may ask for: [first, last] ranges")
    ]
    version: Annotated[str | None, Meta(description="its list's current version")]


class LatencyRun(msgspec.Struct, frozen=True):
    total_servers: Annotated[int, Meta(description="servers that match the query")]
    measured: Annotated[int, Meta(description="servers probed (or taken from the cache)")]
    successful: int
    failed: Annotated[int, Meta(description="servers that did not answer within the timeout")]
    method: Annotated[str, Meta(description="the method that ran: icmp, fping or tcp")]
    servers: list[Server]


class HeldList(msgspec.Struct, frozen=True):
    """A list over the churn budget, waiting: named by its digest, first sent `since`,
    served at `until` if it is sent alike until then; its churn against the baseline."""

    digest: str
    since: float
    until: float
    removed: int
    added: int
    rekeyed: int
    readdressed: int
    compared_with: Annotated[int, Meta(description="servers in the baseline")]


Trusted = Literal["first use", "snapshot", "shared catalog", "held long enough", "operator"]


class ProviderHealth(msgspec.Struct, frozen=True):
    servers: int
    data_age: DataAge
    serving_stale: bool
    last_success: LastSuccess
    last_failure: LastFailure
    last_failure_at: float | None
    baseline_since: BaselineSince
    trust: Annotated[Trusted | None, Meta(description="where the guard's trust began")]
    held: Annotated[HeldList | None, Meta(description="a list over the churn budget")]


class Reports(msgspec.Struct, frozen=True):
    scopes: Annotated[int, Meta(description="API keys (or the instance) with servers set aside")]
    servers: Annotated[int | None, Meta(description="servers set aside; null when in Redis")]


class Health(msgspec.Struct, frozen=True):
    status: Literal["healthy", "unhealthy"]
    version: str
    providers: dict[str, ProviderHealth]
    reports: Reports


_WIREGUARD_NAMES = {
    "public_key": "PublicKey",
    "endpoint": "Endpoint",
    "allowed_ips": "AllowedIPs",
    "note": "Note",
}


class Peer(msgspec.Struct, frozen=True, omit_defaults=True, rename=_WIREGUARD_NAMES):
    """A WireGuard [Peer] section, to paste under the client's own [Interface]."""

    public_key: str
    endpoint: str
    allowed_ips: str
    note: PeerNote = None


class SingBoxPeer(msgspec.Struct, frozen=True, omit_defaults=True):
    address: str
    port: int
    public_key: str
    allowed_ips: list[str]
    pre_shared_key: str | None = None


class SingBoxEndpoint(msgspec.Struct, frozen=True):
    type: str
    tag: str
    address: list[str]
    private_key: str
    peers: list[SingBoxPeer]


class SingBox(msgspec.Struct, frozen=True):
    """sing-box 1.11's WireGuard endpoint (configuration/endpoint/wireguard)."""

    endpoints: list[SingBoxEndpoint]


class MihomoProxy(msgspec.Struct, frozen=True, omit_defaults=True, rename="kebab"):
    """A mihomo (Clash Meta) proxy of `type: wireguard` (its docs: config/proxies/wg)."""

    name: str
    type: str
    server: str
    port: int
    ip: str
    private_key: str
    public_key: str
    allowed_ips: list[str]
    udp: bool
    pre_shared_key: str | None = None


class Mihomo(msgspec.Struct, frozen=True):
    proxies: list[MihomoProxy]


ChangeKind = Literal["added", "removed", "rekeyed", "readdressed", "rekeyed and readdressed"]


class ServerChange(msgspec.Struct, frozen=True):
    """One server, named once: its key and entry address at the `since` version (`old_`,
    null when it was added) and now (`new_`, null when it was removed)."""

    identifier: str
    change: ChangeKind
    old_key: str | None
    new_key: str | None
    old_address: str | None
    new_address: str | None
    old_ipv6: str | None
    new_ipv6: str | None


class Changes(msgspec.Struct, frozen=True):
    """What changed between two versions of a provider's list."""

    provider: str
    since: Annotated[str, Meta(description="the version compared with")]
    current: Annotated[str, Meta(description="the list's current version")]
    since_at: Annotated[float, Meta(description="Unix time it was accepted")]
    current_at: Annotated[float, Meta(description="Unix time the current one was accepted")]
    servers: list[ServerChange]


Outcome = Literal["unreachable", "handshake_failed", "ok"]


class Report(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A client's word on a server: it could not connect, or could again."""

    outcome: Outcome


class ReportAnswer(msgspec.Struct, frozen=True):
    provider: str
    identifier: str
    outcome: str
    quarantined_until: Annotated[float | None, Meta(description="set aside until; null: lifted")]


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
GZIP_LEVEL = 6


def gzipped(body: bytes) -> bytes | None:
    """The one gzip decision: `body` compressed when it is worth it, else None."""
    return gzip.compress(body, GZIP_LEVEL, mtime=0) if len(body) >= GZIP_MINIMUM else None


def countries(servers: Sequence[Server]) -> list[Country]:
    """Distinct countries sorted by code; the most common spelling of a name wins."""
    spellings = collections.Counter((s.country_code, s.country) for s in servers)
    names: dict[str, str] = {}
    for (code, name), _ in spellings.most_common():
        names.setdefault(code, name)  # most common first; ties in the order first seen
    return [Country(code, names[code], f"{code} - {names[code]}") for code in sorted(names)]


def paginate(items: Sequence[Server], page: int, page_size: int) -> Page:
    total = len(items)
    start = (page - 1) * page_size
    total_pages = -(-total // page_size)  # rounded up
    return Page(total, page, page_size, total_pages, items[start : start + page_size])
