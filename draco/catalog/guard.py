"""The key-swap guard: whether a list may be served. Pure, like the limiter: the trust
held so far, a candidate list and the time are its arguments; a named decision is its
answer (Accept, Held or Refuse, each carrying the trust to keep). It does no I/O.

A client connects to the Endpoint and PublicKey draco gives it, so whoever controls both
is its VPN server. The guard budgets change instead of judging one refresh at a time:

- A server is its identity: the identifier case-folded, without a trailing dot. Its
  entry is its key and its entry addresses (IPv4, and IPv6 where published).
- Churn between two lists is servers removed, added, rekeyed and readdressed, as a
  fraction of the earlier list. A rename is a removal plus an addition.
- Every list accepted within the window counts toward one budget: a candidate is
  compared with the list that was served when the window began (the baseline), so a
  walk of small steps is caught at the step that crosses the budget.
- A list over the budget is held. It is accepted only once it has been sent alike
  (the same entries) for the hold time, or when the operator accepts it; a different
  list starts the hold again, and a list within the budget ends it.
- The age of a list never switches the guard off: a candidate is always compared with
  what was accepted, however old. With nothing accepted yet, the first list is trusted
  on first use, and the trust says where that came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal, NamedTuple

import attrs

from draco.models import Server, Trusted

# Seconds a list's fetch time may lie ahead of this clock (instances sharing one Redis
# keep clocks that differ a little); beyond it the list is refused.
CLOCK_SKEW = 60.0
WINDOW_LISTS = 16  # accepted lists kept in the window, at most
REJECTED_KEPT = 8  # lists the operator refused, remembered

Source = Trusted  # where trust began: first use, a snapshot, the shared catalog...


class Entry(NamedTuple):
    """What a client connects to."""

    key: str
    address: str | None
    ipv6: str | None = None

    def addresses(self) -> tuple[str | None, str | None]:
        return (self.address, self.ipv6)


Fingerprint = dict[str, Entry]  # identity: entry


def identity(identifier: str) -> str:
    return identifier.casefold().rstrip(".")


def fingerprint(servers: Iterable[Server]) -> Fingerprint:
    """Each server's identity and entry; a repeated identity keeps the first."""
    found: Fingerprint = {}
    for s in servers:
        found.setdefault(identity(s.identifier), Entry(s.public_key, s.ipv4, s.ipv6))
    return found


def digest(entries: Fingerprint) -> str:
    """Names a list by its entries alone: loads and names may change between two sendings
    of what is, for a client, the same list. An IPv6 address is named after the rest, so a
    list without any has the digest it had before IPv6 was read."""
    text = "\n".join(
        f"{name} {e.key} {e.address}" + (f" {e.ipv6}" if e.ipv6 else "")
        for name, e in sorted(entries.items())
    )
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@attrs.frozen
class Churn:
    removed: int
    added: int
    rekeyed: int
    readdressed: int
    compared_with: int  # servers in the baseline

    @property
    def changes(self) -> int:
        return self.removed + self.added + self.rekeyed + self.readdressed

    @property
    def fraction(self) -> float:
        return self.changes / max(1, self.compared_with)


def churn(before: Fingerprint, after: Fingerprint) -> Churn:
    kept = before.keys() & after.keys()
    return Churn(
        removed=len(before.keys() - kept),
        added=len(after.keys() - kept),
        rekeyed=sum(before[name].key != after[name].key for name in kept),
        readdressed=sum(before[name].addresses() != after[name].addresses() for name in kept),
        compared_with=len(before),
    )


@attrs.frozen
class Rules:
    max_churn: float  # CACHE_MAX_CHURN: a fraction of the baseline
    window: float  # CACHE_CHURN_WINDOW, seconds
    hold: float  # CACHE_HOLD, seconds


@attrs.frozen
class Accepted:
    """A list the guard accepted, and when."""

    at: float
    entries: Fingerprint = attrs.field(eq=False, repr=False)
    digest: str


def accepted(entries: Fingerprint, at: float) -> Accepted:
    return Accepted(at=at, entries=entries, digest=digest(entries))


@attrs.frozen
class Hold:
    """A list over the budget, waiting: first sent `since`, accepted at `until` if it is
    sent alike until then."""

    digest: str
    since: float
    until: float
    churn: Churn


