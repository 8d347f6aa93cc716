"""Request parameters, each declared once: its name, the values it accepts (with bounds
and description), and its default. Routes get their values from `read`; the OpenAPI
document describes them from the same declarations.

Numbers and booleans are accepted only as JSON writes them: `page=1`, `p2p=true`; never
`1.0`, `1e2`, `01`, `1` or `True`, which the document does not declare. A list is
comma-separated (OpenAPI's form style, not exploded): `features=p2p,owned`. A refused value
raises `InvalidValue`, whose `kind` is the original service's (pydantic's) word for it.

A filter names the Server fields it needs a provider's list to report; a value a list
cannot answer is a 422 naming the providers that can (routes.py), and the document
offers each provider only what its list answers (`Filter.offered`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, NamedTuple, Protocol
from urllib.parse import parse_qsl

import attrs

from draco.models import COUNTRY_CODE, COUNTRY_CODE_MEANS, Detail, Server
from draco.providers import Provider
from draco.providers.base import LAST_PORT
from draco.web.errors import RequestValidationError

_INTEGER = re.compile(r"-?[0-9]+")


class InvalidValueError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class Accepts(Protocol):
    """What a parameter accepts: how its text is read, and how the document describes it."""

    @property
    def description(self) -> str: ...

    def parse(self, raw: str) -> Any: ...

    def schema(self) -> dict[str, Any]: ...


@attrs.frozen
class Integer:
    lo: int
    hi: int
    description: str

    def parse(self, raw: str) -> int:
        try:  # int() refuses over 4300 digits
            value = int(raw) if _INTEGER.fullmatch(raw) else None
        except ValueError:
            value = None
        if value is None or str(value) != raw:
            raise InvalidValueError("int_parsing", "Expected `int`, got `str`")
        if value < self.lo:
            raise InvalidValueError("greater_than_equal", f"Expected `int` >= {self.lo}")
        if value > self.hi:
            raise InvalidValueError("less_than_equal", f"Expected `int` <= {self.hi}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}


@attrs.frozen
class Boolean:
    description: str

    def parse(self, raw: str) -> bool:
        if raw not in ("true", "false"):
            raise InvalidValueError("bool_parsing", "Expected `bool`, got `str`")
        return raw == "true"

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@attrs.frozen
class Choice:
    options: tuple[str, ...]
    description: str

    def parse(self, raw: str) -> str:
        if raw not in self.options:
            expected = ", ".join(self.options)
            raise InvalidValueError("enum", f"Expected one of {expected}; got {raw[:100]!r}")
        return raw

    def schema(self) -> dict[str, Any]:
        return {"enum": sorted(self.options)}

    def only(self, options: Collection[str]) -> Choice:
        return attrs.evolve(self, options=tuple(o for o in self.options if o in options))


@attrs.frozen
class Text:
    longest: int
    description: str

    def parse(self, raw: str) -> str:
        if not raw:
            raise InvalidValueError("string_too_short", "Expected `str` of length >= 1")
        if len(raw) > self.longest:
            raise InvalidValueError(
                "string_too_long", f"Expected `str` of length <= {self.longest}"
            )
        return raw

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": self.longest, "minLength": 1}


@attrs.frozen
class Pattern:
    pattern: str
    description: str

    def parse(self, raw: str) -> str:
        if not re.fullmatch(self.pattern, raw):
            raise InvalidValueError(
                "string_pattern_mismatch", f"Expected `str` matching regex {self.pattern!r}"
            )
        return raw

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern}


@attrs.frozen
class ServerName:
    """An identifier, as a list of them spells it; never the country codes (`BR-US`) that
    the original service's `exclude` took, which would otherwise be quietly ignored."""

    description: str

    def parse(self, raw: str) -> str:
        Text(253, self.description).parse(raw)
        if re.fullmatch(r"[A-Z]{2}(-[A-Z]{2})*", raw):
            message = f"{raw} is country codes: leave countries out with exclude_country=BR,US"
            raise InvalidValueError("value_error", message)
        return raw

    def schema(self) -> dict[str, Any]:
        named = {"pattern": "^[^,]+$", "not": {"pattern": "^[A-Z]{2}(-[A-Z]{2})*$"}}
        return Text(253, self.description).schema() | named


@attrs.frozen
class Listed:
    """Comma-separated values, each accepted by `item`: at most `most` of them, as a set."""

    item: Choice | Pattern | ServerName
    most: int
    description: str
    casefold: bool = False  # identifiers: compared as base.identifier() writes them

    def parse(self, raw: str) -> frozenset[str]:
        items = raw.split(",")
        if len(items) > self.most:
            raise InvalidValueError("too_long", f"Expected at most {self.most} items")
        try:
            values = frozenset(self.item.parse(item) for item in items)
        except InvalidValueError as exc:
            raise InvalidValueError(exc.kind, f"An item: {exc.message}") from None
        return frozenset(v.lower() for v in values) if self.casefold else values

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.schema(), "minItems": 1, "maxItems": self.most}

    def only(self, options: Collection[str]) -> Listed:
        if not isinstance(self.item, Choice):
            return self
        return attrs.evolve(self, item=self.item.only(options))


