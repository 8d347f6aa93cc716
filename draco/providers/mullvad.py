"""Mullvad's app relay list: active WireGuard relays, ordered by their weight.

A relay carries no country: its `location` key (`gb-lon`) points into the
`locations` map, whose country names are sometimes not proper ("UK", "USA"); the
ISO code is the key's prefix. Mullvad reports no load. Relays marked
`include_in_country: false` are listed but left out of country queries.
"""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base


class _Relay(msgspec.Struct, rename={"identifier": "hostname", "ipv4": "ipv4_addr_in"}):
    identifier: Any = None
    active: Any = None
    location: Any = None
    public_key: Any = None
    weight: Any = 0
    include_in_country: Any = True
    ipv4: Any = None


class _WireGuard(msgspec.Struct):
    relays: list[msgspec.Raw]


class _Payload(msgspec.Struct):
    locations: dict[str, Any]
    wireguard: _WireGuard


def _server(relay: _Relay | None, locations: dict[str, Any]) -> Server | None:
    if relay is None:
        raise ValueError("a malformed relay")
    if relay.active is not True:
        return None
    place = locations[relay.location]
    return base.server(
        "mullvad",
        relay,
        country_code=relay.location.partition("-")[0],
        country=place["country"],
        city=place.get("city"),
        include_in_country=relay.include_in_country is not False,
    )


def _weight(relay: _Relay | None) -> float:
    weight = getattr(relay, "weight", 0)
    return weight if isinstance(weight, int | float) and not isinstance(weight, bool) else 0


def parse(payload: base.Payload) -> base.Parsed:
    top = base.decode(payload, _Payload)
    decoder = msgspec.json.Decoder(_Relay)
    relays: list[_Relay | None] = []
    for raw in top.wireguard.relays:
        try:
            relays.append(decoder.decode(raw))
        except base.BAD_ENTRY:
            relays.append(None)  # a malformed relay: collect() counts it as skipped
    relays.sort(key=_weight, reverse=True)  # heaviest first; a stable sort keeps ties in upstream order
    return base.collect(relays, lambda relay: _server(relay, top.locations))


PROVIDER = base.Provider(
    "mullvad", "mullvad_api_url", parse, reports_load=False, reports_status=True, ordering="weight"
)
