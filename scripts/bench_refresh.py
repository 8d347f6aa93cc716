"""Benchmark: one refresh (fetch + parse + index) of a large provider list, and idle memory.

For each provider, a payload is served by a loopback fake upstream, and a fresh
process runs one cold `Catalog.get` against it; we report the wall time (median
of 5 fresh processes) and how far peak RSS rose above that process's idle RSS.
NordVPN's payload is 6,300 servers (~21 MB) made by scaling the 100 real entries
of the real fixture; the others are their real fixtures. For scale, the same
payload is also decoded with `json.loads` in a fresh process. Last, a whole
`draco serve` process with every provider cached reports its RSS.

    python scripts/bench_refresh.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fake_upstream import FakeUpstream, free_port, wait_for_port  # noqa: E402

REAL = HERE.parent / "tests" / "fixtures"  # the captured payloads, see its SOURCES.md
FIXTURES = {
    "nordvpn": "nordvpn/v1_servers_wireguard_udp_100entries_2025-06-22.json",
    "surfshark": "surfshark/v4_server_clusters_generic_108clusters_2021-11.json",
    "mullvad": "mullvad/app_v1_relays_563wg_2026-06.json",
    "ivpn": "ivpn/v5_servers_90wghosts_2025-10-17.json",
    "windscribe": "windscribe/serverlist_mob-v2_0+1_75locations_201groups_2026-08-22.json",
    "airvpn": "airvpn/api_status_255servers_2026.json",
}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def nordvpn_payload(servers: int = 6300) -> bytes:
    real = json.loads((REAL / FIXTURES["nordvpn"]).read_bytes())
    scaled = []
    for i in range(servers):
        entry = dict(real[i % len(real)])
        entry["id"] = 10_000_000 + i
        entry["hostname"] = entry["hostname"].replace(".", f"-{i // len(real)}.", 1)
        scaled.append(entry)
    return json.dumps(scaled, separators=(",", ":")).encode()


def payloads() -> dict[str, bytes]:
    from draco.providers import REGISTRY

    found = {
        name: (REAL / path).read_bytes() for name, path in FIXTURES.items() if name in REGISTRY
    }
    found["nordvpn"] = nordvpn_payload()
    return found


def child_refresh(provider: str, url: str) -> None:
    """In a fresh process: idle RSS, then one cold refresh; prints seconds and peak growth (KiB)."""
    from draco.catalog.cache import Catalog
    from draco.providers import REGISTRY
    from draco.settings import load

    settings = load({f"{provider.upper()}_API_URL": url})

    async def run():
        async with httpx.AsyncClient(http2=True, timeout=60) as client:
            catalog = Catalog(settings, client, {provider: REGISTRY[provider]})
            await asyncio.sleep(0)
            idle = status_kb("VmRSS")
            start = time.perf_counter()
            data = await catalog.get(provider)
            elapsed = time.perf_counter() - start
            print(
                json.dumps(
                    {
                        "seconds": elapsed,
                        "growth_kb": status_kb("VmHWM") - idle,
                        "servers": len(data.servers),
                    }
                )
            )

    asyncio.run(run())


def child_json_loads(path: str) -> None:
    idle = status_kb("VmRSS")
    start = time.perf_counter()
    body = Path(path).read_bytes()
    json.loads(body)
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "growth_kb": status_kb("VmHWM") - idle}))


def fresh(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def idle_service_rss(fakes: dict[str, FakeUpstream]) -> int:
    port = free_port()
    env = {f"{name.upper()}_API_URL": fake.url for name, fake in fakes.items()}
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "draco", "serve", "--bind", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=HERE.parent,
    )
    try:
        wait_for_port("127.0.0.1", port)
        for name in fakes:
            httpx.get(f"http://127.0.0.1:{port}/api/{name}/servers", timeout=60).raise_for_status()
        time.sleep(1)
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("PROVIDER", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--child-json", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_refresh(*args.child)
    if args.child_json:
        return child_json_loads(args.child_json)

    bodies = payloads()
    fakes = {name: FakeUpstream(body) for name, body in bodies.items()}
    try:
        print(
            f"{'provider':<10} {'payload':>9} {'servers':>8} {'median s':>9} "
            f"{'peak RSS growth':>16}"
        )
        for name, fake in fakes.items():
            runs = [fresh("--child", name, fake.url) for _ in range(args.runs)]
            seconds = statistics.median(r["seconds"] for r in runs)
            growth = statistics.median(r["growth_kb"] for r in runs) / 1024
            size = len(bodies[name]) / 1e6
            print(
                f"{name:<10} {size:>7.1f}MB {runs[0]['servers']:>8} {seconds:>9.3f} "
                f"{growth:>13.1f} MB"
            )
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            f.write(bodies["nordvpn"])
            f.flush()
            runs = [fresh("--child-json", f.name) for _ in range(args.runs)]
        seconds = statistics.median(r["seconds"] for r in runs)
        growth = statistics.median(r["growth_kb"] for r in runs) / 1024
        print(
            f"{'(json.loads of the nordvpn payload, for scale)':<38} {seconds:>9.3f} "
            f"{growth:>13.1f} MB"
        )
        print(
            "idle `draco serve` with every provider cached: "
            f"{idle_service_rss(fakes) / 1024:.1f} MB RSS"
        )
    finally:
        for fake in fakes.values():
            fake.stop()


if __name__ == "__main__":
    main()
