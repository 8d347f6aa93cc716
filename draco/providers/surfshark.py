"""Surfshark server clusters: WireGuard-capable clusters (`wireguard`, `generic`) with a key.

Surfshark has no status field: being listed is the only sign of being online.
"""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

_WIREGUARD_TYPES = ("wireguard", "generic")


class _Cluster(msgspec.Struct):
    connectionName: Any = None  # noqa: N815 (upstream spelling)
    type: Any = None
    pubKey: Any = None  # noqa: N815
    country: Any = None
    countryCode: Any = None  # noqa: N815
    location: Any = None
    load: Any = None


def _server(cluster: _Cluster) -> Server | None:
    if cluster.type not in _WIREGUARD_TYPES:
        return None
    code, name = base.country(cluster.countryCode, cluster.country)
    return Server(
        "surfshark",
        name,
        code,
        base.identifier(cluster.connectionName),
        base.wireguard_key(cluster.pubKey),
        base.load(cluster.load),
        city=base.text(cluster.location),
    )


def parse(payload: bytes) -> tuple[list[Server], int]:
    decoder = msgspec.json.Decoder(_Cluster)
    return base.collect(base.decode(payload, list[msgspec.Raw]), lambda raw: _server(decoder.decode(raw)))


PROVIDER = base.Provider(
    "surfshark", "surfshark_api_url", parse, reports_load=True, reports_status=False, ordering="upstream"
)
