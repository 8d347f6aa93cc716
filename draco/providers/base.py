"""What a provider module declares, and the checks every parser shares.

A parser is pure: bytes in, `Parsed(servers, skipped)` out. A payload of the wrong
overall shape, or nested deeper than the decoder goes, raises VPNDataError; a bad entry
is skipped and counted. Entries are split as raw JSON, then decoded one at a time into
structs of only the fields a provider needs: memory stays near the body size, and one
malformed entry cannot spoil the others.

`server()` is the one place a Server's fields are checked and normalised, for every
provider alike, and for lists read back from a snapshot or a shared catalog too."""

from __future__ import annotations

import base64
import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple, Protocol

import attrs
import msgspec

from draco.exceptions import VPNDataError
from draco.models import Ordering, Server

NULL = msgspec.Raw(b"null")
Payload = bytes | bytearray
# What a bad entry may raise; RecursionError: nesting deeper than the decoder goes.
BAD_ENTRY = (ValueError, LookupError, TypeError, AttributeError, RecursionError)
KEY_BYTES = 32  # a WireGuard public key
LONGEST_HOSTNAME = 253
COUNTRY_CODE_LENGTH = 2
FULL_LOAD = 100  # percent
LAST_PORT = 65535
LATITUDE = 90.0  # degrees, either side of the equator
LONGITUDE = 180.0  # degrees, either side of Greenwich
WIREGUARD_PORT = 51820  # WireGuard's own default


class Parsed(NamedTuple):
    servers: list[Server]
    skipped: int  # malformed entries left out


class UpstreamSettings(Protocol):
    """What an upstream request reads from the settings (draco.settings.Settings has it)."""

    @property
    def nordvpn_server_limit(self) -> int: ...


def _words(fields: str | frozenset[str]) -> frozenset[str]:
    return fields if isinstance(fields, frozenset) else frozenset(fields.split())


