"""The catalog shared through Redis (CATALOG_STORAGE=redis://...) by several instances.
Each list is kept in the snapshot format, with its version and fetch time beside it.
One instance at a time refreshes a provider, under a lease (SET NX PX) that expires by
itself. Without Redis every call answers as if no other instance existed (nothing
shared, the lease granted); state changes are logged once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import attrs

from draco.catalog.dataset import Dataset
from draco.catalog.snapshot import from_snapshot

log = logging.getLogger("draco.catalog")

# Delete the lease only if this instance still holds it.
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class SharedCatalog:
    def __init__(self, url: str, lease_seconds: float, timeout: float = 2.0):
        import redis.asyncio  # imported here: only deployments that share the catalog load it

        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.errors = (redis.RedisError, OSError, TimeoutError)
        self.release_script = self.client.register_script(_RELEASE)
        self.lease_ms = int(lease_seconds * 1000)
        self.holder = uuid.uuid4().hex  # this instance, in the lease
        self.reachable = True

    def _state(self, *, reachable: bool, exc: BaseException | None = None) -> None:
        if reachable != self.reachable:
            if reachable:
                log.warning("shared catalog reachable again")
            else:
                log.error(
                    "shared catalog unreachable (%s): serving this instance's own lists",
                    type(exc).__name__,
                )
            self.reachable = reachable

    async def _call(self, default: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await getattr(self.client, method)(*args, **kwargs)
        except self.errors as exc:
            self._state(reachable=False, exc=exc)
            return default
        self._state(reachable=True)
        return result

    async def version(self, provider: str) -> tuple[str, float] | None:
        """(version, fetched_at) of the shared list, without transferring it."""
        found = await self._call(
            None, "hmget", f"draco:catalog:{provider}:meta", "version", "fetched_at"
        )
        if not found or None in found:
            return None
        return found[0].decode(), float(found[1])

    async def save(self, provider: str, content: bytes, version: str, fetched_at: float) -> None:
        pipe = self.client.pipeline(transaction=True)  # the list and its record change together
        pipe.set(f"draco:catalog:{provider}", content)
        pipe.hset(
            f"draco:catalog:{provider}:meta",
            mapping={"version": version, "fetched_at": repr(fetched_at)},
        )
        try:
            await pipe.execute()
        except self.errors as exc:
            self._state(reachable=False, exc=exc)

    async def newer(self, provider: str, current: Dataset | None) -> Dataset | None:
        """The shared list when it is newer than `current`: another instance's refresh,
        or its conditional refresh of the same list (then `current`, renewed)."""
        found = await self.version(provider)
        if found is None:
            return None
        version, fetched_at = found
        if current is not None and (current.version == version or fetched_at <= current.fetched_at):
            renewed = current.version == version and fetched_at > current.fetched_at
            return (
                attrs.evolve(current, fetched_at=fetched_at, provisional=False) if renewed else None
            )
        content = await self._call(None, "get", f"draco:catalog:{provider}")
        try:
            return await asyncio.to_thread(from_snapshot, content, provider) if content else None
        except ValueError as exc:
            log.warning("ignoring the shared %s list: %s", provider, exc)
            return None

    async def renew(self, provider: str, fetched_at: float) -> None:
        """A 304 from the upstream: the same list, fetched again."""
        await self._call(
            None, "hset", f"draco:catalog:{provider}:meta", "fetched_at", repr(fetched_at)
        )

    async def lease(self, provider: str) -> bool:
        """True when this instance may refresh `provider` now (always, without Redis)."""
        key = f"draco:catalog:{provider}:lease"
        taken = await self._call(True, "set", key, self.holder, nx=True, px=self.lease_ms)  # noqa: FBT003 - the answer without Redis
        return bool(taken)

    async def release(self, provider: str) -> None:
        try:
            await self.release_script(keys=[f"draco:catalog:{provider}:lease"], args=[self.holder])
        except self.errors as exc:
            self._state(reachable=False, exc=exc)

    async def close(self) -> None:
        await self.client.aclose()
