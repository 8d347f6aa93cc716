"""Benchmark: the rate limiter against the `limits` library's moving window, in one run.

Both are exact sliding windows. In memory: decisions per second on one core
(100,000 clients, round robin, median of 5 rounds), and bytes per tracked client
(tracemalloc) at 100,000 clients holding 10 and 100 hits. On Redis (a local
redis-server started here): decisions per second from one process with 64
decisions in flight, for draco's store and for `limits`' Redis moving window on
the same server; and the latency a request gains through a real draco (wrk, one
connection, p50 and p99) with the Redis store instead of the memory one.

    pip install -e '.[bench]' && python scripts/bench_limiter.py [--redis-only]
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from limits import RateLimitItemPerMinute, storage, strategies

from draco.security.limiter import Limiter, MemoryStore

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


def redis_rates(url: str, seconds: float = 5.0, in_flight: int = 64) -> dict[str, float]:
    from limits.aio import storage as aio_storage
    from limits.aio import strategies as aio_strategies

    from draco.security.redis_store import RedisStore

    names = keys(10_000)

    async def drive(decide) -> float:
        done, stop_at = 0, time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < stop_at:
                await decide(names[i % len(names)])
                done += 1
                i += in_flight

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(in_flight)))
        return done / (time.perf_counter() - began)

    async def ours() -> float:
        store = RedisStore(url)
        limiter = Limiter(LIMIT, PERIOD, store, clock=None)
        try:
            return await drive(limiter.hit)
        finally:
            await store.client.aclose()

    async def theirs() -> float:
        backend = aio_storage.RedisStorage(
            url.replace("redis://", "async+redis://"), implementation="redispy"
        )
        limiter = aio_strategies.MovingWindowRateLimiter(backend)
        item = RateLimitItemPerMinute(LIMIT)
        return await drive(lambda name: limiter.hit(item, name))

    rates: dict[str, list[float]] = {"draco RedisStore": [], "limits moving window on Redis": []}
    for _ in range(3):
        rates["draco RedisStore"].append(asyncio.run(ours()))
        rates["limits moving window on Redis"].append(asyncio.run(theirs()))
    return {name: statistics.median(values) for name, values in rates.items()}


def added_latency(url: str) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) of one wrk connection against draco with each store."""
    import shutil
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_upstream import FakeUpstream, free_port, wait_for_port

    if not shutil.which("wrk"):
        return {}
    upstream = FakeUpstream(
        (Path(__file__).resolve().parent.parent / "draco/demo_data/nordvpn.json").read_bytes()
    )
    results = {}
    try:
        for name, storage in (("memory", "memory"), ("redis", url)):
            port = free_port()
            env = {
                "PATH": os.environ["PATH"],
                "NORDVPN_API_URL": upstream.url,
                "RATE_LIMIT_STORAGE": storage,
                "RATE_LIMIT_REQUESTS": "10000",
                "RATE_LIMIT_PERIOD": "10",
                "LOG_LEVEL": "WARNING",
            }
            proc = subprocess.Popen(
                [sys.executable, "-m", "draco", "serve", "--bind", f"127.0.0.1:{port}"], env=env
            )
            try:
                wait_for_port("127.0.0.1", port)
                target = f"http://127.0.0.1:{port}/api/nordvpn/countries"
                subprocess.run(
                    ["wrk", "-t1", "-c1", "-d2s", target], capture_output=True
                )  # warm up
                out = subprocess.run(
                    ["wrk", "-t1", "-c1", "-d8s", "--latency", target],
                    capture_output=True,
                    text=True,
                ).stdout
                results[name] = tuple(
                    _ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in (50, 99)
                )
            finally:
                proc.terminate()
                proc.wait()
    finally:
        upstream.stop()
    return results


def _ms(text: str) -> float:
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def redis_section() -> None:
    import shutil
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_upstream import free_port, wait_for_port

    if not shutil.which("redis-server"):
        print("redis: skipped (redis-server not installed)")
        return
    port = free_port()
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        url = f"redis://127.0.0.1:{port}/0"
        rates = redis_rates(url)
        print("on Redis, decisions per second from one process, 64 in flight (median of 3):")
        baseline = rates["limits moving window on Redis"]
        for name, rate in rates.items():
            print(f"  {name:<30} {rate:>9,.0f}/s  ({rate / baseline:.2f}x limits)")
        latency = added_latency(url)
        if latency:
            (m50, m99), (r50, r99) = latency["memory"], latency["redis"]
            print("latency through draco, one connection (wrk), memory store vs Redis store:")
            print(f"  p50 {m50:.3f} ms vs {r50:.3f} ms: +{r50 - m50:.3f} ms")
            print(f"  p99 {m99:.3f} ms vs {r99:.3f} ms: +{r99 - m99:.3f} ms")
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    if "--redis-only" in sys.argv:
        redis_section()
        return
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
        print(
            f"  {name:<28} {rate:>12,.0f}/s  ({rate / medians['limits moving window']:.2f}x limits)"
        )
    small = names[:CLIENTS]
    print(f"bytes per tracked client at {CLIENTS:,} clients:")
    for hits in (10, 100):
        mine = bytes_per_client(draco_fill, hits, small)
        theirs = bytes_per_client(limits_fill, hits, small)
        print(f"  holding {hits:>3} hits: draco {mine:>7,.0f} B   limits {theirs:>7,.0f} B")
    redis_section()


if __name__ == "__main__":
    main()
