"""The snapshot format: a list with its fetch time and upstream validators. It is the
file in SNAPSHOT_DIR (written atomically, read back on start) and the value a
shared catalog keeps in Redis."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from draco.catalog.dataset import Dataset, Validators, make_dataset
from draco.models import Server, encode

log = logging.getLogger("draco.catalog")

FORMAT = "draco-snapshot-1"  # fields added to Server since then decode as their defaults


class Snapshot(msgspec.Struct):
    format: str
    provider: str
    fetched_at: float
    servers: list[Server]
    etag: str | None = None
    last_modified: str | None = None


def snapshot_bytes(data: Dataset) -> bytes:
    return encode(
        Snapshot(
            FORMAT,
            data.provider,
            data.fetched_at,
            list(data.servers),
            data.validators.etag,
            data.validators.last_modified,
        )
    )


def from_snapshot(content: bytes, provider: str, *, provisional: bool = False) -> Dataset:
    """The dataset in `content`; ValueError for anything corrupt, truncated or foreign."""
    snap = msgspec.json.decode(content, type=Snapshot)
    if snap.format != FORMAT or snap.provider != provider or not snap.servers:
        raise ValueError("not a snapshot of this provider")
    if any(s.provider != provider for s in snap.servers):
        raise ValueError("holds another provider's servers")
    return make_dataset(
        provider,
        snap.servers,
        snap.fetched_at,
        validators=Validators(snap.etag, snap.last_modified),
        provisional=provisional,
    )


def write_snapshot(directory: Path, provider: str, content: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: a crash leaves the old file or the new one."""
    path = directory / f"{provider}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_snapshot(directory: Path, provider: str) -> Dataset | None:
    path = directory / f"{provider}.json"
    try:
        return from_snapshot(path.read_bytes(), provider, provisional=True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring snapshot %s: %s", path, exc)
        return None
