"""Benchmark: the failover features' figures, in-process.

- spread: 20 seeds (replicas' pod names) ask `top?limit=1&max_load=50` of the real NordVPN
  fixture: how many distinct servers they get, and the most seeds on one server; then
  10% of the list leaves, and the fraction of seeds whose answer changed is set beside
  the fraction whose server left;
- the history: 64 versions of 6,300 servers, each a full replacement (the worst case)
  and each a 1% change, and the memory it holds (tracemalloc);
- reports: 100,000 reports over 20,000 keys into the in-memory store: the scopes and
  servers it keeps, the growth of the resident set, and the memory it holds (tracemalloc).

    python scripts/bench_failover.py
"""

from __future__ import annotations

import asyncio
import collections
import random
import sys
import tracemalloc
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from fake_upstream import FakeUpstream  # noqa: E402

from draco.app import create_app  # noqa: E402
from draco.catalog.guard import Entry  # noqa: E402
from draco.catalog.history import History, version_of  # noqa: E402
from draco.catalog.reports import MemoryQuarantine  # noqa: E402
from draco.providers import REGISTRY  # noqa: E402
from draco.settings import load  # noqa: E402

NORDVPN = HERE.parent / "tests" / "fixtures" / "nordvpn"
REAL = NORDVPN / "v1_servers_wireguard_udp_100entries_2025-06-22.json"
SEEDS = [f"vpn-client-7d9f8c-{n:05x}" for n in range(20)]


async def spread() -> None:
    import json

    entries = json.loads(REAL.read_bytes())
    upstream = FakeUpstream(REAL.read_bytes())
    closed = {f"{name.upper()}_API_URL": "http://127.0.0.1:9/" for name in REGISTRY}
    settings = load({**closed, "RATE_LIMIT_ENABLED": "false", "NORDVPN_API_URL": upstream.url})
    app = create_app(settings)
    catalog = app.state.catalog
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
            await catalog.refresh("nordvpn")

            async def answers() -> dict[str, str]:
                found = {}
                for seed in SEEDS:
                    url = f"/api/nordvpn/servers/top?limit=1&max_load=50&seed={seed}"
                    found[seed] = (await client.get(url)).json()[0]["identifier"]
                return found

            before = await answers()
            listed = [s.identifier for s in catalog.status["nordvpn"].data.servers]
            sample = random.Random(7)  # noqa: S311 - a sample, no secret
            gone = set(sample.sample(listed, len(listed) // 10))  # 10% leave
            kept = [e for e in entries if e["hostname"] not in gone]
            upstream.set("ok", body=json.dumps(kept).encode())
            await catalog.refresh("nordvpn")
            after = await answers()
    upstream.stop()
    eligible = len({s for s in before.values()})
    most = max(collections.Counter(before.values()).values())
    changed = sum(before[seed] != after[seed] for seed in SEEDS) / len(SEEDS)
    left = sum(before[seed] in gone for seed in SEEDS) / len(SEEDS)
    print(f"spread over the real NordVPN fixture ({len(listed)} servers, max_load=50):")
    print(f"  20 seeds got {eligible} distinct servers; at most {most} seeds on one server")
    print(f"  10% of the list left: {changed:.0%} of the seeds changed answer, ")
    print(f"  {left:.0%} had their server leave")


def history_memory(changed_fraction: float) -> tuple[int, int, int]:
    """(versions kept, servers changed kept, bytes held) after 64 versions of 6,300."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    history = History(64)
    entries = {
        f"de{i}.nordvpn.com": Entry(f"key-{i:040d}=", f"198.18.{i // 250}.{i % 250}")
        for i in range(6300)
    }
    for n in range(64):
        if changed_fraction >= 1:
            entries = {f"v{n}-{i}.nordvpn.com": Entry(f"k{n}-{i:038d}=", None) for i in range(6300)}
        else:
            entries = dict(entries)
            sample = random.Random(n)  # noqa: S311 - a sample, no secret
            for i in sample.sample(range(6300), int(6300 * changed_fraction)):
                name = f"de{i}.nordvpn.com"
                entries[name] = Entry(f"key-{n}-{i:036d}=", entries[name].address)
        history.record(
            version_of(entries, 1_800_000_000 + n * 300), entries, 1_800_000_000 + n * 300
        )
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return len(history.steps), history.entries, held


def rss() -> int:
    """This process's resident set, in bytes (Linux)."""
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) << 10


def flood(quarantine: MemoryQuarantine) -> None:
    rng = random.Random(1)  # noqa: S311 - a sample, no secret

    async def send() -> None:
        for n in range(100_000):
            scope = f"{rng.randrange(20_000):032x}"
            server = ("nordvpn", f"de{rng.randrange(6300)}.nordvpn.com")
            await quarantine.report(scope, server, "unreachable", 1_800_000_000 + n / 100)

    asyncio.run(send())


def reports_memory() -> tuple[int, int | None, int, int]:
    """Scopes and servers kept, the resident set's growth (first, in a fresh process), and
    the bytes traced (a second flood into a fresh store)."""
    before = rss()
    quarantine = MemoryQuarantine(600)
    flood(quarantine)
    grown = rss() - before
    counts = quarantine.counts()
    del quarantine
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    quarantine = MemoryQuarantine(600)
    flood(quarantine)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return counts.scopes, counts.servers, grown, held


def main() -> None:
    scopes, servers, grown, held = reports_memory()  # first: a fresh process's resident set
    asyncio.run(spread())
    for fraction, label in ((1.0, "full replacements"), (0.01, "1% changes")):
        versions, kept, held = history_memory(fraction)
        print(f"history, 64 versions of 6,300 servers, {label}: {versions} versions kept, ")
        print(f"  {kept:,} servers changed, {held / 2**20:.1f} MiB held")
    print(f"reports: 100,000 over 20,000 keys: {scopes:,} scopes and {servers:,} servers kept, ")
    print(f"  {held / 2**20:.1f} MiB held, resident set grown by {grown / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