@attrs.frozen
class Trust:
    """What the guard holds for one provider: the lists accepted in the window, oldest
    first (the last is the one served), where trust began, a list on hold, and the lists
    the operator refused."""

    window: tuple[Accepted, ...] = ()
    source: Source | None = None
    hold: Hold | None = None
    rejected: tuple[str, ...] = ()

    def baseline(self, now: float, rules: Rules) -> Accepted | None:
        """The list served when the window began: the latest accepted at or before it,
        or the oldest kept."""
        start = now - rules.window
        before = [a for a in self.window if a.at <= start]
        if before:
            return before[-1]
        return self.window[0] if self.window else None

    def with_accepted(self, entry: Accepted, now: float, rules: Rules) -> Trust:
        """`entry` served from now on, the window trimmed to its baseline and after. Past
        WINDOW_LISTS, the list after the baseline goes first: the baseline stays older
        for longer, which only tightens the budget."""
        if self.window and self.window[-1].digest == entry.digest:
            return attrs.evolve(self, hold=None)  # the same entries: accepted when first seen
        window = (*self.window, entry)
        baseline = Trust(window=window).baseline(now, rules)
        if baseline is not None:
            window = window[window.index(baseline) :]
        while len(window) > WINDOW_LISTS:
            window = (window[0], *window[2:])
        return attrs.evolve(self, window=window, hold=None)

    def restarted(self, entry: Accepted, source: Source) -> Trust:
        """Trust begun anew from `entry`: first use, a held list past its time, the
        operator's word."""
        return Trust(window=(entry,), source=source, rejected=self.rejected)


# --- decisions ---------------------------------------------------------------------------


@attrs.frozen
class Accept:
    trust: Trust
    why: Literal["within budget", "first use", "held long enough", "operator"]
    churn: Churn | None  # against the baseline; None when there was none


@attrs.frozen
class Held:
    trust: Trust
    hold: Hold
    new: bool  # first sent now (the hold is logged once)


@attrs.frozen
class Refuse:
    trust: Trust
    why: Literal["empty", "from the future", "refused by the operator"]


Decision = Accept | Held | Refuse


@attrs.frozen
class Candidate:
    """A list to judge: its servers, when they were fetched, where it came from when nothing
    was accepted before it, and for a stored list the trust it was accepted under (its
    window comes with it)."""

    servers: Iterable[Server]
    fetched_at: float
    first_use: Source = "first use"
    stored: Trust | None = None


def judge(trust: Trust, candidate: Candidate, now: float, rules: Rules) -> Decision:
    """Whether `candidate` may be served at `now`."""
    entries = fingerprint(candidate.servers)
    if not entries:
        return Refuse(trust, "empty")
    if candidate.fetched_at > now + CLOCK_SKEW:
        return Refuse(trust, "from the future")
    seen = accepted(entries, now)
    if seen.digest in trust.rejected:
        return Refuse(trust, "refused by the operator")
    baseline = trust.baseline(now, rules)
    if baseline is None:
        stored = candidate.stored
        if stored is not None and stored.window:
            source = stored.source or candidate.first_use
            return Accept(attrs.evolve(stored, source=source), "first use", None)
        return Accept(trust.restarted(seen, candidate.first_use), "first use", None)
    change = churn(baseline.entries, entries)
    if change.fraction <= rules.max_churn:
        return Accept(trust.with_accepted(seen, now, rules), "within budget", change)
    hold = trust.hold
    if hold is None or hold.digest != seen.digest:
        hold = Hold(seen.digest, since=now, until=now + rules.hold, churn=change)
        return Held(attrs.evolve(trust, hold=hold), hold, new=True)
    if now < hold.until:
        return Held(trust, hold, new=False)
    return Accept(trust.restarted(seen, "held long enough"), "held long enough", change)


def confirmed(trust: Trust) -> Trust:
    """The upstream answers that the list served is still its list (a 304): a list on
    hold was not sent alike, and its hold ends, as a list within the budget ends it."""
    return attrs.evolve(trust, hold=None)


def accept_held(trust: Trust, servers: Iterable[Server], chosen: str, now: float) -> Accept | None:
    """The operator's word for the list on hold, named by its digest: it is served at once,
    and trust begins anew from it. None when that list is not the one on hold."""
    entries = fingerprint(servers)
    if trust.hold is None or trust.hold.digest != chosen or digest(entries) != chosen:
        return None
    change = trust.hold.churn
    return Accept(trust.restarted(accepted(entries, now), "operator"), "operator", change)


def refuse_held(trust: Trust, chosen: str) -> Trust | None:
    """The operator's refusal of the list on hold: it ends, and is refused whenever sent.
    None when that list is not the one on hold."""
    if trust.hold is None or trust.hold.digest != chosen:
        return None
    rejected = (*trust.rejected, chosen)[-REJECTED_KEPT:]
    return attrs.evolve(trust, hold=None, rejected=rejected)
