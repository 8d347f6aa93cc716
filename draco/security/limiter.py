"""Exact sliding-window rate limiting: a request is admitted iff fewer than `limit`
requests of that client were admitted in the preceding `period` seconds (one at t
counts while t > now - period); denied ones are not counted. Times are integer
microseconds; the clock is an argument. (`limits`' moving window is the nearest
library; scripts/bench_limiter.py compares them.)"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, Protocol

MICROS = 1_000_000


class Decision(NamedTuple):
    allowed: bool
    limit: int
    remaining: int
    reset: int  # whole seconds (at least 1) until the oldest counted request leaves the window


class Admission(NamedTuple):
    admitted: bool
    wait: int  # µs until enough requests leave the window to admit this cost (admitted: the oldest)


def decide(window: array[int], now: int, limit: int, period: int, cost: int) -> Admission:
    """The algorithm, on one client's sorted admission times, in place. Needs cost <= limit."""
    del window[: bisect.bisect_right(window, now - period)]
    if len(window) + cost <= limit:
        window.extend([now] * cost)
        return Admission(admitted=True, wait=window[0] + period - now)
    return Admission(admitted=False, wait=window[len(window) + cost - limit - 1] + period - now)


def seconds(micros: int) -> int:
    return max(1, -(-micros // MICROS))  # rounded up


class Store(Protocol):
    """Where the windows live: this process (MemoryStore) or Redis (RedisStore)."""

    async def hit(
        self, key: str, now: float, limit: int, period: int, cost: int = 1
    ) -> Decision: ...

    async def sweep(self, now: float, period: int) -> None: ...

    def tracked(self) -> int: ...


class MemoryStore:
    """Per-client admission times, least recently seen first. Memory is bounded: clients with
    an empty window are dropped from the front (a few every 16 requests, all by `sweep`),
    and beyond `max_clients` the least recently seen client is evicted."""

    EXPIRE_EVERY = 16  # requests between two small sweeps of idle clients
    EXPIRE_SOME = 32  # idle clients dropped by a small sweep, at most
    EXPIRE_BATCH = 1000  # idle clients dropped by `sweep` before it yields to the loop

    def __init__(self, max_clients: int = 100_000):
        self.max_clients = max_clients
        self.windows: OrderedDict[str, array[int]] = OrderedDict()
        self._count = 0
        self.latest = 0  # microseconds: the latest time this store has decided at

    def _now(self, now: float) -> int:
        """`now` in µs, never before `latest`: a clock that steps back must neither reorder
        a live window nor drop it."""
        self.latest = max(self.latest, round(now * MICROS))
        return self.latest

    async def hit(self, key: str, now: float, limit: int, period: int, cost: int = 1) -> Decision:
        return self.hit_now(key, now, limit, period, cost)

    def hit_now(self, key: str, now: float, limit: int, period: int, cost: int = 1) -> Decision:
        now_us = self._now(now)
        period_us = period * MICROS
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = array("q")
            if len(self.windows) > self.max_clients:
                self.windows.popitem(last=False)
        else:
            self.windows.move_to_end(key)
        admission = decide(window, now_us, limit, period_us, cost)
        self._count += 1
        if self._count % self.EXPIRE_EVERY == 0:
            self._expire(now_us - period_us, self.EXPIRE_SOME)
        return Decision(admission.admitted, limit, limit - len(window), seconds(admission.wait))

    def _expire(self, horizon: int, at_most: int) -> int:
        """Drop up to `at_most` least recently seen clients whose window is empty."""
        idle = itertools.takewhile(
            lambda window: not window or window[-1] <= horizon, self.windows.values()
        )
        dropped = len(list(itertools.islice(idle, at_most)))
        for _ in range(dropped):
            self.windows.popitem(last=False)
        return dropped

    async def sweep(self, now: float, period: int) -> None:
        """Drop every idle client at the front, yielding to the loop between batches."""
        horizon = self._now(now) - period * MICROS
        while self._expire(horizon, self.EXPIRE_BATCH) == self.EXPIRE_BATCH:
            await asyncio.sleep(0)

    def tracked(self) -> int:
        return len(self.windows)


class Limiter:
    """`limit` requests per `period` seconds and client, decided by `store` at `clock()`."""

    def __init__(
        self, limit: int, period: int, store: Store, clock: Callable[[], float] = time.time
    ):
        self.limit = limit
        self.period = period
        self.store = store
        self.clock = clock

    async def hit(self, key: str, cost: int = 1) -> Decision:
        return await self.store.hit(key, self.clock(), self.limit, self.period, cost)
