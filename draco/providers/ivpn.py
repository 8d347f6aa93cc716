"""IVPN servers.json: every host of every WireGuard location. No status field (being
listed is the only sign of being online); the load is a float percentage, rounded to
the schema's integer (files before mid-2022 have none). A host's `multihop_port` is where
an entry server forwards to it as the exit of a chain; the location gives coordinates.
A host's `ipv6.local_ip` is the tunnel's inside address, not an entry address: IVPN
publishes no IPv6 entry."""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

_Host = base.entry(
    "Host",
    "identifier public_key ipv4 load multihop_port",
    {"identifier": "hostname", "ipv4": "host"},
)


class _Location(msgspec.Struct):
    country_code: Any = None
    country: Any = None
    city: Any = None
    latitude: Any = None
    longitude: Any = None
    hosts: list[msgspec.Raw] = []


def parse(payload: base.Payload) -> base.Parsed:
    location_decoder = msgspec.json.Decoder(_Location)
    host_decoder = msgspec.json.Decoder(_Host)

    def server(item: tuple[Any, Any]) -> Server:
        location, raw = item
        place = {
            "country_code": location.country_code,
            "country": location.country,
            "city": location.city,
            "latitude": location.latitude,
            "longitude": location.longitude,
        }
        return base.server("ivpn", host_decoder.decode(raw), **place)

    hosts = base.nested(base.listed(payload, "wireguard"), location_decoder, "hosts")
    return base.collect(hosts, server)


# gluetun's IVPN default WireGuard port: qdm12/gluetun internal/provider/ivpn/connection.go,
# "const defaultPort = 58237". The ports are the server list's own `config.ports.wireguard`
# (tests/fixtures/ivpn, 2025, checked against it by the tests).
PROVIDER = base.Provider(
    name="ivpn",
    parse=parse,
    reports="load city ipv4 multihop_port latitude longitude",
    wireguard_ports=(
        (53, 53),
        (80, 80),
        (123, 123),
        (443, 443),
        (500, 500),
        (1194, 1194),
        (2049, 2050),
        (4500, 4500),
        (5500, 19999),
        (30000, 65000),
    ),
    reports_status=False,
    wireguard_port=58237,
)
