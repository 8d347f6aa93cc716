"""The per-provider cache policy. A list is fresh for CACHE_TTL; after that, requests
still get it at once while one background refresh runs (stale-while-revalidate), and
only a provider with nothing stored waits on the upstream. Concurrent requests cause
one upstream request (single flight). A failed refresh keeps the previous list and
backs off exponentially. A list older than CACHE_MAX_STALE is no longer served."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs
import httpx

from draco.catalog.dataset import Dataset, changes, make_dataset, rekeyed
from draco.catalog.fetch import NotModified, failure_class, fetch
from draco.catalog.shared import SharedCatalog
from draco.catalog.snapshot import read_snapshot, snapshot_bytes, write_snapshot
from draco.exceptions import VPNAPIError, VPNDataError, VPNServiceError
from draco.models import Changes, ProviderHealth
from draco.providers import REGISTRY, Provider
from draco.settings import Settings

log = logging.getLogger("draco.catalog")


@attrs.define
class Status:
    data: Dataset | None = None
    task: asyncio.Task[None] | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_success: float | None = None
    last_failure: str | None = None
    last_failure_at: float | None = None
    error_type: type[VPNServiceError] = VPNAPIError  # what a cold request raises after a failure
    outcomes: collections.Counter[str] = attrs.field(
        factory=collections.Counter
    )  # refreshes by outcome
    held: tuple[str, int] | None = (
        None  # a mass key swap held back: its digest, and how often it came
    )
    changes: Changes | None = None  # between the last two accepted lists


class Catalog:
    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        providers: Mapping[str, Provider] = REGISTRY,
        clock: Callable[[], float] = time.time,
        shared: SharedCatalog | None = None,
    ):
        self.settings, self.client, self.providers, self.clock = settings, client, providers, clock
        self.shared = shared  # when several instances share one Redis
        self.status = {name: Status() for name in providers}
        self.snapshot_dir = Path(settings.snapshot_dir) if settings.snapshot_dir else None
        self._union: Dataset | None = None

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
        if self.shared:
            await self.shared.close()

    def warm(self, names: Iterable[str]) -> None:
        """Fetch `names` in the background unless backing off (at start, and from /health/ready)."""
        for name in names:
            if self.clock() >= self.status[name].retry_at:
                self._refresh_task(name)

    def servable(self, name: str) -> bool:
        """Whether `name` has a list to serve: fresh, stale within CACHE_MAX_STALE, or restored."""
        data = self.status[name].data
        return data is not None and self.clock() - data.fetched_at <= self.settings.cache_max_stale

    def is_stale(self, data: Dataset) -> bool:
        return data.provisional or self.clock() - data.fetched_at >= self.settings.cache_ttl

    def age(self, data: Dataset) -> int:
        return max(0, int(self.clock() - data.fetched_at))

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
        if not self.servable(name):
            raise VPNAPIError("too_stale")
        return status.data

    async def union(self) -> Dataset:
        """Every provider's list in one dataset (`provider=all`). A provider that cannot
        be served is left out, and the union is then marked provisional (stale)."""
        parts = await asyncio.gather(
            *(self.get(name) for name in self.providers), return_exceptions=True
        )
        served = [p for p in parts if isinstance(p, Dataset)]
        if not served:
            raise next(p for p in parts if isinstance(p, BaseException))
        fetched_at = min(p.fetched_at for p in served)
        provisional = len(served) < len(parts) or any(p.provisional for p in served)
        union, version = self._union, "+".join(p.version for p in served)
        if union is None or union.version != version:
            servers = (s for p in served for s in p.servers)
            union = make_dataset(
                "all", servers, fetched_at, provisional=provisional, version=version
            )
        elif (union.fetched_at, union.provisional) != (fetched_at, provisional):
            # the same lists, renewed: the servers and their encoded pages stay
            union = attrs.evolve(union, fetched_at=fetched_at, provisional=provisional)
        self._union = union
        return union

    def _refresh_task(self, name: str) -> asyncio.Task[None]:
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
            if self.shared and not await self._take_turn(name, self.shared):
                return  # another instance refreshed the list, or is refreshing it
            try:
                provider = self.providers[name]
                fetched = await fetch(self.client, self.settings, provider, status.data, self.clock)
                if isinstance(fetched, NotModified):
                    data = fetched.data
                else:
                    data = fetched
                    self._check(status, data)
            finally:
                if self.shared:
                    await self.shared.release(name)
        except Exception as exc:  # recorded, never raised: the previous list stays
            self._failed(name, exc)
            return
        renewed = isinstance(fetched, NotModified)
        status.outcomes["not_modified" if renewed else "ok"] += 1
        await self._accept(name, data, publish=True, renewed=renewed)
        log.info("refreshed %s: %d servers", name, len(data.servers))

    async def _accept(
        self, name: str, data: Dataset, *, publish: bool, renewed: bool = False
    ) -> None:
        """Serve `data` from now on, and keep it: snapshot file, and the shared catalog."""
        status = self.status[name]
        if status.data is not None and data.servers is not status.data.servers:
            status.changes = changes(status.data, data)
        status.data = data
        status.failures, status.retry_at, status.last_success = 0, 0.0, self.clock()
        shared = self.shared if publish else None
        if shared and renewed:  # the same list: only its fetch time changed
            await shared.renew(name, data.fetched_at)
            shared = None
        # The snapshot is rewritten even then: after a restart it must show the time the
        # upstream last confirmed the list, or CACHE_MAX_STALE would count from too early.
        if not (shared or self.snapshot_dir):
            return
        content = await asyncio.to_thread(snapshot_bytes, data)
        if shared:
            await shared.save(name, content, data.version, data.fetched_at)
        if self.snapshot_dir is not None:
            try:
                await asyncio.to_thread(write_snapshot, self.snapshot_dir, name, content)
            except OSError as exc:
                log.error("cannot write %s snapshot: %s", name, exc)

    async def _take_turn(self, name: str, shared: SharedCatalog) -> bool:
        """True when this instance is the one to ask the upstream. Adopts a newer shared list
        first; with nothing to serve, waits up to one lease for another instance's refresh."""
        status = self.status[name]
        give_up = self.clock() + shared.lease_ms / 1000
        while True:
            if await self._adopt(name, shared):
                return False
            if await shared.lease(name):
                return True
            if status.data is not None:
                status.retry_at = self.clock() + 1  # look again in a second; serve this meanwhile
                return False
            if self.clock() > give_up:
                raise VPNAPIError("shared_timeout")
            await asyncio.sleep(0.25)

    async def _adopt(self, name: str, shared: SharedCatalog) -> bool:
        """Take the shared list when it is newer than ours; True when we now hold a fresh one."""
        status = self.status[name]
        adopted = await shared.newer(name, status.data)
        if adopted:
            if not (status.data and adopted.servers is status.data.servers):  # not just renewed
                status.outcomes["shared"] += 1
            await self._accept(name, adopted, publish=False)
        return status.data is not None and not self.is_stale(status.data)

    def _failed(self, name: str, exc: Exception) -> None:
        status = self.status[name]
        status.failures += 1
        status.last_failure, status.last_failure_at = failure_class(exc), self.clock()
        status.outcomes[status.last_failure] += 1
        status.error_type = VPNDataError if isinstance(exc, VPNDataError) else VPNAPIError
        most = (
            self.settings.refresh_backoff_max
        )  # exponential, jittered; at least what the upstream asked
        delay = min(most, 2.0 ** (status.failures - 1)) * random.uniform(0.5, 1.0)  # noqa: S311 - a jitter, no secret
        delay = max(
            delay, min(exc.retry_after or 0, most) if isinstance(exc, VPNServiceError) else 0
        )
        status.retry_at = self.clock() + delay
        why = f"{status.last_failure}: {getattr(exc, 'detail', '') or exc}"
        message = "refresh of %s failed (%s), attempt %d, next in %.1fs"
        log.warning(
            message, name, why, status.failures, delay, exc_info=status.last_failure == "error"
        )

    def _check(self, status: Status, new: Dataset) -> None:
        """The sanity guard, while the previous list may still be served: an empty list, or one
        shrunk by more than CACHE_MAX_SHRINK, is an upstream fault; one that swaps the keys of
        more than CACHE_MAX_REKEY of the servers still present (what a tampered upstream would
        send) is held back until sent alike on CACHE_REKEY_CONFIRMATIONS refreshes in a row."""
        old, s = status.data, self.settings
        if not new.servers:
            raise VPNDataError("empty")
        if (
            old is None
            or old.servers is new.servers
            or self.clock() - old.fetched_at > s.cache_max_stale
        ):
            return
        if len(new.servers) < len(old.servers) * (1 - s.cache_max_shrink):
            raise VPNDataError("shrunk", f"from {len(old.servers)} to {len(new.servers)} servers")
        kept, swapped = rekeyed(old, new)
        if len(swapped) <= kept * s.cache_max_rekey:
            status.held = None
            return
        digest = hashlib.blake2b(repr(swapped).encode(), digest_size=16).hexdigest()
        seen = status.held[1] + 1 if status.held and status.held[0] == digest else 1
        status.held = None if seen >= s.cache_rekey_confirmations else (digest, seen)
        if status.held:
            needed = s.cache_rekey_confirmations
            detail = f"{len(swapped)} of {kept} keys changed, sent {seen} of {needed} times"
            raise VPNDataError("rekeyed", detail)

    def health(self) -> dict[str, ProviderHealth]:
        return {
            name: ProviderHealth(
                servers=len(s.data.servers) if s.data else 0,
                data_age=self.age(s.data) if s.data else None,
                serving_stale=bool(s.data and self.is_stale(s.data)),
                last_success=s.last_success,
                last_failure=s.last_failure,
                last_failure_at=s.last_failure_at,
            )
            for name, s in self.status.items()
        }
