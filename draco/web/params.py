"""Request parameters, each declared once: its name, the values it accepts (with bounds
and description), and its default. Routes get their values from `read`; the OpenAPI
document describes them from the same declarations.

Numbers and booleans are accepted only as JSON writes them: `page=1`, `p2p=true`; never
`1.0`, `1e2`, `01`, `1` or `True`, which the document does not declare. A refused value
raises `InvalidValue`, whose `kind` is the original service's (pydantic's) word for it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl

import attrs

from draco.models import COUNTRY_CODE, COUNTRY_CODE_MEANS, Detail, Server
from draco.providers import Provider
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
            raise InvalidValueError("enum", f"InvalidValue enum value {raw!r}")
        return raw

    def schema(self) -> dict[str, Any]:
        return {"enum": sorted(self.options)}


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
        return {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "description": self.accepts.description,
            "schema": schema,
        }


COUNTRY = Param("country_code", Pattern(COUNTRY_CODE, COUNTRY_CODE_MEANS))
EXCLUDE = Param(
    "exclude",
    Pattern("^([A-Z]{2}([-,][A-Z]{2})*)?$", "country codes to leave out, like BR-US"),
    default="",
)
PAGE = Param("page", Integer(1, 1_000_000, "page number, from 1"), default=1)
TOP_LIMIT = Param("limit", Integer(1, 50, "how many"), default=10)


@attrs.frozen
class Filter:
    """A filter: its parameter, the Server field a provider must report for it to be
    answered (None: every provider can), and which servers it keeps."""

    param: Param
    needs: str | None
    keep: Callable[[Server, Any], bool]

    def answered_by(self, provider: Provider | None) -> bool:
        """Whether `provider`'s list says what this filter needs (None: every list, as `all`)."""
        return self.needs is None or provider is None or self.needs in provider.reports


FILTERS = (
    Filter(
        Param("city", Text(100, "the city, compared case-insensitively")),
        needs="city",
        keep=lambda s, city: (s.city or "").casefold() == city.casefold(),
    ),
    Filter(
        Param("identifier", Text(253, "exactly this server")),
        needs=None,
        keep=lambda s, name: s.identifier == name.lower(),
    ),
    Filter(
        Param("identifier_prefix", Text(253, "servers whose identifier starts so")),
        needs=None,
        keep=lambda s, prefix: s.identifier.startswith(prefix.lower()),
    ),
    Filter(
        Param(
            "max_load", Integer(0, 100, "load at most this; servers of unknown load are left out")
        ),
        needs="load",
        keep=lambda s, most: s.load is not None and s.load <= most,
    ),
    Filter(
        Param("p2p", Boolean("peer-to-peer allowed")),
        needs="p2p",
        keep=lambda s, wanted: s.p2p is wanted,
    ),
    Filter(
        Param("owned", Boolean("the provider's own hardware")),
        needs="owned",
        keep=lambda s, wanted: s.owned is wanted,
    ),
    Filter(
        Param("free", Boolean("open to free accounts")),
        needs="free",
        keep=lambda s, wanted: s.free is wanted,
    ),
)
FILTER_PARAMS = tuple(f.param for f in FILTERS)
FILTER_OF = {f.param.name: f for f in FILTERS}


def read(params: tuple[Param, ...], query_string: bytes, path: Mapping[str, str]) -> dict[str, Any]:
    """Every declared parameter's value (its default when absent), or one 422 that
    lists every problem: a value of the wrong type or out of bounds, an unknown name."""
    query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    known = {p.name for p in params if p.where == "query"}
    problems = [
        Detail(["query", name], "Unknown parameter", "extra_forbidden")
        for name in query
        if name not in known
    ]
    values = {}
    for param in params:
        raw = (path if param.where == "path" else query).get(param.name)
        try:
            values[param.name] = param.default if raw is None else param.accepts.parse(raw)
        except InvalidValueError as exc:
            problems.append(Detail([param.where, param.name], exc.message, exc.kind))
    if problems:
        raise RequestValidationError(problems)
    return values
