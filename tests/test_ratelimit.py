"""The limiter and the client address, each against a brute-force model."""

from __future__ import annotations

import asyncio
import ipaddress
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.security.address import (
    TrustedHosts,
    address_text,
    client_address,
    parse_address,
    rate_limit_key,
)
from draco.security.limiter import MICROS, Limiter, MemoryStore


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def model(trace, limit: int, period: int):
    """Brute force: keep every admission time; admit iff fewer than `limit` in (t - period, t].
    Time never goes back: a clock that steps back counts as still at the latest time seen.

    The reset is found by trying whole seconds one after the other: when denied, the
    first second at which this request would be admitted; when admitted, the first
    at which the oldest admission has left the window."""
    admitted: dict[str, list[int]] = {}
    decisions, latest = [], 0
    for client, t, cost in trace:
        now = latest = max(latest, round(t * MICROS))

        def counted(at: int, times: list[int]) -> int:
            return sum(1 for s in times if at - period * MICROS < s <= at)

        window = admitted.get(client, [])
        allowed = counted(now, window) + cost <= limit
        if allowed:
            window += [now] * cost
        admitted[client] = window
        held = counted(now, window)
        wait = 1
        if allowed:
            while counted(now + wait * MICROS, window) == held:
                wait += 1
        else:
            while counted(now + wait * MICROS, window) + cost > limit:
                wait += 1
        decisions.append((allowed, limit - held, wait))
    return decisions


@st.composite
def traces(draw, max_cost: int = 1, back: bool = False):
    """(limit, period, [(client, time, cost)]). With `back`, the clock also steps back."""
    limit = draw(st.integers(1, 6))
    period = draw(st.integers(1, 5))
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from("abc"),
                st.integers(-2500 if back else 0, 2500),
                st.integers(1, min(max_cost, limit)),
            ),
            max_size=80,
        )
    )
    trace, t = [], 1_700_000_000.0
    for client, step_ms, cost in steps:
        t += step_ms / 1000
        trace.append((client, t, cost))
    return limit, period, trace


@st.composite
def stepping_clock(draw):
    """(limit, period, [(client, real time in ms, clock reading, cost)]): real time only goes
    forward; the clock runs with it, but may step back by up to 3 s at any request."""
    limit, period = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    back = st.just(0) | st.integers(1, 3000)
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from("ab"), st.integers(0, 2500), back, st.integers(1, 3)),
            max_size=80,
        )
    )
    trace, real, offset = [], 0, 0
    for client, forward, step_back, cost in steps:
        real, offset = real + forward, offset + step_back
        trace.append((client, real, 1_700_000_000.0 + (real - offset) / 1000, min(cost, limit)))
    return limit, period, trace


def most_in_a_period(trace, admitted, period) -> int:
    """The most requests (costs summed) one client had admitted within `period` s of real time."""
    taken = [
        (client, real, cost)
        for (client, real, _, cost), ok in zip(trace, admitted, strict=True)
        if ok
    ]
    return max(
        (
            sum(k for c, r, k in taken if c == client and start <= r < start + period * 1000)
            for client, start, _ in taken
        ),
        default=0,
    )


def run(store, trace, limit, period):
    clock = Clock()
    limiter = Limiter(limit, period, store, clock)

    async def go():
        out = []
        for client, t, cost in trace:
            clock.now = t
            d = await limiter.hit(client, cost)
            out.append((d.allowed, d.remaining, d.reset))
        return out

    return asyncio.run(go())


@settings(max_examples=400, deadline=None)
@given(traces(max_cost=3))
def test_decisions_and_retry_after_equal_the_brute_force_model(case):
    limit, period, trace = case
    assert run(MemoryStore(), trace, limit, period) == model(trace, limit, period)


@settings(max_examples=300, deadline=None)
@given(traces(max_cost=3, back=True))
def test_a_clock_stepping_back_decides_as_at_the_latest_time_seen(case):
    limit, period, trace = case
    assert run(MemoryStore(), trace, limit, period) == model(trace, limit, period)


@settings(max_examples=300, deadline=None)
@given(stepping_clock())
def test_with_the_clock_stepping_back_no_period_of_real_time_admits_more_than_the_limit(case):
    limit, period, trace = case
    decisions = run(
        MemoryStore(),
        [(client, reading, cost) for client, _, reading, cost in trace],
        limit,
        period,
    )
    assert most_in_a_period(trace, [allowed for allowed, _, _ in decisions], period) <= limit


