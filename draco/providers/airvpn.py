"""AirVPN's public status list: servers whose health is "ok". The list carries no
WireGuard key: AirVPN uses one server public key for every server (below). A client
also needs its account's own preshared key, which no list carries. `ip_v6_in1` is the
IPv6 entry address that goes with `ip_v4_in1`."""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

# AirVPN's one WireGuard server public key, the same in every configuration AirVPN's
# generator writes; gluetun holds it too (qdm12/gluetun internal/provider/airvpn), and
# the project's tests/fixtures/SOURCES.md records both sources.
PUBLIC_KEY = "PyLCXAQT8KkM4T+dUsOQfn+Ub3pGxfGlxkIApuig+hk="

_Server = base.entry(
    "AirServer",
    "identifier health country country_code city load ipv4 ipv6",
    {
        "identifier": "public_name",
        "country": "country_name",
        "city": "location",
        "load": "currentload",
        "ipv4": "ip_v4_in1",
        "ipv6": "ip_v6_in1",
    },
)


def _server(entry: Any) -> Server | None:
    if entry.health != "ok":
        return None
    # currentload is the bandwidth used over the server's, above 100 when it is over
    # capacity: full.
    load = entry.load
    if isinstance(load, int) and not isinstance(load, bool):
        load = min(load, base.FULL_LOAD)
    return base.server("airvpn", entry, public_key=PUBLIC_KEY, load=load)


def parse(payload: base.Payload) -> base.Parsed:
    decoder = msgspec.json.Decoder(_Server)
    return base.collect(base.listed(payload, "servers"), lambda raw: _server(decoder.decode(raw)))


# gluetun's AirVPN default WireGuard port: qdm12/gluetun internal/provider/airvpn/connection.go,
# NewConnectionDefaults(443, 1194, 1637); its WireGuard ports, gluetun's
# internal/configuration/settings/wireguardselection.go (tests/fixtures/SOURCES.md).
PROVIDER = base.Provider(
    name="airvpn",
    parse=parse,
    reports="load city ipv4 ipv6",
    wireguard_port=1637,
    wireguard_ports=((1637, 1637), (47107, 47107)),
    preshared_key=True,
)
