"""The sliding window of limiter.py, kept in Redis for every instance behind one address."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

from draco.security.limiter import MICROS, Decision, MemoryStore, seconds

log = logging.getLogger("draco.security")

# `decide` of limiter.py run inside Redis, atomically, so instances cannot race; timed by
# the server's clock unless a time is given. Microseconds are exact in Lua's doubles.
# The key expires one period after its last admission.
_SCRIPT = """
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit, period, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local last = tonumber(redis.call('LINDEX', KEYS[1], -1))
if last and last > now then now = last end
local n = redis.call('LLEN', KEYS[1])
while n > 0 and tonumber(redis.call('LINDEX', KEYS[1], 0)) <= now - period do
  redis.call('LPOP', KEYS[1])
  n = n - 1
end
if n + cost <= limit then
  for _ = 1, cost do redis.call('RPUSH', KEYS[1], now) end
  redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000))
  return {1, n + cost, tonumber(redis.call('LINDEX', KEYS[1], 0)) + period - now}
end
return {0, n, tonumber(redis.call('LINDEX', KEYS[1], n + cost - limit - 1)) + period - now}
"""


class Pending(NamedTuple):
    """A decision waiting for the next pipeline."""

    key: str
    args: list[int]
    waiter: asyncio.Future[Any]


class RedisStore:
    """The decisions of one turn of the event loop travel in one pipeline, timed by Redis's
    clock (`server_time`) so instances agree. Without Redis, `failure` decides: "local"
    (a memory store), "open" or "closed"; Redis is retried each second."""

    TIMEOUT = 0.25  # seconds for a connection or an answer: a decision must not wait longer
    RETRY_AFTER = 1.0  # seconds before an unreachable Redis is tried again

    def __init__(
        self,
        url: str,
        failure: str = "local",
        max_clients: int = 100_000,
        *,
        server_time: bool = True,
    ):
        import redis.asyncio  # imported here: only deployments that use Redis load it

        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=self.TIMEOUT, socket_connect_timeout=self.TIMEOUT
        )
        self.script = self.client.register_script(_SCRIPT)
        self.errors = (redis.RedisError, OSError, TimeoutError)
        self.failure = failure
        self.server_time = server_time
        self.fallback = MemoryStore(max_clients)
        self.down_until = 0.0
        self.batch: list[Pending] = []
        self.sending: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    async def hit(self, key: str, now: float, limit: int, period: int, cost: int = 1) -> Decision:
        if time.monotonic() >= self.down_until:
            args = [limit, period * MICROS, cost]
            if not self.server_time:
                args.append(round(now * MICROS))
            try:
                allowed, count, wait = await self._decide(f"draco:rl:{key}", args)
            except self.errors as exc:
                if not self.down_until:
                    log.error(
                        "rate limit store unreachable (%s); failing %s",
                        type(exc).__name__,
                        self.failure,
                    )
                self.down_until = time.monotonic() + self.RETRY_AFTER
            else:
                if self.down_until:
                    log.warning("rate limit store reachable again")
                    self.down_until = 0.0
                return Decision(bool(allowed), limit, limit - count, seconds(wait))
        if self.failure == "local":
            return self.fallback.hit_now(key, now, limit, period, cost)
        admit = self.failure == "open"
        return Decision(admit, limit, limit - cost if admit else 0, 1)

    async def _decide(self, key: str, args: list[int]) -> Any:
        waiter = asyncio.get_running_loop().create_future()
        self.batch.append(Pending(key, args, waiter))
        if len(self.batch) == 1:  # the first of this turn sends them all, at the next turn
            task = asyncio.get_running_loop().create_task(self._send())
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)
        return await waiter

    async def _send(self) -> None:
        batch = self.batch
        self.batch = []
        answers: list[Any]
        try:
            if len(batch) == 1:
                # EVALSHA alone: a pipeline would first ask SCRIPT EXISTS, a round trip more
                answers = [await self.script(keys=[batch[0].key], args=batch[0].args)]
            else:
                pipe = self.client.pipeline(transaction=False)
                for pending in batch:  # queued, not yet sent
                    await self.script(keys=[pending.key], args=pending.args, client=pipe)
                answers = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # every waiter hears of it; none is left waiting
            answers = [exc] * len(batch)
        for pending, answer in zip(batch, answers, strict=True):
            if pending.waiter.done():
                continue
            if isinstance(answer, BaseException):
                pending.waiter.set_exception(answer)
            else:
                pending.waiter.set_result(answer)

    def tracked(self) -> int:
        return self.fallback.tracked()

    async def sweep(self, now: float, period: int) -> None:
        await self.fallback.sweep(now, period)  # Redis expires its own keys
