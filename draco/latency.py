"""Measuring latency to many hosts at once, at a bounded cost, to public addresses only.

Methods: `icmp` (echo over one datagram socket per address family where the kernel
permits it, else a raw socket when privileged), `fping` when installed, and `tcp`
(connect time; a refused connection is an answer too, since its RST took one round
trip). At most `concurrency` probes run at once, each gives up after `timeout`
seconds, and a whole run ends at `deadline`: what has not answered by then is
unreachable (None).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import itertools
import os
import re
import shutil
import socket
import struct
import time
from collections.abc import Hashable, Iterable

# IPv6 ranges that carry an IPv4 address (NAT64, 6to4, Teredo): refused, since the
# embedded address could be anything.
_EMBEDDING = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32")]


def probeable(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool = False) -> bool:
    """Only public unicast: never loopback, private, link-local, multicast, reserved,
    documentation or unspecified addresses (unless allow_private, for tests)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast or address.is_unspecified:
        return False
    if allow_private:
        return True
    embedded = isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _EMBEDDING)
    return address.is_global and not (address.is_reserved or address.is_link_local or embedded)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


class Pinger:
    """ICMP echo over one socket per address family, replies matched by (address,
    sequence). A datagram socket lets the kernel fill in identifier and checksum;
    a raw socket (privileged) needs both, and sees every reply on the host."""

    def __init__(self, kind: str):
        self.kind = kind  # "dgram" or "raw"
        self.ident = os.getpid() & 0xFFFF
        self.sequence = itertools.count()
        self.sockets: dict[int, socket.socket] = {}
        self.waiting: dict[tuple[str, int], asyncio.Future] = {}

    @staticmethod
    def available(kind: str) -> bool:
        try:
            socket.socket(socket.AF_INET, getattr(socket, f"SOCK_{kind.upper()}"), socket.IPPROTO_ICMP).close()
            return True
        except OSError:
            return False

    def _socket(self, family: int) -> socket.socket:
        if family not in self.sockets:
            proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
            sock = socket.socket(family, socket.SOCK_DGRAM if self.kind == "dgram" else socket.SOCK_RAW, proto)
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock, self._read, sock, family)
            self.sockets[family] = sock
        return self.sockets[family]

    def _read(self, sock: socket.socket, family: int) -> None:
        received = time.perf_counter()
        while True:
            try:
                data, source = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            if family == socket.AF_INET and self.kind == "raw":
                data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets include the IP header
            reply = 0 if family == socket.AF_INET else 129
            if len(data) < 8 or data[0] != reply:
                continue
            ident, sequence = struct.unpack("!HH", data[4:8])
            if self.kind == "raw" and ident != self.ident:
                continue  # another process's ping
            waiter = self.waiting.get((source[0], sequence))
            if waiter and not waiter.done():
                waiter.set_result(received)

    async def ping(self, address: str, timeout: float) -> float | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sequence = next(self.sequence) & 0xFFFF
        header = struct.pack("!BBHHH", 8 if family == socket.AF_INET else 128, 0, 0, self.ident, sequence)
        payload = b"draco-latency-probe"
        if self.kind == "raw" and family == socket.AF_INET:
            header = header[:2] + struct.pack("!H", _checksum(header + payload)) + header[4:]
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[(address, sequence)] = waiter
        try:
            sent = time.perf_counter()
            self._socket(family).sendto(header + payload, (address, 0))
            async with asyncio.timeout(timeout):
                return (await waiter - sent) * 1000
        except (OSError, TimeoutError):
            return None
        finally:
            del self.waiting[(address, sequence)]

    def close(self) -> None:
        for sock in self.sockets.values():
            asyncio.get_running_loop().remove_reader(sock)
            sock.close()
        self.sockets.clear()


async def tcp_connect(address: str, port: int, timeout: float) -> float | None:
    """Connect time in milliseconds; a refusal (RST) is an answer, silence is None.

    For a completed handshake the kernel's own round-trip measurement (TCP_INFO) is
    used, so hundreds of probes in flight do not inflate each other's times; else
    the clock stops in the loop's writability callback."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        done = loop.create_future()
        started = time.perf_counter()
        error = sock.connect_ex((address, port))
        if error not in (0, errno.EINPROGRESS):
            return (time.perf_counter() - started) * 1000 if error == errno.ECONNREFUSED else None
        loop.add_writer(sock, lambda: done.done() or done.set_result(time.perf_counter()))
        try:
            async with asyncio.timeout(timeout):
                finished = await done
        except TimeoutError:
            return None
        finally:
            loop.remove_writer(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error == 0:
            return _kernel_rtt(sock) or (finished - started) * 1000
        return (finished - started) * 1000 if error == errno.ECONNREFUSED else None


def _kernel_rtt(sock: socket.socket) -> float | None:
    """Linux's smoothed RTT of a connection, in milliseconds (tcpi_rtt, microseconds)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return struct.unpack_from("I", info, 68)[0] / 1000 or None
    except (OSError, AttributeError, struct.error):
        return None


_FPING_LINE = re.compile(r"^(\S+)\s*:\s*(\S+)")


