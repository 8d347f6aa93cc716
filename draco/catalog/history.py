"""Versions of a provider's list, and what changed between any two of them. Pure: no I/O,
no clock of its own.

A version names a list's entries (each server's identity, key and address): a refresh
that changes only loads keeps the version. It is `<accepted at, hex seconds>-<digest of
the entries>`, short and opaque to a client, the same on every instance that shares the
list through Redis (they take the publisher's), and ordered in time, so that a version
older than the history kept is told apart from one that never was.

The history keeps, for each version after the first, only what changed from the one
before it; `since(v)` composes those steps into one change per server, each named once,
from its state at v to its state now. It is bounded: CHANGES_HISTORY versions at most,
and MOST_ENTRIES changed servers over all steps (the oldest steps go first)."""

from __future__ import annotations

import collections
import re
from typing import NamedTuple

import attrs

from draco.catalog.guard import Accepted, Entry, Fingerprint, digest

MOST_ENTRIES = 30_000  # changed servers kept over all steps: about 5 MiB
VERSION = "^[0-9a-f]{1,12}-[0-9a-f]{8}$"  # seconds in hex, digest prefix; also OpenAPI's
FORGOTTEN_KEPT = 1024  # versions dropped from the history, remembered as known


def version_of(entries: Fingerprint, accepted_at: float) -> str:
    return f"{int(accepted_at):x}-{digest(entries)[:8]}"


def _marks(version: str, accepted: Accepted) -> bool:
    """Whether `version` names `accepted`'s entries."""
    return re.fullmatch(VERSION, version) is not None and version.endswith(accepted.digest[:8])


def version_time(version: str) -> int | None:
    return int(version.split("-")[0], 16) if re.fullmatch(VERSION, version) else None


class Step(NamedTuple):
    """A version, and what changed from the version before it: identity: (old, new)."""

    version: str
    at: float
    changed: dict[str, tuple[Entry | None, Entry | None]]


@attrs.frozen
class Change:
    """One server's change from a version to the current one."""

    identity: str
    old: Entry | None  # None: added since
    new: Entry | None  # None: removed since


@attrs.frozen
class Composed:
    since: str
    since_at: float
    current: str
    current_at: float
    changes: tuple[Change, ...]


@attrs.frozen
class Kept:
    """A version the history answers for: `since` composes its changes."""

    version: str


@attrs.frozen
class TooOld:
    """The version is older than the history kept: `oldest` is the first one answered."""

    oldest: str


@attrs.frozen
class Unknown:
    """Not a version of this list: malformed, never seen, or newer than the current."""


Lookup = Kept | TooOld | Unknown


class History:
    def __init__(self, versions: int, most_entries: int = MOST_ENTRIES):
        self.versions = versions
        self.most_entries = most_entries
        self.steps: collections.deque[Step] = collections.deque()
        self.current: Fingerprint = {}
        self.entries = 0  # changed servers held over all steps
        self.forgotten: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def latest(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    @property
    def previous(self) -> Step | None:
        """The version before the current one, if it is kept."""
        return self.steps[-2] if len(self.steps) > 1 else None

    def version_for(self, accepted: Accepted, at: float, stored: str = "") -> str:
        """The version of `accepted`'s entries: the current one while they are the same,
        the one they were stored under (a snapshot, a shared list), or a new one."""
        latest = self.latest
        if latest is not None and _marks(latest.version, accepted):
            return latest.version
        if stored and _marks(stored, accepted):
            return stored
        return version_of(accepted.entries, at)

    def record(self, version: str, entries: Fingerprint, at: float) -> None:
        """`entries` accepted at `at`, named `version` (a new one when they changed)."""
        latest = self.latest
        if latest is not None and latest.version == version:
            return
        changed = {
            name: (self.current.get(name), entries.get(name))
            for name in self.current.keys() | entries.keys()
            if self.current.get(name) != entries.get(name)
        }
        self.steps.append(Step(version, at, changed if latest else {}))
        self.current = entries
        self.entries += len(changed) if latest else 0
        while len(self.steps) > self.versions or (
            self.entries > self.most_entries and len(self.steps) > 1
        ):
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        gone = self.steps.popleft()
        self.entries -= len(self.steps[0].changed)
        self.steps[0] = self.steps[0]._replace(changed={})  # now the first: nothing before it
        self.forgotten[gone.version] = None
        while len(self.forgotten) > FORGOTTEN_KEPT:
            self.forgotten.popitem(last=False)

    def lookup(self, version: str) -> Lookup:
        """Whether the history answers for `version`: cheap, before anything is composed."""
        if any(step.version == version for step in self.steps):
            return Kept(version)
        return self._not_kept(version)

    def since(self, kept: Kept) -> Composed:
        """What changed from a kept version to the current list, each server named once."""
        found = next(i for i, step in enumerate(self.steps) if step.version == kept.version)
        net: dict[str, tuple[Entry | None, Entry | None]] = {}
        for step in list(self.steps)[found + 1 :]:
            for name, (old, new) in step.changed.items():
                first = net[name][0] if name in net else old
                net[name] = (first, new)
        changes = tuple(
            Change(name, old, new) for name, (old, new) in sorted(net.items()) if old != new
        )
        start = self.steps[found]
        latest = self.steps[-1]
        return Composed(kept.version, start.at, latest.version, latest.at, changes)

    def _not_kept(self, version: str) -> Lookup:
        at = version_time(version)
        if at is None or not self.steps:
            return Unknown()
        oldest = self.steps[0]
        if version in self.forgotten or at < int(oldest.at):
            return TooOld(oldest.version)
        return Unknown()