@settings(max_examples=200, deadline=None)
@given(traces(max_cost=3, back=True))
def test_sweeping_idle_clients_never_changes_a_decision(case):
    limit, period, trace = case
    store = MemoryStore()

    async def go():
        out = []
        for client, t, cost in trace:
            await store.sweep(t, period)
            d = store.hit_now(client, t, limit, period, cost)
            out.append((d.allowed, d.remaining, d.reset))
        return out

    assert asyncio.run(go()) == model(trace, limit, period)


@settings(max_examples=300, deadline=None)
@given(traces())
def test_no_window_of_the_period_ever_holds_more_than_the_limit(case):
    limit, period, trace = case
    decisions = run(MemoryStore(), trace, limit, period)
    admitted = [
        (c, round(t * MICROS)) for (c, t, _), (ok, _, _) in zip(trace, decisions, strict=True) if ok
    ]
    for client, start in admitted:
        inside = [s for c, s in admitted if c == client and start <= s < start + period * MICROS]
        assert len(inside) <= limit


@settings(max_examples=200, deadline=None)
@given(traces())
def test_a_denied_client_retrying_after_retry_after_is_admitted(case):
    limit, period, trace = case
    store = MemoryStore()
    for client, t, _ in trace:
        decision = store.hit_now(client, t, limit, period)
        if not decision.allowed:
            assert store.hit_now(client, t + decision.reset, limit, period).allowed
            break


def test_a_fixed_window_boundary_does_not_double_the_limit():
    store = MemoryStore()
    # N requests just before a window boundary, then N just after it: a counter reset
    # at the boundary would admit all 2N; an exact sliding window admits N.
    before = [store.hit_now("a", 59.9 + i / 1000, 10, 60).allowed for i in range(10)]
    after = [store.hit_now("a", 60.1 + i / 1000, 10, 60).allowed for i in range(10)]
    assert before == [True] * 10
    assert after == [False] * 10
    assert store.hit_now("a", 119.9 + 0.0001, 10, 60).allowed


def test_a_clock_stepping_back_never_reopens_the_window():
    store = MemoryStore()
    for i in range(10):
        store.hit_now("a", 1000 + i, 10, 60)
    assert not store.hit_now("a", 500, 10, 60).allowed  # the clock went back 500 s


def test_idle_clients_are_dropped_and_the_cap_evicts_the_least_recently_seen():
    store = MemoryStore(max_clients=1000)
    for i in range(1000):
        store.hit_now(f"c{i}", 0, 10, 60)
    store.hit_now("c0", 1, 10, 60)  # c0 is now the most recently seen
    store.hit_now("new", 2, 10, 60)
    assert store.tracked() == 1000
    assert "c1" not in store.windows
    assert "c0" in store.windows
    for _ in range(16):
        store.hit_now(
            "late", 100, 10, 60
        )  # everyone else is idle by now: a few go every 16 requests
    assert 1000 - 32 <= store.tracked() < 1000
    asyncio.run(store.sweep(100, 60))
    assert set(store.windows) == {"late"}


