"""Reports that set a dead server aside. A client that fails to connect reports it
(`unreachable`, `handshake_failed`); the server is then left out of that client's answers
for REPORT_QUARANTINE seconds, or until it reports `ok`. Reports are kept per scope: the
API key that sent them (by its digest), or the instance itself when keys are off (a
single-tenant sidecar). One scope's reports never change what another scope sees.

Memory is bounded: at most MOST_SERVERS servers set aside per scope, and MOST_SCOPES
scopes, the least recently used going first. With CATALOG_STORAGE in Redis, a scope's
servers set aside are shared by every instance."""

from __future__ import annotations

import collections
import logging
from typing import Any, Protocol

import attrs

from draco.models import Outcome

log = logging.getLogger("draco.catalog")

MOST_SERVERS = 256  # set aside per scope
MOST_SCOPES = 10_000
MOST_BODY = 256  # bytes of a report
SCOPES = "draco:aside:scopes"  # Redis: every scope, by last use
INSTANCE = "instance"  # the one scope when API keys are off

Aside = dict[tuple[str, str], float]  # (provider, identifier): set aside until


@attrs.frozen
class Counts:
    scopes: int
    servers: int | None  # None: kept in Redis, not counted here


class Quarantine(Protocol):
    """Where the servers set aside are kept: this process, or Redis."""

    async def report(
        self, scope: str, server: tuple[str, str], outcome: Outcome, now: float
    ) -> float | None: ...

    async def aside(self, scope: str, now: float) -> Aside: ...

    def unused(self) -> bool:
        """True only when no scope has anything set aside: no lookup is needed."""
        ...

    def counts(self) -> Counts: ...


class MemoryQuarantine:
    def __init__(
        self, duration: float, most_servers: int = MOST_SERVERS, most_scopes: int = MOST_SCOPES
    ):
        self.duration = duration
        self.most_servers = most_servers
        self.most_scopes = most_scopes
        self.scopes: collections.OrderedDict[str, dict[tuple[str, str], float]] = (
            collections.OrderedDict()
        )

    async def report(
        self, scope: str, server: tuple[str, str], outcome: Outcome, now: float
    ) -> float | None:
        """Set `server` aside in `scope`, or lift it (`ok`); until when it is set aside."""
        held = self._touch(scope, now)
        if outcome == "ok":
            held.pop(server, None)
            return None
        held.pop(server, None)  # re-reported: the newest last
        held[server] = now + self.duration
        while len(held) > self.most_servers:
            del held[next(iter(held))]  # the one reported longest ago
        return held[server]

    async def aside(self, scope: str, now: float) -> Aside:
        if scope not in self.scopes:
            return {}
        return dict(self._touch(scope, now))

    def _touch(self, scope: str, now: float) -> dict[tuple[str, str], float]:
        """The scope's servers still set aside, the scope made the most recently used."""
        held = self.scopes.pop(scope, {})
        held = {server: until for server, until in held.items() if until > now}
        self.scopes[scope] = held
        while len(self.scopes) > self.most_scopes:
            self.scopes.popitem(last=False)
        return held

    def unused(self) -> bool:
        return not self.scopes

    def counts(self) -> Counts:
        return Counts(len(self.scopes), sum(len(held) for held in self.scopes.values()))


# Atomically: set a server aside (or lift it), keep at most ARGV[4] per scope (the soonest
# to end go first) and the scope's key only as long as its last entry lasts (times are the
# caller's clock, the expiry relative to it); then mark the scope used, and drop the least
# recently used scopes past ARGV[5].
_REPORT = """
local scope, scopes = KEYS[1], KEYS[2]
local server, ends, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', scope, '-inf', now)
if ends > 0 then
  redis.call('ZADD', scope, ends, server)
  local extra = redis.call('ZCARD', scope) - tonumber(ARGV[4])
  if extra > 0 then redis.call('ZPOPMIN', scope, extra) end
  local last = redis.call('ZRANGE', scope, -1, -1, 'WITHSCORES')[2]
  redis.call('PEXPIRE', scope, math.ceil((tonumber(last) - now) * 1000))
else
  redis.call('ZREM', scope, server)
end
redis.call('ZADD', scopes, now, scope)
local gone = redis.call('ZCARD', scopes) - tonumber(ARGV[5])
if gone > 0 then
  local popped = redis.call('ZPOPMIN', scopes, gone)
  for i = 1, #popped, 2 do redis.call('DEL', popped[i]) end
end
return redis.call('ZCARD', scopes)
"""


class RedisQuarantine:
    """The same, in Redis: a sorted set per scope (server: until), and one of the scopes by
    last use. Without Redis, this instance's own memory keeps them meanwhile."""

    TIMEOUT = 0.25  # seconds: an answer must not wait longer

    def __init__(self, url: str, duration: float):
        import redis.asyncio  # the redis extra: only deployments that share the catalog

        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=self.TIMEOUT, socket_connect_timeout=self.TIMEOUT
        )
        self.errors = (redis.RedisError, OSError, TimeoutError)
        self.script = self.client.register_script(_REPORT)
        self.duration = duration
        self.fallback = MemoryQuarantine(duration)
        self.scopes = 0  # as the last report through this instance found them

    @staticmethod
    def _key(scope: str) -> str:
        return f"draco:aside:{scope}"

    async def report(
        self, scope: str, server: tuple[str, str], outcome: Outcome, now: float
    ) -> float | None:
        until = None if outcome == "ok" else now + self.duration
        args: list[Any] = ["/".join(server), until or 0, now, MOST_SERVERS, MOST_SCOPES]
        try:
            self.scopes = int(await self.script(keys=[self._key(scope), SCOPES], args=args))
        except self.errors as exc:
            log.error("reports store unreachable (%s): kept by this instance", type(exc).__name__)
            return await self.fallback.report(scope, server, outcome, now)
        return until

    async def aside(self, scope: str, now: float) -> Aside:
        try:
            found: list[Any] = await self.client.zrangebyscore(
                self._key(scope), now, "+inf", withscores=True
            )
        except self.errors:
            return await self.fallback.aside(scope, now)
        aside: Aside = {}
        for member, until in found:
            provider, _, identifier = bytes(member).decode().partition("/")
            aside[(provider, identifier)] = float(until)
        return aside

    def unused(self) -> bool:
        return False  # other instances report too: only Redis knows

    def counts(self) -> Counts:
        return Counts(self.scopes, None)

    async def close(self) -> None:
        await self.client.aclose()
