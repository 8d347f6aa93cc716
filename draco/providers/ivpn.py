"""IVPN servers.json: every host of every WireGuard location. No status field (being
listed is the only sign of being online); the load is a float percentage, rounded to
the schema's integer (files before mid-2022 have none)."""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

_Host = base.entry(
    "Host",
    "identifier public_key ipv4 load",
    {"identifier": "hostname", "ipv4": "host"},
)


class _Location(msgspec.Struct):
    country_code: Any = None
    country: Any = None
    city: Any = None
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
        }
        return base.server("ivpn", host_decoder.decode(raw), **place)

    hosts = base.nested(base.listed(payload, "wireguard"), location_decoder, "hosts")
    return base.collect(hosts, server)


# gluetun's IVPN default WireGuard port: qdm12/gluetun internal/provider/ivpn/connection.go,
# "const defaultPort = 58237" (IVPN's WireGuard ports: 2049, 2050, 53, 30587, 41893, 48574,
# 58237).
PROVIDER = base.Provider(
    name="ivpn",
    parse=parse,
    reports="load city ipv4",
    reports_status=False,
    wireguard_port=58237,
)
