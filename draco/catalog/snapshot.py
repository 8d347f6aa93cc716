"""The snapshot format: an accepted list with its fetch time, its upstream validators and
the guard's baseline. It is the file in SNAPSHOT_DIR (written atomically, read back on
start) and the value a shared catalog keeps in Redis.

Reading one believes nothing: every server goes through the same field checks as a
parsed upstream payload (providers.base.server), and anything corrupt, truncated,
foreign or malformed is a ValueError. The guard then judges the list like any other."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import attrs
import msgspec

from draco.catalog.dataset import Dataset, Validators, make_dataset
from draco.catalog.guard import Accepted, Entry, Source, Trust, accepted, fingerprint
from draco.catalog.history import VERSION
from draco.models import Server, encode
from draco.providers.base import server as checked_server

log = logging.getLogger("draco.catalog")

FORMAT = "draco-snapshot-2"
READABLE = ("draco-snapshot-1", FORMAT)  # the first had no baseline: fields added since default


class Baseline(msgspec.Struct, frozen=True):
    """The list the guard's window began from, when it is not the list itself."""

    at: float
    entries: list[tuple[str, str, str | None]]  # identity, key, address
    ipv6: dict[str, str] = {}  # identity: IPv6 entry address, for those that have one


class Snapshot(msgspec.Struct):
    format: str
    provider: str
    fetched_at: float
    servers: list[Server]
    etag: str | None = None
    last_modified: str | None = None
    accepted_at: float | None = None  # when the guard accepted it (the fetch time if absent)
    version: str | None = None  # the version clients were told (history.py)
    trust: Source | None = None  # where the guard's trust began
    baseline: Baseline | None = None


NO_TRUST = Trust()  # a list written before the guard accepted anything


@attrs.frozen
class Stored:
    """A list read back, checked field by field, with the trust it was accepted under."""

    data: Dataset
    trust: Trust


def snapshot_bytes(data: Dataset, trust: Trust = NO_TRUST) -> bytes:
    window = trust.window
    first = window[0] if len(window) > 1 else None
    baseline = None
    if first is not None:
        entries = [(name, e.key, e.address) for name, e in first.entries.items()]
        ipv6 = {name: e.ipv6 for name, e in first.entries.items() if e.ipv6}
        baseline = Baseline(at=first.at, entries=entries, ipv6=ipv6)
    snapshot = Snapshot(
        format=FORMAT,
        provider=data.provider,
        fetched_at=data.fetched_at,
        servers=list(data.servers),
        etag=data.validators.etag,
        last_modified=data.validators.last_modified,
        accepted_at=window[-1].at if window else None,
        version=data.version or None,
        trust=trust.source,
        baseline=baseline,
    )
    return encode(snapshot)


def checked(servers: list[Server], provider: str) -> list[Server]:
    """`servers` if every one of them is exactly what the field checks make of it."""
    for s in servers:
        if s.provider != provider:
            raise ValueError("holds another provider's servers")
        try:
            normal = checked_server(provider, s)
        except ValueError:
            normal = None
        if normal != s:
            raise ValueError(f"server {s.identifier[:80]!r} fails the field checks")
    return servers


def from_snapshot(content: bytes, provider: str, *, provisional: bool = False) -> Stored:
    """The list in `content`; ValueError for anything corrupt, truncated, foreign or
    malformed."""
    snap = msgspec.json.decode(content, type=Snapshot)
    if snap.format not in READABLE or snap.provider != provider or not snap.servers:
        raise ValueError("not a snapshot of this provider")
    servers = checked(snap.servers, provider)
    told = snap.version or ""
    version = told if re.fullmatch(VERSION, told) else ""
    data = make_dataset(
        provider,
        servers,
        snap.fetched_at,
        validators=Validators(snap.etag, snap.last_modified),
        provisional=provisional,
        version=version,
    )
    served = accepted(fingerprint(servers), snap.accepted_at or snap.fetched_at)
    window: tuple[Accepted, ...] = (served,)
    if snap.baseline is not None and snap.baseline.at <= served.at:
        ipv6 = snap.baseline.ipv6
        entries = {
            name: Entry(key, address, ipv6.get(name))
            for name, key, address in snap.baseline.entries
        }
        window = (accepted(entries, snap.baseline.at), served)
    return Stored(data=data, trust=Trust(window=window, source=snap.trust))


def write_snapshot(directory: Path, provider: str, content: bytes) -> None:
    write_atomically(directory / f"{provider}.json", content)


def write_atomically(path: Path, content: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: a crash leaves the old file or the
    new one."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_snapshot(directory: Path, provider: str) -> Stored | None:
    path = directory / f"{provider}.json"
    try:
        return from_snapshot(path.read_bytes(), provider, provisional=True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring snapshot %s: %s", path, exc)
        return None