class Point(NamedTuple):
    latitude: float
    longitude: float


_DECIMALS = r"(\.[0-9]{1,12})?"
LATITUDE_PATTERN = rf"-?(90(\.0{{1,12}})?|[1-8]?[0-9]{_DECIMALS})"
LONGITUDE_PATTERN = rf"-?(180(\.0{{1,12}})?|(1[0-7][0-9]|[1-9]?[0-9]){_DECIMALS})"


@attrs.frozen
class Coordinates:
    """LAT,LON in decimal degrees: the pattern itself bounds them (-90..90, -180..180)."""

    description: str
    pattern: str = f"^{LATITUDE_PATTERN},{LONGITUDE_PATTERN}$"

    def parse(self, raw: str) -> Point:
        Pattern(self.pattern, self.description).parse(raw)
        latitude, longitude = raw.split(",")
        return Point(float(latitude), float(longitude))

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern}


def spelled(ranges: tuple[tuple[int, int], ...]) -> str:
    """Port ranges as a person writes them: `53, 4000-33433`."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@attrs.frozen
class PortIn:
    """A UDP port that `provider`'s WireGuard servers listen on."""

    provider: Provider
    description: str

    def parse(self, raw: str) -> int:
        port = Integer(1, LAST_PORT, self.description).parse(raw)
        if not self.provider.listens_on(port):
            ports = spelled(self.provider.wireguard_ports)
            raise InvalidValueError("port", f"Expected a port in {ports}")
        return port

    def schema(self) -> dict[str, Any]:
        spans = [{"minimum": a, "maximum": b} for a, b in self.provider.wireguard_ports]
        if len(spans) == 1:
            return {"type": "integer", **spans[0]}
        return {"type": "integer", "anyOf": spans}


@attrs.frozen(eq=False)  # compared and hashed by identity: each is declared once
class Param:
    name: str
    accepts: Accepts
    default: Any = None
    where: Literal["query", "path"] = "query"

    def document(self) -> dict[str, Any]:
        """This parameter as an OpenAPI Parameter Object."""
        schema = self.accepts.schema()
        if self.default is not None:
            schema["default"] = self.default
        document = {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "description": self.accepts.description,
            "schema": schema,
        }
        if schema.get("type") == "array":
            document |= {"style": "form", "explode": False}
        return document


COUNTRY = Param("country_code", Pattern(COUNTRY_CODE, COUNTRY_CODE_MEANS))
PAGE = Param("page", Integer(1, 1_000_000, "page number, from 1"), default=1)
TOP_LIMIT = Param("limit", Integer(1, 50, "how many"), default=10)


@attrs.frozen
class Feature:
    """A word of `features=`: the Server field it reads, and the servers it keeps."""

    field: str
    keep: Callable[[Server], bool]
    means: str


# Each word, with the payload field it comes from in the README's table.
FEATURES = {
    "p2p": Feature("p2p", lambda s: s.p2p is True, "peer-to-peer traffic allowed"),
    "owned": Feature("owned", lambda s: s.owned is True, "hardware the provider owns"),
    "daita": Feature("daita", lambda s: s.daita is True, "DAITA, against traffic analysis"),
    "quic": Feature("quic", lambda s: s.quic is True, "WireGuard over QUIC offered"),
    "premium": Feature("free", lambda s: s.free is False, "for paying accounts only"),
    "virtual": Feature("virtual", lambda s: s.virtual is True, "a virtual location"),
    "multihop": Feature(
        "multihop_port", lambda s: s.multihop_port is not None, "can be a chain's exit"
    ),
}
FAMILIES = {"ipv4": "ipv4", "ipv6": "ipv6"}  # each family, and the field holding its address
MOST_EXCLUDED = 50


@attrs.frozen
class Filter:
    """A filter: its parameter, which servers it keeps, and the Server fields a provider
    must report for it to be answered: `needs` for any value, and for a filter over
    words, the field each word needs."""

    param: Param
    keep: Callable[[Server, Any], bool]
    needs: tuple[str, ...] = ()
    words: Mapping[str, str] = attrs.field(factory=dict)

    def missing(self, provider: Provider | None, value: Any) -> list[str]:
        """The fields `value` needs that `provider`'s list does not report (None: `all`,
        whose union answers whatever any list does)."""
        if provider is None:
            return []
        asked = value if isinstance(value, frozenset) else {value}
        fields = [*self.needs, *(self.words[word] for word in sorted(asked) if word in self.words)]
        return [field for field in fields if field not in provider.reports]

    def offered(self, provider: Provider | None) -> Param | None:
        """This filter's parameter as `provider`'s list answers it: with only the words
        it answers; None when it answers none."""
        if provider is None:
            return self.param
        if any(field not in provider.reports for field in self.needs):
            return None
        if not self.words:
            return self.param
        words = [word for word, field in self.words.items() if field in provider.reports]
        if not words:
            return None
        accepts = self.param.accepts
        assert isinstance(accepts, Choice | Listed)  # noqa: S101 - a filter over words is either
        return attrs.evolve(self.param, accepts=accepts.only(words))