def _port_ranges(value: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    if not value or any(not 1 <= first <= last <= LAST_PORT for first, last in value):
        raise ValueError("port ranges are (first, last) pairs within 1..65535")
    return value


def _no_params(_settings: UpstreamSettings) -> dict[str, Any]:
    return {}


@attrs.frozen
class Provider:
    name: str
    parse: Callable[[Payload], Parsed]
    # The optional Server fields its list fills (OPTIONAL below), space-separated.
    reports: frozenset[str] = attrs.field(converter=_words)
    reports_status: bool = True  # whether the upstream says which servers are online
    ordering: Ordering = "upstream"  # the default order of its list, as told by /api/providers
    # its documented default WireGuard port, with the source beside it
    wireguard_port: int = WIREGUARD_PORT
    # the ports its WireGuard servers listen on, as (first, last) ranges, with the source
    wireguard_ports: tuple[tuple[int, int], ...] = attrs.field(
        default=((WIREGUARD_PORT, WIREGUARD_PORT),), validator=lambda _, __, v: _port_ranges(v)
    )
    endpoint: Literal["ipv4", "identifier"] = "ipv4"  # what a [Peer] Endpoint names, when known
    preshared_key: bool = False  # whether a client also needs its account's PresharedKey
    params: Callable[[UpstreamSettings], dict[str, Any]] = _no_params  # the upstream query

    def __attrs_post_init__(self) -> None:
        if not self.listens_on(self.wireguard_port):
            raise ValueError(f"{self.name}: its default port is not one of its ports")

    def listens_on(self, port: int) -> bool:
        return any(first <= port <= last for first, last in self.wireguard_ports)

    def url(self, template: str) -> str:
        """The upstream URL, with `{unix-ts}` in it filled (it only defeats caches)."""
        return template.replace("{unix-ts}", str(int(time.time())))


def decode(payload: Payload, shape: Any) -> Any:
    try:
        return msgspec.json.decode(payload, type=shape)
    except (ValueError, RecursionError):
        raise VPNDataError("invalid_data", f"payload is not {shape}") from None


def listed(payload: Payload, key: str) -> list[msgspec.Raw]:
    """The entries of the list under `key` of the payload's top-level object, undecoded."""
    top = decode(payload, msgspec.defstruct("Top", [(key, list[msgspec.Raw])]))
    return list(getattr(top, key))


def entry(name: str, fields: str, rename: dict[str, str] | None = None) -> Any:
    """A struct holding the named fields of an upstream entry, each of any type and None
    when missing (server() checks each); `rename` maps a schema name to the upstream's."""
    return msgspec.defstruct(name, [(field, Any, None) for field in fields.split()], rename=rename)


def decoded(raws: Iterable[msgspec.Raw], decoder: msgspec.json.Decoder[Any]) -> list[Any]:
    """Each entry decoded, or None where it does not decode (collect() counts it as skipped)."""
    entries: list[Any] = []
    for raw in raws:
        try:
            entries.append(decoder.decode(raw))
        except BAD_ENTRY:
            entries.append(None)
    return entries


def nested(
    parents: Iterable[msgspec.Raw], decoder: msgspec.json.Decoder[Any], children: str
) -> list[Any]:
    """(parent, raw child) for each child of each parent (a location's hosts); a parent
    that does not decode becomes (None, None), which collect() counts as skipped."""
    pairs: list[Any] = []
    for parent in decoded(parents, decoder):
        if parent is None:
            pairs.append((None, None))
        else:
            pairs += [(parent, child) for child in getattr(parent, children) or ()]
    return pairs


def collect(entries: Iterable[Any], convert: Callable[[Any], Server | None]) -> Parsed:
    """Convert each entry; None means filtered out (offline, not WireGuard), an
    exception a bad entry. Repeated identifiers keep the first."""
    servers: dict[str, Server] = {}  # by identifier, in the order first seen
    skipped = 0
    for entry in entries:
        try:
            server = convert(entry)
        except BAD_ENTRY:  # one bad entry never fails the list
            skipped += 1
            continue
        if server is None:
            continue
        if server.identifier in servers:
            skipped += 1  # the identifier came before: the first stays
        else:
            servers[server.identifier] = server
    return Parsed(list(servers.values()), skipped)


def wireguard_key(value: Any) -> str:
    """A WireGuard public key: 32 bytes in canonical standard base64 (the one spelling
    that re-encodes to itself, as `wg` requires); whitespace around it is trimmed."""
    key = value.strip() if isinstance(value, str) else ""
    raw = base64.b64decode(key, validate=True)  # not base64 at all: binascii.Error, a ValueError
    if len(raw) != KEY_BYTES or base64.b64encode(raw).decode() != key:
        raise ValueError("not a WireGuard public key")
    return key


# Real payloads carry codes and names outside ISO 3166 (see tests/fixtures/SOURCES.md).
_CODE_ALIASES = {"UK": "GB"}
_NAME_FIXES = {"UK": "United Kingdom", "USA": "United States", "Combodia": "Cambodia"}


def country(code: Any, name: Any) -> tuple[str, str]:
    """ISO 3166 alpha-2 upper-case code and a proper name, or ValueError."""
    if not isinstance(code, str) or not isinstance(name, str):
        raise ValueError("country missing")
    code = code.strip().upper()
    code = _CODE_ALIASES.get(code, code)
    if not (len(code) == COUNTRY_CODE_LENGTH and code.isascii() and code.isalpha()):
        raise ValueError("not an ISO country code")
    name = text(name) or ""
    return code, _NAME_FIXES.get(name, name) or code


def text(value: Any) -> str | None:
    """A printable name, trimmed: a line break in a name could forge a line of a config."""
    if not isinstance(value, str) or not value.isprintable():
        return None
    return value.strip() or None


def identifier(value: Any) -> str:
    """Hostnames: printable ASCII, no spaces, at most 253 characters."""
    name = value.strip().lower() if isinstance(value, str) else ""
    plain = name.isascii() and name.isprintable() and " " not in name
    if not (0 < len(name) <= LONGEST_HOSTNAME and plain):
        raise ValueError("bad identifier")
    return name


def load(value: Any) -> int | None:
    """A load percentage as the schema's integer; floats are rounded, anything else is unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= FULL_LOAD:
        return None
    return round(value)


def flag(value: Any) -> bool | None:
    """An upstream's 0/1 (or false/true) flag; anything else is unknown."""
    return bool(value) if value in (0, 1) else None


def listed_in_country(value: Any) -> bool:
    """Only an explicit false leaves a server out of country queries."""
    return value is not False


# Exactly what ipaddress.IPv4Address accepts, which is also how it prints it: four ASCII
# decimal octets of 0..255 without leading zeros. A test holds the two equal over any
# string. ipaddress took a quarter of the field checks' time, and a restored list has
# every address checked before draco is ready.
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def ipv4(value: Any) -> str | None:
    """A dotted-quad IPv4 address, trimmed."""
    address = value.strip() if isinstance(value, str) else ""
    return address if _IPV4.fullmatch(address) else None


def ipv6(value: Any) -> str | None:
    """A global-form IPv6 address, compressed; a zone (`%eth0`) names the sender's own link."""
    try:
        address = ipaddress.IPv6Address(value.strip()) if isinstance(value, str) else None
    except ValueError:
        return None
    return None if address is None or address.scope_id else str(address)


def port(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= LAST_PORT else None


def degrees(most: float) -> Callable[[Any], float | None]:
    """A check for a finite angle within -most..most."""

    def check(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value) or abs(value) > most:
            return None
        return float(value)

    return check


# The optional fields, each with the one function that checks and normalises it.
OPTIONAL: dict[str, Callable[[Any], Any]] = {
    "load": load,
    "city": text,
    "ipv4": ipv4,
    "include_in_country": listed_in_country,
    "p2p": flag,
    "owned": flag,
    "free": flag,
    "ipv6": ipv6,
    "daita": flag,
    "quic": flag,
    "virtual": flag,
    "multihop_port": port,
    "latitude": degrees(LATITUDE),
    "longitude": degrees(LONGITUDE),
}
_REQUIRED = ("country_code", "country", "identifier", "public_key")


def server(provider: str, entry: Any, **given: Any) -> Server:
    """A Server from an upstream entry whose fields are named (msgspec `rename`) as the
    schema names them, or given: each value is checked and normalised here, for every
    provider alike. ValueError when a required one is missing or malformed."""
    raw = {field: getattr(entry, field, None) for field in (*_REQUIRED, *OPTIONAL)} | given
    code, name = country(raw["country_code"], raw["country"])
    optional = {field: check(raw[field]) for field, check in OPTIONAL.items()}
    if optional["latitude"] is None or optional["longitude"] is None:  # half a place is none
        optional["latitude"] = optional["longitude"] = None
    return Server(
        provider=provider,
        country=name,
        country_code=code,
        identifier=identifier(raw["identifier"]),
        public_key=wireguard_key(raw["public_key"]),
        **optional,
    )
