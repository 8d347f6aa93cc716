"""Never lose the catalog: serve-stale, backoff, the sanity guard, snapshots and
conditional refreshes, driven with an injected clock against a real fake upstream."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import itertools
import json
import logging
from unittest import mock

import attrs
import httpx
import pytest
from conftest import demo_payload
from fake_upstream import FakeUpstream
from hypothesis import example, given, settings
from hypothesis import strategies as st

from draco.catalog import dataset
from draco.catalog.cache import Catalog
from draco.catalog.dataset import make_dataset, render
from draco.catalog.fetch import read_capped
from draco.catalog.snapshot import read_snapshot, snapshot_bytes, write_snapshot
from draco.exceptions import VPNAPIError
from draco.models import encode
from draco.providers import REGISTRY
from draco.settings import load


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def upstream():
    fake = FakeUpstream(demo_payload("surfshark"))
    yield fake
    fake.stop()


def run(coroutine_fn, upstream, snapshot_dir=None, clock=None, providers=None, **env):
    """Run `coroutine_fn(catalog, clock)` against a catalog of `providers`, the surfshark one
    unless told."""
    clock = clock or Clock()
    values = {"SURFSHARK_API_URL": upstream.url, "HTTP_TIMEOUT": "5", **env}
    if snapshot_dir is not None:
        values["SNAPSHOT_DIR"] = str(snapshot_dir)
    settings = load(values)

    async def go():
        async with httpx.AsyncClient() as client:
            catalog = Catalog(
                settings, client, providers or {"surfshark": REGISTRY["surfshark"]}, clock=clock
            )
            await catalog.restore()
            try:
                return await coroutine_fn(catalog, clock)
            finally:
                await catalog.close()

    return asyncio.run(go())


async def settle(catalog: Catalog) -> None:
    """Wait for a background refresh, if one runs."""
    task = catalog.status["surfshark"].task
    if task is not None:
        await task


def test_an_expired_list_is_served_at_once_while_one_background_refresh_runs(upstream):
    async def scenario(catalog, clock):
        first = await catalog.get("surfshark")
        clock.now += 299
        assert await catalog.get("surfshark") is first
        assert not catalog.is_stale(first)
        clock.now += 1  # CACHE_TTL: from its 300th second a list is stale
        upstream.set("delay", delay=1.0)
        served = await asyncio.wait_for(
            asyncio.gather(*(catalog.get("surfshark") for _ in range(20))), 0.5
        )
        assert all(d is first for d in served)
        assert catalog.is_stale(first)
        await settle(catalog)
        assert upstream.hits == 2  # one cold fetch, one refresh for twenty stale requests
        fresh = await catalog.get("surfshark")
        assert fresh.fetched_at == clock.now
        assert not catalog.is_stale(fresh)

    run(scenario, upstream)


def test_a_failed_refresh_keeps_the_list_until_cache_max_stale(upstream):
    async def scenario(catalog, clock):
        good = await catalog.get("surfshark")
        upstream.set("status", status=500)
        clock.now += 3600
        assert await catalog.get("surfshark") is good
        await settle(catalog)
        assert await catalog.get("surfshark") is good
        clock.now = good.fetched_at + 86400  # CACHE_MAX_STALE: the last second it is served
        assert await catalog.get("surfshark") is good
        clock.now += 1
        with pytest.raises(VPNAPIError):
            await catalog.get("surfshark")

    run(scenario, upstream)


def test_a_down_upstream_is_asked_once_per_backoff_step(upstream):
    async def scenario(catalog, clock):
        await catalog.get("surfshark")
        upstream.set("status", status=503)
        clock.now += 301
        asked = []
        for _ in range(40):  # forty client requests, 0.5 s apart on the clock
            await catalog.get("surfshark")
            await settle(catalog)
            asked.append(upstream.hits - 1)
            clock.now += 0.5
        status = catalog.status["surfshark"]
        # Delays double from 1 s (times a jitter of 0.5-1): 20 s of requests allow about 5 attempts.
        assert 3 <= asked[-1] <= 7
        assert status.failures == asked[-1]
        assert status.last_failure == "http_503"

    run(scenario, upstream)


def test_each_failure_doubles_the_backoff_within_its_jitter_up_to_the_cap(upstream):
    """Failure n waits 2^(n-1) s times a jitter of 0.5 to 1, at most REFRESH_BACKOFF_MAX;
    an upstream's Retry-After is honoured up to that cap, never beyond it."""

    async def scenario(catalog, clock):
        await catalog.get("surfshark")
        upstream.set("refused")
        delays = []
        for _ in range(12):
            await catalog.refresh("surfshark")
            delays.append(catalog.status["surfshark"].retry_at - clock.now)
        steps = [min(30, 2**n) for n in range(12)]
        assert all(step / 2 <= delay <= step for delay, step in zip(delays, steps, strict=True)), (
            delays
        )
        assert catalog.status["surfshark"].last_failure == "connection"
        upstream.set("status", status=503, headers={"Retry-After": "100000"})
        await catalog.refresh("surfshark")
        assert catalog.status["surfshark"].retry_at - clock.now == pytest.approx(30)

    run(scenario, upstream, REFRESH_BACKOFF_MAX="30")


