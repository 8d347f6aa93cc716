"""The per-provider cache of normalised server lists.

A list is fresh for CACHE_TTL. After that, requests still get it at once while one
background refresh runs (stale-while-revalidate); only a cold provider with
nothing stored waits on the upstream. Any number of concurrent requests cause one
upstream request (single flight). A failed refresh keeps the previous list and
backs off exponentially, so a down upstream is asked once per backoff step, not
once per client request. A list older than CACHE_MAX_STALE is no longer served.

Accepted lists are written atomically to SNAPSHOT_DIR and read back on start.
Responses are encoded once per list version and query (see `render`).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import gzip
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import msgspec

from draco.errors import VPNAPIError, VPNDataError, VPNServiceError
from draco.models import Country, Server, countries, encode
from draco.providers import REGISTRY, Provider
from draco.settings import Settings

log = logging.getLogger("draco.catalog")

_RENDER_CACHE_SIZE = 512  # encoded responses kept per list version


@attrs.frozen
class Rendered:
    body: bytes
    etag: str
    gzipped: bytes | None  # None when the body is too small to be worth compressing


@attrs.frozen(eq=False)
class Dataset:
    provider: str
    servers: tuple[Server, ...]
    fetched_at: float
    version: str
    etag: str | None = None  # the upstream's validators, for conditional refreshes
    last_modified: str | None = None
    # Read from a snapshot and not yet confirmed by the upstream, or a union missing
    # a provider: served as stale either way.
    provisional: bool = False
    by_country: dict[str, tuple[Server, ...]] = attrs.field(factory=dict)
    countries: tuple[Country, ...] = ()
    rendered: dict[Any, Rendered] = attrs.field(factory=dict)


def make_dataset(provider: str, servers, fetched_at: float, **extra) -> Dataset:
    servers = tuple(servers)
    by_country: dict[str, list[Server]] = {}
    for s in servers:
        if s._in_country:
            by_country.setdefault(s.country_code, []).append(s)
    flags = bytes(s._in_country for s in servers)
    version = hashlib.blake2b(encode(servers) + flags, digest_size=12).hexdigest()
    return Dataset(
        provider,
        servers,
        fetched_at,
        version,
        by_country={code: tuple(group) for code, group in by_country.items()},
        countries=tuple(countries(servers)),
        **extra,
    )


def render(data: Dataset, key: Any, build: Callable[[], Any]) -> Rendered:
    """The encoded response for `key` on this list version, encoded on first use only."""
    found = data.rendered.get(key)
    if found is None:
        body = encode(build())
        etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
        found = Rendered(body, etag, gzip.compress(body, 6, mtime=0) if len(body) > 500 else None)
        if len(data.rendered) >= _RENDER_CACHE_SIZE:
            data.rendered.pop(next(iter(data.rendered)))
        data.rendered[key] = found
    return found


@attrs.define
class Status:
    data: Dataset | None = None
    task: asyncio.Task | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_success: float | None = None
    last_failure: str | None = None
    last_failure_at: float | None = None
    error_type: type[VPNServiceError] = VPNAPIError  # what a cold request raises after a failure
    outcomes: collections.Counter = attrs.field(factory=collections.Counter)  # refreshes by outcome


class _Snapshot(msgspec.Struct):
    format: str
    provider: str
    fetched_at: float
    servers: list[Server]
    etag: str | None = None
    last_modified: str | None = None


_SNAPSHOT_FORMAT = "draco-snapshot-1"


def snapshot_bytes(data: Dataset) -> bytes:
    """A list with its fetch time and upstream validators: the snapshot file, and the
    value a shared catalog keeps in Redis."""
    snapshot = {
        "format": _SNAPSHOT_FORMAT,
        "provider": data.provider,
        "fetched_at": data.fetched_at,
        "etag": data.etag,
        "last_modified": data.last_modified,
        "servers": [attrs.asdict(s) for s in data.servers],
    }
    return encode(snapshot)


def from_snapshot(content: bytes, provider: str, provisional: bool) -> Dataset:
    """The dataset in `content`; ValueError for anything corrupt, truncated or foreign."""
    snap = msgspec.json.decode(content, type=_Snapshot)
    if snap.format != _SNAPSHOT_FORMAT or snap.provider != provider or not snap.servers:
        raise ValueError("not a snapshot of this provider")
    if any(s.provider != provider for s in snap.servers):
        raise ValueError("holds another provider's servers")
    return make_dataset(
        provider,
        snap.servers,
        snap.fetched_at,
        etag=snap.etag,
        last_modified=snap.last_modified,
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


def failure_class(exc: BaseException) -> str:
    if isinstance(exc, VPNServiceError):
        return exc.reason
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.TransportError):
        return "connection"
    return "error"


def _retry_after(value: str | None) -> float | None:
    if value and value.isdigit():
        return float(value)
    when = email.utils.parsedate_to_datetime(value) if value else None
    return max(0.0, when.timestamp() - time.time()) if when and when.tzinfo else None


async def read_capped(response: httpx.Response, cap: int) -> bytearray:
    """The decoded body, refusing more than `cap` bytes (declared or actual)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise VPNAPIError("oversized")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            raise VPNAPIError("oversized")
    return body


