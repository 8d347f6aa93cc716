"""What an answer keeps of a list, and in what order: pure functions over servers."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from draco.catalog.reports import Aside
from draco.models import Server
from draco.web.params import ALWAYS, Filter, Point

OPERATIONAL_LOAD = 3  # a server reporting this load or less is not in operation
EARTH_RADIUS = 6371.0088  # km, the mean radius (IUGG)
_UNKNOWN = float("inf")  # sorts after every measured value


def matching(servers: Sequence[Server], chosen: list[tuple[Filter, Any]]) -> Sequence[Server]:
    if not chosen:
        return servers
    return [s for s in servers if all(f.keep(s, value) for f, value in chosen)]


def operational(servers: Iterable[Server]) -> list[Server]:
    """Servers in operation (load above OPERATIONAL_LOAD, or unknown), by load."""
    pool = [s for s in servers if s.load is None or s.load > OPERATIONAL_LOAD]
    pool.sort(key=lambda s: _UNKNOWN if s.load is None else s.load)
    return pool


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def with_latency(
    servers: Iterable[Server], latencies: Mapping[tuple[str, str], float | None]
) -> list[Server]:
    """The servers carrying their measured latency, fastest first, unreachable last."""
    timed = [
        msgspec.structs.replace(s, latency=_ms(latencies.get((s.provider, s.identifier))))
        for s in servers
    ]
    timed.sort(key=lambda s: _UNKNOWN if s.latency is None else s.latency)
    return timed


def weight(seed: str, server: Server) -> bytes:
    """The server's rendezvous (highest-random-weight) weight for `seed`."""
    named = f"{seed}\n{server.provider}\n{server.identifier}".encode()
    return hashlib.blake2b(named, digest_size=8).digest()


def spread(servers: Iterable[Server], seed: str) -> list[Server]:
    """The servers in `seed`'s own order, by rendezvous hashing: replicas passing their own
    names spread evenly, and each keeps its servers while they stay in the list (a
    server leaving moves only the seeds that ranked it first)."""
    return sorted(servers, key=lambda s: weight(seed, s), reverse=True)


def kilometres(a: Point, b: Point) -> float:
    """The great-circle distance between two points (haversine, on the mean radius)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS * math.asin(min(1.0, math.sqrt(h)))


def nearest(servers: Iterable[Server], point: Point, seed: str | None) -> list[Server]:
    """The servers with coordinates, each carrying its distance from `point`, nearest
    first; servers at one place (a city's) in `seed`'s order, else the list's."""
    placed = [
        msgspec.structs.replace(
            s, distance=round(kilometres(point, Point(s.latitude, s.longitude)), 1)
        )
        for s in servers
        if s.latitude is not None and s.longitude is not None
    ]
    if seed:
        placed = spread(placed, seed)
    placed.sort(key=lambda s: s.distance or 0.0)  # stable: ties keep the seed's order
    return placed


def only(servers: Iterable[Server], fields: frozenset[str]) -> list[dict[str, Any]]:
    """Each server as just the `fields` asked for (and its identifier), in schema order."""
    kept = [f for f in Server.__struct_fields__ if f in fields or f == ALWAYS]
    return [{f: getattr(s, f) for f in kept} for s in servers]


def set_aside(servers: Sequence[Server], aside: Aside, *, shown: bool) -> Sequence[Server]:
    """The servers without those set aside by the client's reports; with `shown`, all of
    them, those set aside carrying until when."""
    if not aside:
        return servers
    if not shown:
        return [s for s in servers if (s.provider, s.identifier) not in aside]
    until = [aside.get((s.provider, s.identifier)) for s in servers]
    return [
        msgspec.structs.replace(s, quarantined_until=u) if u else s
        for s, u in zip(servers, until, strict=True)
    ]
