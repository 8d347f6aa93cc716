"""The key-swap guard, alone (guard.py is pure): churn counted against the baseline of the
window, holds that wait in time, trust that begins on first use and never switches off."""

from __future__ import annotations

import base64
import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.catalog.dataset import make_dataset
from draco.catalog.guard import (
    CLOCK_SKEW,
    WINDOW_LISTS,
    Accept,
    Candidate,
    Held,
    Refuse,
    Rules,
    Trust,
    accept_held,
    churn,
    digest,
    fingerprint,
    identity,
    refuse_held,
)
from draco.catalog.guard import judge as judge_candidate
from draco.catalog.snapshot import from_snapshot, snapshot_bytes
from draco.models import Server

HOUR = 3600.0
RULES = Rules(max_churn=0.2, window=24 * HOUR, hold=6 * HOUR)


def judge(trust, servers, fetched_at, now, rules):
    return judge_candidate(trust, Candidate(servers, fetched_at), now, rules)


def key(n: int) -> str:
    return base64.b64encode(n.to_bytes(32, "big")).decode()


def servers(entries: dict[str, tuple[int, int]]) -> list[Server]:
    """Servers named by their identifier, each with key number k and address 10.0.x.y."""
    return [
        Server("ivpn", "Germany", "DE", name, key(k), ipv4=f"10.{a // 256 % 256}.0.{a % 256}")
        for name, (k, a) in entries.items()
    ]


def listing(size: int, generation: int = 0) -> dict[str, tuple[int, int]]:
    return {f"s{i}.example": (generation * 100_000 + i, i) for i in range(size)}


def test_churn_counts_removals_additions_rekeys_and_readdresses_by_identity():
    before = fingerprint(servers({"a.example": (1, 1), "b.example": (2, 2), "c.example": (3, 3)}))
    after = fingerprint(
        servers(
            {"A.example.": (1, 1), "b.example": (9, 2), "d.example": (4, 4), "c.example": (3, 7)}
        )
    )
    found = churn(before, after)
    assert (found.removed, found.added, found.rekeyed, found.readdressed) == (0, 1, 1, 1)
    assert found.fraction == 1
    assert identity("Foo.Example.") == "foo.example"


def test_the_first_list_is_trusted_on_first_use_and_says_so():
    decision = judge(Trust(), servers(listing(10)), 0.0, 0.0, RULES)
    assert isinstance(decision, Accept)
    assert decision.why == "first use"
    assert decision.trust.source == "first use"


@pytest.mark.parametrize(
    ("entries", "fetched_at", "why"),
    [({}, 0.0, "empty"), (listing(3), CLOCK_SKEW + 1, "from the future")],
)
def test_an_empty_list_or_one_from_the_future_is_refused(entries, fetched_at, why):
    decision = judge(Trust(), servers(entries), fetched_at, 0.0, RULES)
    assert isinstance(decision, Refuse)
    assert decision.why == why


def with_ipv6(found: list[Server], address: str | None) -> list[Server]:
    """The servers, each with an IPv6 entry address numbered after its IPv4 one."""
    return [
        msgspec.structs.replace(
            s, ipv6=None if address is None else f"{address}::{s.ipv4.rsplit('.', 1)[1]}"
        )
        for s in found
    ]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("2001:db8:1", "2001:db8:66"),  # every IPv6 entry swapped, IPv4 and keys kept
        (None, "2001:db8:66"),  # an IPv6 entry given to every server that had none
        ("2001:db8:1", None),  # every IPv6 entry taken away
    ],
)
def test_an_ipv6_address_swap_that_keeps_keys_and_ipv4_is_held(before, after):
    base = with_ipv6(servers(listing(100)), before)
    trust = judge(Trust(), base, 0.0, 0.0, RULES).trust
    swapped = with_ipv6(servers(listing(100)), after)
    assert churn(fingerprint(base), fingerprint(swapped)).readdressed == 100
    assert isinstance(judge(trust, swapped, 300.0, 300.0, RULES), Held)


def test_a_list_without_ipv6_keeps_the_digest_it_had_before_ipv6_was_read():
    entries = fingerprint(servers(listing(3)))
    lines = "\n".join(f"{name} {e.key} {e.address}" for name, e in sorted(entries.items()))
    assert digest(entries) == hashlib.blake2b(lines.encode(), digest_size=12).hexdigest()


def test_a_snapshot_keeps_the_ipv6_addresses_of_the_baseline():
    base = with_ipv6(servers(listing(100)), "2001:db8:1")
    moved = {**listing(100), "s0.example": (0, 200)}  # one server readdressed: within budget
    served = with_ipv6(servers(moved), "2001:db8:1")
    trust = judge(Trust(), base, 0.0, 0.0, RULES).trust
    trust = judge(trust, served, 300.0, 300.0, RULES).trust
    content = snapshot_bytes(make_dataset("ivpn", served, 300.0), trust)
    restored = from_snapshot(content, "ivpn").trust
    assert restored.window[0].entries == fingerprint(base)
    assert restored.window[0].entries["s5.example"].ipv6 == "2001:db8:1::5"


def accept_all(*lists, start=0.0, step=300.0) -> tuple[Trust, list]:
    trust, decisions, now = Trust(), [], start
    for entries in lists:
        decision = judge(trust, servers(entries), now, now, RULES)
        trust = decision.trust
        decisions.append(decision)
        now += step
    return trust, decisions


