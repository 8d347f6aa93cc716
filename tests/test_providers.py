"""The upstream parsers: real captured payloads, their quirks, and arbitrary JSON."""

from __future__ import annotations

import base64
import ipaddress
import json

import pytest
from conftest import demo_payload, fixture_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from draco.exceptions import VPNDataError
from draco.providers import REGISTRY, base, mullvad, nordvpn, surfshark, windscribe


def valid_key(value) -> bool:
    try:
        return isinstance(value, str) and len(base64.b64decode(value.strip(), validate=True)) == 32
    except ValueError:
        return False


def nordvpn_expected(entries: list) -> set[str]:
    """Written from the rules, not from the parser: online, WireGuard online, a key, not
    dedicated-IP."""
    keep = set()
    for e in entries:
        wg = [t for t in e.get("technologies", []) if t.get("identifier") == "wireguard_udp"]
        if e.get("status") != "online" or not wg or wg[0]["pivot"]["status"] != "online":
            continue
        if "legacy_dedicated_ip" in [g["identifier"] for g in e.get("groups", [])]:
            continue
        keys = [m["value"] for m in wg[0]["metadata"] if m["name"] == "public_key"]
        if keys and valid_key(keys[0]):
            keep.add(e["hostname"])
    return keep


def surfshark_expected(entries: list) -> set[str]:
    return {
        e["connectionName"]
        for e in entries
        if e["type"] in ("wireguard", "generic") and valid_key(e.get("pubKey"))
    }


def mullvad_expected(payload: dict) -> set[str]:
    return {
        r["hostname"]
        for r in payload["wireguard"]["relays"]
        if r["active"] is True and valid_key(r["public_key"])
    }


def ivpn_expected(payload: dict) -> set[str]:
    return {
        h["hostname"]
        for loc in payload["wireguard"]
        for h in loc["hosts"]
        if valid_key(h["public_key"])
    }


def windscribe_expected(payload: dict) -> set[str]:
    groups = [g for loc in payload["data"] if loc["status"] == 1 for g in loc["groups"]]
    return {g["wg_endpoint"] for g in groups if valid_key(g.get("wg_pubkey"))}


def airvpn_expected(payload: dict) -> set[str]:
    return {s["public_name"].lower() for s in payload["servers"] if s["health"] == "ok"}


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("nordvpn", nordvpn_expected),
        ("surfshark", surfshark_expected),
        ("mullvad", mullvad_expected),
        ("ivpn", ivpn_expected),
        ("windscribe", windscribe_expected),
        ("airvpn", airvpn_expected),
    ],
)
def test_every_real_payload_parses_to_the_independently_counted_servers(provider, expected):
    for path in fixture_files(provider):
        payload = path.read_bytes()
        entries = json.loads(payload)
        servers, _skipped = REGISTRY[provider].parse(payload)
        assert {s.identifier for s in servers} == expected(entries), path.name
        assert len(servers) == len({s.identifier for s in servers}), path.name


def test_nordvpn_real_payload_counts():
    path = next(p for p in fixture_files("nordvpn") if "100entries" in p.name)
    servers, skipped = nordvpn.parse(path.read_bytes())
    assert (len(servers), skipped) == (74, 0)  # 100 entries, 26 of them dedicated-IP only
    kept = nordvpn_expected(entries := json.loads(path.read_bytes()))
    assert {s.country_code for s in servers} == {
        e["locations"][0]["country"]["code"] for e in entries if e["hostname"] in kept
    }
    assert all(s.ipv4 and s.city for s in servers)


def test_surfshark_2022_payload_without_keys_yields_nothing_and_counts_the_skips():
    path = next(p for p in fixture_files("surfshark") if "no-pubKey" in p.name)
    servers, skipped = surfshark.parse(path.read_bytes())
    assert servers == []
    assert skipped == 137


def _fixture(provider: str, fragment: str) -> bytes:
    return next(p for p in fixture_files(provider) if fragment in p.name).read_bytes()


