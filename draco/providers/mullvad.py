"""Mullvad's app relay list: active WireGuard relays, ordered by their weight. A relay's
`location` key (`gb-lon`) points into the `locations` map (country names there are
sometimes "UK", "USA"); the ISO code is the key's prefix. No load. Relays marked
`include_in_country: false` are listed but left out of country queries."""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

_Relay = base.entry(
    "Relay",
    "identifier active location public_key weight include_in_country ipv4 owned",
    {"identifier": "hostname", "ipv4": "ipv4_addr_in"},
)


class _WireGuard(msgspec.Struct):
    relays: list[msgspec.Raw]


class _Payload(msgspec.Struct):
    locations: dict[str, Any]
    wireguard: _WireGuard


def _server(relay: Any, locations: dict[str, Any]) -> Server | None:
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
        include_in_country=relay.include_in_country,
        owned=relay.owned,
    )


def _weight(relay: Any) -> float:
    weight = getattr(relay, "weight", 0)
    return weight if isinstance(weight, int | float) and not isinstance(weight, bool) else 0


def parse(payload: base.Payload) -> base.Parsed:
    top = base.decode(payload, _Payload)
    relays = base.decoded(top.wireguard.relays, msgspec.json.Decoder(_Relay))
    # heaviest first; a stable sort keeps ties in upstream order
    relays.sort(key=_weight, reverse=True)
    return base.collect(relays, lambda relay: _server(relay, top.locations))


# gluetun's Mullvad default WireGuard port: qdm12/gluetun internal/provider/mullvad/connection.go,
# NewConnectionDefaults(443, 1194, 51820); 51820 lies in the relay list's wireguard port_ranges.
PROVIDER = base.Provider(
    name="mullvad",
    parse=parse,
    reports="city ipv4 owned",
    ordering="weight",
    wireguard_port=51820,
)