def test_retry_after_from_the_upstream_is_honoured(upstream):
    async def scenario(catalog, clock):
        await catalog.get("surfshark")
        upstream.set("status", status=429, headers={"Retry-After": "120"})
        clock.now += 301
        await catalog.get("surfshark")
        await settle(catalog)
        assert catalog.status["surfshark"].retry_at - clock.now >= 120

    run(scenario, upstream)


def test_a_retry_after_date_is_counted_on_the_catalogs_clock(upstream):
    async def scenario(catalog, clock):
        await catalog.get("surfshark")
        clock.now += 301
        upstream.set(
            "status",
            status=503,
            headers={"Retry-After": email.utils.formatdate(clock.now + 200, usegmt=True)},
        )
        await catalog.get("surfshark")
        await settle(catalog)
        assert catalog.status["surfshark"].retry_at - clock.now == pytest.approx(
            200
        )  # not the wall clock's view

    run(scenario, upstream)


@pytest.mark.parametrize(
    "header", ["soon", "²", "Wed, 32 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 99999 07:28:00 GMT"]
)
def test_an_unparsable_retry_after_is_ignored_and_the_failure_keeps_its_class(upstream, header):
    async def scenario(catalog, clock):
        await catalog.get("surfshark")
        clock.now += 301
        upstream.set("status", status=503, headers={"Retry-After": header})
        await catalog.get("surfshark")
        await settle(catalog)
        status = catalog.status["surfshark"]
        assert status.last_failure == "http_503"
        assert status.retry_at - clock.now <= 1

    run(scenario, upstream)


@pytest.mark.parametrize(("keep", "accepted"), [(36, True), (29, True), (28, False), (3, False)])
def test_a_list_shrunk_past_the_churn_budget_is_held(upstream, keep, accepted):
    """Removed servers count toward CACHE_MAX_CHURN (0.2): of 36, 7 may go at once, not 8."""
    clusters = json.loads(demo_payload("surfshark"))  # 36 servers

    async def scenario(catalog, clock):
        before = await catalog.get("surfshark")
        upstream.set("ok", body=json.dumps(clusters[:keep]).encode())
        clock.now += 301
        await catalog.get("surfshark")
        await settle(catalog)
        after = await catalog.get("surfshark")
        if accepted:
            assert len(after.servers) == keep
        else:
            assert after is before
            assert catalog.status["surfshark"].last_failure == "held"

    run(scenario, upstream)


def test_an_empty_list_is_a_fault_that_keeps_the_list(upstream):
    async def scenario(catalog, clock):
        before = await catalog.get("surfshark")
        upstream.set("ok", body=b"[]")
        clock.now += 301
        await catalog.get("surfshark")
        await settle(catalog)
        assert await catalog.get("surfshark") is before
        assert catalog.status["surfshark"].last_failure == "empty"

    run(scenario, upstream)


def test_a_held_list_is_asked_for_again_on_the_backoff_and_heard_soon_once_healed(upstream):
    """Sending the held list sooner cannot shorten its hold (that is measured in time), so
    the upstream is asked again as after a failed refresh: a healed one is heard soon."""
    clusters = json.loads(demo_payload("surfshark"))

    async def scenario(catalog, clock):
        first = await catalog.get("surfshark")
        upstream.set("ok", body=json.dumps(clusters[:3]).encode())
        clock.now += 301
        await catalog.get("surfshark")
        await settle(catalog)
        status = catalog.status["surfshark"]
        assert status.last_failure == "held"
        assert status.retry_at - clock.now <= 1  # the first step of the backoff
        upstream.set("ok", body=demo_payload("surfshark"))
        clock.now += 1
        await catalog.get("surfshark")
        await settle(catalog)
        assert status.trust.hold is None  # the list within the budget ended the hold
        assert not catalog.is_stale(await catalog.get("surfshark"))
        assert (await catalog.get("surfshark")).servers == first.servers

    run(scenario, upstream)


