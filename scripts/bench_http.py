"""Benchmark: draco's full stack against a bare Starlette app, on the same hypercorn.

The full stack serves a cached `/api/nordvpn/servers?page_size=100` (4,662
NordVPN servers, from the scaled real fixture) with the API key, the limiter and
the security headers all on; every request comes from a different client behind
a trusted proxy (a new X-Forwarded-For each time). The bare app is Starlette with
one route returning the very same bytes. Server and load generator are pinned to
different cores. HTTP/1.1 load comes from wrk; h2c load from a small h2 client
below (h2load cannot vary a header per request). Also measured: the same request
revalidated with If-None-Match (a 304), and the same page with
`fields=identifier,public_key,ipv4` (its body's size is printed too).

Two figures per target: requests per second, and the server's CPU time per request
(user + system, read from /proc for the server's process tree). On a shared VM the
second is the steadier one: time stolen by neighbours lowers throughput but is not
charged to the process. Two baselines: the bare app with its own few headers, and
the bare app sending draco's very response (the same 19 header fields too), which
separates what hypercorn and h11 spend per header field from what draco's code
spends. Each round measures every target back to back; a ratio is the median of
the rounds' own ratios, so a slow drift of the machine between rounds cancels.

With --instructions, every server runs under valgrind's callgrind instead, and the
figure is the user-space instructions its process tree executes per request: a
count, not a time, so it comes out the same whatever the neighbours do (within a
few tenths of a per cent: a request in flight when counting starts or stops). It
leaves out what the kernel spends (strace shows draco and the bare app making the
same system calls per request) and what cache misses and mispredicted branches
cost, which the CPU time includes. The servers run some fifty
times slower there, so the load is one connection.

    python scripts/bench_http.py [--seconds 5] [--connections 32] [--rounds 5] [--page-size 100]
    python scripts/bench_http.py --instructions [--seconds 20] [--rounds 3]   # needs valgrind
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
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_refresh import nordvpn_payload  # noqa: E402
from fake_upstream import FakeUpstream, free_port, wait_for_port  # noqa: E402

KEY = "bench-" + "k" * 58
SAME = "bare, same headers"  # the bare app sending draco's whole response: the same bytes
PATH = "/api/nordvpn/servers?page_size=100"  # --page-size changes it
FIELDS = "&fields=identifier,public_key,ipv4"  # what a sidecar that only connects needs


def bare_app():
    """The baseline: Starlette, one route, the same bytes (read from BARE_BODY). With
    BARE_HEADERS it also sends draco's own response headers, which isolates what
    hypercorn and h11 spend on header fields from what draco's code spends."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    body = Path(os.environ["BARE_BODY"]).read_bytes()
    extra = [
        tuple(line.encode().split(b": ", 1))
        for line in os.environ.get("BARE_HEADERS", "").splitlines()
    ]

    async def servers(_request):
        response = Response(body, media_type="application/json")
        response.raw_headers += extra
        return response

    return Starlette(routes=[Route("/api/nordvpn/servers", servers)])


WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local ip = string.format("10.%d.%d.%d",
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format(nil, nil, {["X-Forwarded-For"] = ip, ["X-API-Key"] = "KEY"EXTRA})
end
"""


def tree(pid: int) -> list[int]:
    """A process and its descendants (hypercorn's CLI serves from a child process)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in tree(int(child)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree."""
    fields = [Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split() for p in tree(pid)]
    return sum(int(f[11]) + int(f[12]) for f in fields) / os.sysconf("SC_CLK_TCK")


def callgrind(pid: int, *command: str) -> str:
    """callgrind_control on every process of a tree run under callgrind."""
    pids = [str(p) for p in tree(pid)]
    return subprocess.run(
        ["callgrind_control", *command, *pids], capture_output=True, text=True, check=True
    ).stdout


def instructions(pid: int) -> int:
    """Instructions counted since counting was switched on, over every thread of the tree."""
    return sum(
        int(n.replace(",", ""))
        for n in re.findall(r"Th +\d+ +([\d,]+)", callgrind(pid, "-e", "Ir"))
    )


def wrk(
    port: int, seconds: int, connections: int, etag: str | None, path: str
) -> tuple[float, int]:
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
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    if "Non-2xx or 3xx" in out:
        raise RuntimeError(out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rate, int(re.search(r"(\d+) requests in", out).group(1))


async def _h2c(  # noqa: C901 - one HTTP/2 client loop, read top to bottom
    port: int, seconds: float, connections: int, etag: str | None, path: str
) -> tuple[float, collections.Counter]:
    import h2.config
    import h2.connection
    import h2.events

    statuses: collections.Counter = collections.Counter()
    counter = iter(range(1, 1 << 30))
    stop_at = time.monotonic() + seconds

    async def connection() -> None:
        while (
            time.monotonic() < stop_at
        ):  # hypercorn ends a connection after keep_alive_max_requests
            await session()

    async def session() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        terminated = False
        while time.monotonic() < stop_at and not terminated:
            n = next(counter)
            client = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}".encode()
            headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1")]
            headers += [
                (b":path", path.encode()),
                (b"x-api-key", KEY.encode()),
                (b"x-forwarded-for", client),
            ]
            if etag:
                headers.append((b"if-none-match", etag.encode()))
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, headers, end_stream=True)
            writer.write(conn.data_to_send())
            ended = False
            while not ended:
                data = await reader.read(1 << 16)
                if not data:  # closed without a GOAWAY: end this session as after one
                    terminated = True
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses[dict(event.headers)[b":status"]] += 1
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                        ended = True
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        terminated = True
                writer.write(conn.data_to_send())
        writer.close()

    began = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return sum(statuses.values()) / (time.monotonic() - began), statuses


def h2c(
    port: int, seconds: int, connections: int, etag: str | None, path: str
) -> tuple[float, int]:
    os.sched_setaffinity(0, {1})
    rate, statuses = asyncio.run(_h2c(port, seconds, connections, etag, path))
    os.sched_setaffinity(0, set(range(os.cpu_count())))
    if set(statuses) != {b"304" if etag else b"200"}:
        raise RuntimeError(f"unexpected statuses {statuses}")
    return rate, sum(statuses.values())


def measure(pid: int, counted: bool, run: Callable[[], tuple[float, int]]) -> tuple[float, float]:
    """The load's rate, and what the server spent per request on it: CPU µs, or with
    `counted` thousands of instructions (counting is on only while the load runs)."""
    if not counted:
        before = cpu_seconds(pid)
        rate, requests = run()
        return rate, (cpu_seconds(pid) - before) / requests * 1e6
    callgrind(pid, "-i", "on")
    callgrind(pid, "-z")
    rate, requests = run()
    count = instructions(pid)
    callgrind(pid, "-i", "off")
    return rate, count / requests / 1e3


def ratio(values: dict[str, list[float]], a: str, b: str) -> float:
    """The median of the rounds' own ratios a / b."""
    return statistics.median(x / y for x, y in zip(values[a], values[b], strict=True))


VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes"]
VALGRIND += ["--callgrind-out-file=/dev/null"]  # the counts are read live, by callgrind_control


def serve(argv: list[str], env: dict[str, str], port: int, counted: bool) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *(VALGRIND if counted else []), sys.executable, *argv],
        env=env,
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, timeout=300 if counted else 15)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--seconds", type=int, help="per target and round (default 5; 20 with --instructions)"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind"
    )
    args = parser.parse_args()
    counted = args.instructions
    if counted and not shutil.which("callgrind_control"):
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    args.seconds = args.seconds or (20 if counted else 5)
    args.connections = 1 if counted else args.connections
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
        counted,
    )
    url = f"http://127.0.0.1:{full_port}{PATH}"
    fields = httpx.get(
        url + FIELDS, headers={"X-API-Key": KEY, "Accept-Encoding": "identity"}, timeout=600
    )
    fields.raise_for_status()
    asked = {
        "X-API-Key": KEY,
        "X-Forwarded-For": "10.255.0.1",
        "Accept-Encoding": "identity",
    }  # as wrk asks
    first = httpx.get(
        url, headers=asked, timeout=600
    )  # the first fetch and parse, slow under callgrind
    first.raise_for_status()
    etag = first.headers["etag"]
    if httpx.get(url, headers={**asked, "If-None-Match": etag}, timeout=60).status_code != 304:
        sys.exit("the revalidation target does not answer 304")
    body = tempfile.NamedTemporaryFile(suffix=".json")  # noqa: SIM115 - closed at exit
    body.write(first.content)
    body.flush()
    own = "\n".join(
        f"{k}: {v}"
        for k, v in first.headers.items()
        if k not in ("content-length", "content-type", "date")
    )
    bare = serve(
        ["-m", "hypercorn", "--bind", f"127.0.0.1:{bare_port}", "bench_http:bare_app()"],
        {**base, "BARE_BODY": body.name},
        bare_port,
        counted,
    )
    bare_headers = serve(
        ["-m", "hypercorn", "--bind", f"127.0.0.1:{headers_port}", "bench_http:bare_app()"],
        {**base, "BARE_BODY": body.name, "BARE_HEADERS": own},
        headers_port,
        counted,
    )
    targets = {  # each: the server, its port, an If-None-Match to send, the path
        "bare": (bare, bare_port, None, PATH),
        SAME: (bare_headers, headers_port, None, PATH),
        "draco 200": (full, full_port, None, PATH),
        "draco 304": (full, full_port, etag, PATH),
        "draco 200, 3 fields": (full, full_port, None, PATH + FIELDS),
    }
    try:
        print(
            f"{len(first.content):,}-byte body, "
            f"{len(own.splitlines())} header fields beyond the bare app's, "
            f"{args.connections} connections, "
            f"{args.seconds}s x {args.rounds} interleaved rounds, medians:"
        )
        print(
            f"with {FIELDS[1:]}: a {len(fields.content):,}-byte body "
            f"({len(fields.content) / len(first.content):.2f} of the whole page's)"
        )
        for protocol, load in (("HTTP/1.1", wrk), ("h2c", h2c)):
            rates: dict[str, list[float]] = {name: [] for name in targets}
            costs: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (proc, port, tag, path) in targets.items():
                    run = partial(load, port, args.seconds, args.connections, tag, path)
                    rate, cost = measure(proc.pid, counted, run)
                    costs[name].append(cost)
                    rates[name].append(rate)
            unit = "k instr/req" if counted else "CPU µs/req"
            print(
                f"  {'':<31} {'req/s':>7} {'/bare':>6} {'/same':>6}   "
                f"{unit:>11} {'/bare':>6} {'/same':>6}"
            )
            for name in targets:
                print(
                    f"  {protocol:<8} {name:<22} {statistics.median(rates[name]):>7,.0f} "
                    f"{ratio(rates, name, 'bare'):>6.2f} {ratio(rates, name, SAME):>6.2f}   "
                    f"{statistics.median(costs[name]):>11.1f} "
                    f"{ratio(costs, 'bare', name):>6.2f} {ratio(costs, SAME, name):>6.2f}"
                )
    finally:
        for proc in (full, bare, bare_headers):
            proc.terminate()
            proc.wait()
        upstream.stop()


if __name__ == "__main__":
    main()
