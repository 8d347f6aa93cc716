"""Latency runs for the routes: checked addresses, cached results, shared runs."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import time
from typing import Any

from draco.probe.guard import probeable
from draco.probe.methods import measure

Key = tuple[str, str]  # (provider, identifier)
Target = tuple[str, str, str | None, str]  # (provider, identifier, IPv4 address or None, hostname)


class Resolver:
    """getaddrinfo with a timeout and a cache (a failed lookup is cached too)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.cache: dict[str, tuple[float, list[str]]] = {}

    async def resolve(self, host: str, timeout: float) -> list[str]:
        hit = self.cache.get(host)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            async with asyncio.timeout(timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        except (OSError, TimeoutError, UnicodeError):
            found = []
        self.cache[host] = (time.monotonic(), found)
        return found


class Latencies:
    """Runs for the routes: addresses checked, results cached for `ttl` seconds, identical
    concurrent requests sharing one run, at most one run per provider in flight."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.resolver = Resolver(settings.latency_ttl)
        self.cache: dict[Key, tuple[float, float | None]] = {}  # when measured, milliseconds
        self.runs_done = 0  # part of the keys of cached /top answers
        self.runs_by_method: collections.Counter[str] = collections.Counter()
        self.locks: dict[str, asyncio.Lock] = {}
        self.runs: dict[tuple[str, str, tuple[Key, ...]], asyncio.Task[dict[Key, float | None]]] = {}

    def known(self) -> dict[Key, float]:
        """Fresh successful measurements, for ranking."""
        horizon = time.monotonic() - self.settings.latency_ttl
        return {key: ms for key, (at, ms) in self.cache.items() if at >= horizon and ms is not None}

    async def run(self, name: str, targets: list[Target], method: str) -> dict[Key, float | None]:
        """{(provider, identifier): milliseconds or None} for every target."""
        key = (name, method, tuple(t[:2] for t in targets))
        task = self.runs.get(key)
        if task is None:
            task = self.runs[key] = asyncio.ensure_future(self._run(name, targets, method))
            task.add_done_callback(lambda _: self.runs.pop(key, None))
        return await asyncio.shield(task)

    async def _run(self, name: str, targets: list[Target], method: str) -> dict[Key, float | None]:
        s = self.settings
        async with self.locks.setdefault(name, asyncio.Lock()):
            started = time.monotonic()  # what has expired goes: the caches keep no server that left the lists
            self.cache = {k: v for k, v in self.cache.items() if v[0] >= started - s.latency_ttl}
            self.resolver.cache = {h: v for h, v in self.resolver.cache.items() if started - v[0] < self.resolver.ttl}
            fresh = {t[:2]: self.cache[t[:2]][1] for t in targets if t[:2] in self.cache}
            todo = [t for t in targets if t[:2] not in fresh]
            addresses = await self._addresses(todo, s.latency_deadline)
            remaining = max(0.0, s.latency_deadline - (time.monotonic() - started))
            results = await measure(addresses.items(), method, concurrency=s.latency_concurrency,
                                    timeout=s.latency_timeout, deadline=remaining, port=s.latency_tcp_port)  # fmt: skip
            now = time.monotonic()
            self.cache.update({k: (now, ms) for k, ms in results.items()})
            self.runs_done += 1
            self.runs_by_method[method] += 1
            return fresh | results

    async def _addresses(self, targets: list[Target], deadline: float) -> dict[Key, str | None]:
        """The address to probe for each target, or None when it has none or it is refused."""
        gate = asyncio.Semaphore(self.settings.latency_concurrency)
        found: dict[Key, str | None] = {t[:2]: None for t in targets}

        async def pick(provider: str, identifier: str, ipv4: str | None, hostname: str) -> None:
            if ipv4:
                candidates = [ipv4]
            else:
                async with gate:
                    candidates = await self.resolver.resolve(hostname, self.settings.latency_timeout)
            allow_private = self.settings.latency_allow_private  # every address a name resolves to must pass:
            if not all(probeable(ipaddress.ip_address(c.partition("%")[0]), allow_private) for c in candidates):
                return
            found[(provider, identifier)] = candidates[0] if candidates else None

        tasks = [asyncio.ensure_future(pick(*t)) for t in targets]
        if tasks:
            await asyncio.wait(tasks, timeout=deadline)
            for task in tasks:
                task.cancel()
        return found
