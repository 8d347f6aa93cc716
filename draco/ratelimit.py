"""Exact sliding-window rate limiting, and the client address it is keyed on.

A request is admitted iff fewer than `limit` requests were admitted for that client
in the preceding `period` seconds (a request at time t counts while t > now -
period). Denied requests are not counted. The clock is an argument, and nothing
here knows about the web framework, so it can be read and tested alone.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import logging
import math
import socket
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, NamedTuple

MICROS = 1_000_000
log = logging.getLogger("draco.security")


class Decision(NamedTuple):
    allowed: bool
    limit: int
    remaining: int
    reset: int  # whole seconds (at least 1) until the oldest counted request leaves the window


def decide(window: array, now: int, limit: int, period: int, cost: int) -> tuple[bool, int]:
    """The algorithm, on one client's sorted admission times (microseconds), in place.

    Returns (admitted, microseconds until enough counted requests have left the
    window to admit this cost, or until the oldest leaves when admitted). Needs
    cost <= limit."""
    expired = bisect.bisect_right(window, now - period)
    if expired:
        del window[:expired]
    if len(window) + cost <= limit:
        if cost == 1:
            window.append(now)
        else:
            window.extend([now] * cost)
        return True, window[0] + period - now
    return False, window[len(window) + cost - limit - 1] + period - now


class MemoryStore:
    """Per-client admission times in an OrderedDict kept in least-recently-seen order.

    Memory is bounded: clients with nothing left in their window are dropped from
    the front (a few every 16 requests, and all of them by `sweep`), and beyond
    `max_clients` the least recently seen client is evicted.
    """

    def __init__(self, max_clients: int = 100_000):
        self.max_clients = max_clients
        self.windows: OrderedDict[str, array] = OrderedDict()
        self._count = 0

    async def hit(self, key: str, now: float, limit: int, period: int, cost: int = 1) -> Decision:
        return self.hit_now(key, now, limit, period, cost)

    def hit_now(self, key: str, now: float, limit: int, period: int, cost: int = 1) -> Decision:
        now_us, period_us = round(now * MICROS), period * MICROS
        windows = self.windows
        window = windows.get(key)
        if window is None:
            window = windows[key] = array("q")
            if len(windows) > self.max_clients:
                windows.popitem(last=False)
        else:
            windows.move_to_end(key)
            if window and window[-1] > now_us:
                now_us = window[-1]  # a clock that stepped back must not reorder the window
        allowed, wait = decide(window, now_us, limit, period_us, cost)
        self._count += 1
        if not self._count & 15:
            self._expire(now_us - period_us, 32)
        return Decision(allowed, limit, limit - len(window), (wait + MICROS - 1) // MICROS)

    def _expire(self, horizon: int, at_most: int) -> int:
        """Drop up to `at_most` least recently seen clients whose window is empty."""
        dropped = 0
        for window in self.windows.values():
            if dropped == at_most or (window and window[-1] > horizon):
                break
            dropped += 1
        for _ in range(dropped):
            self.windows.popitem(last=False)
        return dropped

    async def sweep(self, now: float, period: int) -> None:
        """Drop every idle client at the front, yielding to the loop between batches."""
        while self._expire(round(now * MICROS) - period * MICROS, 1000) == 1000:
            await asyncio.sleep(0)

    def tracked(self) -> int:
        return len(self.windows)


# `decide` run inside Redis, atomically: one script per decision, so instances sharing
# the server cannot race. Without an injected time it takes the server's own clock, the
# one clock every instance then agrees on. Times are integer microseconds, exact in
# Lua's doubles. The key expires one period after its last admission.
_REDIS_SCRIPT = """
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


