"""The one schema every provider is normalised into, and the one JSON encoder."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import cattrs
import msgspec
from cattrs.gen import make_dict_unstructure_fn, override


@attrs.frozen
class Server:
    # The first seven fields, in this order, are the original service's schema.
    provider: str
    country: str
    country_code: str
    identifier: str
    public_key: str
    load: int | None = None
    latency: float | None = None
    city: str | None = None
    ipv4: str | None = None
    # Mullvad marks some relays as not to be picked for their country; the flag
    # is kept out of responses.
    _in_country: bool = attrs.field(default=True, alias="in_country")


@attrs.frozen
class Country:
    code: str
    name: str
    display: str


@attrs.frozen
class Page:
    total: int
    page: int
    page_size: int
    total_pages: int
    data: Sequence[Server]


_converter = cattrs.Converter()
_converter.register_unstructure_hook(
    Server, make_dict_unstructure_fn(Server, _converter, _in_country=override(omit=True))
)
_encoder = msgspec.json.Encoder()


def encode(value) -> bytes:
    """The one JSON encoder: attrs models keep their field order (msgspec alone sorts them)."""
    return _encoder.encode(_converter.unstructure(value))


def countries(servers: Sequence[Server]) -> list[Country]:
    """Distinct countries sorted by code; the most common spelling of a name wins."""
    names: dict[str, dict[str, int]] = {}
    for s in servers:
        spellings = names.setdefault(s.country_code, {})
        spellings[s.country] = spellings.get(s.country, 0) + 1
    result = []
    for code in sorted(names):
        name = max(names[code], key=names[code].__getitem__)
        result.append(Country(code, name, f"{code} - {name}"))
    return result


def paginate(items: Sequence[Server], page: int, page_size: int) -> Page:
    total = len(items)
    start = (page - 1) * page_size
    return Page(total, page, page_size, -(-total // page_size), items[start : start + page_size])
