"""One provider's accepted list, indexed by country, and its pages encoded once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from draco.models import Changes, Country, KeyChange, Server, countries, encode, gzipped

# Encoded answers kept per list version, at most: a client asking for pages of ever new sizes cannot fill memory.
RENDER_CACHE_SIZE, RENDER_CACHE_BYTES = 512, 4 << 20


@attrs.frozen
class Rendered:
    body: bytes
    etag: str
    gzipped: bytes | None  # None when the body is too small to be worth compressing (models.gzipped)
    size: int  # bytes held: the body and its gzipped copy


@attrs.frozen(eq=False)
class Dataset:
    provider: str
    servers: tuple[Server, ...]
    fetched_at: float
    version: str
    etag: str | None = None  # the upstream's validators, for conditional refreshes
    last_modified: str | None = None
    # Read from a snapshot and not yet confirmed by the upstream, or a union missing
    # a provider: served as stale either way.
    provisional: bool = False
    by_country: dict[str, tuple[Server, ...]] = attrs.field(factory=dict)
    countries: tuple[Country, ...] = ()
    rendered: dict[Any, Rendered] = attrs.field(factory=dict)

    def pool(self, country_code: str | None) -> Sequence[Server]:
        """The servers of one country (those listed for it), or all of them."""
        return self.by_country.get(country_code, ()) if country_code else self.servers


def make_dataset(provider: str, servers: Iterable[Server], fetched_at: float, *, etag: str | None = None,
                 last_modified: str | None = None, provisional: bool = False,
                 version: str | None = None) -> Dataset:  # fmt: skip
    """`servers`, indexed by country; `version` defaults to a digest of them."""
    servers = tuple(servers)
    by_country: dict[str, list[Server]] = {}
    for s in servers:
        if s.include_in_country:
            by_country.setdefault(s.country_code, []).append(s)
    version = version or hashlib.blake2b(encode(servers), digest_size=12).hexdigest()
    by_code = {code: tuple(group) for code, group in by_country.items()}
    return Dataset(provider, servers, fetched_at, version, etag, last_modified, provisional, by_code,
                   tuple(countries(servers)))  # fmt: skip


def render(data: Dataset, key: Any, build: Callable[[], Any]) -> Rendered:
    """The answer for `key` on this list version, encoded and compressed once, not once per request.
    The oldest answers make room for a new one; one larger than the whole budget is not kept."""
    kept = data.rendered
    found = kept.get(key)
    if found is None:
        body = encode(build())
        etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
        compressed = gzipped(body)
        found = Rendered(body, etag, compressed, len(body) + len(compressed or b""))
        if found.size <= RENDER_CACHE_BYTES:
            kept[key] = found
            held = sum(r.size for r in kept.values())
            while len(kept) > RENDER_CACHE_SIZE or held > RENDER_CACHE_BYTES:
                held -= kept.pop(next(iter(kept))).size  # the oldest first
    return found


def rekeyed(old: Dataset, new: Dataset) -> tuple[int, list[KeyChange]]:
    """How many servers of `old` are still in `new`, and those whose key changed."""
    before = {s.identifier: s.public_key for s in old.servers}
    kept = [s for s in new.servers if s.identifier in before]
    return len(kept), [KeyChange(s.identifier, before[s.identifier], s.public_key)
                       for s in kept if s.public_key != before[s.identifier]]  # fmt: skip


def changes(old: Dataset, new: Dataset) -> Changes:
    """What changed from one accepted list to the next."""
    before, after = {s.identifier for s in old.servers}, {s.identifier for s in new.servers}
    added = [s for s in new.servers if s.identifier not in before]
    removed = [s for s in old.servers if s.identifier not in after]
    return Changes(new.provider, old.fetched_at, new.fetched_at, added, removed, rekeyed(old, new)[1])
