"""Sidecar failover: versions and what changed since one, a stable spread across replicas,
and reports that set a dead server aside for the client that sent them."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from conftest import KEY, OTHER_KEY, demo_payload, eventually, upstream_env
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.app import create_app
from draco.catalog import demo
from draco.catalog.guard import Entry, Fingerprint, churn
from draco.catalog.history import History, Kept, TooOld, Unknown, version_of
from draco.catalog.reports import MOST_SCOPES, MOST_SERVERS, MemoryQuarantine
from draco.settings import Settings, load
from draco.web.shaping import spread

# --- the history: what changed since a version -------------------------------------------


@st.composite
def lists(draw) -> list[Fingerprint]:
    """A run of accepted lists: each from the one before, servers added, removed, rekeyed,
    readdressed, or a server coming back as it was."""
    names = [f"s{i}" for i in range(12)]
    current: Fingerprint = {name: Entry(f"k{i}", f"a{i}") for i, name in enumerate(names[:6])}
    run = [dict(current)]
    for _ in range(draw(st.integers(1, 14))):
        changed = dict(current)
        for name in draw(st.lists(st.sampled_from(names), max_size=4)):
            kind = draw(st.sampled_from(["toggle", "rekey", "readdress", "readdress6", "back"]))
            if kind == "toggle":
                if name in changed and len(changed) > 1:
                    del changed[name]
                else:
                    changed[name] = Entry(f"k-{name}", f"a-{name}")
            elif kind == "back":
                changed[name] = Entry(f"k{names.index(name)}", f"a{names.index(name)}")
            elif name in changed:
                old = changed[name]
                new_key = draw(st.sampled_from(["x", "y", "z"]))
                if kind == "rekey":
                    changed[name] = Entry(old.key + new_key, old.address, old.ipv6)
                elif kind == "readdress":
                    changed[name] = Entry(old.key, (old.address or "") + new_key, old.ipv6)
                else:  # an IPv6 entry address given, or changed
                    changed[name] = Entry(old.key, old.address, (old.ipv6 or "6:") + new_key)
        run.append(changed)
        current = changed
    return run


def record_all(run: list[Fingerprint], versions: int = 64) -> tuple[History, list[str]]:
    history = History(versions)
    names = []
    for at, entries in enumerate(run):
        latest = history.latest
        same = latest is not None and history.current == entries
        version = latest.version if same and latest else version_of(entries, 1000 + at)
        history.record(version, entries, 1000.0 + at)
        names.append(version)
    return history, names


@settings(max_examples=300, deadline=None)
@given(lists())
def test_changes_since_any_version_are_the_brute_force_diff_of_the_two_lists(run):
    history, names = record_all(run)
    for since, entries in zip(names, run, strict=True):
        kept = history.lookup(since)
        assert isinstance(kept, Kept)
        answer = history.since(kept)
        assert answer.current == names[-1]
        got = {c.identity: (c.old, c.new) for c in answer.changes}
        assert len(got) == len(answer.changes)  # each server named once
        now = run[-1]
        expected = {
            name: (entries.get(name), now.get(name))
            for name in entries.keys() | now.keys()
            if entries.get(name) != now.get(name)
        }
        assert got == expected
        diff = churn(entries, now)
        assert diff.added == sum(old is None for old, _ in got.values())
        assert diff.removed == sum(new is None for _, new in got.values())


def test_a_version_past_the_history_is_too_old_and_names_the_oldest_kept():
    run = [{f"s{i}": Entry(f"k{i}-{n}", "a") for i in range(3)} for n in range(10)]
    history, names = record_all(run, versions=4)
    answer = history.lookup(names[0])
    assert isinstance(answer, TooOld)
    assert answer.oldest == names[-4]
    assert isinstance(history.lookup(names[-4]), Kept)


@pytest.mark.parametrize("version", ["nonsense", "1-2", "ffffffffffff-12345678", "0-0000000g"])
def test_a_malformed_or_unknown_version_is_unknown(version):
    history, _ = record_all([{"s": Entry("k", "a")}, {"s": Entry("k2", "a")}])
    assert isinstance(history.lookup(version), Unknown)


def test_the_history_is_bounded_by_the_servers_it_keeps_changed():
    """64 full replacements of 6,300 servers: the oldest steps go first."""
    history = History(64, most_entries=50_000)
    for n in range(64):
        entries = {f"n{n}-{i}": Entry(f"k{n}-{i}", None) for i in range(6300)}
        history.record(version_of(entries, 1000 + n), entries, 1000 + n)
    assert history.entries <= 50_000
    assert sum(len(step.changed) for step in history.steps) == history.entries
    assert len(history.steps) < 64


# --- versions through the app --------------------------------------------------------------


def _app(settings: Settings | None = None, clock=None):
    settings = demo.settings(settings or load({"RATE_LIMIT_ENABLED": "false"}))
    kwargs = {"clock": clock} if clock else {}
    return create_app(settings, transport=demo.transport(), **kwargs)


def _run(app, requests):
    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://draco") as client:
                for _ in range(200):
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                return await requests(client, app)

    return asyncio.run(go())


def test_every_list_answer_names_its_version_in_a_header_and_its_etag():
    async def requests(client, _app):
        page = await client.get("/api/mullvad/servers?page_size=2")
        providers = (await client.get("/api/providers")).json()
        return page, {p["name"]: p["version"] for p in providers}

    page, versions = _run(_app(), requests)
    version = page.headers["x-list-version"]
    assert version == versions["mullvad"]
    assert page.headers["etag"].startswith(f'"{version}.')


def test_changes_since_a_version_through_the_catalog():
    """The demo's Mullvad list, then the same with three keys changed and one relay gone."""
    relays = json.loads(demo_payload("mullvad"))

    async def requests(client, app):
        before = (await client.get("/api/mullvad/servers?page_size=1")).headers["x-list-version"]
        changed = relays["wireguard"]["relays"]
        for relay in changed[:3]:
            raw = bytearray(base64.b64decode(relay["public_key"]))
            raw[0] ^= 1
            relay["public_key"] = base64.b64encode(bytes(raw)).decode()
        gone = changed.pop(3)["hostname"]
        changed[4]["ipv6_addr_in"] = "2001:db8:ffff::4"
        moved = changed[4]["hostname"]
        catalog = app.state.catalog
        stored = catalog.status["mullvad"]
        fetched = catalog.providers["mullvad"].parse(json.dumps(relays).encode())
        from draco.catalog.dataset import make_dataset

        await catalog._consider(
            "mullvad", make_dataset("mullvad", fetched.servers, catalog.clock()), "upstream"
        )
        after = stored.data.version
        since = (await client.get(f"/api/mullvad/changes?since={before}")).json()
        last = (await client.get("/api/mullvad/changes")).json()
        too_old = await client.get("/api/mullvad/changes?since=1-00000000")
        bad = await client.get("/api/mullvad/changes?since=nonsense")
        at, _, digest = after.partition("-")
        never = f"{at}-{'1' * 8 if digest == '0' * 8 else '0' * 8}"  # a list never accepted
        unknown = await client.get(f"/api/mullvad/changes?since={never}")
        return before, after, since, last, too_old, bad, unknown, gone, moved

    before, after, since, last, too_old, bad, unknown, gone, moved = _run(_app(), requests)
    assert before != after
    assert since == last
    assert (since["since"], since["current"]) == (before, after)
    kinds = {s["identifier"]: s["change"] for s in since["servers"]}
    assert list(kinds.values()).count("rekeyed") == 3
    assert kinds[gone] == "removed"
    [readdressed] = [s for s in since["servers"] if s["identifier"] == moved]
    assert readdressed["change"] == "readdressed"
    assert readdressed["new_ipv6"] == "2001:db8:ffff::4"
    assert readdressed["old_ipv6"] not in (None, "2001:db8:ffff::4")
    assert readdressed["old_address"] == readdressed["new_address"]
    assert too_old.status_code == 410
    assert before in too_old.json()["message"]
    assert bad.status_code == 422
    assert unknown.status_code == 422


