"""The key ring accepts exactly the configured keys, whatever is presented."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from draco.security.keys import KeyRing, fingerprint

keys = st.lists(st.text(min_size=32, max_size=80), min_size=1, max_size=5)


@given(configured=keys, presented=st.one_of(st.text(), st.binary()))
def test_accepts_exactly_the_configured_keys(configured, presented):
    ring = KeyRing(configured)
    raw = presented.encode() if isinstance(presented, str) else presented
    assert ring.verify(raw) == (raw in {k.encode() for k in configured})


@given(configured=keys, data=st.data())
def test_every_configured_key_is_accepted(configured, data):
    key = data.draw(st.sampled_from(configured))
    assert KeyRing(configured).verify(key.encode())


@given(configured=keys)
def test_a_near_miss_is_refused(configured):
    ring = KeyRing(configured)
    for key in configured:
        for near in (key[:-1], key + "x", key.upper() if key.upper() != key else key.lower() + "!"):
            assert ring.verify(near.encode()) == (near in configured)


def test_only_digests_are_held():
    ring = KeyRing(["a" * 40])
    assert ring._digests == (hashlib.sha256(b"a" * 40).digest(),)
    assert "a" * 40 not in repr(vars(ring))


def test_replace_swaps_the_whole_ring():
    ring = KeyRing(["a" * 40])
    ring.replace(["b" * 40])
    assert not ring.verify(b"a" * 40)
    assert ring.verify(b"b" * 40)


def test_a_fingerprint_is_the_first_8_hex_of_the_digest():
    assert fingerprint("a" * 40) == hashlib.sha256(b"a" * 40).hexdigest()[:8]


@given(configured=keys, presented=st.binary(max_size=64), data=st.data())
def test_every_check_compares_against_every_key(configured, presented, data):
    calls = []
    original = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return original(a, b)

    ring = KeyRing(configured)
    hmac.compare_digest = counting
    try:
        if data.draw(st.booleans()):
            presented = data.draw(
                st.sampled_from(configured)
            ).encode()  # a match must not stop the loop
        ring.verify(presented)
    finally:
        hmac.compare_digest = original
    assert len(calls) == len(configured)
