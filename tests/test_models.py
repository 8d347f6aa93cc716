"""The schema and the one place that builds pages."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from draco.models import Server, countries, encode, paginate


def server(i: int, code: str = "DE", name: str = "Germany") -> Server:
    return Server("nordvpn", name, code, f"h{i}.example", "k" * 43 + "=", i % 101)


@given(total=st.integers(0, 300), page_size=st.integers(1, 400))
def test_paging_any_list_with_any_page_size_yields_every_server_exactly_once(total, page_size):
    servers = [server(i) for i in range(total)]
    first = paginate(servers, 1, page_size)
    seen = [
        s
        for page in range(1, first.total_pages + 2)
        for s in paginate(servers, page, page_size).data
    ]
    assert seen == servers
    assert first.total == total
    assert first.total_pages == -(-total // page_size)


def test_a_server_serialises_in_the_original_field_order_then_the_additions():
    body = json.loads(encode(server(1)))
    assert list(body)[:7] == [
        "provider",
        "country",
        "country_code",
        "identifier",
        "public_key",
        "load",
        "latency",
    ]
    # then every addition, in declaration order, null ones too: no field is left out
    assert list(body)[7:] == list(Server.__struct_fields__[7:])


def test_countries_are_sorted_by_code_and_take_the_most_common_name():
    servers = [
        server(1, "KH", "Cambodia"),
        server(2, "KH", "Cambodia"),
        server(3, "KH", "Combodia"),
        server(4, "AT", "Austria"),
    ]
    assert [(c.code, c.name, c.display) for c in countries(servers)] == [
        ("AT", "Austria", "AT - Austria"),
        ("KH", "Cambodia", "KH - Cambodia"),
    ]