# --- a stable spread: seed= ----------------------------------------------------------------


def test_seeds_order_each_list_their_own_way_and_keep_it_across_churn():
    from draco.providers import REGISTRY

    servers = REGISTRY["mullvad"].parse(demo_payload("mullvad")).servers
    seeds = [f"pod-{i}" for i in range(30)]
    firsts = {seed: spread(servers, seed)[0] for seed in seeds}
    assert len({s.identifier for s in firsts.values()}) > len(seeds) // 2  # spread out
    assert all(spread(servers, seed) == spread(list(reversed(servers)), seed) for seed in seeds)
    gone = {servers[i].identifier for i in range(0, len(servers), 10)}  # 10% leave
    kept = [s for s in servers if s.identifier not in gone]
    for seed, first in firsts.items():
        moved = spread(kept, seed)[0] != first
        assert moved == (first.identifier in gone)  # only a seed whose server left moves


def test_seed_orders_a_list_answer_and_top_with_filters_first():
    async def requests(client, _app):
        plain = (await client.get("/api/nordvpn/servers?page_size=100")).json()
        seeded = (await client.get("/api/nordvpn/servers?page_size=100&seed=pod-a")).json()
        again = (await client.get("/api/nordvpn/servers?page_size=100&seed=pod-a")).json()
        top = (await client.get("/api/nordvpn/servers/top?limit=3&max_load=50&seed=pod-a")).json()
        bad = await client.get("/api/nordvpn/servers?seed=" + "x" * 65)
        return plain, seeded, again, top, bad

    plain, seeded, again, top, bad = _run(_app(), requests)
    assert seeded == again
    assert seeded != plain
    assert sorted(s["identifier"] for s in seeded) == sorted(s["identifier"] for s in plain)
    assert all(s["load"] <= 50 for s in top)
    order = [s["identifier"] for s in seeded if s["load"] is not None and 3 < s["load"] <= 50]
    assert [s["identifier"] for s in top] == order[:3]
    assert bad.status_code == 422