def test_windscribe_real_payload_counts_one_server_per_group_and_its_flags():
    raw = json.loads(_fixture("windscribe", "201groups"))
    servers, skipped = REGISTRY["windscribe"].parse(_fixture("windscribe", "201groups"))
    assert (len(servers), skipped) == (201, 0)
    assert len({s.country_code for s in servers}) == 72
    by_endpoint = {s.identifier: s for s in servers}
    for location in raw["data"]:
        for group in location["groups"]:
            s = by_endpoint[group["wg_endpoint"]]
            assert (s.public_key, s.city, s.ipv4, s.load) == (
                group["wg_pubkey"],
                group["city"],
                group["ping_ip"],
                None,
            )
            assert (s.country_code, s.p2p, s.free) == (
                location["country_code"],
                location["p2p"] == 1,
                group["pro"] == 0,
            )
    names = {s.country_code: s.country for s in servers}
    assert (names["GB"], names["DE"], names["CZ"]) == (
        "United Kingdom",
        "Germany",
        "Czechia",
    )  # from ISO 3166


def test_airvpn_real_payload_keeps_the_healthy_servers_with_airvpns_one_key():
    raw = json.loads(_fixture("airvpn", "255servers"))
    servers, skipped = REGISTRY["airvpn"].parse(_fixture("airvpn", "255servers"))
    assert (len(servers), skipped) == (253, 0)
    assert len({s.country_code for s in servers}) == 23
    assert {s.public_key for s in servers} == {"PyLCXAQT8KkM4T+dUsOQfn+Ub3pGxfGlxkIApuig+hk="}
    entries = {e["public_name"].lower(): e for e in raw["servers"]}
    for s in servers:
        entry = entries[s.identifier]
        load = min(entry["currentload"], 100)  # over capacity is full
        assert (s.country_code, s.load, s.ipv4) == (
            entry["country_code"].upper(),
            load,
            entry["ip_v4_in1"],
        )
    left_out = {e["public_name"].lower() for e in raw["servers"] if e["health"] != "ok"}
    assert len(left_out) == 2
    assert not left_out & {s.identifier for s in servers}


def test_mullvad_real_payload_counts_names_and_country_flags():
    payload = _fixture("mullvad", "563wg")
    raw = json.loads(payload)
    servers, skipped = REGISTRY["mullvad"].parse(payload)
    assert (len(servers), skipped) == (545, 0)  # 563 WireGuard relays, 18 inactive
    assert all(s.load is None for s in servers)
    names = {s.country_code: s.country for s in servers}
    assert names["GB"] == "United Kingdom"
    assert names["US"] == "United States"
    assert all(len(code) == 2 and code.isupper() for code in names)
    left_out = {
        r["hostname"]
        for r in raw["wireguard"]["relays"]
        if r["active"] and not r["include_in_country"]
    }
    assert {s.identifier for s in servers if not s.include_in_country} == left_out
    assert len(left_out) == 17
    weights = {r["hostname"]: r["weight"] for r in raw["wireguard"]["relays"]}
    assert [weights[s.identifier] for s in servers] == sorted(
        (weights[s.identifier] for s in servers), reverse=True
    )


def test_mullvad_relays_left_out_of_their_country_stay_in_the_list_but_not_in_country_queries():
    from draco.catalog.dataset import make_dataset

    servers, _ = REGISTRY["mullvad"].parse(_fixture("mullvad", "563wg"))
    data = make_dataset("mullvad", servers, 0.0)
    glasgow = next(s for s in servers if s.identifier.startswith("gb-glw"))
    assert glasgow in data.servers
    assert glasgow not in data.by_country["GB"]


def test_ivpn_keeps_hosts_that_share_a_key_and_rounds_float_loads():
    servers, _ = REGISTRY["ivpn"].parse(_fixture("ivpn", "dup-pubkey"))
    by_name = {s.identifier: s for s in servers}
    assert by_name["fi1.wg.ivpn.net"].public_key == by_name["ua1.wg.ivpn.net"].public_key
    raw = {
        h["hostname"]: h.get("load")
        for loc in json.loads(_fixture("ivpn", "dup-pubkey"))["wireguard"]
        for h in loc["hosts"]
    }
    assert all(s.load == round(raw[s.identifier]) for s in servers)


