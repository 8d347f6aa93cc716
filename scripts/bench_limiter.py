"""Benchmark: the rate limiter against the `limits` library's moving window, in one run.

Both are exact sliding windows. Reported for each: decisions per second on one
core (100,000 clients, round robin, median of 5 rounds), and bytes per tracked
client (tracemalloc) at 100,000 clients holding 10 and 100 hits.

    pip install -e '.[bench]' && python scripts/bench_limiter.py
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc

from limits import RateLimitItemPerMinute, storage, strategies

from draco.ratelimit import Limiter, MemoryStore

CLIENTS = 100_000
DECISIONS = 500_000
LIMIT, PERIOD = 100, 60


def keys(n: int) -> list[str]:
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)]


def draco_decide(names: list[str], start: float) -> float:
    store = MemoryStore(max_clients=CLIENTS * 2)
    hit = store.hit_now
    n = len(names)
    began = time.perf_counter()
    for i in range(DECISIONS):
        hit(names[i % n], start + i * 1e-6, LIMIT, PERIOD)
    return DECISIONS / (time.perf_counter() - began)


def draco_decide_async(names: list[str], start: float) -> float:
    """What the middleware calls: the awaitable Limiter.hit with the clock."""
    now = [start]
    limiter = Limiter(LIMIT, PERIOD, MemoryStore(max_clients=CLIENTS * 2), lambda: now[0])
    n = len(names)

    async def run() -> float:
        began = time.perf_counter()
        for i in range(DECISIONS):
            now[0] = start + i * 1e-6
            await limiter.hit(names[i % n])
        return DECISIONS / (time.perf_counter() - began)

    return asyncio.run(run())


def limits_decide(names: list[str], _start: float) -> float:
    limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
    item = RateLimitItemPerMinute(LIMIT)
    hit = limiter.hit
    n = len(names)
    began = time.perf_counter()
    for i in range(DECISIONS):
        hit(item, names[i % n])
    return DECISIONS / (time.perf_counter() - began)


def bytes_per_client(make, hits: int, names: list[str]) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = make(names, hits)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del keep
    return used / len(names)


def draco_fill(names: list[str], hits: int):
    store = MemoryStore(max_clients=CLIENTS * 2)
    for j in range(hits):
        for name in names:
            store.hit_now(name, 1000.0 + j * 0.01, max(hits, LIMIT), PERIOD)
    return store


def limits_fill(names: list[str], hits: int):
    backend = storage.MemoryStorage()
    limiter = strategies.MovingWindowRateLimiter(backend)
    item = RateLimitItemPerMinute(max(hits, LIMIT))
    for _ in range(hits):
        for name in names:
            limiter.hit(item, name)
    return backend


def main() -> None:
    names = keys(CLIENTS)
    start = time.time()
    rates = {"draco": [], "draco (async Limiter.hit)": [], "limits moving window": []}
    for _ in range(5):
        rates["draco"].append(draco_decide(names, start))
        rates["draco (async Limiter.hit)"].append(draco_decide_async(names, start))
        rates["limits moving window"].append(limits_decide(names, start))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"decisions per second, one core, {CLIENTS:,} clients (median of 5):")
    for name, rate in medians.items():
        print(f"  {name:<28} {rate:>12,.0f}/s  ({rate / medians['limits moving window']:.2f}x limits)")
    small = names[:CLIENTS]
    print(f"bytes per tracked client at {CLIENTS:,} clients:")
    for hits in (10, 100):
        mine = bytes_per_client(draco_fill, hits, small)
        theirs = bytes_per_client(limits_fill, hits, small)
        print(f"  holding {hits:>3} hits: draco {mine:>7,.0f} B   limits {theirs:>7,.0f} B")


if __name__ == "__main__":
    main()