# --- reports that set a dead server aside ---------------------------------------------------


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _keyed(**env: str):
    values = {
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS": f'["{KEY}", "{OTHER_KEY}"]',
        "RATE_LIMIT_ENABLED": "false",
        "REPORT_QUARANTINE": "600",
        **env,
    }
    return load(values)


def _top(response) -> list[str]:
    return [s["identifier"] for s in response.json()]


def test_a_report_sets_a_server_aside_for_that_key_until_the_quarantine_ends_or_an_ok():
    clock = Clock()
    mine = {"X-API-Key": KEY}
    other = {"X-API-Key": OTHER_KEY}

    async def requests(client, _app):
        url = "/api/mullvad/servers/top?limit=5"
        first = _top(await client.get(url, headers=mine))
        dead = first[0]
        said = await client.post(
            f"/api/mullvad/servers/{dead}/reports", json={"outcome": "unreachable"}, headers=mine
        )
        after = _top(await client.get(url, headers=mine))
        theirs = _top(await client.get(url, headers=other))
        shown = (await client.get(url + "&include_quarantined=true", headers=mine)).json()
        peer = await client.get(f"/api/mullvad/servers/{dead}/wireguard", headers=mine)
        clock.now += 601
        back = _top(await client.get(url, headers=mine))
        await client.post(
            f"/api/mullvad/servers/{dead}/reports", json={"outcome": "unreachable"}, headers=mine
        )
        again = _top(await client.get(url, headers=mine))
        await client.post(
            f"/api/mullvad/servers/{dead}/reports", json={"outcome": "ok"}, headers=mine
        )
        lifted = _top(await client.get(url, headers=mine))
        health = (await client.get("/health")).json()["reports"]
        return first, dead, said, after, theirs, shown, peer, back, again, lifted, health

    first, dead, said, after, theirs, shown, peer, back, again, lifted, health = _run(
        _app(_keyed(), clock), requests
    )
    assert said.status_code == 200
    assert said.json()["quarantined_until"] == Clock.now + 600
    assert dead not in after
    assert theirs == first  # another key's answers are unchanged
    quarantined = {s["identifier"]: s["quarantined_until"] for s in shown}
    assert quarantined[dead] == Clock.now + 600
    assert peer.status_code == 404
    assert back == first  # the quarantine ended
    assert dead not in again
    assert lifted == first  # an ok lifts it
    assert health == {"scopes": 1, "servers": 0}


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "text/plain"}, b'{"outcome": "ok"}', 415),
        ({}, b'{"outcome": "ok"}', 415),
        ({"Content-Type": "application/json"}, b'{"outcome": "maybe"}', 422),
        ({"Content-Type": "application/json"}, b'{"outcome": "ok", "extra": 1}', 422),
        ({"Content-Type": "application/json"}, b"{not json", 422),
        ({"Content-Type": "application/json"}, b'{"outcome": "ok"}' + b" " * 300, 422),
    ],
)
def test_a_bad_report_gets_the_envelope(headers, body, status):
    async def requests(client, _app):
        return await client.post(
            "/api/mullvad/servers/se-sto-wg-002/reports",
            content=body,
            headers={"X-API-Key": KEY, **headers},
        )

    answer = _run(_app(_keyed()), requests)
    assert answer.status_code == status
    assert set(answer.json()) >= {"error", "message"}


