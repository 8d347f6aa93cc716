"""Benchmark: draco's full stack against a bare Starlette app, on the same hypercorn.

The full stack serves a cached `/api/nordvpn/servers?page_size=100` (4,662
NordVPN servers, from the scaled real fixture) with the API key, the limiter and
the security headers all on; every request comes from a different client behind
a trusted proxy (a new X-Forwarded-For each time). The bare app is Starlette with
one route returning the very same bytes. Server and load generator are pinned to
different cores. HTTP/1.1 load comes from wrk; h2c load from a small h2 client
below (h2load cannot vary a header per request). Also measured: the same request
revalidated with If-None-Match (a 304).

Two figures per target: requests per second, and the server's CPU time per request
(user + system, read from /proc for the server's process tree). On a shared VM the
second is the steadier one: time stolen by neighbours lowers throughput but is not
charged to the process. Two baselines: the bare app with its own few headers, and
the bare app sending draco's very response (the same 19 header fields too), which
separates what hypercorn and h11 spend per header field from what draco's code
spends. Each round measures every target back to back; a ratio is the median of
the rounds' own ratios, so a slow drift of the machine between rounds cancels.

    python scripts/bench_http.py [--seconds 5] [--connections 32] [--rounds 5] [--page-size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_refresh import nordvpn_payload  # noqa: E402
from fake_upstream import FakeUpstream, free_port, wait_for_port  # noqa: E402

KEY = "bench-" + "k" * 58
SAME = "bare, same headers"  # the bare app sending draco's whole response: the same bytes
PATH = "/api/nordvpn/servers?page_size=100"  # --page-size changes it


def bare_app():
    """The baseline: Starlette, one route, the same bytes (read from BARE_BODY). With
    BARE_HEADERS it also sends draco's own response headers, which isolates what
    hypercorn and h11 spend on header fields from what draco's code spends."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    body = Path(os.environ["BARE_BODY"]).read_bytes()
    extra = [tuple(line.encode().split(b": ", 1)) for line in os.environ.get("BARE_HEADERS", "").splitlines()]

    async def servers(_request):
        response = Response(body, media_type="application/json")
        response.raw_headers += extra
        return response

    return Starlette(routes=[Route("/api/nordvpn/servers", servers)])


WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local ip = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format(nil, nil, {["X-Forwarded-For"] = ip, ["X-API-Key"] = "KEY"EXTRA})
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (hypercorn's CLI serves
    from a child process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(int(c)) for c in children)


def wrk(port: int, seconds: int, connections: int, etag: str | None) -> tuple[float, int]:
    extra = f", [\"If-None-Match\"] = '{etag}'" if etag else ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT.replace("KEY", KEY).replace("EXTRA", extra))
        script.flush()
        out = subprocess.run(
            [
                "taskset",
                "-c",
                "1",
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}{PATH}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    if "Non-2xx or 3xx" in out:
        raise RuntimeError(out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rate, int(re.search(r"(\d+) requests in", out).group(1))


async def _h2c(port: int, seconds: float, connections: int, etag: str | None) -> tuple[float, collections.Counter]:
    import h2.config
    import h2.connection
    import h2.events

    statuses: collections.Counter = collections.Counter()
    counter = iter(range(1, 1 << 30))
    stop_at = time.monotonic() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while time.monotonic() < stop_at:
            n = next(counter)
            client = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}".encode()
            headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1")]
            headers += [(b":path", PATH.encode()), (b"x-api-key", KEY.encode()), (b"x-forwarded-for", client)]
            if etag:
                headers.append((b"if-none-match", etag.encode()))
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, headers, end_stream=True)
            writer.write(conn.data_to_send())
            ended = False
            while not ended:
                data = await reader.read(1 << 16)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses[dict(event.headers)[b":status"]] += 1
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                        ended = True
                writer.write(conn.data_to_send())
        writer.close()

    began = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return sum(statuses.values()) / (time.monotonic() - began), statuses


def h2c(port: int, seconds: int, connections: int, etag: str | None) -> tuple[float, int]:
    os.sched_setaffinity(0, {1})
    rate, statuses = asyncio.run(_h2c(port, seconds, connections, etag))
    os.sched_setaffinity(0, set(range(os.cpu_count())))
    if set(statuses) != {b"304" if etag else b"200"}:
        raise RuntimeError(f"unexpected statuses {statuses}")
    return rate, sum(statuses.values())


