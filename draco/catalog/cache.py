"""The per-provider cache policy. A list is fresh for CACHE_TTL; after that, requests
still get it at once while one background refresh runs (stale-while-revalidate), and
only a provider with nothing stored waits on the upstream. Concurrent requests cause
one upstream request (single flight). A failed refresh keeps the previous list and
backs off exponentially. A list older than CACHE_MAX_STALE is no longer served.

Every list, wherever it comes from (an upstream payload, a snapshot, a list another
instance shared), is judged by the guard (guard.py) at one point, `_consider`; the
catalog acts on the guard's decision and never decides trust itself."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal

import attrs
import httpx

from draco.catalog import holds
from draco.catalog.dataset import Dataset, make_dataset
from draco.catalog.fetch import NotModified, failure_class, fetch
from draco.catalog.guard import (
    CLOCK_SKEW,
    Accept,
    Candidate,
    Held,
    Refuse,
    Rules,
    Source,
    Trust,
    accept_held,
    confirmed,
    judge,
    refuse_held,
)
from draco.catalog.history import History
from draco.catalog.shared import SharedCatalog, SharedMeta
from draco.catalog.snapshot import Stored, from_snapshot, read_snapshot, snapshot_bytes
from draco.catalog.snapshot import write_snapshot as write_snapshot_file
from draco.exceptions import VPNAPIError, VPNDataError, VPNServiceError
from draco.models import HeldList, ProviderHealth, encode
from draco.providers import REGISTRY, Provider
from draco.settings import Settings

log = logging.getLogger("draco.catalog")

Origin = Literal["upstream", "snapshot", "shared catalog"]
FIRST_USE: dict[Origin, Source] = {
    "upstream": "first use",
    "snapshot": "snapshot",
    "shared catalog": "shared catalog",
}
OUTCOME: dict[Origin, str] = {"upstream": "ok", "snapshot": "snapshot", "shared catalog": "shared"}
REFUSED = {"empty": "empty", "from the future": "future", "refused by the operator": "refused"}
VERDICT_POLL = 2.0  # seconds between two looks for the operator's word on a held list
SHARED_WAIT = 0.25  # seconds between two looks for another instance's refresh


@attrs.define
class Status:
    history: History  # the versions of the list served, for `changes?since=`
    data: Dataset | None = None  # the list served
    trust: Trust = attrs.field(factory=Trust)  # the guard's, for this provider
    held: Dataset | None = None  # the list on hold, kept for the operator's word
    task: asyncio.Task[str] | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_success: float | None = None
    last_failure: str | None = None
    last_failure_at: float | None = None
    error_type: type[VPNServiceError] = VPNAPIError  # what a cold request raises after a failure
    outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter)  # by outcome


class Catalog:
    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        providers: Mapping[str, Provider] = REGISTRY,
        clock: Callable[[], float] = time.time,
        shared: SharedCatalog | None = None,
    ):
        self.settings = settings
        self.client = client
        self.providers = providers
        self.clock = clock
        self.shared = shared  # when several instances share one Redis
        self.status = {
            name: Status(history=History(versions=settings.changes_history)) for name in providers
        }
        self.snapshot_dir = Path(settings.snapshot_dir) if settings.snapshot_dir else None
        self.rules = Rules(
            max_churn=settings.cache_max_churn,
            window=settings.cache_churn_window,
            hold=settings.cache_hold,
        )
        self._union: Dataset | None = None

    async def restore(self) -> None:
        """Each provider's last accepted list from SNAPSHOT_DIR, judged like any other list,
        and served as stale until the upstream confirms it."""
        if self.snapshot_dir is None:
            return  # settings.load has made sure the directory exists and is writable
        for name in self.status:
            stored = await asyncio.to_thread(read_snapshot, self.snapshot_dir, name)
            if stored and await self._consider(name, stored.data, "snapshot", stored) == "snapshot":
                log.info("restored %d %s servers from snapshot", len(stored.data.servers), name)

    async def close(self) -> None:
        tasks = [s.task for s in self.status.values() if s.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.shared:
            await self.shared.close()

    def warm(self, names: Iterable[str]) -> None:
        """Fetch `names` in the background unless backing off (at start, and from
        /health/ready)."""
        for name in names:
            if self.clock() >= self.status[name].retry_at:
                self._refresh_task(name)

    def servable(self, name: str) -> bool:
        """Whether `name` has a list to serve: fresh, or stale within CACHE_MAX_STALE."""
        data = self.status[name].data
        return data is not None and self.clock() - data.fetched_at <= self.settings.cache_max_stale

    def is_stale(self, data: Dataset) -> bool:
        return data.provisional or self.clock() - data.fetched_at >= self.settings.cache_ttl

    def age(self, data: Dataset) -> int:
        return max(0, int(self.clock() - data.fetched_at))

    async def get(self, name: str) -> Dataset:
        status = self.status[name]
        now = self.clock()
        if status.data is None:
            if now >= status.retry_at:
                await asyncio.shield(self._refresh_task(name))
            if status.data is None:  # a failed fetch, or still backing off from one
                raise status.error_type(status.last_failure or "unavailable")
        elif self.is_stale(status.data) and now >= status.retry_at:
            self._refresh_task(name)
        if not self.servable(name):
            raise VPNAPIError("too_stale")
        return status.data

    async def union(self) -> Dataset:
        """Every provider's list in one dataset (`provider=all`). A provider that cannot
        be served is left out, and the union is then marked provisional (stale)."""
        gets = (self.get(name) for name in self.providers)
        parts = await asyncio.gather(*gets, return_exceptions=True)
        served = [p for p in parts if isinstance(p, Dataset)]
        if not served:
            raise next(p for p in parts if isinstance(p, BaseException))
        fetched_at = min(p.fetched_at for p in served)
        provisional = len(served) < len(parts) or any(p.provisional for p in served)
        digest = "+".join(p.digest for p in served)
        union = self._union
        if union is None or union.digest != digest:
            servers = (s for p in served for s in p.servers)
            versions = "+".join(p.version for p in served).encode()
            version = hashlib.blake2b(versions, digest_size=6).hexdigest()
            union = make_dataset(
                "all", servers, fetched_at, provisional=provisional, version=version
            )
            union = attrs.evolve(union, digest=digest)  # the lists it joins name it
        elif union.fetched_at != fetched_at or union.provisional != provisional:
            # the same lists, renewed: the servers and their encoded pages stay
            union = attrs.evolve(union, fetched_at=fetched_at, provisional=provisional)
        self._union = union
        return union

    def _refresh_task(self, name: str) -> asyncio.Task[str]:
        status = self.status[name]
        if status.task is None or status.task.done():
            status.task = asyncio.get_running_loop().create_task(self._refresh(name))
        return status.task

    async def refresh(self, name: str) -> str:
        """Fetch now, whatever the age of the list; the outcome ("ok", "held", a failure
        class...)."""
        return await self._refresh_task(name)

    async def _refresh(self, name: str) -> str:
        status = self.status[name]
        try:
            if self.shared and not await self._take_turn(name, self.shared):
                return "shared"  # another instance refreshed the list, or is refreshing it
            try:
                provider = self.providers[name]
                fetched = await fetch(self.client, self.settings, provider, status.data, self.clock)
            finally:
                if self.shared:
                    await self.shared.release(name)
        except Exception as exc:  # recorded, never raised: the previous list stays
            return self._failed(name, exc)
        if isinstance(fetched, NotModified):  # the list already judged: only its age changes
            status.outcomes["not_modified"] += 1
            status.trust = confirmed(status.trust)
            await self._unhold(name)
            await self._serve(name, fetched.data, publish=True, renewed=True)
            return "not_modified"
        outcome = await self._consider(name, fetched, "upstream")
        if outcome == "ok":
            log.info("refreshed %s: %d servers", name, len(fetched.servers))
        return outcome

    async def _consider(
        self, name: str, candidate: Dataset, origin: Origin, stored: Stored | None = None
    ) -> str:
        """Ask the guard about `candidate`, and act on its decision: serve it, hold it or
        refuse it. The outcome: "ok", "snapshot" or "shared" when it is served from now
        on, "held", or why it was refused."""
        status = self.status[name]
        now = self.clock()
        judged = Candidate(
            servers=candidate.servers,
            fetched_at=candidate.fetched_at,
            first_use=FIRST_USE[origin],
            stored=stored.trust if stored else None,
        )
        decision = judge(status.trust, judged, now, self.rules)
        status.trust = decision.trust
        if isinstance(decision, Accept):
            if decision.why == "first use":
                log.info("%s: %s list trusted on first use", name, origin)
            elif decision.why != "within budget":
                log.warning("%s: %s list accepted (%s)", name, origin, decision.why)
            await self._unhold(name)
            status.outcomes[OUTCOME[origin]] += 1
            await self._serve(name, candidate, publish=origin == "upstream")
            return OUTCOME[origin]
        if isinstance(decision, Held):
            await self._hold(name, candidate, decision, origin)
            return "held"
        self._refused(name, decision, origin)
        return REFUSED[decision.why]

    async def _hold(self, name: str, candidate: Dataset, decision: Held, origin: Origin) -> None:
        """Keep serving what was served; the held list waits for its time or the operator.
        The upstream is asked again on the backoff of a failed refresh: sending the held
        list sooner changes nothing, and a healed upstream is heard soon."""
        self.status[name].held = candidate
        self._back_off(name, "held")
        if not decision.new:
            return
        hold = decision.hold
        change = hold.churn
        log.warning(
            "%s: the %s list is held: %d removed, %d added, %d rekeyed, %d readdressed of %d "
            "(%.0f%% over %.0f hours, budget %.0f%%); served from %s unless it changes or "
            "`draco hold reject %s %s`",
            name,
            origin,
            change.removed,
            change.added,
            change.rekeyed,
            change.readdressed,
            change.compared_with,
            100 * change.fraction,
            self.rules.window / 3600,
            100 * self.rules.max_churn,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(hold.until)),
            name,
            hold.digest,
        )
        await self._publish_hold(name, holds.notice(hold))

    async def _unhold(self, name: str) -> None:
        status = self.status[name]
        if status.held is not None:
            status.held = None
            await self._publish_hold(name, None)

    def _refused(self, name: str, decision: Refuse, origin: Origin) -> None:
        if origin == "upstream":
            self._failed(name, VPNDataError(REFUSED[decision.why], decision.why))
        else:
            log.warning("ignoring the %s list of %s: %s", origin, name, decision.why)

    async def _publish_hold(self, name: str, notice: HeldList | None) -> None:
        if self.snapshot_dir is not None:
            await asyncio.to_thread(holds.publish, self.snapshot_dir, notice, name)
        if self.shared is not None:
            content = encode(notice) if notice else None
            await self.shared.publish_hold(name, content, ttl=self.rules.hold)

    async def follow_verdicts(self) -> None:
        """Apply the operator's word on held lists (`draco hold`), looked for while a list
        is held."""
        while True:
            await asyncio.sleep(VERDICT_POLL)
            for name, status in self.status.items():
                if status.trust.hold is not None:
                    await self.apply_verdict(name)

    async def apply_verdict(self, name: str) -> None:
        """The operator's word on `name`'s held list, if there is one for it."""
        status = self.status[name]
        held = status.held
        if held is None:
            return
        now = self.clock()
        content = None
        if self.snapshot_dir is not None:
            content = holds.file_content(holds.verdict_path(self.snapshot_dir, name))
        if content is None and self.shared is not None:
            content = await self.shared.verdict(name)
        verdict = holds.read_verdict(content, name, now)
        if verdict is None:
            return
        if verdict.verdict == "reject":
            refused = refuse_held(status.trust, verdict.digest)
            if refused is not None:
                status.trust = refused
                log.warning(
                    "%s: the held list %s was refused by the operator", name, verdict.digest
                )
                await self._unhold(name)
            return
        decision = accept_held(status.trust, held.servers, verdict.digest, now)
        if decision is not None:
            status.trust = decision.trust
            log.warning("%s: the held list %s was accepted by the operator", name, verdict.digest)
            await self._unhold(name)
            await self._serve(name, held, publish=True)

    async def _serve(
        self, name: str, data: Dataset, *, publish: bool, renewed: bool = False
    ) -> None:
        """Serve `data` from now on, with its version, and keep it: snapshot file, and the
        shared catalog."""
        status = self.status[name]
        if not renewed:
            data = self._versioned(status, data)
        status.data = data
        status.failures = 0
        status.retry_at = 0.0
        status.last_success = self.clock()
        shared = self.shared if publish else None
        if shared and renewed:  # the same list: only its fetch time changed
            await shared.renew(name, data.fetched_at)
            shared = None
        # The snapshot is rewritten even then: after a restart it must show the time the
        # upstream last confirmed the list, or CACHE_MAX_STALE would count from too early.
        if not (shared or self.snapshot_dir):
            return
        content = await asyncio.to_thread(snapshot_bytes, data, status.trust)
        if shared:
            await shared.save(name, content, SharedMeta(data.digest, data.fetched_at))
        if self.snapshot_dir is not None:
            try:
                await asyncio.to_thread(write_snapshot_file, self.snapshot_dir, name, content)
            except OSError as exc:
                log.error("cannot write %s snapshot: %s", name, exc)

    def _versioned(self, status: Status, data: Dataset) -> Dataset:
        """`data` under its version: the current one while its entries are the same, the
        one it was stored with, or a new one; recorded in the history."""
        accepted = status.trust.window[-1]  # what the guard accepted: these very entries
        version = status.history.version_for(accepted, self.clock(), stored=data.version)
        status.history.record(version, accepted.entries, self.clock())
        return attrs.evolve(data, version=version)

    async def _take_turn(self, name: str, shared: SharedCatalog) -> bool:
        """True when this instance is the one to ask the upstream. Adopts a newer shared list
        first; with nothing to serve, waits up to one lease for another instance's refresh."""
        status = self.status[name]
        give_up = self.clock() + shared.lease_ms / 1000
        while True:
            if await self._adopt(name, shared):
                return False
            if await shared.lease(name):
                return True
            if status.data is not None:
                status.retry_at = self.clock() + 1  # look again in a second; serve this meanwhile
                return False
            if self.clock() > give_up:
                raise VPNAPIError("shared_timeout")
            await asyncio.sleep(SHARED_WAIT)

    async def _adopt(self, name: str, shared: SharedCatalog) -> bool:
        """Consider the shared list when it is newer than ours; True when we now serve a
        fresh one."""
        status = self.status[name]
        meta = await shared.meta(name)
        current = status.data
        if meta is None:
            pass
        elif current is not None and meta.digest == current.digest:
            # Another instance's conditional refresh of this very list: only its age changes,
            # and never to a time ahead of this clock.
            if current.fetched_at < meta.fetched_at <= self.clock() + CLOCK_SKEW:
                renewed = attrs.evolve(current, fetched_at=meta.fetched_at, provisional=False)
                await self._serve(name, renewed, publish=False, renewed=True)
        elif current is None or meta.fetched_at > current.fetched_at:
            await self._adopt_content(name, shared)
        return status.data is not None and not self.is_stale(status.data)

    async def _adopt_content(self, name: str, shared: SharedCatalog) -> None:
        content = await shared.content(name)
        if not content:
            return
        try:
            stored = await asyncio.to_thread(from_snapshot, content, name)
        except ValueError as exc:
            log.warning("ignoring the shared %s list: %s", name, exc)
            return
        await self._consider(name, stored.data, "shared catalog", stored)

    def _failed(self, name: str, exc: Exception) -> str:
        status = self.status[name]
        status.error_type = VPNDataError if isinstance(exc, VPNDataError) else VPNAPIError
        asked = exc.retry_after if isinstance(exc, VPNServiceError) else None
        delay = self._back_off(name, failure_class(exc), asked)
        why = f"{status.last_failure}: {getattr(exc, 'detail', '') or exc}"
        message = "refresh of %s failed (%s), attempt %d, next in %.1fs"
        unexpected = status.last_failure == "error"
        log.warning(message, name, why, status.failures, delay, exc_info=unexpected)
        return failure_class(exc)

    def _back_off(self, name: str, failure: str, asked: float | None = None) -> float:
        """Record a refresh that brought nothing to serve; the next one waits exponentially
        longer, jittered, and at least what the upstream asked. The seconds it waits."""
        status = self.status[name]
        status.failures += 1
        status.last_failure = failure
        status.last_failure_at = self.clock()
        status.outcomes[failure] += 1
        most = self.settings.refresh_backoff_max
        delay = min(most, 2.0 ** (status.failures - 1)) * random.uniform(0.5, 1.0)  # noqa: S311 - a jitter, no secret
        delay = max(delay, min(asked or 0, most))
        status.retry_at = self.clock() + delay
        return delay

    def health(self) -> dict[str, ProviderHealth]:
        return {name: self._health(status) for name, status in self.status.items()}

    def _health(self, s: Status) -> ProviderHealth:
        baseline = s.trust.baseline(self.clock(), self.rules)
        hold = s.trust.hold
        return ProviderHealth(
            servers=len(s.data.servers) if s.data else 0,
            data_age=self.age(s.data) if s.data else None,
            serving_stale=bool(s.data and self.is_stale(s.data)),
            last_success=s.last_success,
            last_failure=s.last_failure,
            last_failure_at=s.last_failure_at,
            baseline_since=baseline.at if baseline else None,
            trust=s.trust.source,
            held=holds.notice(hold) if hold else None,
        )