class Catalog:
    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        providers: dict[str, Provider] = REGISTRY,
        clock: Callable[[], float] = time.time,
        shared=None,
    ):
        self.settings = settings
        self.client = client
        self.providers = providers
        self.clock = clock
        self.shared = shared  # a SharedCatalog, when several instances share one Redis
        self.status = {name: Status() for name in providers}
        self._union: Dataset | None = None
        self._union_key: tuple = ()
        self.snapshot_dir = Path(settings.snapshot_dir) if settings.snapshot_dir else None

    def restore(self) -> None:
        """Load each provider's last-known-good snapshot, served as stale until refreshed."""
        if self.snapshot_dir is None:
            return  # settings.load has made sure the directory exists and is writable
        for name, status in self.status.items():
            status.data = read_snapshot(self.snapshot_dir, name)
            if status.data:
                log.info("restored %d %s servers from snapshot", len(status.data.servers), name)

    async def close(self) -> None:
        tasks = [s.task for s in self.status.values() if s.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def is_stale(self, data: Dataset) -> bool:
        return data.provisional or self.clock() - data.fetched_at >= self.settings.cache_ttl

    async def get(self, name: str) -> Dataset:
        status = self.status[name]
        now = self.clock()
        if status.data is None:
            if now >= status.retry_at:
                await asyncio.shield(self._refresh_task(name))
            if status.data is None:  # a failed fetch, or still backing off from one
                raise status.error_type(status.last_failure or "unavailable")
        elif self.is_stale(status.data) and now >= status.retry_at:
            self._refresh_task(name)
        data = status.data
        if now - data.fetched_at > self.settings.cache_max_stale:
            raise VPNAPIError("too_stale")
        return data

    async def union(self) -> Dataset:
        """Every provider's list in one dataset (`provider=all`). A provider that cannot
        be served is left out, and the union is then marked provisional (stale)."""
        parts = await asyncio.gather(*(self.get(name) for name in self.providers), return_exceptions=True)
        served = [p for p in parts if isinstance(p, Dataset)]
        if not served:
            raise next(p for p in parts if isinstance(p, BaseException))
        key = tuple((p.provider, p.version) for p in served)
        fetched_at = min(p.fetched_at for p in served)
        provisional = len(served) < len(parts) or any(p.provisional for p in served)
        if self._union is None or self._union_key != key:
            servers = (s for p in served for s in p.servers)
            self._union_key, self._union = key, make_dataset("all", servers, fetched_at, provisional=provisional)
        elif (self._union.fetched_at, self._union.provisional) != (fetched_at, provisional):
            # the same lists, renewed: the servers and their encoded pages stay
            self._union = attrs.evolve(self._union, fetched_at=fetched_at, provisional=provisional)
        return self._union

    def _refresh_task(self, name: str) -> asyncio.Task:
        status = self.status[name]
        if status.task is None or status.task.done():
            status.task = asyncio.get_running_loop().create_task(self._refresh(name))
        return status.task

    async def refresh(self, name: str) -> bool:
        """Fetch now, whatever the age of the list; True when a new list was accepted."""
        await self._refresh_task(name)
        return self.status[name].failures == 0

    async def _refresh(self, name: str) -> None:
        status = self.status[name]
        try:
            if self.shared and not await self._take_turn(name):
                return  # another instance refreshed the list, or is refreshing it
            try:
                data = await self._fetch(self.providers[name], status.data)
                self._check(status.data, data)
            finally:
                if self.shared:
                    await self.shared.release(name)
        except Exception as exc:  # recorded, never raised: the previous list stays
            self._failed(name, exc)
            return
        renewed = status.data is not None and data.servers is status.data.servers  # a 304
        status.outcomes["not_modified" if renewed else "ok"] += 1
        await self._accept(name, data, publish=True, renewed=renewed)
        log.info("refreshed %s: %d servers", name, len(data.servers))

    async def _accept(self, name: str, data: Dataset, publish: bool, renewed: bool = False) -> None:
        """Serve `data` from now on, and keep it: snapshot file, and the shared catalog."""
        status = self.status[name]
        status.data = data
        status.failures, status.retry_at, status.last_success = 0, 0.0, self.clock()
        publish = publish and self.shared is not None
        if renewed and publish:  # the same list: only its fetch time changed
            await self.shared.renew(name, data.fetched_at)
            publish = False
        # The snapshot is rewritten even then: after a restart it must show the time the
        # upstream last confirmed the list, or CACHE_MAX_STALE would count from too early.
        if not (publish or self.snapshot_dir):
            return
        content = await asyncio.to_thread(snapshot_bytes, data)
        if publish:
            await self.shared.save(name, content, data.version, data.fetched_at)
        if self.snapshot_dir is not None:
            try:
                await asyncio.to_thread(write_snapshot, self.snapshot_dir, name, content)
            except OSError as exc:
                log.error("cannot write %s snapshot: %s", name, exc)

    async def _take_turn(self, name: str) -> bool:
        """With a shared catalog: True when this instance is the one to ask the upstream.
        Adopts a newer shared list first; waits (while it has nothing to serve) for
        another instance's refresh, up to one lease."""
        status = self.status[name]
        give_up = self.clock() + self.shared.lease_ms / 1000
        while True:
            if await self._adopt(name):
                return False
            if await self.shared.lease(name):
                return True
            if status.data is not None:
                status.retry_at = self.clock() + 1  # look again in a second; serve this meanwhile
                return False
            if self.clock() > give_up:
                raise VPNAPIError("shared_timeout")
            await asyncio.sleep(0.25)

    async def _adopt(self, name: str) -> bool:
        """Take the shared list when it is newer than ours; True when we now hold a fresh one."""
        status, shared = self.status[name], await self.shared.version(name)
        current = status.data
        if shared is not None:
            version, fetched_at = shared
            if current is not None and current.version == version:
                if fetched_at > current.fetched_at:  # another instance's conditional refresh
                    renewal = attrs.evolve(current, fetched_at=fetched_at, provisional=False)
                    await self._accept(name, renewal, publish=False, renewed=True)
            elif current is None or fetched_at > current.fetched_at:
                content = await self.shared.load(name)
                try:
                    adopted = content and await asyncio.to_thread(from_snapshot, content, name, False)
                except ValueError as exc:
                    log.warning("ignoring the shared %s list: %s", name, exc)
                    adopted = None
                if adopted:
                    status.outcomes["shared"] += 1
                    await self._accept(name, adopted, publish=False)
        fresh = status.data is not None and not self.is_stale(status.data)
        if fresh:
            status.failures, status.retry_at = 0, 0.0
        return fresh

    def _failed(self, name: str, exc: Exception) -> None:
        status = self.status[name]
        status.failures += 1
        status.last_failure, status.last_failure_at = failure_class(exc), self.clock()
        status.outcomes[status.last_failure] += 1
        status.error_type = VPNDataError if isinstance(exc, VPNDataError) else VPNAPIError
        delay = min(self.settings.refresh_backoff_max, 2.0 ** (status.failures - 1))
        delay = delay * random.uniform(0.5, 1.0)
        if getattr(exc, "retry_after", None):
            delay = max(delay, min(exc.retry_after, self.settings.refresh_backoff_max))
        status.retry_at = self.clock() + delay
        log.warning(
            "refresh of %s failed (%s: %s), attempt %d, next in %.1fs",
            name,
            status.last_failure,
            getattr(exc, "detail", "") or exc,
            status.failures,
            delay,
            exc_info=status.last_failure == "error",
        )

    def _check(self, old: Dataset | None, new: Dataset) -> None:
        """The sanity guard: an empty or sharply shrunk list is an upstream fault while
        the previous list may still be served."""
        if not new.servers:
            raise VPNDataError("empty")
        if old is None or old.servers is new.servers:
            return
        servable = self.clock() - old.fetched_at <= self.settings.cache_max_stale
        if servable and len(new.servers) < len(old.servers) * (1 - self.settings.cache_max_shrink):
            raise VPNDataError("shrunk", f"from {len(old.servers)} to {len(new.servers)} servers")

    async def _fetch(self, provider: Provider, current: Dataset | None) -> Dataset:
        headers = {}
        if current and current.etag:
            headers["If-None-Match"] = current.etag
        if current and current.last_modified:
            headers["If-Modified-Since"] = current.last_modified
        url = getattr(self.settings, provider.url_setting)
        # One deadline for the whole exchange: httpx's own timeouts are per read, and
        # a body trickling a byte at a time would never trip them.
        async with asyncio.timeout(self.settings.http_timeout):
            request = self.client.stream("GET", url, params=provider.params(self.settings), headers=headers)
            async with request as response:
                if response.status_code == 304 and current:
                    return attrs.evolve(current, fetched_at=self.clock(), provisional=False)
                if response.status_code != 200:
                    raise VPNAPIError(f"http_{response.status_code}", _retry_after(response.headers.get("retry-after")))
                body = await read_capped(response, self.settings.upstream_max_bytes)
                validators = {
                    "etag": response.headers.get("etag"),
                    "last_modified": response.headers.get("last-modified"),
                }
        fetched_at = self.clock()
        servers, skipped = await asyncio.to_thread(provider.parse, body)
        del body
        if skipped:
            log.info("%s: skipped %d malformed entries", provider.name, skipped)
        return make_dataset(provider.name, servers, fetched_at, **validators)

    def health(self) -> dict[str, dict]:
        report = {}
        for name, s in self.status.items():
            report[name] = {
                "servers": len(s.data.servers) if s.data else 0,
                "data_age": round(self.clock() - s.data.fetched_at) if s.data else None,
                "serving_stale": bool(s.data and self.is_stale(s.data)),
                "last_success": s.last_success,
                "last_failure": s.last_failure,
                "last_failure_at": s.last_failure_at,
            }
        return report
