"""Surfshark server clusters: WireGuard-capable clusters (`wireguard`, `generic`) with a key.

Surfshark has no status field: being listed is the only sign of being online.
"""

from __future__ import annotations

from typing import Any

import msgspec

from draco.models import Server
from draco.providers import base

_WIREGUARD_TYPES = ("wireguard", "generic")
_UPSTREAM_NAMES = {"identifier": "connectionName", "public_key": "pubKey", "country_code": "countryCode",
                   "city": "location"}  # fmt: skip


class _Cluster(msgspec.Struct, rename=_UPSTREAM_NAMES):
    identifier: Any = None
    type: Any = None
    public_key: Any = None
    country: Any = None
    country_code: Any = None
    city: Any = None
    load: Any = None


def _server(cluster: _Cluster) -> Server | None:
    return base.server("surfshark", cluster) if cluster.type in _WIREGUARD_TYPES else None


def parse(payload: base.Payload) -> base.Parsed:
    decoder = msgspec.json.Decoder(_Cluster)
    return base.collect(base.decode(payload, list[msgspec.Raw]), lambda raw: _server(decoder.decode(raw)))


PROVIDER = base.Provider(
    "surfshark", "surfshark_api_url", parse, reports_load=True, reports_status=False, ordering="upstream"
)