def test_ivpn_files_without_load_give_null_load():
    servers, skipped = REGISTRY["ivpn"].parse(_fixture("ivpn", "no-load"))
    assert (len(servers), skipped) == (77, 0)
    assert {s.load for s in servers} == {None}


def test_ivpn_latest_file_counts():
    servers, _ = REGISTRY["ivpn"].parse(_fixture("ivpn", "90wghosts"))
    assert len(servers) == 90
    assert all(s.ipv4 and s.city for s in servers)


def _nord_entry(**changes) -> dict:
    entry = json.loads(demo_payload("nordvpn"))[1]
    entry.update(changes)
    return entry


def test_key_whitespace_is_trimmed():
    entry = _nord_entry()
    key = entry["technologies"][0]["metadata"][0]["value"]
    entry["technologies"][0]["metadata"][0]["value"] = f"\t{key} \n"
    [server], _ = nordvpn.parse(json.dumps([entry]).encode())
    assert server.public_key == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not base64!",
        base64.b64encode(b"x" * 31).decode(),
        base64.b64encode(b"x" * 33).decode(),
        42,
        None,
    ],
)
def test_an_entry_with_a_bad_key_is_skipped_and_counted(key):
    good, bad = _nord_entry(), _nord_entry(hostname="bad.example")
    bad["technologies"][0]["metadata"][0]["value"] = key
    servers, skipped = nordvpn.parse(json.dumps([good, bad]).encode())
    assert [s.identifier for s in servers] == [good["hostname"]]
    assert skipped == 1


def test_a_key_with_a_character_outside_base64_is_skipped_however_it_decodes():
    entry = _nord_entry()
    key = entry["technologies"][0]["metadata"][0]["value"]
    entry["technologies"][0]["metadata"][0]["value"] = (
        key[:20] + "!" + key[20:]
    )  # a lenient decoder drops the "!"
    assert nordvpn.parse(json.dumps([entry]).encode()) == ([], 1)


@pytest.mark.parametrize("code", ["D1", "ÄB", "D", "DEU"])
def test_an_entry_whose_country_code_is_not_two_ascii_letters_is_skipped(code):
    entry = _nord_entry()
    entry["locations"][0]["country"]["code"] = code
    assert nordvpn.parse(json.dumps([entry]).encode()) == ([], 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("load", True),
        ("load", 101),
        ("load", "7"),
        ("station", "192.0.2.300"),
        ("station", "2001:db8::1"),
        ("station", "192.0.2.1\nAllowedIPs=0.0.0.0/0"),
    ],
)
def test_a_malformed_load_or_address_is_unknown(field, value):
    [server], _ = nordvpn.parse(json.dumps([_nord_entry(**{field: value})]).encode())
    assert (server.load, server.ipv4)[field == "station"] is None


def _ipaddress_ipv4(value):
    """The check base.ipv4 stands for: what ipaddress accepts, as it prints it."""
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        return None


# Octets near the edges: leading zeros, over 255, non-ASCII digits, signs, blanks.
_edges = st.sampled_from([0, 9, 10, 99, 100, 199, 200, 249, 250, 255, 256, 259, 260, 300])
_zeros = st.sampled_from(["", "", "", "0"])
_number = st.builds(str.__add__, _zeros, (st.integers(0, 299) | _edges).map(str))
_odd = st.sampled_from(["", "\u0661", "\uff11", "+1", "-1", " 1", "0x1", "1_0", "1234"])
_octet = _number | _number | _odd
_dotted = st.lists(_octet, min_size=4, max_size=4) | st.lists(_octet, min_size=3, max_size=5)
_padding = st.sampled_from(["", " ", "\t", "\n", "\u00a0", "\u3000", "/24", ":51820"])


@settings(max_examples=2000)
@given(
    before=_padding,
    body=_dotted.map(".".join) | st.ip_addresses(v=4).map(str) | st.text(max_size=20),
    after=_padding,
)
def test_the_ipv4_check_accepts_exactly_what_ipaddress_accepts_and_prints_it_so(
    before, body, after
):
    value = before + body + after
    assert base.ipv4(value) == _ipaddress_ipv4(value)


