"""More ways to ask, over the real captured payloads (tests/fixtures): features, exclusions,
address family, port, distance, multi-hop, chosen fields, and each client's format,
every one against a brute-force answer computed here from the parsed fixtures."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess

import httpx
import pytest
import yaml
from bench_refresh import FIXTURES as NEWEST  # the newest WireGuard capture of each provider
from conftest import FIXTURES, PROVIDERS, Draco, FakeUpstream, upstream_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from draco.models import Server
from draco.providers import REGISTRY
from draco.web import configs
from draco.web.params import FEATURES, InvalidValueError, PortIn

WANTED = {  # each word, as a brute force reads it
    "p2p": lambda s: s.p2p is True,
    "owned": lambda s: s.owned is True,
    "daita": lambda s: s.daita is True,
    "quic": lambda s: s.quic is True,
    "premium": lambda s: s.free is False,
    "virtual": lambda s: s.virtual is True,
    "multihop": lambda s: s.multihop_port is not None,
}
ANSWERS = {  # the words each provider's list answers, from what its payload carries
    "nordvpn": {"p2p"},
    "surfshark": {"p2p", "virtual"},
    "mullvad": {"owned", "daita", "quic"},
    "ivpn": {"multihop"},
    "windscribe": {"p2p", "premium"},
    "airvpn": set(),
}
IPV6 = {"mullvad", "airvpn", "nordvpn"}  # lists with an IPv6 entry field
PLACED = {"nordvpn", "surfshark", "mullvad", "ivpn", "windscribe"}  # lists with coordinates


def servers_of(provider: str) -> list[Server]:
    if provider == "all":
        return [s for name in PROVIDERS for s in servers_of(name)]
    return REGISTRY[provider].parse((FIXTURES / NEWEST[provider]).read_bytes()).servers


@pytest.fixture(scope="module")
def real():
    """draco over the real captured payloads, auth off, a generous limit."""
    fakes = {name: FakeUpstream((FIXTURES / NEWEST[name]).read_bytes()) for name in PROVIDERS}
    process = Draco({**upstream_env(fakes), "RATE_LIMIT_ENABLED": "false"})
    yield process
    process.close()
    for fake in fakes.values():
        fake.stop()


def listed(real, provider: str, **params) -> httpx.Response:
    asked = {"page_size": 1000, "fields": "identifier", **params}
    return httpx.get(real.url(f"/api/{provider}/servers"), params=asked, timeout=30)


# --- what the payloads carry ------------------------------------------------------------------


def test_the_fixtures_carry_the_counts_the_note_gives():
    assert set(WANTED) == set(FEATURES)  # every word, read here by a brute force of its own
    mullvad = servers_of("mullvad")
    relays = json.loads((FIXTURES / NEWEST["mullvad"]).read_text())["wireguard"]["relays"]
    assert sum(r["daita"] is True for r in relays) == 44  # in the capture, active or not
    assert len(mullvad) == 545  # active
    assert sum(s.ipv6 is not None for s in mullvad) == 545
    assert sum(s.daita is True for s in mullvad) == 43
    assert sum(s.quic is True for s in mullvad) == 150
    assert sum(s.owned is True for s in mullvad) == 109
    assert sum(s.ipv6 is not None for s in servers_of("airvpn")) == 253
    assert sum(s.virtual is True for s in servers_of("surfshark")) == 6
    assert sum(s.multihop_port is not None for s in servers_of("ivpn")) == 90
    assert sum(s.free is False for s in servers_of("windscribe")) == 176
    assert all(s.latitude is not None for name in PLACED for s in servers_of(name))
    assert not any(s.ipv6 for s in servers_of("nordvpn"))  # ipv6_station is "" in the capture


def test_the_declared_ports_are_the_ones_the_payloads_publish():
    mullvad = json.loads((FIXTURES / NEWEST["mullvad"]).read_text())["wireguard"]["port_ranges"]
    assert REGISTRY["mullvad"].wireguard_ports == tuple(map(tuple, mullvad))
    ivpn = json.loads((FIXTURES / NEWEST["ivpn"]).read_text())["config"]["ports"]["wireguard"]
    published = {p["port"] for p in ivpn if "port" in p}
    for p in ivpn:
        if "range" in p:
            published |= set(range(p["range"]["min"], p["range"]["max"] + 1))
    declared = REGISTRY["ivpn"]
    assert {port for port in range(1, 65536) if declared.listens_on(port)} == published
    for provider in REGISTRY.values():
        assert provider.listens_on(provider.wireguard_port)


def test_the_port_a_provider_is_documented_with_accepts_exactly_its_ports():
    mullvad = REGISTRY["mullvad"]
    accepts = PortIn(mullvad, "a port")
    for port in (53, 4000, 33433, 51820, 60000):
        assert accepts.parse(str(port)) == port
    for port in (1, 3999, 33434, 51821, 65535):
        with pytest.raises(InvalidValueError, match="53, 123, 4000-33433"):
            accepts.parse(str(port))
    assert accepts.schema()["anyOf"][2] == {"minimum": 4000, "maximum": 33433}


# --- every filter against a brute force -------------------------------------------------------


def haversine(a: tuple[float, float], b: tuple[float, float]) -> float:
    (la1, lo1), (la2, lo2) = (map(math.radians, p) for p in (a, b))
    inner = (
        math.sin((la2 - la1) / 2) ** 2
        + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(math.sqrt(inner))


def brute_force(provider: str, asked: dict) -> list[str]:
    kept = []
    for s in servers_of(provider):
        words = asked.get("features", ())
        if not all(WANTED[w](s) for w in words):
            continue
        if s.identifier in asked.get("exclude", ()) or s.country_code in asked.get(
            "exclude_country", ()
        ):
            continue
        if "family" in asked and getattr(s, asked["family"]) is None:
            continue
        if "max_load" in asked and (s.load is None or s.load > asked["max_load"]):
            continue
        if "near" in asked and s.latitude is None:
            continue
        kept.append(s)
    if "near" in asked:
        point = asked["near"]
        kept.sort(key=lambda s: round(haversine(point, (s.latitude, s.longitude)), 1))
    return [s.identifier for s in kept]


def answerable(provider: str, asked: dict) -> bool:
    if provider == "all":
        return True
    if any(w not in ANSWERS[provider] for w in asked.get("features", ())):
        return False
    if asked.get("family") == "ipv6" and provider not in IPV6:
        return False
    if asked.get("family") == "ipv4" and "ipv4" not in REGISTRY[provider].reports:
        return False
    if "max_load" in asked and "load" not in REGISTRY[provider].reports:
        return False
    return "near" not in asked or provider in PLACED


@st.composite
def questions(draw):
    provider = draw(st.sampled_from([*PROVIDERS, "all"]))
    every = servers_of(provider)
    asked: dict = {}
    if draw(st.booleans()):
        asked["features"] = draw(st.sets(st.sampled_from(sorted(WANTED)), min_size=1, max_size=2))
    if draw(st.booleans()):
        asked["exclude"] = {
            s.identifier for s in draw(st.lists(st.sampled_from(every), max_size=5))
        }
        asked["exclude"] = asked["exclude"] or {"none.example"}
    if draw(st.booleans()):
        codes = sorted({s.country_code for s in every})
        asked["exclude_country"] = draw(st.sets(st.sampled_from(codes), min_size=1, max_size=8))
    if draw(st.booleans()):
        asked["family"] = draw(st.sampled_from(["ipv4", "ipv6"]))
    if draw(st.booleans()):
        asked["max_load"] = draw(st.integers(0, 100))
    if draw(st.booleans()):
        latitude = draw(st.integers(-89, 89)) + draw(st.sampled_from([0.0, 0.25, 0.5]))
        longitude = draw(st.integers(-179, 179)) + draw(st.sampled_from([0.0, 0.5]))
        asked["near"] = (latitude, longitude)
    return provider, asked


def spelled(asked: dict) -> dict[str, str]:
    params = {}
    for name, value in asked.items():
        if name == "near":
            params[name] = f"{value[0]},{value[1]}"
        elif isinstance(value, set):
            params[name] = ",".join(sorted(value))
        else:
            params[name] = str(value)
    return params


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(question=questions())
def test_any_combination_of_filters_is_exactly_a_brute_force(real, question):
    provider, asked = question
    response = listed(real, provider, **spelled(asked))
    if not answerable(provider, asked):
        assert response.status_code == 422, response.text
        assert all(d["type"] == "unsupported_filter" for d in response.json()["details"])
        return
    assert response.status_code == 200, response.text
    got = [s["identifier"] for s in response.json()]
    expected = brute_force(provider, asked)
    if "near" in asked:  # ties (servers of one city) in any order; a page is at most 1,000
        assert len(got) == min(len(expected), 1000)
        assert set(got) <= set(expected)
        by_id = {s.identifier: s for s in servers_of(provider)}
        distances = [
            round(haversine(asked["near"], (by_id[i].latitude, by_id[i].longitude)), 1) for i in got
        ]
        assert distances == sorted(distances)
    else:
        assert got == expected[:1000]


@pytest.mark.parametrize(
    ("provider", "word"),
    [(p, w) for p in PROVIDERS for w in sorted(WANTED) if w not in ANSWERS[p]],
)
def test_every_word_a_provider_cannot_answer_is_a_422_naming_those_that_can(real, provider, word):
    for path in ("servers", "servers/paginated", "servers/top", "servers/DE"):
        response = httpx.get(real.url(f"/api/{provider}/{path}"), params={"features": word})
        assert response.status_code == 422, path
        [detail] = response.json()["details"]
        assert detail["loc"] == ["query", "features"]
        able = [p for p in PROVIDERS if word in ANSWERS[p]]
        assert detail["msg"].endswith("the providers that do: " + ", ".join(able))


def test_the_provider_index_says_each_providers_words_and_ports(real):
    index = {p["name"]: p for p in httpx.get(real.url("/api/providers")).json()}
    for name, provider in REGISTRY.items():
        assert set(index[name]["features"]) == ANSWERS[name]
        assert index[name]["wireguard_ports"] == [list(r) for r in provider.wireguard_ports]
        assert index[name]["wireguard_port"] == provider.wireguard_port


def test_bad_values_are_422s(real):
    for params in (
        {"near": "91,0"},
        {"near": "0,181"},
        {"near": "nan,0"},
        {"near": "1e1,0"},
        {"near": "0"},
        {"features": "p2p,teleport"},
        {"features": ""},
        {"exclude": ",".join(f"x{i}" for i in range(51))},
        {"exclude_country": "SE,se"},
        {"family": "ipv5"},
        {"fields": "identifier,password"},
    ):
        response = listed(real, "mullvad", **params)
        assert response.status_code == 422, params
        assert response.json()["error"]


def test_near_gives_each_server_its_distance(real):
    point = (59.3293, 18.0686)  # Stockholm
    answer = httpx.get(
        real.url("/api/mullvad/servers/top"), params={"near": "59.3293,18.0686", "limit": 50}
    ).json()
    assert answer[0]["country_code"] == "SE"
    for s in answer:
        assert s["distance"] == round(haversine(point, (s["latitude"], s["longitude"])), 1)
    assert [s["distance"] for s in answer] == sorted(s["distance"] for s in answer)
    refused = httpx.get(real.url("/api/airvpn/servers"), params={"near": "0,0"})
    assert refused.status_code == 422  # AirVPN publishes no coordinates


def test_a_seed_spreads_servers_at_one_place(real):
    tops = {
        httpx.get(
            real.url("/api/mullvad/servers/top"),
            params={"near": "59.3293,18.0686", "limit": 1, "seed": f"pod-{i}"},
        ).json()[0]["identifier"]
        for i in range(12)
    }
    assert len(tops) > 3  # Stockholm's relays share one place: the seeds spread over them


# --- fields -----------------------------------------------------------------------------------


def test_fields_keep_only_those_and_the_identifier(real):
    for path in ("servers", "servers/top", "servers/SE"):
        whole = httpx.get(real.url(f"/api/mullvad/{path}"))
        some = httpx.get(real.url(f"/api/mullvad/{path}"), params={"fields": "public_key,ipv6"})
        assert [list(s) for s in some.json()] == [["identifier", "public_key", "ipv6"]] * len(
            whole.json()
        )
        assert [s["identifier"] for s in some.json()] == [s["identifier"] for s in whole.json()]
        assert len(some.content) < len(whole.content) / 3
    page = httpx.get(real.url("/api/ivpn/servers/paginated"), params={"fields": "load"}).json()
    assert set(page["data"][0]) == {"identifier", "load"}
    assert page["total"] == 90


# --- the peer: family, port, multi-hop --------------------------------------------------------


def peer_of(real, provider: str, identifier: str, **params) -> httpx.Response:
    url = real.url(f"/api/{provider}/servers/{identifier}/wireguard")
    return httpx.get(url, params={"format": "json", **params})


def test_family_ipv6_gives_a_bracketed_endpoint(real):
    for provider in ("mullvad", "airvpn"):
        server = servers_of(provider)[0]
        peer = peer_of(real, provider, server.identifier, family="ipv6").json()
        assert peer["Endpoint"] == f"[{server.ipv6}]:{REGISTRY[provider].wireguard_port}"
    for provider in ("ivpn", "surfshark", "windscribe"):
        server = servers_of(provider)[0]
        assert peer_of(real, provider, server.identifier, family="ipv6").status_code == 422
    # NordVPN publishes the field, but this capture has no address in it
    nord = servers_of("nordvpn")[0]
    assert peer_of(real, "nordvpn", nord.identifier, family="ipv6").status_code == 404
    assert listed(real, "nordvpn", family="ipv6").json() == []
    assert len(listed(real, "mullvad", family="ipv6").json()) == 545


def test_a_port_is_one_the_provider_publishes(real):
    mullvad = servers_of("mullvad")[0]
    for port, ok in ((53, True), (4000, True), (51820, True), (60000, True), (51821, False)):
        answer = peer_of(real, "mullvad", mullvad.identifier, port=port)
        assert (answer.status_code == 200) == ok, port
        if ok:
            assert answer.json()["Endpoint"] == f"{mullvad.ipv4}:{port}"
        else:
            assert answer.status_code == 422
            assert "53, 123, 4000-33433, 33565-51820, 52001-60000" in answer.text
    nord = servers_of("nordvpn")[0]
    assert peer_of(real, "nordvpn", nord.identifier, port=443).status_code == 422
    assert peer_of(real, "all", nord.identifier, port=51820).status_code == 422
    airvpn = servers_of("airvpn")[0]
    assert peer_of(real, "airvpn", airvpn.identifier, port=47107).status_code == 200


def test_a_chain_enters_at_via_and_leaves_at_the_exits_multihop_port(real):
    entry, exit_ = servers_of("ivpn")[0], servers_of("ivpn")[-1]
    peer = peer_of(real, "ivpn", exit_.identifier, via=entry.identifier).json()
    assert peer["PublicKey"] == exit_.public_key
    assert peer["Endpoint"] == f"{entry.ipv4}:{exit_.multihop_port}"
    text = httpx.get(
        real.url(f"/api/ivpn/servers/{exit_.identifier}/wireguard"),
        params={"via": entry.identifier},
    ).text
    assert f"via {entry.identifier}" in text
    assert peer_of(real, "ivpn", exit_.identifier, via=exit_.identifier).status_code == 422
    assert peer_of(real, "ivpn", exit_.identifier, via="nowhere.example").status_code == 404
    both = peer_of(real, "ivpn", exit_.identifier, via=entry.identifier, port=53)
    assert both.status_code == 422
    nord = servers_of("nordvpn")
    assert peer_of(real, "nordvpn", nord[0].identifier, via=nord[1].identifier).status_code == 422


# --- each client's format, parsed back --------------------------------------------------------


def routeros_words(line: str) -> dict[str, str]:
    """A RouterOS command's name=value words; a quoted value's \\HH escapes decoded."""
    words = {}
    for name, quoted, plain in re.findall(
        r'([a-z-]+)=(?:"((?:[^"\\]|\\[0-9A-F]{2})*)"|(\S+))', line
    ):
        raw = re.sub(rb"\\([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]), quoted.encode())
        words[name] = raw.decode() if quoted or not plain else plain
    rest = re.sub(r'([a-z-]+)=(?:"(?:[^"\\]|\\[0-9A-F]{2})*"|\S+)', "", line).split()
    assert rest == ["/interface", "wireguard", "peers", "add"], rest
    return words


def uci_options(text: str) -> tuple[str, dict[str, list[str]]]:
    lines = text.splitlines()
    head = shlex.split(lines[0])
    options: dict[str, list[str]] = {}
    for line in lines[1:]:
        kind, name, value = shlex.split(line)
        assert kind in ("option", "list")
        options.setdefault(name, []).append(value)
    return head[1], options


def formats(real, provider: str, identifier: str) -> dict[str, httpx.Response]:
    url = real.url(f"/api/{provider}/servers/{identifier}/wireguard")
    return {name: httpx.get(url, params={"format": name}) for name in configs.FORMATS}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_format_parses_back_to_the_servers_peer(real, provider):
    server = servers_of(provider)[3]
    port = REGISTRY[provider].wireguard_port
    host = server.ipv4 if REGISTRY[provider].endpoint == "ipv4" else server.identifier
    answers = formats(real, provider, server.identifier)
    for name, answer in answers.items():
        assert answer.status_code == 200, name
        assert answer.headers["content-type"].startswith(configs.FORMATS[name].media)
        assert "PRIVATE" not in answer.text or "YOUR_PRIVATE_KEY" in answer.text
    assert json.loads(answers["json"].text)["Endpoint"] == f"{host}:{port}"
    sing = json.loads(answers["sing-box"].text)["endpoints"][0]
    assert sing["type"] == "wireguard"
    assert sing["private_key"] == "YOUR_PRIVATE_KEY"
    assert sing["peers"][0] == {
        "address": host,
        "port": port,
        "public_key": server.public_key,
        "allowed_ips": ["0.0.0.0/0", "::/0"],
        **({"pre_shared_key": "YOUR_PRESHARED_KEY"} if provider == "airvpn" else {}),
    }
    [proxy] = yaml.safe_load(answers["mihomo"].text)["proxies"]
    assert proxy["type"] == "wireguard"
    assert (proxy["server"], proxy["port"], proxy["public-key"]) == (host, port, server.public_key)
    assert proxy["private-key"] == "YOUR_PRIVATE_KEY"
    words = routeros_words(answers["routeros"].text.strip())
    assert words["public-key"] == server.public_key
    assert (words["endpoint-address"], words["endpoint-port"]) == (host, str(port))
    assert words["allowed-address"] == "0.0.0.0/0,::/0"
    section, options = uci_options(answers["uci"].text)
    assert section == "wireguard_wg0"
    assert options["public_key"] == [server.public_key]
    assert options["endpoint_host"] == [host]
    assert options["endpoint_port"] == [str(port)]
    assert options["allowed_ips"] == ["0.0.0.0/0", "::/0"]


def test_wg_quick_strip_reads_the_peer_back(real, tmp_path):
    wg_quick = shutil.which("wg-quick")
    if wg_quick is None:
        pytest.skip("wireguard-tools is not installed (.ci/run installs it)")
    server = servers_of("mullvad")[0]
    peer = formats(real, "mullvad", server.identifier)["wg-quick"].text
    config = tmp_path / "wg0.conf"
    config.write_text("[Interface]\nPrivateKey = " + server.public_key + "\n\n" + peer)
    stripped = subprocess.run([wg_quick, "strip", str(config)], capture_output=True, text=True)
    assert stripped.returncode == 0, stripped.stderr
    assert f"PublicKey = {server.public_key}" in stripped.stdout
    assert f"Endpoint = {server.ipv4}:51820" in stripped.stdout


# --- no field can gain a line, a key or a command ---------------------------------------------


@given(value=st.text())
def test_each_formats_quoting_holds_exactly_the_string(value):
    assert yaml.safe_load(f"k: {configs.yaml_string(value)}") == {"k": value}
    assert shlex.split(configs.uci_string(value)) == [value]
    quoted = configs.routeros_string(value)
    assert re.fullmatch(r'"([A-Za-z0-9 ,._:/+=-]|\\[0-9A-F]{2})*"', quoted)
    decoded = re.sub(rb"\\([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]), quoted[1:-1].encode())
    assert decoded.decode() == value


def hostile(about: str) -> configs.Peering:
    return configs.Peering(
        about=about, public_key="k" * 43 + "=", host="192.0.2.1", port=51820, preshared_key=True
    )


@given(about=st.text())
def test_no_format_gains_a_line_key_or_command(about):
    mullvad = REGISTRY["mullvad"]
    server = Server("mullvad", about, "SE", "se-sto-wg-001", "k" * 43 + "=", ipv4="192.0.2.1")
    try:
        peering = configs.peering(server, mullvad)
    except configs.UnwritableError:
        assert "[" in about or not about.isprintable()
        return
    peer = hostile(peering.about)
    quick = configs.wg_quick(peer).splitlines()
    assert [line.split(" = ")[0] for line in quick if not line.startswith("#")] == [
        "[Peer]",
        "PublicKey",
        "Endpoint",
        "AllowedIPs",
        "PresharedKey",
    ]
    assert json.loads(configs.sing_box(peer))["endpoints"][0]["tag"] == peer.about
    [proxy] = yaml.safe_load(configs.mihomo(peer))["proxies"]
    assert proxy["name"] == peer.about
    assert len(proxy) == 10
    words = routeros_words(configs.routeros(peer).strip())
    assert words["comment"] == peer.about
    assert len(words) == 7
    assert configs.routeros(peer).count("\n") == 1
    _, options = uci_options(configs.uci(peer))
    assert options["description"] == [peer.about]
    assert len(options) == 7


# --- the document -----------------------------------------------------------------------------


def test_the_document_lists_the_new_parameters_with_their_bounds(start_draco, upstreams):
    spec = httpx.get(start_draco({**upstream_env(upstreams), "DEBUG": "true"}).url("/openapi.json"))
    paths = spec.json()["paths"]

    def params(path: str) -> dict[str, dict]:
        return {p["name"]: p for p in paths[path]["get"]["parameters"]}

    mullvad = params("/api/mullvad/servers")
    assert sorted(mullvad["features"]["schema"]["items"]["enum"]) == ["daita", "owned", "quic"]
    assert mullvad["features"]["style"] == "form"
    assert mullvad["features"]["explode"] is False
    assert mullvad["exclude"]["schema"]["maxItems"] == 50
    assert mullvad["exclude_country"]["schema"]["maxItems"] == 50
    assert mullvad["family"]["schema"]["enum"] == ["ipv4", "ipv6"]
    assert re.fullmatch(mullvad["near"]["schema"]["pattern"], "-90,180")
    assert not re.fullmatch(mullvad["near"]["schema"]["pattern"], "90.5,0")
    assert "ipv6" in mullvad["fields"]["schema"]["items"]["enum"]
    assert "features" not in params("/api/airvpn/servers")
    assert "near" not in params("/api/airvpn/servers")
    peer = params("/api/mullvad/servers/{identifier}/wireguard")
    assert peer["port"]["schema"]["anyOf"][2] == {"minimum": 4000, "maximum": 33433}
    assert sorted(peer["format"]["schema"]["enum"]) == sorted(configs.FORMATS)
    assert "via" in params("/api/ivpn/servers/{identifier}/wireguard")
    assert "via" not in peer
    assert "port" not in params("/api/all/servers/{identifier}/wireguard")
    listed = paths["/api/mullvad/servers"]["get"]["responses"]["200"]["content"]
    either = [ref["$ref"] for ref in listed["application/json"]["schema"]["items"]["anyOf"]]
    assert either == ["#/components/schemas/Server", "#/components/schemas/ServerFields"]
    assert spec.json()["components"]["schemas"]["ServerFields"]["required"] == ["identifier"]
