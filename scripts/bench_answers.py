"""Benchmark: what an answer costs however it is asked, in-process (the ASGI app alone).

- /api/nordvpn/changes after a full replacement of 6,300 NordVPN servers (the scaled
  real fixture: every server renamed, with a new key): the answer's size and the CPU
  time of a request, the median of --requests requests, gzip asked as a browser asks;
- a 422 for 3,000 unknown query parameters (12 KB of query, within the 16 KiB head):
  its size.

    python scripts/bench_answers.py [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from pathlib import Path

import httpx
import msgspec
from starlette.applications import Starlette

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_refresh import nordvpn_payload  # noqa: E402

from draco.catalog.cache import Catalog  # noqa: E402
from draco.catalog.dataset import make_dataset  # noqa: E402
from draco.catalog.guard import Trust  # noqa: E402
from draco.catalog.reports import MemoryQuarantine  # noqa: E402
from draco.probe.runs import Latencies  # noqa: E402
from draco.providers import REGISTRY  # noqa: E402
from draco.settings import load  # noqa: E402
from draco.web.errors import HANDLERS  # noqa: E402
from draco.web.routes import Api  # noqa: E402


async def app_after_a_full_swap() -> Starlette:
    settings = load({})
    catalog = Catalog(settings, httpx.AsyncClient(), {"nordvpn": REGISTRY["nordvpn"]})
    servers = REGISTRY["nordvpn"].parse(nordvpn_payload()).servers
    await catalog._consider("nordvpn", make_dataset("nordvpn", servers, time.time()), "upstream")
    swapped = [
        msgspec.structs.replace(
            s,
            identifier="new-" + s.identifier,
            public_key=base64.b64encode(i.to_bytes(32, "big")).decode(),
        )
        for i, s in enumerate(servers)
    ]
    # A full replacement is held by the guard; start trust anew to take it, as an operator's
    # `draco hold accept` would.
    catalog.status["nordvpn"].trust = Trust()
    replaced = make_dataset("nordvpn", swapped, time.time())
    await catalog._consider("nordvpn", replaced, "upstream")
    api = Api(settings, catalog, Latencies(settings), ["tcp"], MemoryQuarantine(600))
    routes = [endpoint.route() for endpoint in api.endpoints]
    return Starlette(routes=routes, exception_handlers=HANDLERS)


def query_of_3000_unknown_names() -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    names = ("q" + digits[n // 1296] + digits[n // 36 % 36] + digits[n % 36] for n in range(3000))
    return "&".join(names)


async def call(app: Starlette, path: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """One request through the ASGI app alone (no client decoding it): the body sent."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[bytes] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message.get("body", b""))

    await app(scope, receive, send)
    return b"".join(sent)


async def measure(requests: int) -> None:
    app = await app_after_a_full_swap()
    gzip = [(b"accept-encoding", b"gzip")]
    plain = await call(app, "/api/nordvpn/changes", [])  # the last change: the replacement
    seconds = []
    for _ in range(requests):
        started = time.process_time()
        wire = await call(app, "/api/nordvpn/changes", gzip)
        seconds.append(time.process_time() - started)
    refused = await call(app, f"/api/nordvpn/servers?{query_of_3000_unknown_names()}", [])
    print("/api/nordvpn/changes after a full replacement of 6,300 servers:")
    print(f"  {len(plain) / 1e6:.2f} MB of JSON, {len(wire) / 1e6:.2f} MB gzipped")
    print(f"  CPU per request: {1000 * statistics.median(seconds):.2f} ms (median of {requests})")
    print(f"  (first request {1000 * seconds[0]:.2f} ms)")
    print(f"422 for 3,000 unknown parameters: {len(refused):,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    asyncio.run(measure(parser.parse_args().requests))


if __name__ == "__main__":
    main()
