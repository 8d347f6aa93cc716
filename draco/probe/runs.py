"""Latency runs for the routes: checked addresses, cached results, shared runs."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import time
from collections.abc import Hashable
from typing import Generic, NamedTuple, Protocol, TypeVar

from draco.probe.guard import probeable
from draco.probe.methods import measure

Key = tuple[str, str]  # (provider, identifier)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Target(NamedTuple):
    provider: str
    identifier: str
    ipv4: str | None  # probed when known
    hostname: str  # else resolved

    @property
    def key(self) -> Key:
        return (self.provider, self.identifier)


class ProbeSettings(Protocol):
    """The settings the runs read (draco.settings.Settings has them)."""

    @property
    def latency_concurrency(self) -> int: ...
    @property
    def latency_timeout(self) -> float: ...
    @property
    def latency_deadline(self) -> float: ...
    @property
    def latency_ttl(self) -> int: ...
    @property
    def latency_allow_private(self) -> bool: ...
    @property
    def latency_tcp_port(self) -> int: ...


class Stored(NamedTuple, Generic[V]):
    at: float  # time.monotonic() when stored
    value: V


class Expiring(Generic[K, V]):
    """Values kept for `ttl` seconds from when they were stored: the one freshness rule of
    both caches. `generation` changes whenever values are stored, so an answer built
    from them can be keyed by it."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.stored: dict[K, Stored[V]] = {}
        self.generation = 0

    def is_fresh(self, hit: Stored[V], now: float) -> bool:
        return now - hit.at < self.ttl

    def fresh(self, now: float) -> dict[K, V]:
        return {key: hit.value for key, hit in self.stored.items() if self.is_fresh(hit, now)}

    def lookup(self, key: K) -> V | None:
        """The value while it is fresh; None when absent or expired."""
        hit = self.stored.get(key)
        return hit.value if hit and self.is_fresh(hit, time.monotonic()) else None

    def put(self, values: dict[K, V]) -> None:
        now = time.monotonic()
        self.stored.update({key: Stored(now, value) for key, value in values.items()})
        self.generation += 1

    def drop_expired(self) -> None:
        """What has expired goes: a server that has left the lists leaves the caches too."""
        now = time.monotonic()
        self.stored = {key: hit for key, hit in self.stored.items() if self.is_fresh(hit, now)}


class Resolver:
    """getaddrinfo with a timeout and a cache (a failed lookup is cached too, as no address)."""

    def __init__(self, ttl: float):
        self.cache: Expiring[str, list[str]] = Expiring(ttl)

    async def resolve(self, host: str, timeout: float) -> list[str]:
        cached = self.cache.lookup(host)
        if cached is not None:
            return cached
        try:
            async with asyncio.timeout(timeout):
                loop = asyncio.get_running_loop()
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        except (OSError, TimeoutError, UnicodeError):
            found = []
        self.cache.put({host: found})
        return found


class Latencies:
    """Runs for the routes: addresses checked, results cached for LATENCY_TTL seconds,
    identical concurrent requests sharing one run, at most one run per provider in flight."""

    def __init__(self, settings: ProbeSettings):
        self.settings = settings
        self.resolver = Resolver(settings.latency_ttl)
        self.measured: Expiring[Key, float | None] = Expiring(settings.latency_ttl)  # ms
        self.runs_by_method: collections.Counter[str] = collections.Counter()
        self.locks: dict[str, asyncio.Lock] = {}
        self.runs: dict[
            tuple[str, str, tuple[Key, ...]], asyncio.Task[dict[Key, float | None]]
        ] = {}

    def known(self) -> dict[Key, float]:
        """Fresh successful measurements, for ranking."""
        fresh = self.measured.fresh(time.monotonic())
        return {key: ms for key, ms in fresh.items() if ms is not None}

    async def run(self, name: str, targets: list[Target], method: str) -> dict[Key, float | None]:
        """{(provider, identifier): milliseconds or None} for every target."""
        key = (name, method, tuple(t.key for t in targets))
        task = self.runs.get(key)
        if task is None:
            task = self.runs[key] = asyncio.ensure_future(self._run(name, targets, method))
            task.add_done_callback(lambda _: self.runs.pop(key, None))
        return await asyncio.shield(task)

    async def _run(self, name: str, targets: list[Target], method: str) -> dict[Key, float | None]:
        s = self.settings
        async with self.locks.setdefault(name, asyncio.Lock()):
            started = time.monotonic()
            self.measured.drop_expired()
            self.resolver.cache.drop_expired()
            cached = self.measured.fresh(started)
            fresh = {t.key: cached[t.key] for t in targets if t.key in cached}
            todo = [t for t in targets if t.key not in fresh]
            addresses = await self._addresses(todo, s.latency_deadline)
            remaining = max(0.0, s.latency_deadline - (time.monotonic() - started))
            results = await measure(
                addresses.items(),
                method,
                concurrency=s.latency_concurrency,
                timeout=s.latency_timeout,
                deadline=remaining,
                port=s.latency_tcp_port,
            )
            self.measured.put(results)
            self.runs_by_method[method] += 1
            return fresh | results

    async def _addresses(self, targets: list[Target], deadline: float) -> dict[Key, str | None]:
        """The address to probe for each target, or None when it has none or it is refused."""
        gate = asyncio.Semaphore(self.settings.latency_concurrency)
        found: dict[Key, str | None] = {t.key: None for t in targets}

        async def pick(target: Target) -> None:
            if target.ipv4:
                candidates = [target.ipv4]
            else:
                async with gate:
                    timeout = self.settings.latency_timeout
                    candidates = await self.resolver.resolve(target.hostname, timeout)
            # Every address a name resolves to must pass, or a name could steer a probe.
            allow_private = self.settings.latency_allow_private
            addresses = [ipaddress.ip_address(c.partition("%")[0]) for c in candidates]
            if all(probeable(a, allow_private=allow_private) for a in addresses):
                found[target.key] = candidates[0] if candidates else None

        tasks = [asyncio.ensure_future(pick(target)) for target in targets]
        if tasks:
            await asyncio.wait(tasks, timeout=deadline)
            for task in tasks:
                task.cancel()
        return found
