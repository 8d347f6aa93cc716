"""NordVPN /v1/servers: online servers whose wireguard_udp technology is online and has a key.
The entry address is `station` (`ipv6_station` when not empty); the coordinates are the
first location's; the `legacy_p2p` group allows peer-to-peer traffic."""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base


class _Country(msgspec.Struct):
    name: Any = None
    code: Any = None
    city: Any = None  # {"name": ...}


class _Location(msgspec.Struct):
    country: _Country
    latitude: Any = None
    longitude: Any = None


class _Metadata(msgspec.Struct):  # one of a technology's {"name": ..., "value": ...} entries
    name: Any = None
    value: Any = None


_Pivot = base.entry("Pivot", "status")  # the technology's state on this server


class _Group(msgspec.Struct):
    identifier: Any = None


class _Technology(msgspec.Struct):
    identifier: Any = None
    metadata: msgspec.Raw = base.NULL
    pivot: msgspec.Raw = base.NULL


class _Entry(
    msgspec.Struct, rename={"identifier": "hostname", "ipv4": "station", "ipv6": "ipv6_station"}
):
    identifier: Any = None
    status: Any = None
    load: Any = None
    ipv4: Any = None
    ipv6: Any = None
    locations: msgspec.Raw = base.NULL
    technologies: list[_Technology] = []
    groups: list[_Group] = []


def _server(entry: _Entry) -> Server | None:
    wireguard = next((t for t in entry.technologies if t.identifier == "wireguard_udp"), None)
    if entry.status != "online" or wireguard is None:
        return None
    if msgspec.json.decode(wireguard.pivot, type=_Pivot).status != "online":
        return None
    groups = {group.identifier for group in entry.groups}
    if "legacy_dedicated_ip" in groups:  # it has a key, but serves only whoever bought that IP
        return None
    metadata = msgspec.json.decode(wireguard.metadata, type=list[_Metadata])
    key = next((m.value for m in metadata if m.name == "public_key"), None)
    location = msgspec.json.decode(entry.locations, type=list[_Location])[0]
    where = location.country
    city = where.city.get("name") if isinstance(where.city, dict) else None
    p2p = "legacy_p2p" in groups
    return base.server(
        "nordvpn",
        entry,
        public_key=key,
        country_code=where.code,
        country=where.name,
        city=city,
        p2p=p2p,
        latitude=location.latitude,
        longitude=location.longitude,
    )


def parse(payload: base.Payload) -> base.Parsed:
    decoder = msgspec.json.Decoder(_Entry)
    entries = base.decode(payload, list[msgspec.Raw])
    parsed = base.collect(entries, lambda raw: _server(decoder.decode(raw)))
    parsed.servers.sort(key=lambda s: (s.load is None, s.load or 0))  # least loaded, unknown last
    return parsed


def _params(settings: base.UpstreamSettings) -> dict[str, Any]:
    # limit=0 asks the API for every server.
    return {
        "filters[servers_technologies][identifier]": "wireguard_udp",
        "limit": settings.nordvpn_server_limit,
    }


# NordLynx (NordVPN's WireGuard) listens on UDP 51820: gluetun's default, qdm12/gluetun
# internal/provider/nordvpn/connection.go, NewConnectionDefaults(443, 1194, 51820).
PROVIDER = base.Provider(
    name="nordvpn",
    parse=parse,
    reports="load city ipv4 ipv6 p2p latitude longitude",
    ordering="load",
    wireguard_port=51820,
    params=_params,
)