async def fping(addresses: list[str], timeout: float, deadline: float) -> dict[str, float | None]:
    """One fping run for every address (`-C 1`: one echo each, results on stderr)."""
    process = await asyncio.create_subprocess_exec(
        shutil.which("fping") or "fping",
        "-C1",
        "-q",
        "-i1",
        "-r0",
        f"-t{int(timeout * 1000)}",
        *addresses,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(deadline):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return {}
    results = {}
    for line in err.decode(errors="replace").splitlines():
        found = _FPING_LINE.match(line)
        if found:
            value = found.group(2)
            results[found.group(1)] = float(value) if value.replace(".", "", 1).isdigit() else None
    return results


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
            found = list(dict.fromkeys(info[4][0] for info in infos))
        except (OSError, TimeoutError, UnicodeError):
            found = []
        self.cache[host] = (time.monotonic(), found)
        return found


def methods_available() -> list[str]:
    """What `auto` chooses from, best first."""
    found = []
    if Pinger.available("dgram") or Pinger.available("raw"):
        found.append("icmp")
    if shutil.which("fping"):
        found.append("fping")
    return [*found, "tcp"]


async def measure(
    targets: Iterable[tuple[Hashable, str | None]],
    method: str,
    *,
    concurrency: int,
    timeout: float,
    deadline: float,
    port: int = 443,
) -> dict:
    """Latency in milliseconds for each (key, address); None for no answer, no
    address, or no answer before the deadline."""
    targets = list(targets)
    results: dict = dict.fromkeys(key for key, _ in targets)
    addressed = [(key, address) for key, address in targets if address]
    if method == "fping" and addressed:  # (fping given no address would read them from stdin)
        answers = await fping(sorted({a for _, a in addressed}), timeout, deadline)
        return results | {key: answers.get(address) for key, address in addressed}
    pinger = Pinger("dgram" if Pinger.available("dgram") else "raw") if method == "icmp" else None
    gate = asyncio.Semaphore(concurrency)

    async def probe(key: str, address: str) -> None:
        async with gate:
            if pinger:
                results[key] = await pinger.ping(address, timeout)
            else:
                results[key] = await tcp_connect(address, port, timeout)

    tasks = [asyncio.ensure_future(probe(key, address)) for key, address in addressed]
    try:
        if tasks:
            await asyncio.wait(tasks, timeout=deadline)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if pinger:
            pinger.close()
    return results


class Latencies:
    """Runs for the routes: addresses checked, results cached for `ttl` seconds,
    identical concurrent requests sharing one run, and at most one run per provider
    in flight. Targets are (provider, identifier, IPv4 address or None, hostname)."""

    def __init__(self, settings):
        self.settings = settings
        self.resolver = Resolver(settings.latency_ttl)
        self.cache: dict[tuple[str, str], tuple[float, float | None]] = {}  # (provider, identifier): (at, ms)
        self.runs_done = 0  # part of the keys of cached /top answers
        self.runs_by_method: collections.Counter = collections.Counter()
        self.locks: dict[str, asyncio.Lock] = {}
        self.runs: dict[tuple, asyncio.Task] = {}

    def known(self) -> dict[tuple[str, str], float]:
        """Fresh successful measurements, for ranking."""
        horizon = time.monotonic() - self.settings.latency_ttl
        return {key: ms for key, (at, ms) in self.cache.items() if at >= horizon and ms is not None}

    async def run(self, name: str, targets: list[tuple[str, str, str | None, str]], method: str) -> dict:
        """{(provider, identifier): milliseconds or None} for every target."""
        key = (name, method, tuple(t[:2] for t in targets))
        task = self.runs.get(key)
        if task is None:
            task = self.runs[key] = asyncio.ensure_future(self._run(name, targets, method))
            task.add_done_callback(lambda _: self.runs.pop(key, None))
        return await asyncio.shield(task)

    async def _run(self, name: str, targets, method: str) -> dict:
        s = self.settings
        async with self.locks.setdefault(name, asyncio.Lock()):
            started = time.monotonic()
            fresh = {}
            for target in targets:
                at, ms = self.cache.get(target[:2], (None, None))
                if at is not None and at >= started - s.latency_ttl:
                    fresh[target[:2]] = ms
            todo = [t for t in targets if t[:2] not in fresh]
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
            now = time.monotonic()
            self.cache.update({k: (now, ms) for k, ms in results.items()})
            self.runs_done += 1
            self.runs_by_method[method] += 1
            return fresh | results

    async def _addresses(self, targets, deadline: float) -> dict[tuple[str, str], str | None]:
        """The address to probe for each target, or None when it has none or it is refused."""
        gate = asyncio.Semaphore(self.settings.latency_concurrency)
        found: dict[tuple[str, str], str | None] = dict.fromkeys(t[:2] for t in targets)

        async def pick(provider: str, identifier: str, ipv4: str | None, hostname: str) -> None:
            if ipv4:
                candidates = [ipv4]
            else:
                async with gate:
                    candidates = await self.resolver.resolve(hostname, self.settings.latency_timeout)
            for candidate in candidates:  # every address a name resolves to must be allowed
                if not probeable(
                    ipaddress.ip_address(candidate.partition("%")[0]), self.settings.latency_allow_private
                ):
                    return
            found[(provider, identifier)] = candidates[0] if candidates else None

        tasks = [asyncio.ensure_future(pick(*t)) for t in targets]
        if tasks:
            await asyncio.wait(tasks, timeout=deadline)
            for task in tasks:
                task.cancel()
        return found