@pytest.mark.parametrize(
    "value",
    [
        "1.2.3.4",
        " 10.0.0.255 ",
        "0.0.0.1",
        "255.255.255.255",
        "01.2.3.4",
        "1.2.3",
        "256.1.1.1",
        "1.2.3.4.5",
        "\u0661.2.3.4",
        "1.2.3.4/32",
        "1.2.3.4\n",
        "",
        "1..2.3",
    ],
)
def test_the_ipv4_check_agrees_with_ipaddress_on_the_edges(value):
    assert base.ipv4(value) == _ipaddress_ipv4(value)


@pytest.mark.parametrize(
    ("owned", "expected"), [(True, True), (0, False), (2, None), ("true", None)]
)
def test_an_upstream_flag_is_0_1_false_or_true_and_anything_else_unknown(owned, expected):
    payload = json.loads(demo_payload("mullvad"))
    relay = payload["wireguard"]["relays"][0]
    relay["owned"] = owned
    servers, _ = mullvad.parse(json.dumps(payload).encode())
    assert next(s.owned for s in servers if s.identifier == relay["hostname"]) is expected


def test_uk_becomes_gb_and_known_misspellings_are_fixed():
    clusters = json.loads(demo_payload("surfshark"))[:2]
    clusters[0].update(countryCode="uk", country="UK")
    clusters[1].update(countryCode="KH", country="Combodia")
    servers, _ = surfshark.parse(json.dumps(clusters).encode())
    assert [(s.country_code, s.country) for s in servers] == [
        ("GB", "United Kingdom"),
        ("KH", "Cambodia"),
    ]


def test_surfshark_keeps_the_wireguard_and_generic_clusters_only():
    clusters = json.loads(demo_payload("surfshark"))[:4]
    for cluster, kind in zip(clusters, ("wireguard", "generic", "double", "static"), strict=True):
        cluster["type"] = kind
    servers, skipped = surfshark.parse(json.dumps(clusters).encode())
    assert [s.identifier for s in servers] == [c["connectionName"] for c in clusters[:2]]
    assert skipped == 0


def test_duplicate_identifiers_keep_the_first_and_count_the_rest():
    clusters = json.loads(demo_payload("surfshark"))[:2]
    clusters[1]["connectionName"] = clusters[0]["connectionName"].upper()
    servers, skipped = surfshark.parse(json.dumps(clusters).encode())
    assert len(servers) == 1
    assert skipped == 1
    assert servers[0].public_key == clusters[0]["pubKey"]


def test_offline_servers_and_offline_wireguard_are_left_out():
    offline = _nord_entry(hostname="a.example", status="maintenance")
    wg_off = _nord_entry(hostname="b.example")
    wg_off["technologies"][0]["pivot"]["status"] = "offline"
    assert nordvpn.parse(json.dumps([offline, wg_off]).encode()) == ([], 0)


def test_windscribe_leaves_out_the_groups_of_a_location_that_is_not_up():
    payload = json.loads(demo_payload("windscribe"))
    down = payload["data"][0]
    down["status"] = 2  # 1 is up
    servers, _ = windscribe.parse(json.dumps(payload).encode())
    assert servers
    assert not {g["wg_endpoint"] for g in down["groups"]} & {s.identifier for s in servers}


@pytest.mark.parametrize("active", [None, "true", 1, "missing"])
def test_mullvad_keeps_a_relay_only_when_it_is_marked_active_true(active):
    payload = json.loads(demo_payload("mullvad"))
    relay = payload["wireguard"]["relays"][0]
    relay.pop("active") if active == "missing" else relay.update(active=active)
    servers, _ = mullvad.parse(json.dumps(payload).encode())
    assert servers
    assert relay["hostname"] not in {s.identifier for s in servers}


