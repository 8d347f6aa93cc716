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


class _Host(msgspec.Struct):
    hostname: Any = None
    public_key: Any = None
    host: Any = None
    load: Any = None


class _Location(msgspec.Struct):
    country_code: Any = None
    country: Any = None
    city: Any = None
    hosts: list[msgspec.Raw] = []


class _Payload(msgspec.Struct):
    wireguard: list[msgspec.Raw]


def parse(payload: bytes) -> tuple[list[Server], int]:
    top = base.decode(payload, _Payload)
    location_decoder, host_decoder = msgspec.json.Decoder(_Location), msgspec.json.Decoder(_Host)
    hosts = []  # (location or None when it is malformed, raw host)
    for raw in top.wireguard:
        try:
            location = location_decoder.decode(raw)
        except ValueError:
            hosts.append((None, None))
            continue
        hosts += [(location, host) for host in location.hosts]

    def server(item) -> Server:
        location, raw = item
        host = host_decoder.decode(raw)
        code, name = base.country(location.country_code, location.country)
        return Server(
            "ivpn",
            name,
            code,
            base.identifier(host.hostname),
            base.wireguard_key(host.public_key),
            base.load(host.load),
            city=base.text(location.city),
            ipv4=base.ipv4(host.host),
        )

    return base.collect(hosts, server)


PROVIDER = base.Provider("ivpn", "ivpn_api_url", parse, reports_load=True, reports_status=False, ordering="upstream")