def test_a_report_about_an_unknown_server_is_a_404():
    async def requests(client, _app):
        return await client.post(
            "/api/mullvad/servers/nope/reports",
            json={"outcome": "unreachable"},
            headers={"X-API-Key": KEY},
        )

    assert _run(_app(_keyed()), requests).status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_preflight_may_ask_for_post_on_reports_only(method):
    origin = "https://app.example.com"

    async def requests(client, _app):
        asked = {"Origin": origin, "Access-Control-Request-Method": method}
        reports = await client.options("/api/mullvad/servers/se-sto-wg-002/reports", headers=asked)
        servers = await client.options("/api/mullvad/servers", headers=asked)
        return reports, servers

    reports, servers = _run(_app(_keyed(CORS_ORIGINS=f'["{origin}"]')), requests)
    assert reports.status_code == (204 if method == "POST" else 400)
    assert servers.status_code == 400
    if method == "POST":
        assert "POST" in reports.headers["access-control-allow-methods"]


def test_a_quarantine_nobody_reported_to_needs_no_lookup():
    quarantine = MemoryQuarantine(600)
    assert quarantine.unused()
    until = asyncio.run(quarantine.report("key", ("p", "s1"), "unreachable", 0.0))
    assert not quarantine.unused()
    assert asyncio.run(quarantine.aside("key", 1.0)) == {("p", "s1"): until}
    assert asyncio.run(quarantine.aside("other", 1.0)) == {}


def test_the_caps_hold_however_many_reports_come():
    quarantine = MemoryQuarantine(600, most_servers=8, most_scopes=50)

    async def flood():
        for n in range(2000):
            await quarantine.report(f"key-{n % 120}", ("p", f"s{n}"), "unreachable", 0.0)

    asyncio.run(flood())
    counts = quarantine.counts()
    assert counts.scopes == 50
    assert counts.servers <= 50 * 8
    assert MOST_SERVERS == 256
    assert MOST_SCOPES == 10_000


def test_reports_through_a_real_draco_serve(start_draco, upstreams):
    draco = start_draco(
        {
            **upstream_env(upstreams),
            "ENABLE_API_KEY_AUTH": "true",
            "API_KEYS": f'["{KEY}", "{OTHER_KEY}"]',
            "RATE_LIMIT_REQUESTS": "1000",
        }
    )
    mine = {"X-API-Key": KEY}
    url = draco.url("/api/mullvad/servers/top?limit=5")
    assert eventually(lambda: httpx.get(url, headers=mine).status_code == 200)
    first = _top(httpx.get(url, headers=mine))
    said = httpx.post(
        draco.url(f"/api/mullvad/servers/{first[0]}/reports"),
        json={"outcome": "handshake_failed"},
        headers=mine,
    )
    assert said.status_code == 200
    assert first[0] not in _top(httpx.get(url, headers=mine))
    assert _top(httpx.get(url, headers={"X-API-Key": OTHER_KEY})) == first
    refused = httpx.post(
        draco.url(f"/api/mullvad/servers/{first[0]}/reports"), content=b"x" * 300, headers=mine
    )
    assert refused.status_code == 415
    assert refused.json()["error"] == "Unsupported Media Type"
    unkeyed = httpx.post(
        draco.url(f"/api/mullvad/servers/{first[0]}/reports"), json={"outcome": "ok"}
    )
    assert unkeyed.status_code == 401


def test_two_filters_with_the_same_value_are_two_answers():
    """The render-cache key names each filter, not only its value."""

    async def requests(client, _app):
        by_city = await client.get("/api/mullvad/servers?city=stockholm")
        by_name = await client.get("/api/mullvad/servers?identifier_prefix=stockholm")
        return by_city.json(), by_name.json()

    by_city, by_name = _run(_app(), requests)
    assert by_city
    assert by_name == []