def test_a_held_list_waits_in_time_however_often_it_is_sent():
    base = listing(100)
    swapped = listing(100, generation=1)
    trust, _ = accept_all(base)
    now = 0.0
    for second in range(1, 200):  # sent every second
        now = float(second)
        decision = judge(trust, servers(swapped), now, now, RULES)
        trust = decision.trust
        assert isinstance(decision, Held)
        assert decision.new == (second == 1)
    assert decision.hold.until == 1.0 + RULES.hold
    late = judge(trust, servers(swapped), RULES.hold, RULES.hold, RULES)
    assert isinstance(late, Held)  # a second short
    due = judge(trust, servers(swapped), RULES.hold + 1, RULES.hold + 1, RULES)
    assert isinstance(due, Accept)
    assert due.why == "held long enough"
    assert due.trust.window[-1].digest == due.trust.baseline(RULES.hold + 1, RULES).digest


def test_another_list_restarts_the_hold_and_one_within_budget_ends_it():
    base = listing(100)
    trust, _ = accept_all(base)
    one, other = listing(100, 1), listing(100, 2)
    trust = judge(trust, servers(one), 1.0, 1.0, RULES).trust
    restarted = judge(trust, servers(other), 2.0, 2.0, RULES)
    assert isinstance(restarted, Held)
    assert restarted.new
    assert restarted.hold.since == 2.0
    ended = judge(restarted.trust, servers(base), 3.0, 3.0, RULES)
    assert isinstance(ended, Accept)
    assert ended.trust.hold is None
    again = judge(ended.trust, servers(one), RULES.hold + 2, RULES.hold + 2, RULES)
    assert isinstance(again, Held)  # counted from its new first sending
    assert again.new


def test_the_operator_accepts_the_held_list_at_once_or_refuses_it_for_good():
    trust, _ = accept_all(listing(50))
    swapped = servers(listing(50, 1))
    held = judge(trust, swapped, 10.0, 10.0, RULES)
    assert isinstance(held, Held)
    assert accept_held(held.trust, swapped, "not-that-one", 11.0) is None
    accepted = accept_held(held.trust, swapped, held.hold.digest, 11.0)
    assert isinstance(accepted, Accept)
    assert accepted.trust.source == "operator"
    refused = refuse_held(held.trust, held.hold.digest)
    assert refused is not None
    assert refused.hold is None
    later = judge(refused, swapped, 2 * RULES.hold, 2 * RULES.hold, RULES)
    assert isinstance(later, Refuse)
    assert later.why == "refused by the operator"


def test_age_never_switches_the_guard_off():
    trust, _ = accept_all(listing(100))
    a_month = 30 * 24 * HOUR
    decision = judge(trust, servers(listing(100, 1)), a_month, a_month, RULES)
    assert isinstance(decision, Held)


# --- the budget over a window: a model, and hypothesis ------------------------------------


def model(history: list[tuple[float, dict]], candidate: dict, now: float) -> bool:
    """Brute force: accepted iff the candidate's churn against the list served when the
    window began (the latest accepted at or before it, else the first) is within budget."""
    before = [entries for at, entries in history if at <= now - RULES.window]
    baseline = before[-1] if before else history[0][1]
    return churn(fingerprint(servers(baseline)), fingerprint(servers(candidate))).fraction <= 0.2


@st.composite
def walks(draw):
    """A first list, then steps: some time later, a list with some servers removed, added,
    rekeyed or readdressed, drawn from the list served."""
    size = draw(st.integers(5, 40))
    first = listing(size)
    steps = []
    for n in range(draw(st.integers(1, 12))):
        wait = draw(st.sampled_from([60.0, 3600.0, 6 * HOUR, 23 * HOUR, 25 * HOUR]))
        kinds = draw(st.lists(st.sampled_from(["remove", "add", "rekey", "readdress"]), max_size=6))
        picks = draw(st.lists(st.integers(0, 10_000), min_size=len(kinds), max_size=len(kinds)))
        steps.append((wait, list(zip(kinds, picks, strict=True)), n))
    return first, steps


def apply(entries: dict, changes: list, salt: int) -> dict:
    changed = dict(entries)
    for kind, pick in changes:
        names = sorted(changed)
        if not names:
            break
        name = names[pick % len(names)]
        k, a = changed[name]
        if kind == "remove" and len(changed) > 1:
            del changed[name]
        elif kind == "add":
            changed[f"n{salt}-{pick}.example"] = (900_000 + pick, 5000 + pick)
        elif kind == "rekey":
            changed[name] = (k + 1_000_000 * (salt + 1), a)
        elif kind == "readdress":
            changed[name] = (k, a + 10_000 * (salt + 1))
    return changed


@settings(max_examples=300, deadline=None)
@given(walks())
def test_a_walk_is_accepted_while_its_churn_in_the_window_stays_in_budget_and_held_past_it(walk):
    first, steps = walk
    trust = judge(Trust(), servers(first), 0.0, 0.0, RULES).trust
    history, served, now = [(0.0, first)], first, 0.0
    for wait, changes, salt in steps:
        now += wait
        candidate = apply(served, changes, salt)
        decision = judge(trust, servers(candidate), now, now, RULES)
        expected = model(history, candidate, now)
        assert isinstance(decision, Accept) == expected, (history, candidate, now)
        if not expected:
            assert isinstance(decision, Held)
            continue  # the next step starts again from what is served
        trust = decision.trust
        if fingerprint(servers(candidate)) != fingerprint(servers(served)):
            history.append((now, candidate))
        served = candidate


def test_the_window_keeps_at_most_its_lists_and_its_baseline():
    trust = Trust()
    for n in range(40):
        entries = {f"s{i}.example": (i + (1 if i == n % 5 else 0) * n, i) for i in range(50)}
        decision = judge(trust, servers(entries), n * 60.0, n * 60.0, RULES)
        trust = decision.trust
    assert len(trust.window) <= WINDOW_LISTS
    assert trust.window[0].at == 0.0  # the baseline: nothing in it is a day old yet
