"""What a provider module declares, and the checks every parser shares.

A parser is pure: bytes in, `(servers, skipped)` out. A payload of the wrong
overall shape raises VPNDataError; one bad entry is skipped and counted. Entries
are first split as raw JSON and then decoded one at a time into typed structs
that hold only the fields a provider needs, so memory stays near the body size
and one malformed entry cannot spoil the others.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import msgspec

from draco.errors import VPNDataError
from draco.models import Server

NULL = msgspec.Raw(b"null")


@attrs.frozen
class Provider:
    name: str
    url_setting: str  # the Settings field holding the upstream URL
    parse: Callable[[bytes], tuple[list[Server], int]]
    reports_load: bool
    reports_status: bool  # whether the upstream says which servers are online
    ordering: str  # the default order of its list, as told by /api/providers
    params: Callable[[Any], dict] = lambda _settings: {}


def decode(payload: bytes, shape: type) -> Any:
    try:
        return msgspec.json.decode(payload, type=shape)
    except ValueError:
        raise VPNDataError("invalid_data", f"payload is not {shape}") from None


def collect(entries: Iterable, convert: Callable[[Any], Server | None]) -> tuple[list[Server], int]:
    """Convert each entry; None means filtered out (offline, not WireGuard), an
    exception a bad entry. Repeated identifiers keep the first."""
    servers, seen, skipped = [], set(), 0
    for entry in entries:
        try:
            server = convert(entry)
        except (ValueError, LookupError, TypeError, AttributeError):  # one bad entry never fails the list
            skipped += 1
            continue
        if server is None:
            continue
        if server.identifier in seen:
            skipped += 1
            continue
        seen.add(server.identifier)
        servers.append(server)
    return servers, skipped


def wireguard_key(value: Any) -> str:
    """A WireGuard public key is 32 bytes in standard base64; whitespace around it is trimmed."""
    if isinstance(value, str):
        key = value.strip()
        try:
            if len(base64.b64decode(key, validate=True)) == 32:
                return key
        except (binascii.Error, ValueError):
            pass
    raise ValueError("not a WireGuard public key")


# Real payloads carry codes and names outside ISO 3166 (see shared/fixtures SOURCES.md).
_CODE_ALIASES = {"UK": "GB"}
_NAME_FIXES = {"UK": "United Kingdom", "USA": "United States", "Combodia": "Cambodia"}


def country(code: Any, name: Any) -> tuple[str, str]:
    """ISO 3166 alpha-2 upper-case code and a proper name, or ValueError."""
    if not isinstance(code, str) or not isinstance(name, str):
        raise ValueError("country missing")
    code = code.strip().upper()
    code = _CODE_ALIASES.get(code, code)
    if not (len(code) == 2 and code.isascii() and code.isalpha()):
        raise ValueError("not an ISO country code")
    name = name.strip()
    return code, _NAME_FIXES.get(name, name) or code


def text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def identifier(value: Any) -> str:
    """Hostnames: printable ASCII, no spaces, at most 253 characters."""
    if isinstance(value, str):
        value = value.strip().lower()
        if 0 < len(value) <= 253 and value.isascii() and value.isprintable() and " " not in value:
            return value
    raise ValueError("bad identifier")


def load(value: Any) -> int | None:
    """A load percentage as the schema's integer; floats are rounded, anything else is unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        return None
    return round(value)


def ipv4(value: Any) -> str | None:
    try:
        return str(ipaddress.IPv4Address(value.strip())) if isinstance(value, str) else None
    except ValueError:
        return None
