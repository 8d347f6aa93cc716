"""One provider's accepted list, indexed by country and identifier, and its answers
encoded once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from draco.models import Country, Server, countries, encode, gzipped

# Encoded answers kept per list version, at most: a client asking for pages of ever new
# sizes cannot fill memory.
RENDER_CACHE_SIZE = 512
RENDER_CACHE_BYTES = 4 << 20


def entity_tag(version: str, digest: str, *, compressed: bool) -> str:
    """The one spelling of an ETag: the list's version and the body's digest; the gzipped
    body is another representation, another tag."""
    return f'"{version}.{digest}-gzip"' if compressed else f'"{version}.{digest}"'


@attrs.frozen
class Rendered:
    body: bytes
    digest: str  # of the body: with the list's version, its ETag
    gzipped: bytes | None  # None when the body is too small to be worth compressing
    empty: bool  # the answer is an empty list

    @property
    def size(self) -> int:
        """Bytes held: the body and its gzipped copy."""
        return len(self.body) + len(self.gzipped or b"")


@attrs.frozen
class Validators:
    """What the upstream said identifies its answer, sent back on the next refresh."""

    etag: str | None = None
    last_modified: str | None = None


NO_VALIDATORS = Validators()


@attrs.frozen(eq=False)
class Dataset:
    provider: str
    servers: tuple[Server, ...]
    fetched_at: float
    digest: str  # of the whole list: the same bytes, the same digest
    version: str = ""  # of its entries, once accepted (history.py): what clients are told
    validators: Validators = NO_VALIDATORS
    # Read from a snapshot and not yet confirmed by the upstream, or a union missing
    # a provider: served as stale either way.
    provisional: bool = False
    by_country: dict[str, tuple[Server, ...]] = attrs.field(factory=dict)
    by_identifier: dict[str, Server] = attrs.field(factory=dict)
    countries: tuple[Country, ...] = ()
    rendered: dict[Any, Rendered] = attrs.field(factory=dict)

    def pool(self, country_code: str | None) -> Sequence[Server]:
        """The servers of one country (those listed for it), or all of them."""
        return self.by_country.get(country_code, ()) if country_code else self.servers


def make_dataset(
    provider: str,
    servers: Iterable[Server],
    fetched_at: float,
    *,
    validators: Validators = NO_VALIDATORS,
    provisional: bool = False,
    version: str = "",
) -> Dataset:
    """`servers`, indexed, and a digest of them."""
    servers = tuple(servers)
    by_country: dict[str, list[Server]] = {}
    for s in servers:
        if s.include_in_country:
            by_country.setdefault(s.country_code, []).append(s)
    return Dataset(
        provider=provider,
        servers=servers,
        fetched_at=fetched_at,
        digest=hashlib.blake2b(encode(servers), digest_size=12).hexdigest(),
        version=version,
        validators=validators,
        provisional=provisional,
        by_country={code: tuple(group) for code, group in by_country.items()},
        by_identifier={s.identifier: s for s in servers},
        countries=tuple(countries(servers)),
    )


def render(data: Dataset, key: Any, build: Callable[[], Any]) -> Rendered:
    """The answer for `key` on this list version, encoded and compressed once, not once per
    request. The oldest answers make room for a new one; one larger than the whole budget
    is not kept."""
    kept = data.rendered
    found = kept.get(key)
    if found is None:
        answer = build()
        body = encode(answer)
        digest = hashlib.blake2b(body, digest_size=16).hexdigest()
        empty = isinstance(answer, Sequence) and not answer
        found = Rendered(body=body, digest=digest, gzipped=gzipped(body), empty=empty)
        if found.size <= RENDER_CACHE_BYTES:
            kept[key] = found
            held = sum(r.size for r in kept.values())
            while len(kept) > RENDER_CACHE_SIZE or held > RENDER_CACHE_BYTES:
                held -= kept.pop(next(iter(kept))).size  # the oldest first
    return found