def _features(server: Server, words: frozenset[str]) -> bool:
    return all(FEATURES[word].keep(server) for word in words)


def _family(server: Server, family: str) -> bool:
    return getattr(server, FAMILIES[family]) is not None


FEATURES_PARAM = Param(
    "features",
    Listed(Choice(tuple(FEATURES), "a feature"), len(FEATURES), "servers with every one of these"),
)
FAMILY = Param("family", Choice(tuple(FAMILIES), "servers with an entry address of this family"))
NEAR = Param(
    "near",
    Coordinates("LAT,LON: nearest first, each with its distance in km"),
)
FILTERS = (
    Filter(
        Param("city", Text(100, "the city, compared case-insensitively")),
        needs=("city",),
        keep=lambda s, city: (s.city or "").casefold() == city.casefold(),
    ),
    Filter(
        Param("identifier", Text(253, "exactly this server")),
        keep=lambda s, name: s.identifier == name.lower(),
    ),
    Filter(
        Param("identifier_prefix", Text(253, "servers whose identifier starts so")),
        keep=lambda s, prefix: s.identifier.startswith(prefix.lower()),
    ),
    Filter(
        Param(
            "max_load", Integer(0, 100, "load at most this; servers of unknown load are left out")
        ),
        needs=("load",),
        keep=lambda s, most: s.load is not None and s.load <= most,
    ),
    Filter(
        Param("p2p", Boolean("peer-to-peer allowed")),
        needs=("p2p",),
        keep=lambda s, wanted: s.p2p is wanted,
    ),
    Filter(
        Param("owned", Boolean("the provider's own hardware")),
        needs=("owned",),
        keep=lambda s, wanted: s.owned is wanted,
    ),
    Filter(
        Param("free", Boolean("open to free accounts")),
        needs=("free",),
        keep=lambda s, wanted: s.free is wanted,
    ),
    Filter(
        FEATURES_PARAM,
        keep=_features,
        words={word: feature.field for word, feature in FEATURES.items()},
    ),
    Filter(
        Param(
            "exclude",
            Listed(
                ServerName("an identifier"), MOST_EXCLUDED, "servers to leave out", casefold=True
            ),
        ),
        keep=lambda s, names: s.identifier not in names,
    ),
    Filter(
        Param(
            "exclude_country",
            Listed(
                Pattern(COUNTRY_CODE, COUNTRY_CODE_MEANS), MOST_EXCLUDED, "countries to leave out"
            ),
        ),
        keep=lambda s, codes: s.country_code not in codes,
    ),
    Filter(FAMILY, keep=_family, words=FAMILIES),
    Filter(
        NEAR,
        needs=("latitude", "longitude"),
        keep=lambda s, _point: s.latitude is not None,
    ),
)
FILTER_PARAMS = tuple(f.param for f in FILTERS)
FILTER_OF = {f.param.name: f for f in FILTERS}
ALWAYS = "identifier"  # the field every answer carries, whatever `fields=` asks
FIELDS = Param(
    "fields",
    Listed(
        Choice(Server.__struct_fields__, "a Server field"),
        len(Server.__struct_fields__),
        f"only these fields of each server ({ALWAYS} always)",
    ),
)


def _by_name(params: tuple[Param, ...], where: str) -> dict[str, Param]:
    return {p.name: p for p in params if p.where == where}


def _derived(make: Callable[[Any], Any]) -> Any:
    """A field computed once, from the others, when the record is made."""
    return attrs.field(init=False, default=attrs.Factory(make, takes_self=True))


@attrs.frozen
class Reader:
    """An endpoint's parameters, ready to be read from a request: a request pays for the
    parameters it names, not for every one declared."""

    params: tuple[Param, ...]
    query: Mapping[str, Param] = _derived(lambda self: _by_name(self.params, "query"))
    path: Mapping[str, Param] = _derived(lambda self: _by_name(self.params, "path"))
    defaults: Mapping[str, Any] = _derived(lambda self: {p.name: p.default for p in self.params})
    # where each is declared: the order its problems are told in
    rank: Mapping[str, int] = _derived(lambda self: {p.name: i for i, p in enumerate(self.params)})

    def read(self, query_string: bytes, path: Mapping[str, str]) -> dict[str, Any]:
        """Every declared parameter's value (its default when absent), or one 422 that
        lists every problem: an unknown name (in the query's order), then a value of the
        wrong type or out of bounds (in the declared order)."""
        query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
        values = dict(self.defaults)
        unknown = []
        invalid = []
        given = [(self.query.get(name), raw, name) for name, raw in query.items()]
        given += [(self.path[name], raw, name) for name, raw in path.items() if name in self.path]
        for param, raw, name in given:
            if param is None:
                unknown.append(Detail(["query", name], "Unknown parameter", "extra_forbidden"))
                continue
            try:
                values[name] = param.accepts.parse(raw)
            except InvalidValueError as exc:
                detail = Detail([param.where, name], exc.message, exc.kind)
                invalid.append((self.rank[name], detail))
        if unknown or invalid:
            raise RequestValidationError(unknown + [detail for _, detail in sorted(invalid)])
        return values