def test_memory_per_client_holding_ten_hits_is_small():
    store = MemoryStore(max_clients=200_000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        for j in range(10):
            store.hit_now(f"203.0.{i >> 8}.{i & 255}", j, 100, 60)
    per_client = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    tracemalloc.stop()
    assert per_client < 400, per_client


# --- the client address --------------------------------------------------------

TRUSTED = TrustedHosts(["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"])

# Cases adapted from realclientip-go's RightmostTrustedRange tests (0BSD) and MDN's
# X-Forwarded-For page; a failure there is a fall-back to the peer here.
TABLE = [
    # (peer, X-Forwarded-For lines, trusted, expected)
    ("9.9.9.9", ["1.2.3.4, 10.0.0.1"], ["10.0.0.0/8"], "9.9.9.9"),  # untrusted peer: header ignored
    ("9.9.9.9", [], ["10.0.0.0/8"], "9.9.9.9"),
    ("10.0.0.5", ["3.3.3.3, 10.0.0.1"], ["10.0.0.0/8"], "3.3.3.3"),
    (
        "10.0.0.5",
        ["2.2.2.2:3384, 3.3.3.3", "4.4.4.4"],
        ["10.0.0.0/8"],
        "4.4.4.4",
    ),  # several lines, in order
    ("10.0.0.5", ["2.2.2.2:3384, 3.3.3.3", "4.4.4.4"], ["10.0.0.0/8", "4.4.4.0/24"], "3.3.3.3"),
    ("10.0.0.5", ["2.2.2.2:3384, 3.3.3.3", "4.4.4.4"], ["10.0.0.0/8", "4.4.4.4"], "3.3.3.3"),
    (
        "10.0.0.5",
        ["2.2.2.2:3384, 2.2.2.3", "2.2.2.4"],
        ["10.0.0.0/8", "2.2.2.0/24"],
        "10.0.0.5",
    ),  # all trusted
    (
        "10.0.0.5",
        ["nope, 2.2.2.2:3384, 2.2.2.3", "2.2.2.4"],
        ["10.0.0.0/8", "2.2.2.0/24"],
        "10.0.0.5",
    ),  # garbage
    (
        "10.0.0.5",
        ["::, 2.2.2.2:3384", "2.2.2.4"],
        ["10.0.0.0/8", "2.2.2.0/24"],
        "10.0.0.5",
    ),  # unspecified
    ("10.0.0.5", [""], ["10.0.0.0/8"], "10.0.0.5"),  # empty header
    ("10.0.0.5", ["1.1.1.1, "], ["10.0.0.0/8"], "10.0.0.5"),  # empty rightmost entry
    ("10.0.0.5", ["[1.2.3.45"], ["10.0.0.0/8"], "10.0.0.5"),  # a bracket never closed: garbage
    ("10.0.0.5", ["[2001:db8::1"], ["10.0.0.0/8"], "10.0.0.5"),
    (
        "10.0.0.5",
        ["[2607:f8b0:4004:83f::18]:3838"],
        ["10.0.0.0/8"],
        "2607:f8b0:4004:83f::/64",
    ),  # brackets+port
    ("10.0.0.5", ["2607:f8b0:4004:83f::19"], ["10.0.0.0/8"], "2607:f8b0:4004:83f::/64"),
    ("10.0.0.5", ["[fe80::1111%eth0]:4848"], ["10.0.0.0/8"], "fe80::/64"),  # zone
    ("10.0.0.5", ["::ffff:188.0.2.128"], ["10.0.0.0/8"], "188.0.2.128"),  # IPv4-mapped
    ("10.0.0.5", ["[::ffff:188.0.2.128]:48483"], ["10.0.0.0/8"], "188.0.2.128"),
    (
        "10.0.0.5",
        ["203.0.113.195, 2001:db8:85a3:8d3:1319:8a2e:370:7348"],
        ["10.0.0.0/8", "2001:db8::/32"],
        "203.0.113.195",
    ),
    (
        "::ffff:10.0.0.5",
        ["5.5.5.5"],
        ["10.0.0.0/8"],
        "5.5.5.5",
    ),  # a mapped peer is unmapped before the check
    (None, ["5.5.5.5, 10.0.0.9"], ["10.0.0.0/8"], "5.5.5.5"),  # unix socket: the local proxy
    (None, [], ["10.0.0.0/8"], "local"),
]


@pytest.mark.parametrize(("peer", "lines", "trusted", "expected"), TABLE)
def test_rightmost_untrusted_examples(peer, lines, trusted, expected):
    assert limit_key(client_address(peer, lines, TrustedHosts(trusted))) == expected


def limit_key(address: bytes | None) -> str:
    """The rate-limit key of a resolved address, written into the scope as text."""
    return rate_limit_key(address_text(address) if address else None)


def test_ipv6_clients_share_one_key_per_64():
    one = rate_limit_key("2001:db8:1:2::1")
    assert one == rate_limit_key("2001:db8:1:2:ffff::9") != rate_limit_key("2001:db8:1:3::1")
    assert (
        rate_limit_key("::ffff:192.0.2.7") == "192.0.2.7"
    )  # an IPv4 client of a dual-stack socket


addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["10.1.2.3", "127.0.0.1", "2001:db8::5", "10.255.0.1"]),  # trusted ones, often
)


