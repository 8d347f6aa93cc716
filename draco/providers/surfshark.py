"""Surfshark server clusters: WireGuard-capable clusters (`wireguard`, `generic`) with a key.
There is no status field: being listed is the only sign of being online."""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

_WIREGUARD_TYPES = ("wireguard", "generic")
_Cluster = base.entry(
    "Cluster",
    "identifier type public_key country country_code city load",
    {
        "identifier": "connectionName",
        "public_key": "pubKey",
        "country_code": "countryCode",
        "city": "location",
    },
)


def _server(cluster: Any) -> Server | None:
    return base.server("surfshark", cluster) if cluster.type in _WIREGUARD_TYPES else None


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
    reports="load city",
    reports_status=False,
    wireguard_port=51820,
    endpoint="identifier",
)
