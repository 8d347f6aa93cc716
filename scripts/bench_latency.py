"""Benchmark: measure 5,000 hosts with the TCP method, within the deadline.

The hosts are loopback aliases: 2,000 with a listener (the handshake completes),
2,000 with nothing listening (refused: an RST is an answer too), and 1,000 silent
(a listener whose accept queue is full, so SYNs are dropped). draco's settings are
the defaults: concurrency 256, timeout 1 s, deadline 10 s. Reported: wall time,
how many hosts were classified, peak RSS growth, and the latency draco reports for
a loopback listener next to a plain connect timed independently.

    python scripts/bench_latency.py
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import socket
import statistics
import threading
import time
from pathlib import Path

from draco.probe.methods import measure
from draco.settings import Settings

PORT = 47_919
LISTENING, REFUSED, SILENT = 2000, 2000, 1000


def address(block: int, i: int) -> str:
    return f"127.{block}.{i // 250}.{i % 250 + 1}"


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def listen(host: str, backlog: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, PORT))
    sock.listen(backlog)
    return sock


def hosts() -> tuple[list[socket.socket], list[tuple[str, str]]]:
    sockets, targets = [], []
    for i in range(LISTENING):
        sockets.append(listen(address(10, i), 8))
        targets.append((f"listening-{i}", address(10, i)))
    targets += [(f"refused-{i}", address(11, i)) for i in range(REFUSED)]
    for i in range(SILENT):
        sockets.append(listen(address(12, i), 0))
        for _ in range(2):  # fill the accept queue: from now on SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((address(12, i), PORT))
            sockets.append(filler)
        targets.append((f"silent-{i}", address(12, i)))
    time.sleep(0.2)
    return sockets, targets


def plain_connect_ms(host: str) -> float:
    started = time.perf_counter()
    with socket.create_connection((host, PORT)):
        return (time.perf_counter() - started) * 1000


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    defaults = Settings()
    sockets, targets = hosts()
    try:
        probe = {
            "concurrency": defaults.latency_concurrency,
            "timeout": defaults.latency_timeout,
            "port": PORT,
        }
        idle = vm("VmRSS")
        started = time.perf_counter()
        results = asyncio.run(measure(targets, "tcp", deadline=defaults.latency_deadline, **probe))
        wall = time.perf_counter() - started
        growth = (vm("VmHWM") - idle) / 1024

        classified = sum(
            1 for key, ms in results.items() if (ms is None) == key.startswith("silent")
        )
        d = defaults
        bound = 1.5 * d.latency_timeout * math.ceil(len(targets) / d.latency_concurrency)
        print(
            f"{len(targets):,} hosts ({LISTENING:,} listening, {REFUSED:,} refused, "
            f"{SILENT:,} silent), TCP,"
        )
        print(
            f"concurrency {d.latency_concurrency}, timeout {d.latency_timeout} s, "
            f"deadline {d.latency_deadline} s:"
        )
        print(f"  wall time            {wall:.2f} s   (honest bound {bound:.0f} s)")
        print(f"  classified correctly {classified:,} of {len(targets):,}")
        print(f"  peak RSS growth      {growth:.1f} MB")

        # A listener that accepts, for the comparison (the others never accept and fill up).
        listener = "127.13.0.1"
        accepting = listen(listener, 64)
        sockets.append(accepting)
        threading.Thread(
            target=lambda: [accepting.accept()[0].close() for _ in iter(int, 1)], daemon=True
        ).start()
        in_run = results["listening-0"]
        quiet = [
            asyncio.run(measure([("x", listener)], "tcp", deadline=5, **probe))["x"]
            for _ in range(21)
        ]
        plain = [plain_connect_ms(listener) for _ in range(21)]
        print(
            f"  loopback listener: draco {statistics.median(quiet):.3f} ms "
            f"(median of 21 quiet runs; {in_run:.3f} ms inside the big run), "
            f"plain connect {statistics.median(plain):.3f} ms, "
            f"difference {abs(statistics.median(quiet) - statistics.median(plain)):.3f} ms"
        )
    finally:
        for sock in sockets:
            sock.close()


if __name__ == "__main__":
    main()
