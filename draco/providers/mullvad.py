"""Mullvad's app relay list: active WireGuard relays, ordered by their weight. A relay's
`location` key (`gb-lon`) points into the `locations` map (country names there are
sometimes "UK", "USA"), which gives its city and coordinates; the ISO code is the key's
prefix. No load. Relays marked `include_in_country: false` are listed but left out of
country queries. `daita` is the relay's own flag; a relay whose `features.quic` is an
object (not null) offers WireGuard over QUIC."""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

_Relay = base.entry(
    "Relay",
    "identifier active location public_key weight include_in_country ipv4 ipv6 owned daita"
    " features",
    {"identifier": "hostname", "ipv4": "ipv4_addr_in", "ipv6": "ipv6_addr_in"},
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
    features = relay.features if isinstance(relay.features, dict) else {}
    return base.server(
        "mullvad",
        relay,
        country_code=relay.location.partition("-")[0],
        country=place["country"],
        city=place.get("city"),
        latitude=place.get("latitude"),
        longitude=place.get("longitude"),
        quic=isinstance(features.get("quic"), dict),
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
# NewConnectionDefaults(443, 1194, 51820). The ports are the relay list's own
# `wireguard.port_ranges` (tests/fixtures/mullvad, checked against it by the tests).
PROVIDER = base.Provider(
    name="mullvad",
    parse=parse,
    reports="city ipv4 ipv6 owned daita quic latitude longitude",
    ordering="weight",
    wireguard_port=51820,
    wireguard_ports=((53, 53), (123, 123), (4000, 33433), (33565, 51820), (52001, 60000)),
)
