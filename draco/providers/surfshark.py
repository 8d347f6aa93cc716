"""Surfshark server clusters: WireGuard-capable clusters (`wireguard`, `generic`) with a key.
There is no status field: being listed is the only sign of being online. `tags` says
`physical` or `virtual` (a virtual location's server stands in another country) and
`p2p`; `coordinates` holds the location's latitude and longitude."""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

_WIREGUARD_TYPES = ("wireguard", "generic")
_Cluster = base.entry(
    "Cluster",
    "identifier type public_key country country_code city load tags coordinates",
    {
        "identifier": "connectionName",
        "public_key": "pubKey",
        "country_code": "countryCode",
        "city": "location",
    },
)


def _server(cluster: Any) -> Server | None:
    if cluster.type not in _WIREGUARD_TYPES:
        return None
    tags = cluster.tags if isinstance(cluster.tags, list) else None
    place = cluster.coordinates if isinstance(cluster.coordinates, dict) else {}
    return base.server(
        "surfshark",
        cluster,
        p2p=None if tags is None else "p2p" in tags,
        virtual=None if tags is None else "virtual" in tags,
        latitude=place.get("latitude"),
        longitude=place.get("longitude"),
    )


def parse(payload: base.Payload) -> base.Parsed:
    decoder = msgspec.json.Decoder(_Cluster)
    clusters = base.decode(payload, list[msgspec.Raw])
    return base.collect(clusters, lambda raw: _server(decoder.decode(raw)))


# NordLynx-style default port: gluetun's Surfshark WireGuard default, qdm12/gluetun
# internal/provider/surfshark/connection.go, NewConnectionDefaults(1443, 1194, 51820);
# Surfshark's own configurations say `Endpoint = …:51820`. The list gives no address: the
# Endpoint is the hostname.
PROVIDER = base.Provider(
    name="surfshark",
    parse=parse,
    reports="load city p2p virtual latitude longitude",
    reports_status=False,
    wireguard_port=51820,
    endpoint="identifier",
)