def test_no_upstream_text_carries_a_line_break_or_a_control_into_a_server():
    """The [Peer] section is text: a line break in a country or city name could forge a line of
    it."""
    clusters = json.loads(demo_payload("surfshark"))[:2]
    clusters[0].update(
        country="Germany\nEndpoint = 198.51.100.1:51820", location="Berlin\u2028[Interface]"
    )
    clusters[1].update(connectionName="de-9.example\nAllowedIPs=0.0.0.0/0")
    servers, skipped = surfshark.parse(json.dumps(clusters).encode())
    assert [(s.country, s.city) for s in servers] == [(clusters[0]["countryCode"], None)]
    assert skipped == 1


def test_nordvpn_orders_by_load_with_unknown_last():
    entries = [
        _nord_entry(hostname=f"h{i}.example", load=load)
        for i, load in enumerate([50, None, 3, "7"])
    ]
    servers, _ = nordvpn.parse(json.dumps(entries).encode())
    assert [s.load for s in servers] == [3, 50, None, None]


@pytest.mark.parametrize(
    "payload", [b"{}", b'{"servers": {}}', b"null", b"42", b"<html>", b"[1, 2", b"", b"[]"[:1]]
)
@pytest.mark.parametrize("provider", list(REGISTRY))
def test_a_payload_of_the_wrong_shape_is_a_data_error(provider, payload):
    with pytest.raises(VPNDataError):
        REGISTRY[provider].parse(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _lenient(parse, payload):
    try:
        servers, skipped = parse(payload)
    except VPNDataError:
        return
    assert skipped >= 0
    assert all(s.identifier for s in servers)


@st.composite
def deeply_nested(draw) -> bytes:
    """JSON nested far past any recursion limit, arrays and objects in any mix, placed
    where a provider's payload, entry or field would be."""
    depth = draw(st.integers(1_000, 30_000))
    levels = draw(
        st.lists(
            st.sampled_from([(b"[", b"]"), (b'{"hostname":', b"}"), (b'{"":', b"}")]), min_size=1
        )
    )
    pattern = [levels[i % len(levels)] for i in range(depth)]
    nested = b"".join(o for o, _ in pattern) + b"1" + b"".join(c for _, c in reversed(pattern))
    template = draw(
        st.sampled_from(
            [
                "%s",
                "[%s]",
                '[{"hostname": %s}]',
                '{"wireguard": %s}',
                '{"wireguard": [%s]}',
                '{"locations": {}, "wireguard": {"relays": [%s]}}',
                '{"data": [%s]}',
                '{"data": [{"status": 1, "groups": [%s]}]}',
                '{"servers": [%s]}',
            ]
        )
    )
    return template.encode() % nested


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_values.map(lambda value: json.dumps(value).encode()) | deeply_nested())
def test_parsers_never_raise_on_arbitrary_json(payload):
    for provider in REGISTRY.values():
        _lenient(provider.parse, payload)


@pytest.mark.parametrize("provider", list(REGISTRY))
def test_nesting_deeper_than_the_decoder_goes_is_a_data_error_or_a_skipped_entry(provider):
    for payload in (
        b"[" * 100_000 + b"]" * 100_000,
        b'[{"hostname":' + b"[" * 1000 + b"]" * 1000 + b"}]",
    ):
        _lenient(REGISTRY[provider].parse, payload)


@st.composite
def mutated_entries(draw, provider: str):
    """Real-looking entries with any field replaced by arbitrary JSON, at any depth."""
    entries = json.loads(demo_payload(provider))
    entry = draw(st.sampled_from(entries if isinstance(entries, list) else [entries]))

    def mutate(node):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            node[key] = draw(json_values) if draw(st.booleans()) else mutate(node[key])
        elif isinstance(node, list) and node:
            node[0] = draw(json_values) if draw(st.booleans()) else mutate(node[0])
        return node

    return mutate(json.loads(json.dumps(entry)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parsers_never_raise_on_damaged_real_looking_entries(data):
    for name, provider in REGISTRY.items():
        entries = data.draw(st.lists(mutated_entries(name), min_size=1, max_size=3))
        payload = json.dumps(
            entries if isinstance(json.loads(demo_payload(name)), list) else entries[0]
        ).encode()
        _lenient(provider.parse, payload)