def test_snapshots_are_written_and_restored_as_stale(upstream, tmp_path):
    async def first_life(catalog, clock):
        return await catalog.get("surfshark")

    good = run(first_life, upstream, tmp_path)
    assert (tmp_path / "surfshark.json").exists()
    upstream.set("refused")

    async def second_life(catalog, clock):
        data = await catalog.get("surfshark")
        assert data.servers == good.servers
        assert data.fetched_at == good.fetched_at
        assert catalog.is_stale(data)  # restored: stale until the upstream confirms it
        await settle(catalog)
        assert catalog.status["surfshark"].last_failure == "connection"

    run(second_life, upstream, tmp_path)


def test_a_restored_list_the_upstream_confirms_with_a_304_is_fresh_again(upstream, tmp_path):
    async def first_life(catalog, clock):
        return await catalog.get("surfshark")

    good = run(first_life, upstream, tmp_path)

    async def second_life(catalog, clock):
        restored = await catalog.get("surfshark")  # provisional: served as stale, a refresh starts
        await settle(catalog)
        confirmed = await catalog.get("surfshark")
        return catalog.is_stale(restored), catalog.is_stale(confirmed), confirmed

    was_stale, is_stale, confirmed = run(second_life, upstream, tmp_path)
    assert upstream.requests[-1][1]["If-None-Match"] == upstream.etag
    assert upstream.hits == 2
    assert (was_stale, is_stale, confirmed.servers) == (True, False, good.servers)


def sound_snapshot(**changes) -> bytes:
    """A snapshot of the demo surfshark list, with `changes` made to it: one defect each."""
    servers, _ = REGISTRY["surfshark"].parse(demo_payload("surfshark"))
    return encode(
        {**json.loads(snapshot_bytes(make_dataset("surfshark", servers, 1.0))), **changes}
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"not json at all",
        sound_snapshot(provider="nordvpn"),
        sound_snapshot(format="draco-snapshot-0"),
        sound_snapshot(servers=[]),
        b"\x00\xff" * 100,
    ],
)
def test_a_corrupt_truncated_or_foreign_snapshot_is_ignored_with_a_warning(
    upstream, tmp_path, caplog, content
):
    (tmp_path / "surfshark.json").write_bytes(content)

    async def scenario(catalog, clock):
        return await catalog.get("surfshark")

    with caplog.at_level(logging.WARNING, "draco.catalog"):
        data = run(scenario, upstream, tmp_path)
    assert len(data.servers) == 36
    assert upstream.hits == 1
    assert "ignoring snapshot" in caplog.text


def test_a_truncated_copy_of_a_real_snapshot_is_ignored(upstream, tmp_path):
    async def scenario(catalog, clock):
        return await catalog.get("surfshark")

    run(scenario, upstream, tmp_path)
    whole = (tmp_path / "surfshark.json").read_bytes()
    (tmp_path / "surfshark.json").write_bytes(whole[: len(whole) // 2])
    assert read_snapshot(tmp_path, "surfshark") is None


def test_a_snapshot_holding_another_providers_servers_is_refused(upstream, tmp_path):
    async def scenario(catalog, clock):
        return await catalog.get("surfshark")

    data = run(scenario, upstream, tmp_path)
    (tmp_path / "nordvpn.json").write_bytes(
        (tmp_path / "surfshark.json")
        .read_bytes()
        .replace(b'"provider":"surfshark","fetched', b'"provider":"nordvpn","fetched')
    )
    assert read_snapshot(tmp_path, "nordvpn") is None
    write_snapshot(
        tmp_path, "surfshark", snapshot_bytes(data)
    )  # atomic: no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nordvpn.json", "surfshark.json"]


def test_conditional_refreshes_renew_the_age_without_reparsing(upstream, tmp_path):
    parses = []

    def counting_parse(body):
        parses.append(len(body))
        return REGISTRY["surfshark"].parse(body)

    async def scenario(catalog, clock):
        first = await catalog.get("surfshark")
        union_before = await catalog.union()
        clock.now += 400
        await catalog.get("surfshark")
        await settle(catalog)
        renewed = await catalog.get("surfshark")
        assert renewed.servers is first.servers
        assert renewed.fetched_at == clock.now
        assert len(parses) == 1
        assert renewed.rendered is first.rendered  # the encoded pages stay valid too
        union = await catalog.union()  # provider=all: renewed the same way, not rebuilt
        assert union.servers is union_before.servers
        assert union.rendered is union_before.rendered
        assert union.fetched_at == clock.now
        assert union.version == union_before.version
        # the snapshot carries the renewed time: a restart must not think the list older
        assert read_snapshot(tmp_path, "surfshark").data.fetched_at == clock.now

    upstream.set("ok", headers={"Last-Modified": "Sat, 28 Nov 2026 10:00:00 GMT"})
    counted = attrs.evolve(REGISTRY["surfshark"], parse=counting_parse)
    run(scenario, upstream, tmp_path, providers={"surfshark": counted})
    _, headers = upstream.requests[-1]
    assert headers["If-None-Match"] == upstream.etag
    assert headers["If-Modified-Since"] == "Sat, 28 Nov 2026 10:00:00 GMT"


def test_a_cold_provider_in_backoff_fails_fast_without_asking_again(upstream):
    upstream.set("status", status=500)

    async def scenario(catalog, clock):
        for _ in range(10):
            with pytest.raises(VPNAPIError):
                await catalog.get("surfshark")
            catalog.warm(["surfshark"])  # as /health/ready does
            await settle(catalog)
        assert upstream.hits == 1

    run(scenario, upstream)


# --- the encoded pages kept per list --------------------------------------------------------------

KiB = 1024


@example(
    keys=list(range(0, 2 * dataset.RENDER_CACHE_SIZE + 40, 2))
)  # more small answers than the count allows
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=40))
def test_the_pages_kept_per_list_stay_within_their_count_and_bytes(keys):
    """Each key's answer has its own size, up to past the whole budget; whatever the
    order, every answer is right, built only when not kept, and what is kept stays
    within both bounds."""
    size = {
        key: (key % 101) * 2 * KiB if key % 2 else key % 100 for key in keys
    }  # odd: up to 200 KiB; even: tiny
    with mock.patch.object(dataset, "RENDER_CACHE_BYTES", 64 * KiB):
        data = make_dataset("x", [], 0.0)
        for key in keys:
            before = dict(data.rendered)
            answer = "y" * size[key]
            built = []
            rendered = render(data, key, lambda: built.append(key) or answer)  # noqa: B023 (called here, at once)
            assert rendered.body == encode(answer)
            assert built == ([] if key in before else [key])
            kept = rendered.size <= dataset.RENDER_CACHE_BYTES
            assert (key in data.rendered) == kept
            assert kept or data.rendered == before
            assert len(data.rendered) <= dataset.RENDER_CACHE_SIZE
            assert sum(r.size for r in data.rendered.values()) <= dataset.RENDER_CACHE_BYTES


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk


_MiB = 1 << 20
_SIZES = st.sampled_from([_MiB - 1, _MiB, _MiB + 1, 3 * _MiB]) | st.integers(0, 3 * _MiB)
_PART = st.binary(max_size=2000) | st.builds(
    lambda n, byte: bytes([byte]) * n, _SIZES, st.integers(0, 255)
)


@settings(max_examples=80, deadline=None)
@given(
    parts=st.lists(_PART, min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, _MiB), max_size=6),
    over=st.integers(-2, 2) | st.integers(-4 * _MiB, 4 * _MiB),
)
def test_gzip_members_inflate_whole_however_the_body_arrives_cut(parts, cuts, over):
    """Any gzip members (some larger than the MiB inflated per step), cut anywhere, under a cap
    near their size or not: the body they hold, or `oversized` exactly when it is larger."""
    cap = max(0, len(b"".join(parts)) - over)
    body = b"".join(gzip.compress(part, 1) for part in parts)
    bounds = sorted({0, len(body), *(cut % (len(body) + 1) for cut in cuts)})
    chunks = [body[start:end] for start, end in itertools.pairwise(bounds)]
    response = httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=_Chunks(chunks))
    whole = b"".join(parts)
    if len(whole) > cap:
        with pytest.raises(VPNAPIError) as refused:
            asyncio.run(read_capped(response, cap))
        assert refused.value.reason == "oversized"
    else:
        assert asyncio.run(read_capped(response, cap)) == whole


def test_provider_all_leaves_out_a_provider_it_cannot_serve_and_is_stale_until_every_one_is_back(
    upstream,
):
    down = FakeUpstream(demo_payload("ivpn"))
    down.set("status", status=503)

    async def scenario(catalog, clock):
        union = await catalog.union()
        assert {s.provider for s in union.servers} == {"surfshark"}
        assert catalog.is_stale(union)
        down.set("ok")
        clock.now += 5  # past ivpn's first backoff step
        union = await catalog.union()
        assert {s.provider for s in union.servers} == {
            "surfshark",
            "ivpn",
        }
        assert not catalog.is_stale(union)
        clock.now += 296  # surfshark's list, the older, is now past CACHE_TTL: so is the union
        union = await catalog.union()
        assert catalog.is_stale(union)
        assert catalog.age(union) == 301

    try:
        both = {name: REGISTRY[name] for name in ("surfshark", "ivpn")}
        run(scenario, upstream, providers=both, IVPN_API_URL=down.url)
    finally:
        down.stop()
