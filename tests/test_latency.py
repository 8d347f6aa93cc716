"""Latency: real sockets only (loopback listeners, refused ports, silent listeners,
a network namespace that ignores pings), the address guard, and the endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import threading
import time
import types
from pathlib import Path

import httpx
import pytest
from conftest import demo_payload, need, upstream_env
from fake_upstream import free_port
from hypothesis import given
from hypothesis import strategies as st

from draco.probe.guard import probeable
from draco.probe.methods import Pinger, fping, measure, methods_available, tcp_connect
from draco.probe.runs import Latencies, Resolver, Target


class Listener:
    """A TCP listener on a loopback address that counts the connections it accepts."""

    def __init__(self, address: str, port: int = 0):
        self.sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()

    def close(self):
        self.sock.close()


class Silent:
    """A listener whose accept queue is full: further SYNs are dropped, so a connect
    never completes. An address that never answers, on loopback."""

    def __init__(self, address: str, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(0)
        self.fill = []
        for _ in range(2):
            client = socket.socket()
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect((address, port))
            self.fill.append(client)
        time.sleep(0.05)

    def close(self):
        for s in (*self.fill, self.sock):
            s.close()


# --- the address guard --------------------------------------------------------------


def unmapped(address):
    """An IPv4-mapped IPv6 address is the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def refused_by_ipaddress(address) -> bool:
    """The ipaddress module's own classification of what must never be probed."""
    address = unmapped(address)
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


@given(st.ip_addresses())
def test_the_guard_never_allows_what_ipaddress_classifies_as_non_public(address):
    if refused_by_ipaddress(address):
        assert not probeable(address)


# The IANA special-purpose registries (iana-ipv4-special-registry, iana-ipv6-special-registry),
# written out as the specification: every block that is not globally reachable, and the
# IPv6 blocks that embed an IPv4 address (NAT64, 6to4, Teredo).
IPV4_SPECIAL = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.0.0/29",
    "192.0.0.8/32",
    "192.0.0.170/32",
    "192.0.0.171/32",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
    "255.255.255.255/32",
]
IPV6_SPECIAL = [
    "::1/128",
    "::/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "100:0:0:1::/64",
    "2001::/23",
    "2001::/32",
    "2001:2::/48",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
]
SPECIAL = [ipaddress.ip_network(block) for block in IPV4_SPECIAL + IPV6_SPECIAL]


@pytest.mark.parametrize("block", IPV4_SPECIAL + IPV6_SPECIAL)
def test_every_special_purpose_block_is_refused_first_and_last_address(block):
    network = ipaddress.ip_network(block)
    assert not probeable(network[0])
    assert not probeable(network[-1])


def test_the_guard_does_not_trust_the_python_patch_level():
    # Python 3.11.7's ipaddress calls these global (CVE-2024-4032); they are not.
    for text in ("192.0.0.8", "192.0.0.170", "3fff::1", "3fff:fff:ffff::1"):
        assert not probeable(ipaddress.ip_address(text))


@given(st.ip_addresses(v=4))
def test_the_guard_allows_exactly_the_ipv4_unicast_outside_the_registry(address):
    special = address.is_multicast or any(address in block for block in SPECIAL)
    assert probeable(address) == (not special)


@given(st.ip_addresses(v=6))
def test_the_guard_allows_ipv6_only_global_unicast_outside_the_registry(address):
    if address.ipv4_mapped is not None:  # checked as the IPv4 address it carries
        assert probeable(address) == probeable(address.ipv4_mapped)
    elif probeable(address):
        assert address in ipaddress.ip_network("2000::/3")
        assert not any(address in block for block in SPECIAL)


