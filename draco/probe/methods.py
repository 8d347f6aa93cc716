"""Measuring latency to many hosts at once, at a bounded cost. Methods: `icmp` (echo over
one datagram socket per address family where the kernel permits it, else a raw socket
when privileged), `fping` when installed, and `tcp` (connect time; a refusal is an
answer too: its RST took one round trip). At most `concurrency` probes run at once,
each gives up after `timeout`, and a run ends at `deadline`: no answer by then is None."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import re
import shutil
import socket
import struct
import time
from collections.abc import Hashable, Iterable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)  # whatever identifies a target to the caller
ICMP_HEADER = 8  # bytes: type, code, checksum, identifier, sequence
ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}  # ICMP, ICMPv6 types
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


class Pinger:
    """ICMP echo over one socket per address family. A reply counts only from the address, with
    the sequence and the random token its echo carried: no one off the path can forge one. A
    datagram socket lets the kernel fill in identifier and checksum; a raw one needs both."""

    def __init__(self, kind: str):
        self.kind = kind  # "dgram" or "raw"
        self.ident = os.getpid() & 0xFFFF
        self.sequence = itertools.count()
        self.payload = b"draco-latency-probe " + os.urandom(16)
        self.sockets: dict[int, socket.socket] = {}
        self.waiting: dict[tuple[str, int], asyncio.Future[float]] = {}

    @staticmethod
    def available(kind: str) -> bool:
        try:
            kind_of_socket = getattr(socket, f"SOCK_{kind.upper()}")
            socket.socket(socket.AF_INET, kind_of_socket, socket.IPPROTO_ICMP).close()
            return True
        except OSError:
            return False

    def _socket(self, family: int) -> socket.socket:
        if family not in self.sockets:
            proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
            kind_of_socket = socket.SOCK_DGRAM if self.kind == "dgram" else socket.SOCK_RAW
            sock = socket.socket(family, kind_of_socket, proto)
            sock.setblocking(False)  # noqa: FBT003 - the socket API's own flag
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
            if data[:1] != bytes([ECHO_REPLY[family]]) or data[ICMP_HEADER:] != self.payload:
                continue
            ident, sequence = struct.unpack("!HH", data[4:ICMP_HEADER])
            if self.kind == "raw" and ident != self.ident:
                continue  # another process's ping
            waiter = self.waiting.get((source[0], sequence))
            if waiter and not waiter.done():
                waiter.set_result(received)

    async def ping(self, address: str, timeout: float) -> float | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sequence = next(self.sequence) & 0xFFFF
        header = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, self.ident, sequence)
        if self.kind == "raw" and family == socket.AF_INET:
            header = header[:2] + struct.pack("!H", _checksum(header + self.payload)) + header[4:]
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[(address, sequence)] = waiter
        try:
            sent = time.perf_counter()
            self._socket(family).sendto(header + self.payload, (address, 0))
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
    """Connect time in milliseconds; a refusal (RST) is an answer, silence is None. A completed
    handshake reports the kernel's own RTT (TCP_INFO), which hundreds of probes in flight do
    not inflate; else the clock stops in the loop's writability callback."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own flag
        done = loop.create_future()
        started = time.perf_counter()
        error = sock.connect_ex((address, port))
        if error not in (0, errno.EINPROGRESS):
            return (time.perf_counter() - started) * 1000 if error == errno.ECONNREFUSED else None
        loop.add_writer(sock, _finish, done)
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


def _finish(done: asyncio.Future[float]) -> None:
    if not done.done():
        done.set_result(time.perf_counter())


TCP_INFO_SIZE = 104  # bytes of Linux's struct tcp_info up to tcpi_rcv_space
TCPI_RTT_AT = 68  # offset of tcpi_rtt, an unsigned 32-bit count of microseconds


def _kernel_rtt(sock: socket.socket) -> float | None:
    """Linux's smoothed RTT of a connection, in milliseconds."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
        rtt: int = struct.unpack_from("I", info, TCPI_RTT_AT)[0]
        return rtt / 1000 or None
    except (OSError, AttributeError, struct.error):
        return None


_FPING_LINE = re.compile(r"^(\S+)\s*:\s*(\S+)")


async def fping(addresses: list[str], timeout: float, deadline: float) -> dict[str, float | None]:
    """One fping run for every address (`-C 1`: one echo each, results on stderr)."""
    command = [
        shutil.which("fping") or "fping",
        "-C1",
        "-q",
        "-i1",
        "-r0",
        f"-t{int(timeout * 1000)}",
        *addresses,
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(deadline):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return {}
    lines = (_FPING_LINE.match(line) for line in err.decode(errors="replace").splitlines())
    return {
        found[1]: float(found[2]) if found[2].replace(".", "", 1).isdigit() else None
        for found in lines
        if found
    }


def methods_available() -> list[str]:
    """What `auto` chooses from, best first."""
    found = []
    if Pinger.available("dgram") or Pinger.available("raw"):
        found.append("icmp")
    if shutil.which("fping"):
        found.append("fping")
    return [*found, "tcp"]


async def measure(
    targets: Iterable[tuple[K, str | None]],
    method: str,
    *,
    concurrency: int,
    timeout: float,
    deadline: float,
    port: int,
) -> dict[K, float | None]:
    """Latency in milliseconds for each (key, address); None for no answer, no
    address, or no answer before the deadline."""
    targets = list(targets)
    results: dict[K, float | None] = dict.fromkeys(key for key, _ in targets)
    addressed = [(key, address) for key, address in targets if address]
    if method == "fping" and addressed:  # (fping given no address would read them from stdin)
        answers = await fping(sorted({a for _, a in addressed}), timeout, deadline)
        return results | {key: answers.get(address) for key, address in addressed}
    pinger = Pinger("dgram" if Pinger.available("dgram") else "raw") if method == "icmp" else None
    gate = asyncio.Semaphore(concurrency)

    async def probe(key: K, address: str) -> None:
        async with gate:
            results[key] = await (
                pinger.ping(address, timeout) if pinger else tcp_connect(address, port, timeout)
            )

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
