"""Request parameters, each declared once: its name, its type with bounds and
description (msgspec.Meta), and its default. Routes get their values from `read`;
the OpenAPI document describes them from the same declarations."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import attrs
import msgspec
from msgspec import Meta

from draco.models import CountryCode, Detail, Server
from draco.providers import Provider
from draco.web.errors import RequestValidationError


@attrs.frozen(eq=False)  # compared and hashed by identity: each is declared once
class Param:
    name: str
    type: Any  # a type msgspec converts to, its bounds and description in Annotated[..., Meta(...)]
    default: Any = None
    where: Literal["query", "path"] = "query"

    def document(self) -> dict[str, Any]:
        """This parameter as an OpenAPI Parameter Object."""
        schema = msgspec.json.schema(self.type)
        description = schema.pop("description", "")
        if self.default is not None:
            schema["default"] = self.default
        return {"name": self.name, "in": self.where, "required": self.where == "path", "description": description,
                "schema": schema}  # fmt: skip


def integer(lo: int, hi: int, description: str) -> Any:
    return Annotated[int, Meta(ge=lo, le=hi, description=description)]


def choice(options: tuple[str, ...], description: str) -> Any:
    return Annotated[Literal[options], Meta(description=description)]


COUNTRY = Param("country_code", CountryCode)
CODES = Meta(pattern="^([A-Z]{2}([-,][A-Z]{2})*)?$", description="country codes to leave out, like BR-US")
EXCLUDE = Param("exclude", Annotated[str, CODES], "")
PAGE = Param("page", integer(1, 1_000_000, "page number, from 1"), 1)
TOP_LIMIT = Param("limit", integer(1, 50, "how many"), 10)


def text(longest: int, description: str) -> Any:
    return Annotated[str, Meta(min_length=1, max_length=longest, description=description)]


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
    Filter(Param("city", text(100, "the city, compared case-insensitively")), "city",
           lambda s, city: (s.city or "").casefold() == city.casefold()),
    Filter(Param("identifier", text(253, "exactly this server")), None, lambda s, name: s.identifier == name.lower()),
    Filter(Param("identifier_prefix", text(253, "servers whose identifier starts so")), None,
           lambda s, prefix: s.identifier.startswith(prefix.lower())),
    Filter(Param("max_load", integer(0, 100, "load at most this; servers of unknown load are left out")), "load",
           lambda s, most: s.load is not None and s.load <= most),
    Filter(Param("p2p", Annotated[bool, Meta(description="peer-to-peer allowed")]), "p2p", lambda s, v: s.p2p is v),
    Filter(Param("owned", Annotated[bool, Meta(description="the provider's own hardware")]), "owned",
           lambda s, v: s.owned is v),
    Filter(Param("free", Annotated[bool, Meta(description="open to free accounts")]), "free",
           lambda s, v: s.free is v),
)  # fmt: skip
FILTER_PARAMS = tuple(f.param for f in FILTERS)
FILTER_OF = {f.param.name: f for f in FILTERS}


# The `type` of a detail, in the words of the original service (pydantic's), by what msgspec said.
_KINDS = {"<=": "less_than_equal", ">=": "greater_than_equal", "regex": "string_pattern_mismatch", "enum": "enum",
          "`int`": "int_parsing", "`bool`": "bool_parsing"}  # fmt: skip


def read(params: tuple[Param, ...], query_string: bytes, path: Mapping[str, str]) -> dict[str, Any]:
    """Every declared parameter's value (its default when absent), or one 422 that
    lists every problem: a value of the wrong type or out of bounds, an unknown name."""
    query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    known = {p.name for p in params if p.where == "query"}
    details = [Detail(["query", name], "Unknown parameter", "extra_forbidden") for name in query if name not in known]
    values = {}
    for param in params:
        raw = (path if param.where == "path" else query).get(param.name)
        try:
            value = param.default if raw is None else msgspec.convert(raw, param.type, strict=False)
            # Numbers and booleans only as JSON writes them: msgspec would also read "1.0" and "1e2"
            # as the integer, and "1" and "True" as true, which the document does not declare.
            if raw is not None and not isinstance(value, str) and msgspec.json.encode(value) != raw.encode():
                raise msgspec.ValidationError(f"Expected `{type(value).__name__}`, got `str`")
            values[param.name] = value
        except msgspec.ValidationError as exc:
            kind = next((kind for mark, kind in _KINDS.items() if mark in str(exc)), "value_error")
            details.append(Detail([param.where, param.name], str(exc), kind))
    if details:
        raise RequestValidationError(details)
    return values