@given(st.ip_addresses())
def test_allow_private_still_refuses_multicast_and_unspecified(address):
    address = unmapped(address)
    assert probeable(address, allow_private=True) == (
        not (address.is_multicast or address.is_unspecified)
    )


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.0.1",
        "100.64.0.1",
        "224.0.0.1",
        "0.0.0.0",  # noqa: S104 - an address refused, never bound
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
        "::",
    ],
)
def test_the_guard_refuses_each_special_range(text):
    assert not probeable(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    "text", ["8.8.8.8", "1.1.1.1", "185.65.133.5", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_the_guard_allows_public_unicast(text):
    assert probeable(ipaddress.ip_address(text))


# --- probes with real sockets ---------------------------------------------------------


def test_tcp_connect_to_a_listener_a_closed_port_and_a_silent_address():
    listener = Listener("127.0.0.21")
    silent = Silent("127.0.0.22", listener.port)
    try:
        answered = asyncio.run(tcp_connect("127.0.0.21", listener.port, 1.0))
        refused = asyncio.run(tcp_connect("127.0.0.23", listener.port, 1.0))  # nothing listens: RST
        started = time.monotonic()
        nothing = asyncio.run(tcp_connect("127.0.0.22", listener.port, 0.5))
    finally:
        listener.close()
        silent.close()
    assert 0 < answered < 50
    assert 0 < refused < 50
    assert nothing is None
    assert 0.5 <= time.monotonic() - started < 1.0


def test_a_run_never_outlives_its_deadline_and_reports_the_rest_unreachable():
    listener = Listener("127.0.0.31")
    silents = [Silent(f"127.0.1.{i}", listener.port) for i in range(1, 41)]
    targets = [("fast", "127.0.0.31")] + [(f"silent{i}", f"127.0.1.{i}") for i in range(1, 41)]
    try:
        started = time.monotonic()
        # 40 silent hosts, 4 at a time, 1 s each, would take 10 s: the deadline is 1.5 s.
        results = asyncio.run(
            measure(targets, "tcp", concurrency=4, timeout=1.0, deadline=1.5, port=listener.port)
        )
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        for silent in silents:
            silent.close()
    assert elapsed < 1.8
    assert results["fast"] is not None
    assert all(results[f"silent{i}"] is None for i in range(1, 41))
    assert list(results) == [key for key, _ in targets]


@pytest.mark.parametrize("method", ["tcp", "icmp", "fping"])
def test_targets_without_an_address_are_unreachable_without_a_probe(method):
    started = time.monotonic()
    results = asyncio.run(
        measure([("a", None), ("b", "")], method, concurrency=2, timeout=0.1, deadline=5, port=443)
    )
    assert results == {"a": None, "b": None}
    assert time.monotonic() - started < 1


@pytest.fixture
def silent_to_pings():
    """A network namespace whose address ignores ICMP echo (net.ipv4.icmp_echo_ignore_all)."""
    ip = need("ip")
    name, address = f"draco{os.getpid() % 10000}", "10.213.7.2"
    commands = [
        [ip, "netns", "add", name],
        [ip, "link", "add", f"{name}h", "type", "veth", "peer", "name", f"{name}n"],
        [ip, "link", "set", f"{name}n", "netns", name],
        [ip, "addr", "add", "10.213.7.1/30", "dev", f"{name}h"],
        [ip, "link", "set", f"{name}h", "up"],
        [ip, "netns", "exec", name, ip, "addr", "add", f"{address}/30", "dev", f"{name}n"],
        [ip, "netns", "exec", name, ip, "link", "set", f"{name}n", "up"],
        [ip, "netns", "exec", name, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        subprocess.run([ip, "netns", "del", name], capture_output=True)
        message = f"cannot build a test network namespace: {getattr(exc, 'stderr', exc)!r}"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    yield address
    subprocess.run([ip, "netns", "del", name], capture_output=True)
    subprocess.run([ip, "link", "del", f"{name}h"], capture_output=True)


@pytest.fixture
def datagram_pings():
    """Let this process's group open unprivileged ICMP sockets, as a distribution might."""
    path = Path("/proc/sys/net/ipv4/ping_group_range")
    before = path.read_text()
    try:
        path.write_text(f"{os.getgid()} {os.getgid()}")
    except OSError as exc:
        pytest.skip(f"cannot set net.ipv4.ping_group_range: {exc}")
    yield
    path.write_text(before)


def _icmp(kind: str, address: str, timeout: float = 1.0):
    async def go():
        pinger = Pinger(kind)
        try:
            return await pinger.ping(address, timeout)
        finally:
            pinger.close()

    return asyncio.run(go())


def test_raw_icmp_echo_answers_from_loopback_and_not_from_a_silent_host(silent_to_pings):
    if not Pinger.available("raw"):
        pytest.skip("raw ICMP sockets need privileges this process lacks")
    assert 0 < _icmp("raw", "127.0.0.1") < 50
    assert 0 < _icmp("raw", "::1") < 50
    assert _icmp("raw", silent_to_pings, 0.5) is None


def test_unprivileged_icmp_over_a_datagram_socket(datagram_pings, silent_to_pings):
    assert Pinger.available("dgram")
    assert 0 < _icmp("dgram", "127.0.0.1") < 50
    assert _icmp("dgram", silent_to_pings, 0.5) is None
    targets = [("up", "127.0.0.1"), ("down", silent_to_pings)]
    results = asyncio.run(measure(targets, "icmp", concurrency=8, timeout=0.5, deadline=2, port=0))
    assert results["up"] is not None
    assert results["down"] is None


def test_fping_answers_and_silence(silent_to_pings):
    need("fping")
    results = asyncio.run(fping(["127.0.0.1", silent_to_pings], 0.5, 5))
    assert results["127.0.0.1"] > 0
    assert results[silent_to_pings] is None


def test_many_icmp_probes_at_once_are_matched_to_their_hosts():
    if "icmp" not in methods_available():
        pytest.skip("no ICMP socket available")
    targets = [(f"h{i}", f"127.0.{i // 200}.{i % 200 + 1}") for i in range(300)]
    results = asyncio.run(measure(targets, "icmp", concurrency=64, timeout=1.0, deadline=5, port=0))
    assert all(results[k] is not None for k, _ in targets)


def test_an_echo_reply_without_the_token_its_request_carried_is_ignored():
    """A forged reply from the right address with the right sequence, but not the random
    token: ignored. A UDP socket on loopback stands in for the ICMP datagram socket."""

    async def replies() -> list[bool]:
        pinger = Pinger("dgram")
        waiter = pinger.waiting["127.0.0.1", 7] = asyncio.get_running_loop().create_future()
        seen = []
        with (
            socket.socket(type=socket.SOCK_DGRAM) as receiver,
            socket.socket(type=socket.SOCK_DGRAM) as sender,
        ):
            receiver.bind(("127.0.0.1", 0))
            receiver.setblocking(False)
            sender.bind(("127.0.0.1", 0))
            echo_reply = struct.pack("!BBHHH", 0, 0, 0, 0, 7)
            for payload in (
                b"draco-latency-probe " + bytes(16),
                b"draco-latency-probe",
                pinger.payload,
            ):
                sender.sendto(echo_reply + payload, receiver.getsockname())
                select.select([receiver], [], [], 1)
                pinger._read(receiver, socket.AF_INET)
                seen.append(waiter.done())
        return seen

    assert asyncio.run(replies()) == [False, False, True]


def test_the_resolver_has_a_timeout_and_a_cache():
    resolver = Resolver(ttl=60)
    assert "127.0.0.1" in asyncio.run(
        resolver.resolve("localhost", 1.0)
    )  # from /etc/hosts: no DNS traffic
    resolver.cache.put({"localhost": ["127.0.0.99"]})
    assert asyncio.run(resolver.resolve("localhost", 1.0)) == ["127.0.0.99"]


def test_a_hostname_is_probed_only_when_every_address_it_resolves_to_may_be():
    """A name that resolves to a public and a private address could steer a probe to the
    private one: it is not probed at all. The lookups are seeded, as a resolver would cache them,
    and only the address choice runs: a whole run would probe 8.8.8.8, and tests probe loopback
    only."""
    settings = types.SimpleNamespace(
        latency_ttl=60, latency_concurrency=4, latency_timeout=1.0, latency_allow_private=False
    )
    latencies = Latencies(settings)
    answers = {
        "public.example": ["8.8.8.8", "2606:4700:4700::1111"],
        "mixed.example": ["8.8.8.8", "127.0.0.1"],
    }
    latencies.resolver.cache.put(answers)
    targets = [Target("p", name, None, name) for name in answers]
    found = asyncio.run(latencies._addresses(targets, 5.0))
    assert found == {("p", "public.example"): "8.8.8.8", ("p", "mixed.example"): None}


def test_a_run_drops_the_measurements_and_lookups_that_have_expired():
    """A server that has left the lists is measured no more: its entries expire and go,
    so neither cache grows with the upstreams' churn over a long uptime."""
    listener = Listener("127.0.0.41")
    settings = types.SimpleNamespace(
        latency_ttl=0.3,
        latency_concurrency=4,
        latency_timeout=1.0,
        latency_deadline=2.0,
        latency_allow_private=True,
        latency_tcp_port=listener.port,
    )
    latencies = Latencies(settings)

    async def runs():
        def kept() -> tuple[set, set]:
            return set(latencies.measured.stored), set(latencies.resolver.cache.stored)

        await latencies.run("p", [Target("p", "gone", None, "localhost")], "tcp")  # resolved
        first = kept()
        await latencies.run("p", [Target("p", "kept", "127.0.0.41", "kept")], "tcp")  # in TTL
        second = kept()
        await asyncio.sleep(0.4)
        await latencies.run("p", [Target("p", "new", "127.0.0.41", "new")], "tcp")
        return first, second, kept(), latencies.known()

    try:
        first, second, third, known = asyncio.run(runs())
    finally:
        listener.close()
    assert first == ({("p", "gone")}, {"localhost"})
    assert second == ({("p", "gone"), ("p", "kept")}, {"localhost"})
    assert third == ({("p", "new")}, set())
    assert list(known) == [("p", "new")]


# --- the endpoints, through a real draco ----------------------------------------------


def nord_payload(stations: list[str], loads: list[int]) -> bytes:
    template = json.loads(demo_payload("nordvpn"))[0]
    entries = []
    for i, (station, load) in enumerate(zip(stations, loads, strict=True)):
        entry = json.loads(json.dumps(template))
        entry.update(hostname=f"h{i}.nordvpn.example", station=station, load=load, id=i)
        entry["locations"][0]["country"].update(
            code=["DE", "FR"][i % 2], name=["Germany", "France"][i % 2]
        )
        entries.append(entry)
    return json.dumps(entries).encode()


@pytest.fixture
def measured(start_draco, upstreams):
    """draco over eight loopback servers: four listening, two refusing, two silent."""
    for _ in range(20):  # one port on every address; a port free on one may be taken on another
        listeners = [Listener("127.0.2.1")]
        port = listeners[0].port
        try:
            listeners += [Listener(f"127.0.2.{i}", port) for i in range(2, 5)]
            silents = [Silent(f"127.0.2.{i}", port) for i in (7, 8)]
            break
        except OSError:
            for listener in listeners:
                listener.close()
    else:
        pytest.fail("no port free on every 127.0.2.x address")
    stations = [f"127.0.2.{i}" for i in range(1, 9)]
    upstreams["nordvpn"].set("ok", body=nord_payload(stations, [50, 2, 40, 30, 20, 10, 60, 70]))
    env = {
        **upstream_env(upstreams),
        "LATENCY_ALLOW_PRIVATE": "true",
        "LATENCY_TCP_PORT": str(port),
        "LATENCY_TIMEOUT": "0.5",
        "RATE_LIMIT_REQUESTS": "100",
    }
    yield start_draco(env), listeners
    for s in (*listeners, *silents):
        s.close()


def test_latency_measures_sorts_and_reports_unreachable_last(measured):
    draco, listeners = measured
    body = httpx.get(
        draco.url("/api/nordvpn/servers/latency"), params={"method": "tcp"}, timeout=30
    ).json()
    assert (body["total_servers"], body["measured"], body["successful"], body["failed"]) == (
        8,
        8,
        6,
        2,
    )
    assert body["method"] == "tcp"
    latencies = [s["latency"] for s in body["servers"]]
    assert latencies[:6] == sorted(latencies[:6])
    assert latencies[6:] == [None, None]
    assert {s["ipv4"] for s in body["servers"][6:]} == {"127.0.2.7", "127.0.2.8"}
    assert all(listener.accepted == 1 for listener in listeners)


def test_latency_limit_and_country(measured):
    draco, _ = measured
    body = httpx.get(
        draco.url("/api/nordvpn/servers/latency"),
        params={"method": "tcp", "country_code": "FR", "limit": 2},
        timeout=30,
    ).json()
    assert (body["total_servers"], body["measured"]) == (4, 2)
    assert {s["country_code"] for s in body["servers"]} == {"FR"}
    every = httpx.get(
        draco.url("/api/nordvpn/servers/latency"), params={"method": "tcp", "limit": 0}, timeout=30
    )
    assert every.json()["measured"] == 8  # 0: all of them


def test_auto_says_which_method_ran(measured):
    draco, _ = measured
    body = httpx.get(
        draco.url("/api/nordvpn/servers/latency"), params={"limit": 1}, timeout=30
    ).json()
    assert body["method"] == methods_available()[0]


def test_fastest_leaves_out_low_load_and_excluded_countries(measured):
    draco, _ = measured
    fastest = httpx.get(
        draco.url("/api/nordvpn/servers/fastest"),
        params={"method": "tcp", "exclude_country": "DE"},
        timeout=30,
    ).json()
    assert fastest
    assert all(
        s["country_code"] == "FR" and s["latency"] is not None and s["load"] > 3 for s in fastest
    )
    assert [s["latency"] for s in fastest] == sorted(s["latency"] for s in fastest)


def test_fastest_applies_the_filters_before_measuring(measured):
    draco, listeners = measured
    before = sum(listener.accepted for listener in listeners)
    params = {"method": "tcp", "max_load": 35, "limit": 50}
    fastest = httpx.get(draco.url("/api/nordvpn/servers/fastest"), params=params, timeout=30).json()
    assert fastest
    assert all(3 < s["load"] <= 35 for s in fastest)
    assert (
        sum(listener.accepted for listener in listeners) - before <= 3
    )  # only the servers the filter kept


def test_fastest_measures_the_least_loaded_first(measured):
    draco, _ = measured
    fastest = httpx.get(
        draco.url("/api/nordvpn/servers/fastest"),
        params={"method": "tcp", "measure_count": 2},
        timeout=30,
    ).json()
    assert sorted(s["load"] for s in fastest) == [
        10,
        20,
    ]  # loads 10 and 20 are the two lowest above 3
    params = {
        "method": "tcp",
        "measure_count": 0,
    }  # 0: every operational server; those at 60 and 70 are silent
    every = httpx.get(draco.url("/api/nordvpn/servers/fastest"), params=params, timeout=30).json()
    assert sorted(s["load"] for s in every) == [10, 20, 30, 40, 50]


def test_fastest_is_404_when_filters_leave_nothing(measured):
    draco, _ = measured
    response = httpx.get(
        draco.url("/api/nordvpn/servers/fastest"), params={"exclude_country": "DE,FR"}, timeout=30
    )
    assert response.status_code == 404


def test_the_old_country_spelling_of_exclude_names_exclude_country(measured):
    draco, _ = measured
    response = httpx.get(draco.url("/api/nordvpn/servers/fastest"), params={"exclude": "BR-US"})
    assert response.status_code == 422
    assert "exclude_country=BR,US" in response.json()["details"][0]["msg"]


def test_fastest_is_404_when_nothing_answers(start_draco, upstreams):
    port = free_port("127.0.3.1")
    silent = Silent("127.0.3.1", port)
    upstreams["nordvpn"].set("ok", body=nord_payload(["127.0.3.1"], [50]))
    env = {
        **upstream_env(upstreams),
        "LATENCY_ALLOW_PRIVATE": "true",
        "LATENCY_TCP_PORT": str(port),
        "LATENCY_TIMEOUT": "0.2",
    }
    try:
        response = httpx.get(
            start_draco(env).url("/api/nordvpn/servers/fastest"),
            params={"method": "tcp"},
            timeout=30,
        )
    finally:
        silent.close()
    assert response.status_code == 404
    assert response.json()["message"] == "No server answered the latency probe."


def tcp_latency_without_private_addresses(
    start_draco, upstreams, provider: str, listener: Listener
) -> dict:
    """/servers/latency over TCP with the default LATENCY_ALLOW_PRIVATE (off)."""
    env = {**upstream_env(upstreams), "LATENCY_TCP_PORT": str(listener.port)}
    try:
        url = start_draco(env).url(f"/api/{provider}/servers/latency")
        return httpx.get(url, params={"method": "tcp"}, timeout=30).json()
    finally:
        listener.close()


def test_private_addresses_are_never_probed_by_default(start_draco, upstreams):
    listener = Listener("127.0.4.1")
    upstreams["nordvpn"].set("ok", body=nord_payload(["127.0.4.1"], [50]))
    body = tcp_latency_without_private_addresses(start_draco, upstreams, "nordvpn", listener)
    assert body["successful"] == 0
    assert listener.accepted == 0


def test_a_hostname_resolving_to_a_refused_range_is_not_probed(start_draco, upstreams):
    listener = Listener("127.0.0.1")
    clusters = json.loads(demo_payload("surfshark"))[:1]
    clusters[0]["connectionName"] = "localhost"  # Surfshark gives no address: the name is resolved
    upstreams["surfshark"].set("ok", body=json.dumps(clusters).encode())
    body = tcp_latency_without_private_addresses(start_draco, upstreams, "surfshark", listener)
    assert body["failed"] == 1
    assert listener.accepted == 0


def test_identical_concurrent_requests_share_one_run_and_results_are_cached(measured):
    draco, listeners = measured

    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:
            url = draco.url("/api/nordvpn/servers/latency")
            return await asyncio.gather(
                *(client.get(url, params={"method": "tcp"}) for _ in range(5))
            )

    answers = asyncio.run(burst())
    assert {a.status_code for a in answers} == {200}
    assert all(
        listener.accepted == 1 for listener in listeners
    )  # five requests, one probe per host
    httpx.get(draco.url("/api/nordvpn/servers/latency"), params={"method": "tcp"}, timeout=30)
    assert all(listener.accepted == 1 for listener in listeners)  # cached for LATENCY_TTL


def test_top_ranks_by_cached_latency_once_measured(measured):
    draco, _ = measured
    before = httpx.get(draco.url("/api/nordvpn/servers/top")).json()
    assert [s["load"] for s in before] == [10, 20, 30, 40, 50, 60, 70]
    assert {s["latency"] for s in before} == {None}
    run = httpx.get(
        draco.url("/api/nordvpn/servers/latency"), params={"method": "tcp"}, timeout=30
    ).json()
    after = httpx.get(draco.url("/api/nordvpn/servers/top")).json()
    want = [s["identifier"] for s in run["servers"] if s["load"] > 3]
    assert [s["identifier"] for s in after] == want
    assert after[0]["latency"] is not None


def test_measuring_costs_the_configured_weight_of_the_rate_limit(measured):
    draco, _ = measured
    cheap = httpx.get(draco.url("/api/nordvpn/countries"))
    dear = httpx.get(
        draco.url("/api/nordvpn/servers/latency"), params={"method": "tcp", "limit": 1}, timeout=30
    )
    assert (
        int(cheap.headers["x-ratelimit-remaining"]) - int(dear.headers["x-ratelimit-remaining"])
        == 10
    )
    slashed = httpx.get(
        draco.url("/api/nordvpn/servers/latency/"), params={"method": "tcp", "limit": 1}
    )
    assert slashed.status_code == 404  # probes nothing, so it costs what a 404 costs
    assert "location" not in slashed.headers  # never a redirect
    spent = int(dear.headers["x-ratelimit-remaining"]) - int(
        slashed.headers["x-ratelimit-remaining"]
    )
    assert spent == 1


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("latency", {"limit": "5001"}),
        ("latency", {"limit": "-1"}),
        ("latency", {"method": "udp"}),
        ("latency", {"country_code": "de"}),
        ("fastest", {"limit": "0"}),
        ("fastest", {"limit": "51"}),
        ("fastest", {"measure_count": "5001"}),
        ("fastest", {"exclude_country": "BRA,US"}),
        ("fastest", {"exclude_country": "br"}),
        ("fastest", {"exclude": "BR-US"}),  # the countries' old spelling: a 422, never ignored
        ("fastest", {"exclude": "DE"}),
    ],
)
def test_measuring_parameters_are_checked(measured, path, params):
    draco, _ = measured
    assert httpx.get(draco.url(f"/api/nordvpn/servers/{path}"), params=params).status_code == 422
