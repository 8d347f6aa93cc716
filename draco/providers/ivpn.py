"""IVPN servers.json: every host of every WireGuard location.

IVPN has no status field (being listed is the only sign of being online), and its
load is a float percentage, rounded here to the schema's integer; files before
mid-2022 have no load at all.
"""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base


class _Host(msgspec.Struct, rename={"identifier": "hostname", "ipv4": "host"}):
    identifier: Any = None
    public_key: Any = None
    ipv4: Any = None
    load: Any = None


class _Location(msgspec.Struct):
    country_code: Any = None
    country: Any = None
    city: Any = None
    hosts: list[msgspec.Raw] = []


class _Payload(msgspec.Struct):
    wireguard: list[msgspec.Raw]


def parse(payload: base.Payload) -> base.Parsed:
    top = base.decode(payload, _Payload)
    location_decoder, host_decoder = msgspec.json.Decoder(_Location), msgspec.json.Decoder(_Host)
    hosts: list[tuple[_Location | None, msgspec.Raw | None]] = []  # location None: a malformed one
    for raw in top.wireguard:
        try:
            location = location_decoder.decode(raw)
        except base.BAD_ENTRY:
            hosts.append((None, None))
            continue
        hosts += [(location, host) for host in location.hosts]

    def server(item: tuple[_Location, msgspec.Raw]) -> Server:
        location, raw = item
        host = host_decoder.decode(raw)
        return base.server(
            "ivpn", host, country_code=location.country_code, country=location.country, city=location.city
        )

    return base.collect(hosts, server)


PROVIDER = base.Provider("ivpn", "ivpn_api_url", parse, reports_load=True, reports_status=False, ordering="upstream")