def ratio(values: dict[str, list[float]], a: str, b: str) -> float:
    """The median of the rounds' own ratios a / b."""
    return statistics.median(x / y for x, y in zip(values[a], values[b], strict=True))


def serve(argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, *argv],
        env=env,
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--page-size", type=int, default=100)
    args = parser.parse_args()
    global PATH
    PATH = f"/api/nordvpn/servers?page_size={args.page_size}"
    if not shutil.which("wrk"):
        sys.exit("needs wrk (apt-get install wrk)")

    upstream = FakeUpstream(nordvpn_payload())
    full_port, bare_port, headers_port = free_port(), free_port(), free_port()
    base = {"PATH": os.environ["PATH"], "LOG_LEVEL": "WARNING"}
    full = serve(
        ["-m", "draco", "serve", "--bind", f"127.0.0.1:{full_port}"],
        {
            **base,
            "NORDVPN_API_URL": upstream.url,
            "ENABLE_API_KEY_AUTH": "true",
            "API_KEYS": f'["{KEY}"]',
            "RATE_LIMIT_ENABLED": "true",
            "ENABLE_SECURITY_HEADERS": "true",
            "TRUSTED_HOSTS": '["127.0.0.1"]',
        },
        full_port,
    )
    url = f"http://127.0.0.1:{full_port}{PATH}"
    asked = {"X-API-Key": KEY, "X-Forwarded-For": "10.255.0.1", "Accept-Encoding": "identity"}  # as wrk asks
    first = httpx.get(url, headers=asked)
    first.raise_for_status()
    etag = first.headers["etag"]
    if httpx.get(url, headers={**asked, "If-None-Match": etag}).status_code != 304:
        sys.exit("the revalidation target does not answer 304")
    body = tempfile.NamedTemporaryFile(suffix=".json")
    body.write(first.content)
    body.flush()
    own = "\n".join(
        f"{k}: {v}" for k, v in first.headers.items() if k not in ("content-length", "content-type", "date")
    )
    bare = serve(
        ["-m", "hypercorn", "--bind", f"127.0.0.1:{bare_port}", "bench_http:bare_app()"],
        {**base, "BARE_BODY": body.name},
        bare_port,
    )
    bare_headers = serve(
        ["-m", "hypercorn", "--bind", f"127.0.0.1:{headers_port}", "bench_http:bare_app()"],
        {**base, "BARE_BODY": body.name, "BARE_HEADERS": own},
        headers_port,
    )
    targets = {
        "bare": (bare, bare_port, None),
        SAME: (bare_headers, headers_port, None),
        "draco 200": (full, full_port, None),
        "draco 304": (full, full_port, etag),
    }
    try:
        print(
            f"{len(first.content):,}-byte body, {len(own.splitlines())} header fields beyond the bare app's, "
            f"{args.connections} connections, {args.seconds}s x {args.rounds} interleaved rounds, medians:"
        )
        for protocol, load in (("HTTP/1.1", wrk), ("h2c", h2c)):
            rates: dict[str, list[float]] = {name: [] for name in targets}
            costs: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (proc, port, tag) in targets.items():
                    before = cpu_seconds(proc.pid)
                    rate, requests = load(port, args.seconds, args.connections, tag)
                    costs[name].append((cpu_seconds(proc.pid) - before) / requests * 1e6)
                    rates[name].append(rate)
            print(f"  {'':<31} {'req/s':>7} {'/bare':>6} {'/same':>6}   {'CPU µs/req':>10} {'/bare':>6} {'/same':>6}")
            for name in targets:
                print(
                    f"  {protocol:<8} {name:<22} {statistics.median(rates[name]):>7,.0f} "
                    f"{ratio(rates, name, 'bare'):>6.2f} {ratio(rates, name, SAME):>6.2f}   "
                    f"{statistics.median(costs[name]):>10.1f} "
                    f"{ratio(costs, 'bare', name):>6.2f} {ratio(costs, SAME, name):>6.2f}"
                )
    finally:
        for proc in (full, bare, bare_headers):
            proc.terminate()
            proc.wait()
        upstream.stop()


if __name__ == "__main__":
    main()
