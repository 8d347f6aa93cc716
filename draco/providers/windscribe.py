"""Windscribe's mobile server list: one WireGuard server per datacenter group. A location
(`US Central`) holds groups, each with its own WireGuard key and endpoint hostname. The
list has ISO codes but no country names (they come from ISO 3166), and no load. `p2p`
is the location's flag; a group with `pro: 0` is open to free accounts; `gps` holds the
group's "latitude,longitude"."""

from __future__ import annotations

from typing import Any

import iso3166
import msgspec

from draco.models import Server
from draco.providers import base

# ISO's formal short names, but the common one where every other provider uses it.
_COMMON = {
    "GB": "United Kingdom",
    "US": "United States",
    "KR": "South Korea",
    "MD": "Moldova",
    "RU": "Russia",
    "VN": "Vietnam",
}
_Group = base.entry(
    "Group",
    "identifier public_key ipv4 city pro gps",
    {"identifier": "wg_endpoint", "public_key": "wg_pubkey", "ipv4": "ping_ip"},
)


class _Location(msgspec.Struct):
    country_code: Any = None
    status: Any = None
    p2p: Any = None
    groups: list[msgspec.Raw] = []


def country_name(code: Any) -> str:
    found = iso3166.countries_by_alpha2.get(code.strip().upper()) if isinstance(code, str) else None
    if found is None:
        raise ValueError("not an ISO country code")
    return _COMMON.get(found.alpha2, found.name)


def _coordinates(gps: Any) -> tuple[float | None, float | None]:
    """Windscribe's "latitude,longitude"; (None, None) when it is not that."""
    try:
        latitude, longitude = gps.split(",")
        return float(latitude), float(longitude)
    except (AttributeError, ValueError):
        return None, None


def parse(payload: base.Payload) -> base.Parsed:
    location_decoder = msgspec.json.Decoder(_Location)
    group_decoder = msgspec.json.Decoder(_Group)
    groups = base.nested(base.listed(payload, "data"), location_decoder, "groups")

    def server(item: tuple[Any, Any]) -> Server | None:
        location, raw = item
        if location.status != 1:  # 1: up
            return None
        group = group_decoder.decode(raw)
        pro = base.flag(group.pro)
        latitude, longitude = _coordinates(group.gps)
        return base.server(
            "windscribe",
            group,
            country_code=location.country_code,
            country=country_name(location.country_code),
            p2p=location.p2p,
            free=None if pro is None else not pro,
            latitude=latitude,
            longitude=longitude,
        )

    return base.collect(groups, server)


# gluetun's Windscribe default WireGuard port: qdm12/gluetun
# internal/provider/windscribe/connection.go, NewConnectionDefaults(443, 1194, 1194); its
# WireGuard ports, gluetun's internal/configuration/settings/wireguardselection.go
# (tests/fixtures/SOURCES.md). The
# group's wg_endpoint hostname is the WireGuard endpoint (its ping_ip is where latency is
# measured), so the Endpoint is the hostname.
PROVIDER = base.Provider(
    name="windscribe",
    parse=parse,
    reports="city ipv4 p2p free latitude longitude",
    wireguard_port=1194,
    wireguard_ports=((53, 53), (80, 80), (123, 123), (443, 443), (1194, 1194), (65142, 65142)),
    endpoint="identifier",
)