class RedisStore:
    """The same sliding window, kept in Redis for every instance behind one address.

    Decisions asked for in the same turn of the event loop travel together in one
    pipeline: one round trip for all of them. When Redis cannot be reached,
    `failure` decides: "local" falls back to this instance's memory store, "open"
    admits, "closed" refuses. Redis is tried again at most once a second, and each
    change of state is logged once."""

    def __init__(self, url: str, failure: str = "local", max_clients: int = 100_000, timeout: float = 0.25):
        import redis.asyncio  # imported here: only deployments that use Redis load it

        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.script = self.client.register_script(_REDIS_SCRIPT)
        self.errors = (redis.RedisError, OSError, TimeoutError)
        self.failure, self.fallback = failure, MemoryStore(max_clients)
        self.down_until = 0.0
        self.batch: list[tuple[str, list, asyncio.Future]] = []

    async def hit(self, key: str, now: float | None, limit: int, period: int, cost: int = 1) -> Decision:
        if time.monotonic() >= self.down_until:
            args = [limit, period * MICROS, cost] + ([] if now is None else [round(now * MICROS)])
            try:
                allowed, count, wait = await self._decide(f"draco:rl:{key}", args)
            except self.errors as exc:
                if not self.down_until:
                    log.error("rate limit store unreachable (%s); failing %s", type(exc).__name__, self.failure)
                self.down_until = time.monotonic() + 1
            else:
                if self.down_until:
                    log.warning("rate limit store reachable again")
                    self.down_until = 0.0
                return Decision(bool(allowed), limit, limit - count, (wait + MICROS - 1) // MICROS)
        if self.failure == "local":
            return self.fallback.hit_now(key, time.time() if now is None else now, limit, period, cost)
        return Decision(self.failure == "open", limit, limit - cost if self.failure == "open" else 0, 1)

    async def _decide(self, key: str, args: list):
        waiter = asyncio.get_running_loop().create_future()
        self.batch.append((key, args, waiter))
        if len(self.batch) == 1:  # the first of this turn sends them all, at the next turn
            asyncio.get_running_loop().create_task(self._send())
        return await waiter

    async def _send(self) -> None:
        batch, self.batch = self.batch, []
        try:
            if len(batch) == 1:
                answers = [await self.script(keys=[batch[0][0]], args=batch[0][1])]
            else:
                pipe = self.client.pipeline(transaction=False)
                for key, args, _ in batch:
                    await self.script(keys=[key], args=args, client=pipe)  # queued, not yet sent
                answers = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # every waiter hears of it; none is left waiting
            answers = [exc] * len(batch)
        for (_, _, waiter), answer in zip(batch, answers, strict=True):
            if not waiter.done():
                waiter.set_exception(answer) if isinstance(answer, BaseException) else waiter.set_result(answer)

    def tracked(self) -> int:
        return self.fallback.tracked()

    async def sweep(self, now: float, period: int) -> None:
        await self.fallback.sweep(now, period)  # Redis expires its own keys


class Limiter:
    """The algorithm's front: `clock=None` lets the store use its own (Redis: the server's)."""

    def __init__(self, limit: int, period: int, store, clock: Callable[[], float] | None = time.time):
        self.limit, self.period, self.store, self.clock = limit, period, store, clock
        self.policy = (b"ratelimit-policy", b'"default";q=%d;w=%d' % (limit, period))

    def hit(self, key: str, cost: int = 1) -> Coroutine[Any, Any, Decision]:
        """The store's decision, to be awaited (handed over as is: one coroutine less)."""
        return self.store.hit(key, self.clock() if self.clock else None, self.limit, self.period, cost)

    def headers(self, decision: Decision) -> list[tuple[bytes, bytes]]:
        """X-RateLimit-* and the IETF fields of draft-ietf-httpapi-ratelimit-headers-10."""
        remaining = max(0, decision.remaining)
        reset_at = math.ceil(time.time()) + decision.reset
        return [
            (b"x-ratelimit-limit", b"%d" % decision.limit),
            (b"x-ratelimit-remaining", b"%d" % remaining),
            (b"x-ratelimit-reset", b"%d" % reset_at),
            self.policy,
            (b"ratelimit", b'"default";r=%d;t=%d' % (remaining, decision.reset)),
        ]


# --- the client address -------------------------------------------------------

# An address is its packed form, as inet_pton gives it: 4 bytes (IPv4) or 16 (IPv6).
# Bytes compare, hash and mask in C; no object is built per request.
Address = bytes
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6


class TrustedHosts:
    """IP addresses and CIDR ranges, each kept as (packed length, network, mask) integers."""

    def __init__(self, entries: Iterable[str]):
        networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]
        self._ranges = [(len(n.network_address.packed), int(n.network_address), int(n.netmask)) for n in networks]

    def __contains__(self, address: Address) -> bool:
        size, value = len(address), int.from_bytes(address)
        for length, network, mask in self._ranges:  # noqa: SIM110 (a loop: twice as fast as any() here)
            if size == length and value & mask == network:
                return True
        return False


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: brackets, a port or an IPv6 zone may surround it.
    IPv4-mapped IPv6 is unmapped; the unspecified address (0.0.0.0, ::) is no client."""
    try:  # the common case first: a plain IPv4 address
        address = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        address = _undressed(text)
    return None if address is None or address.count(0) == len(address) else address


def _undressed(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    text = text.partition("%")[0]
    try:  # inet_pton: the C parser, as strict as ipaddress (no leading zeros, no short forms)
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        try:
            address = socket.inet_pton(socket.AF_INET6, text)
        except (OSError, ValueError):
            return None
        return address[12:] if address.startswith(_MAPPED) else address


def client_address(peer: str | None, forwarded: Iterable[str], trusted: TrustedHosts) -> Address | None:
    """The client: the socket peer, or, when the peer is a trusted proxy, the
    rightmost X-Forwarded-For entry that is not trusted.

    Entries left of that one are whatever the client chose to send, so they are
    never believed. An unparsable entry where the client should stand, an empty
    header or an all-trusted chain fails closed to the peer. A missing peer
    (a unix socket) counts as the trusted local proxy.
    """
    peer_address = parse_address(peer) if peer else None
    if peer and (peer_address is None or peer_address not in trusted):
        return peer_address
    for entry in reversed(",".join(forwarded).split(",")):  # every line's entries, in order
        address = parse_address(entry)
        if address is None:
            return peer_address
        if address not in trusted:
            return address
    return peer_address


def client_key(address: Address | None) -> str:
    """IPv4 clients by address; IPv6 clients by their /64, which one subscriber holds."""
    if address is None:
        return "local"
    if len(address) == 16:
        return socket.inet_ntop(socket.AF_INET6, address[:8] + bytes(8)) + "/64"
    return socket.inet_ntop(socket.AF_INET, address)


def scope_client(scope: dict, trusted: TrustedHosts) -> Address | None:
    """client_address for an ASGI scope (a plain dict)."""
    peer = scope.get("client")
    forwarded = [value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"]
    return client_address(peer[0] if peer else None, forwarded, trusted)
