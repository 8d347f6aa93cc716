"""The catalog shared through Redis (CATALOG_STORAGE=redis://...) by several instances.
Each list is kept in the snapshot format, with its version and fetch time beside it.
One instance at a time refreshes a provider, under a lease (SET NX PX) that expires by
itself. This module carries bytes and decides nothing: the catalog checks and judges
what it reads here like any other list. Without Redis every call answers as if no other
instance existed (nothing shared, the lease granted); state changes are logged once."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import attrs

log = logging.getLogger("draco.catalog")

# Delete the lease only if this instance still holds it.
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
TIMEOUT = 2.0  # seconds for a connection or an answer


@attrs.frozen
class SharedMeta:
    """What the shared list is, without transferring it."""

    digest: str  # of the whole list (dataset.Dataset.digest)
    fetched_at: float


def key(provider: str, what: str = "") -> str:
    return f"draco:catalog:{provider}" + (f":{what}" if what else "")


class SharedCatalog:
    def __init__(self, url: str, lease_seconds: float, timeout: float = TIMEOUT):
        import redis.asyncio  # the redis extra: only deployments that share the catalog load it

        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.errors = (redis.RedisError, OSError, TimeoutError)
        self.release_script = self.client.register_script(_RELEASE)
        self.lease_ms = int(lease_seconds * 1000)
        self.holder = uuid.uuid4().hex  # this instance, in the lease
        self.reachable = True

    def _state(self, *, reachable: bool, exc: BaseException | None = None) -> None:
        if reachable == self.reachable:
            return
        if reachable:
            log.warning("shared catalog reachable again")
        else:
            why = type(exc).__name__
            log.error("shared catalog unreachable (%s): serving this instance's own lists", why)
        self.reachable = reachable

    async def _call(self, default: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await getattr(self.client, method)(*args, **kwargs)
        except self.errors as exc:
            self._state(reachable=False, exc=exc)
            return default
        self._state(reachable=True)
        return result

    async def meta(self, provider: str) -> SharedMeta | None:
        found = await self._call(None, "hmget", key(provider, "meta"), "digest", "fetched_at")
        if not found or None in found:
            return None
        try:
            return SharedMeta(found[0].decode(), float(found[1]))
        except (UnicodeDecodeError, ValueError):
            return None

    async def content(self, provider: str) -> bytes | None:
        found: bytes | None = await self._call(None, "get", key(provider))
        return found

    async def save(self, provider: str, content: bytes, meta: SharedMeta) -> None:
        pipe = self.client.pipeline(transaction=True)  # the list and its record change together
        pipe.set(key(provider), content)
        pipe.hset(key(provider, "meta"), "digest", meta.digest)
        pipe.hset(key(provider, "meta"), "fetched_at", repr(meta.fetched_at))
        try:
            await pipe.execute()
        except self.errors as exc:
            self._state(reachable=False, exc=exc)

    async def renew(self, provider: str, fetched_at: float) -> None:
        """A 304 from the upstream: the same list, fetched again."""
        await self._call(None, "hset", key(provider, "meta"), "fetched_at", repr(fetched_at))

    async def lease(self, provider: str) -> bool:
        """True when this instance may refresh `provider` now (always, without Redis)."""
        lease = key(provider, "lease")
        given = await self._call(True, "set", lease, self.holder, nx=True, px=self.lease_ms)  # noqa: FBT003 - the answer without Redis
        return bool(given)

    async def release(self, provider: str) -> None:
        try:
            await self.release_script(keys=[key(provider, "lease")], args=[self.holder])
        except self.errors as exc:
            self._state(reachable=False, exc=exc)

    async def publish_hold(self, provider: str, notice: bytes | None, ttl: float) -> None:
        """This instance's notice of a held list, for `draco hold`; None clears it."""
        if notice is None:
            await self._call(None, "delete", key(provider, "held"))
        else:
            await self._call(None, "set", key(provider, "held"), notice, px=int(ttl * 1000))

    async def notice(self, provider: str) -> bytes | None:
        found: bytes | None = await self._call(None, "get", key(provider, "held"))
        return found

    async def verdict(self, provider: str) -> bytes | None:
        found: bytes | None = await self._call(None, "get", key(provider, "verdict"))
        return found

    async def give_verdict(self, provider: str, content: bytes, ttl: float) -> bool:
        """The operator's word, kept until the hold it answers ends; False without Redis."""
        given = await self._call(None, "set", key(provider, "verdict"), content, px=int(ttl * 1000))
        return bool(given)

    async def close(self) -> None:
        await self.client.aclose()