def dress(draw, address: str) -> str:
    """Write an address as a proxy might: with a port, brackets, a zone, spaces."""
    if ":" in address and draw(st.booleans()):
        address = f"[{address}%eth0]" if draw(st.booleans()) else f"[{address}]"
        address += ":443" if draw(st.booleans()) else ""
    elif ":" not in address and draw(st.booleans()):
        address += ":8080"
    return " " * draw(st.integers(0, 2)) + address


@st.composite
def chains(draw):
    entries = draw(
        st.lists(
            st.one_of(addresses, st.sampled_from(["", "nope", "unknown", "1.2.3", "::g"])),
            max_size=8,
        )
    )
    written = [dress(draw, e) if parse_address(e) else e for e in entries]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(written) - 1)), max_size=3)))
    lines, start = [], 0
    for cut in [*cuts, len(written)]:
        if start < cut:
            lines.append(",".join(written[start:cut]))
        start = cut
    peer = draw(st.one_of(st.none(), addresses, st.text(max_size=10)))
    return peer, lines, entries


@settings(max_examples=600)
@given(chains())
def test_client_address_is_the_rightmost_untrusted_entry_or_the_peer(case):
    peer, lines, _entries = case
    result = client_address(peer, lines, TRUSTED)  # never raises
    peer_address = parse_address(peer) if peer else None
    if peer and (peer_address is None or peer_address not in TRUSTED):
        assert result == peer_address  # an untrusted peer is the client, whatever it sends
        return
    flat = [e for line in lines for e in line.split(",")]
    parsed = [parse_address(e) for e in flat]
    untrusted = [i for i, a in enumerate(parsed) if a is None or a not in TRUSTED]
    if not untrusted or parsed[untrusted[-1]] is None:
        assert result == peer_address  # all trusted, empty, or garbage where the client stands
    else:
        assert result == parsed[untrusted[-1]]
        assert result not in TRUSTED  # never a trusted proxy while an untrusted address exists
        # nothing left of it: the result is that entry, not an earlier one with the same text
        assert untrusted[-1] == max(i for i, a in enumerate(parsed) if a == result)


@given(st.ip_addresses(), st.data())
def test_parse_address_agrees_with_the_ipaddress_module(address, data):
    mapped = address.ipv4_mapped if address.version == 6 else None
    expected = (
        None
        if address.is_unspecified or (mapped and mapped.is_unspecified)
        else (mapped or address).packed
    )
    assert parse_address(dress(data.draw, str(address))) == expected
    if expected is not None:  # the key is the address, or the /64 network, as ipaddress writes it
        plain = mapped or address
        key = (
            str(ipaddress.ip_network((int(plain) >> 64 << 64, 64)))
            if plain.version == 6
            else str(plain)
        )
        assert rate_limit_key(address_text(expected)) == key


@given(st.ip_addresses(), st.text(min_size=1, max_size=6), st.booleans())
def test_anything_after_the_bracket_or_an_ipv4_port_fails_closed(address, junk, with_port):
    """`[::1]x`, `[::1]:80x` and `1.2.3.4:80x` are no address: a proxy never writes them, so
    what they are is not guessed."""
    port = ":443" if with_port else ""
    written = f"[{address}]{port}x{junk}" if address.version == 6 else f"{address}:443x{junk}"
    assert parse_address(written) is None


@pytest.mark.parametrize("written", ["[::1]:", "[::1]:123456", "1.2.3.4:", "[::1", "1.2.3.4:80:1"])
def test_an_empty_or_overlong_port_fails_closed(written):
    assert parse_address(written) is None


@given(
    st.ip_addresses(),
    st.lists(
        st.ip_addresses().flatmap(
            lambda a: st.integers(0, a.max_prefixlen).map(lambda n: f"{a}/{n}")
        ),
        max_size=4,
    ),
)
def test_trusted_membership_agrees_with_the_ipaddress_module(address, entries):
    """Entries as TRUSTED_HOSTS accepts them: a range may be written from any of its addresses."""
    networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]
    assert (address.packed in TrustedHosts(entries)) == any(address in n for n in networks)


@given(st.text(), st.lists(st.text()))
def test_client_address_never_raises_on_any_text(peer, lines):
    result = client_address(peer, lines, TRUSTED)
    assert result is None or (type(result) is bytes and len(result) in (4, 16))
