"""Filters, WireGuard peers and the key-swap guard, through a real `draco serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from conftest import PROVIDERS, ROOT, demo_payload, eventually, need, upstream_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from draco.catalog.dataset import make_dataset
from draco.catalog.snapshot import snapshot_bytes, write_snapshot
from draco.providers import REGISTRY

# Written from the issue, not from draco: which server field each filter needs, and the rule.
RULES = {
    "city": ("city", lambda s, v: s.city is not None and s.city.lower() == v.lower()),
    "identifier": (None, lambda s, v: s.identifier == v.lower()),
    "identifier_prefix": (None, lambda s, v: s.identifier.startswith(v.lower())),
    "max_load": ("load", lambda s, v: s.load is not None and s.load <= v),
    "p2p": ("p2p", lambda s, v: s.p2p is v),
    "owned": ("owned", lambda s, v: s.owned is v),
    "free": ("free", lambda s, v: s.free is v),
}
ANSWERS = {  # the providers whose lists say each field
    "city": set(PROVIDERS),
    "load": {"nordvpn", "surfshark", "ivpn", "airvpn"},
    "p2p": {"nordvpn", "surfshark", "windscribe"},
    "owned": {"mullvad"},
    "free": {"windscribe"},
}


def servers_of(provider: str):
    if provider == "all":
        return [s for name in PROVIDERS for s in servers_of(name)]
    return REGISTRY[provider].parse(demo_payload(provider))[0]


def brute_force(provider: str, chosen: dict) -> list[str]:
    return [
        s.identifier
        for s in servers_of(provider)
        if all(RULES[n][1](s, v) for n, v in chosen.items())
    ]


def query(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def answerable(provider: str, name: str) -> bool:
    field = RULES[name][0]
    return field is None or provider == "all" or provider in ANSWERS[field]


@st.composite
def filter_choices(draw):
    provider = draw(st.sampled_from([*PROVIDERS, "all"]))
    every = servers_of(provider)
    sample = draw(st.sampled_from(every))
    values = {
        "city": st.sampled_from([sample.city or "Vienna", (sample.city or "x").upper(), "Nowhere"]),
        "identifier": st.sampled_from(
            [sample.identifier, sample.identifier.upper(), "none.example"]
        ),
        "identifier_prefix": st.sampled_from([sample.identifier[:3], sample.identifier[:1], "zzz"]),
        "max_load": st.integers(0, 100),
        "p2p": st.booleans(),
        "owned": st.booleans(),
        "free": st.booleans(),
    }
    names = draw(st.sets(st.sampled_from(sorted(values)), max_size=4))
    return provider, {name: draw(values[name]) for name in sorted(names)}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=filter_choices())
def test_any_combination_of_filters_returns_exactly_what_a_brute_force_filter_returns(
    service, case
):
    provider, chosen = case
    params = {name: query(value) for name, value in chosen.items()} | {"page_size": 1000}
    response = httpx.get(service.url(f"/api/{provider}/servers"), params=params)
    if all(answerable(provider, name) for name in chosen):
        assert response.status_code == 200
        assert [s["identifier"] for s in response.json()] == brute_force(provider, chosen)
    else:
        assert response.status_code == 422


SUPPORTED = [
    (name, provider) for name in RULES for provider in PROVIDERS if answerable(provider, name)
]
EXAMPLES = {
    "city": "Vienna",
    "identifier_prefix": "a",
    "max_load": 40,
    "p2p": True,
    "owned": True,
    "free": True,
}


@pytest.mark.parametrize(("name", "provider"), [(n, p) for n, p in SUPPORTED if n in EXAMPLES])
def test_each_filter_on_each_provider_that_answers_it(service, name, provider):
    chosen = (
        EXAMPLES[name] if name != "identifier_prefix" else servers_of(provider)[0].identifier[:2]
    )
    value, expected = query(chosen), brute_force(provider, {name: chosen})
    listed = httpx.get(
        service.url(f"/api/{provider}/servers"), params={name: value, "page_size": 1000}
    ).json()
    assert [s["identifier"] for s in listed] == expected
    assert expected
    in_country = httpx.get(service.url(f"/api/{provider}/servers/AT"), params={name: value})
    at = [
        s.identifier
        for s in servers_of(provider)
        if s.country_code == "AT" and s.include_in_country
    ]
    at_too = [i for i in expected if i in at]
    assert (
        [s["identifier"] for s in in_country.json()] == at_too
        if at_too
        else in_country.status_code == 404
    )
    top = httpx.get(service.url(f"/api/{provider}/servers/top"), params={name: value, "limit": 50})
    assert (
        {s["identifier"] for s in top.json()} <= set(expected)
        if top.status_code == 200
        else top.status_code == 404
    )


def test_identifier_is_exact_and_ignores_case(service):
    for provider in PROVIDERS:
        identifier = servers_of(provider)[0].identifier
        exact = httpx.get(
            service.url(f"/api/{provider}/servers"), params={"identifier": identifier.upper()}
        ).json()
        assert [s["identifier"] for s in exact] == [identifier]


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("p2p", "mullvad"),
        ("owned", "nordvpn"),
        ("free", "mullvad"),
        ("max_load", "mullvad"),
        ("max_load", "windscribe"),
    ],
)
def test_a_filter_a_provider_cannot_answer_is_a_422_naming_those_that_can(service, name, provider):
    for path in ("servers", "servers/paginated", "servers/DE", "servers/top", "servers/fastest"):
        response = httpx.get(
            service.url(f"/api/{provider}/{path}"), params={name: query(EXAMPLES[name])}
        )
        assert response.status_code == 422, path
        [detail] = response.json()["details"]
        assert detail["loc"] == ["query", name]
        assert detail["type"] == "unsupported_filter"
        assert all(able in detail["msg"] for able in ANSWERS[RULES[name][0]])


def test_the_provider_index_lists_the_filters_each_provider_answers(service):
    index = {p["name"]: p["filters"] for p in httpx.get(service.url("/api/providers")).json()}
    for provider in PROVIDERS:
        answered = {name for name in RULES if answerable(provider, name)}
        # every list answers exclusions; features, family and near as test_asking.py checks
        assert set(index[provider]) - {"features", "family", "near"} == answered | {
            "exclude",
            "exclude_country",
        }


# --- WireGuard peers --------------------------------------------------------------------------


def parse_peer(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "[Peer]"
    return dict(line.split(" = ", 1) for line in lines[1:])


PORTS = {
    "nordvpn": 51820,
    "surfshark": 51820,
    "mullvad": 51820,
    "ivpn": 58237,
    "windscribe": 1194,
    "airvpn": 1637,
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_peer_section_parses_back_to_the_servers_key_and_endpoint(service, provider):
    server = servers_of(provider)[1]
    url = service.url(f"/api/{provider}/servers/{server.identifier}/wireguard")
    text = httpx.get(url)
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    peer = parse_peer(text.text)
    host = server.identifier if provider in ("surfshark", "windscribe") else server.ipv4
    preshared = {"PresharedKey": "YOUR_PRESHARED_KEY"} if provider == "airvpn" else {}
    assert peer == {
        "PublicKey": server.public_key,
        "Endpoint": f"{host}:{PORTS[provider]}",
        "AllowedIPs": "0.0.0.0/0, ::/0",
        **preshared,
    }
    shouted = httpx.get(
        service.url(f"/api/{provider}/servers/{server.identifier.upper()}/wireguard")
    )
    assert parse_peer(shouted.text) == peer  # a hostname in any case
    as_json = httpx.get(url, headers={"Accept": "application/json"}).json()
    assert {k: v for k, v in as_json.items() if k != "Note"} | preshared == peer
    assert ("Note" in as_json) == (provider == "airvpn")
    assert ("PresharedKey" in text.text) == (provider == "airvpn")


def test_a_server_listed_without_an_address_is_named_by_its_hostname_in_the_peer(
    start_draco, upstreams
):
    payload = json.loads(demo_payload("ivpn"))
    host = payload["wireguard"][0]["hosts"][0]
    del host["host"]  # IVPN's field for the address
    upstreams["ivpn"].set("ok", body=json.dumps(payload).encode())
    draco = start_draco({**upstream_env(upstreams), "READY_PROVIDERS": '["ivpn"]'})
    peer = parse_peer(httpx.get(draco.url(f"/api/ivpn/servers/{host['hostname']}/wireguard")).text)
    assert peer["Endpoint"] == f"{host['hostname']}:58237"


def test_the_peer_endpoint_takes_no_parameters_and_404s_an_unknown_server(service):
    known = servers_of("nordvpn")[0].identifier
    for query in (
        {"private_key": "x"},
        {"identifier": known},
    ):  # not even its path parameter's name
        asked = httpx.get(service.url(f"/api/nordvpn/servers/{known}/wireguard"), params=query)
        assert asked.status_code == 422
        assert asked.json()["details"][0]["type"] == "extra_forbidden"
    missing = httpx.get(service.url("/api/nordvpn/servers/nowhere.example/wireguard"))
    assert missing.status_code == 404
    assert missing.json()["error"] == "Not Found"


def test_wg_quick_accepts_a_configuration_built_from_the_peer(service, tmp_path):
    wg, wg_quick = need("wg"), need("wg-quick")
    private = subprocess.run(
        [wg, "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()
    peer = httpx.get(
        service.url(f"/api/mullvad/servers/{servers_of('mullvad')[0].identifier}/wireguard")
    ).text
    config = tmp_path / "wg0.conf"
    config.write_text(f"[Interface]\nPrivateKey = {private}\nAddress = 10.64.0.2/32\n\n{peer}")
    stripped = subprocess.run(
        [wg_quick, "strip", str(config)], capture_output=True, text=True, check=True
    ).stdout
    assert "PublicKey = " in stripped
    assert "Endpoint = " in stripped
    assert "Address" not in stripped


# --- the key-swap guard ----------------------------------------------------------------------


def rekeyed_payload(fraction: float) -> tuple[bytes, set[str]]:
    """The NordVPN demo list with the keys of `fraction` of its servers swapped."""
    entries = json.loads(demo_payload("nordvpn"))
    kept = {s.identifier for s in servers_of("nordvpn")}
    chosen = sorted(kept)[: round(len(kept) * fraction)]
    for entry in entries:
        if entry["hostname"] in chosen:
            entry["technologies"][0]["metadata"][0]["value"] = servers_of("surfshark")[
                len(chosen) % 30
            ].public_key
    return json.dumps(entries).encode(), set(chosen)


@pytest.fixture
def snapshotted(tmp_path, start_draco, upstreams):
    """draco restored from a snapshot of the NordVPN demo list, served stale until a refresh."""
    servers = servers_of("nordvpn")
    write_snapshot(
        tmp_path, "nordvpn", snapshot_bytes(make_dataset("nordvpn", servers, time.time() - 10))
    )
    env = {
        **upstream_env(upstreams),
        "SNAPSHOT_DIR": str(tmp_path),
        "REFRESH_BACKOFF_MAX": "1",
        "METRICS_ENABLED": "true",
        "METRICS_PUBLIC": "true",
    }
    return lambda: start_draco(env), {s.identifier: s.public_key for s in servers}


def keys_served(draco) -> dict[str, str]:
    servers = httpx.get(draco.url("/api/nordvpn/servers"), params={"page_size": 1000}).json()
    return {s["identifier"]: s["public_key"] for s in servers}


def test_a_mass_key_swap_is_held_until_the_operator_accepts_it_and_then_listed_in_changes(
    snapshotted, upstreams, tmp_path
):
    """Through a real `draco serve`: the swap is held (health, metrics), `draco hold list`
    names it, `draco hold accept` settles it, and /changes lists every key it changed."""
    start, old = snapshotted
    payload, swapped = rekeyed_payload(0.3)
    upstreams["nordvpn"].set("ok", body=payload)
    draco = start()
    keys_served(draco)  # served from the snapshot; the refresh starts

    def held() -> dict | None:
        return httpx.get(draco.url("/health")).json()["providers"]["nordvpn"]["held"]

    assert eventually(lambda: held() is not None, 10)
    assert keys_served(draco) == old
    notice = held()
    assert notice["rekeyed"] == len(swapped)
    metrics = httpx.get(draco.url("/metrics")).text
    assert 'draco_catalog_held{provider="nordvpn"} 1.0' in metrics
    env = {**draco.env, "SNAPSHOT_DIR": str(tmp_path)}
    hold = [sys.executable, "-m", "draco", "hold"]
    listed = subprocess.run([*hold, "list"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert f"nordvpn {notice['digest']}: held since" in listed.stdout
    command = [*hold, "accept", "nordvpn", notice["digest"]]
    given = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert given.returncode == 0, given.stderr
    assert eventually(lambda: keys_served(draco) != old, 10)
    new = keys_served(draco)
    assert {name for name in new if new[name] != old[name]} == swapped
    assert httpx.get(draco.url("/health")).json()["providers"]["nordvpn"]["trust"] == "operator"
    changes = httpx.get(draco.url("/api/nordvpn/changes")).json()
    assert {c["change"] for c in changes["servers"]} == {"rekeyed"}
    assert {c["identifier"] for c in changes["servers"]} == swapped
    for change in changes["servers"]:
        assert old[change["identifier"]] == change["old_key"]
        assert new[change["identifier"]] == change["new_key"]


def test_a_few_keys_rotated_are_accepted_at_once(snapshotted, upstreams):
    start, old = snapshotted
    payload, swapped = rekeyed_payload(0.1)
    upstreams["nordvpn"].set("ok", body=payload)
    draco = start()
    keys_served(draco)  # served from the snapshot; the refresh starts
    deadline = time.monotonic() + 10
    while keys_served(draco) == old and time.monotonic() < deadline:
        time.sleep(0.1)
    new = keys_served(draco)
    assert upstreams["nordvpn"].hits == 1
    assert {name for name in new if new[name] != old[name]} == swapped
