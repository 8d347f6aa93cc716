"""The catalog through a real process: single flight, the size cap, upstream errors."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import socketserver
import threading
import time
import zlib

import httpx
import pytest
from conftest import demo_payload, upstream_env
from fake_upstream import FakeUpstream, free_port, wait_for_port
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from draco.providers import REGISTRY

MiB = 1 << 20


async def _burst(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(client.get(url) for _ in range(n)))


def test_fifty_concurrent_cold_requests_make_one_upstream_request(start_draco, upstreams):
    draco = start_draco(upstream_env(upstreams))
    responses = asyncio.run(_burst(draco.url("/api/nordvpn/servers"), 50))
    assert [r.status_code for r in responses] == [200] * 50
    assert upstreams["nordvpn"].hits == 1


class TLSUpstream:
    """A provider API over TLS on 127.0.0.1: hypercorn in a thread, HTTP/2 offered by ALPN.
    It keeps the HTTP version of each request it answered."""

    def __init__(self, body: bytes, certificate):
        self.versions: list[str] = []
        self.stopping = threading.Event()

        async def servers(request):
            self.versions.append(request.scope["http_version"])
            return Response(body, media_type="application/json")

        async def stopped():
            await asyncio.get_running_loop().run_in_executor(None, self.stopping.wait)

        config, port = Config(), free_port()
        config.bind, (config.certfile, config.keyfile) = (
            [f"127.0.0.1:{port}"],
            map(str, certificate),
        )
        app = Starlette(routes=[Route("/servers", servers)])
        self.thread = threading.Thread(
            target=asyncio.run, args=(serve(app, config, shutdown_trigger=stopped),)
        )
        self.thread.start()
        wait_for_port("127.0.0.1", port)
        self.url = f"https://127.0.0.1:{port}/servers"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(10)


def test_the_upstream_certificate_is_verified_and_http2_is_spoken(start_draco, certificate):
    """TLS verification is always on: an upstream whose certificate is not trusted is a failed
    refresh. Trusted (here by SSL_CERT_FILE, as a private CA would be), it is asked over HTTP/2."""
    with TLSUpstream(demo_payload("nordvpn"), certificate) as upstream:
        untrusted = start_draco({"NORDVPN_API_URL": upstream.url})
        refused = httpx.get(untrusted.url("/api/nordvpn/servers"))
        failure = httpx.get(untrusted.url("/health")).json()["providers"]["nordvpn"]["last_failure"]
        assert (refused.status_code, failure, upstream.versions) == (503, "connection", [])
        trusted = start_draco(
            {"NORDVPN_API_URL": upstream.url, "SSL_CERT_FILE": str(certificate[0])}
        )
        served = httpx.get(trusted.url("/api/nordvpn/servers"))
        assert served.status_code == 200
        assert len(served.json()) > 0
        assert upstream.versions == ["2"]
        trusted.stop()  # its connection would hold the upstream's shutdown open


class TunnelProxy(socketserver.ThreadingTCPServer):
    """A forward proxy that only opens CONNECT tunnels, as an egress proxy does for https.
    It keeps each tunnel's target; it sees nothing of what passes through."""

    daemon_threads = allow_reuse_address = True

    def __init__(self):
        self.tunnels: list[str] = []
        super().__init__(("127.0.0.1", 0), _Tunnel)
        threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Tunnel(socketserver.StreamRequestHandler):
    def handle(self):
        target = self.rfile.readline().split()[1].decode()  # CONNECT host:port HTTP/1.1
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.server.tunnels.append(target)
        host, _, port = target.rpartition(":")
        with socket.create_connection((host, int(port))) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            ends = {self.connection: upstream, upstream: self.connection}
            while ready := select.select(list(ends), [], [], 5)[0]:
                for end in ready:
                    if not (data := end.recv(65536)):
                        return
                    ends[end].sendall(data)


def test_an_https_upstream_is_reached_through_the_proxys_tunnel_its_certificate_verified(
    start_draco, certificate
):
    proxy = TunnelProxy()
    with TLSUpstream(demo_payload("nordvpn"), certificate) as upstream:
        env = {
            "NORDVPN_API_URL": upstream.url,
            "HTTPS_PROXY": proxy.url,
            "READY_PROVIDERS": '["nordvpn"]',
        }
        assert (
            httpx.get(start_draco(env).url("/api/nordvpn/servers")).status_code == 503
        )  # CA not trusted
        trusted = start_draco({**env, "SSL_CERT_FILE": str(certificate[0])})
        assert httpx.get(trusted.url("/api/nordvpn/servers")).status_code == 200
        assert proxy.tunnels == [upstream.url.split("/")[2]] * 2
        assert upstream.versions == ["2"]
        trusted.stop()
    proxy.shutdown()


def test_the_upstream_requests_go_through_the_proxy_the_environment_names(start_draco):
    """httpx's convention: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY route the upstream requests,
    NO_PROXY exempts hosts. Here the proxy answers for an upstream no one listens on."""
    proxy = FakeUpstream(demo_payload("nordvpn"))
    try:
        unreachable = "http://127.0.0.1:9/servers"
        env = {
            "NORDVPN_API_URL": unreachable,
            "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
            "READY_PROVIDERS": '["nordvpn"]',
        }
        assert httpx.get(start_draco(env).url("/api/nordvpn/servers")).status_code == 200
        assert [path.partition("?")[0] for path, _ in proxy.requests] == [
            unreachable
        ]  # a proxy's absolute form
        exempt = start_draco({**env, "NO_PROXY": "127.0.0.1"})
        assert httpx.get(exempt.url("/api/nordvpn/servers")).status_code == 503
        assert proxy.hits == 1
    finally:
        proxy.stop()


def test_the_upstream_query_asks_for_wireguard_and_the_limit(start_draco, upstreams):
    draco = start_draco({**upstream_env(upstreams), "NORDVPN_SERVER_LIMIT": "500"})
    httpx.get(draco.url("/api/nordvpn/servers"))
    [(path, headers)] = upstreams["nordvpn"].requests
    query = httpx.URL(path).params
    assert query["filters[servers_technologies][identifier]"] == "wireguard_udp"
    assert query["limit"] == "500"
    assert headers["User-Agent"].startswith("draco/")


def test_a_300_mb_upstream_body_is_a_503_and_memory_stays_bounded(start_draco, upstreams):
    upstreams["nordvpn"].set("huge", size=300 * MiB)
    draco = start_draco({**upstream_env(upstreams), "UPSTREAM_MAX_BYTES": str(8 * MiB)})
    before = draco.rss_peak_kb()
    response = httpx.get(draco.url("/api/nordvpn/servers"), timeout=60)
    assert response.status_code == 503
    assert response.json() == {
        "error": "Service Unavailable",
        "message": "The server list is temporarily unavailable. Try again later.",
    }
    assert draco.rss_peak_kb() - before < 40 * 1024  # the 8 MiB cap plus slack, never the 300 MB
    assert "oversized" in httpx.get(draco.url("/health")).text


def gzip_of(chunks, layers: int = 1) -> bytes:
    """`chunks`, gzipped `layers` times over, compressed as they come."""
    for _ in range(layers):
        packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        chunks = [b"".join([*(packer.compress(chunk) for chunk in chunks), packer.flush()])]
    return chunks[0]


@pytest.mark.parametrize("members", [1, 3])
def test_a_gzipped_list_is_inflated_and_served(start_draco, upstreams, members):
    """One gzip member, or several one after another (RFC 1952), which httpx would cut to the
    first."""
    payload = demo_payload("nordvpn")
    parts = [
        payload[i * len(payload) // members : (i + 1) * len(payload) // members]
        for i in range(members)
    ]
    upstreams["nordvpn"].set(
        "ok", body=b"".join(gzip_of([part]) for part in parts), headers={"Content-Encoding": "gzip"}
    )
    draco = start_draco(upstream_env(upstreams))
    served = httpx.get(draco.url("/api/nordvpn/servers/paginated")).json()["total"]
    assert served == len(REGISTRY["nordvpn"].parse(payload)[0]) > 0  # as if it came uncompressed
    assert (
        upstreams["nordvpn"].requests[0][1]["Accept-Encoding"] == "gzip"
    )  # the one encoding it inflates


@pytest.mark.parametrize(
    ("layers", "encoding", "failure"),
    [(1, "gzip", "oversized"), (2, "gzip, gzip", "unsupported_encoding")],
)
def test_a_gzip_bomb_is_refused_within_the_cap(start_draco, upstreams, layers, encoding, failure):
    """1 GiB of zeros in 1 MB of gzip, or in 2 KB of gzip twice over: httpx's own decoders
    would inflate each chunk whole (over 2 GiB for the second) before any cap was checked."""
    bomb = gzip_of((bytes(16 * MiB) for _ in range(64)), layers)
    upstreams["nordvpn"].set("ok", body=bomb, headers={"Content-Encoding": encoding})
    draco = start_draco(
        {
            **upstream_env(upstreams),
            "UPSTREAM_MAX_BYTES": str(8 * MiB),
            "READY_PROVIDERS": '["ivpn"]',
        }
    )
    before = draco.rss_peak_kb()
    assert httpx.get(draco.url("/api/nordvpn/servers"), timeout=60).status_code == 503
    assert (
        draco.rss_peak_kb() - before < 24 * 1024
    )  # the 8 MiB cap and a MiB of inflation, with slack
    assert httpx.get(draco.url("/health")).json()["providers"]["nordvpn"]["last_failure"] == failure


@pytest.mark.parametrize(
    "broken",
    [lambda body: body[:-64], lambda body: body[16:], lambda body: body + b"\0" * 8],
    ids=["cut short", "corrupt", "trailing bytes"],
)
def test_a_broken_gzip_stream_is_refused(start_draco, upstreams, broken):
    body = broken(gzip_of([demo_payload("nordvpn")]))
    upstreams["nordvpn"].set("ok", body=body, headers={"Content-Encoding": "gzip"})
    draco = start_draco(upstream_env(upstreams))
    assert httpx.get(draco.url("/api/nordvpn/servers")).status_code == 503
    assert (
        httpx.get(draco.url("/health")).json()["providers"]["nordvpn"]["last_failure"]
        == "invalid_encoding"
    )


def test_a_declared_length_over_the_cap_is_refused_without_reading(start_draco, upstreams):
    # The upstream declares 2 MiB and sends nothing: reading would wait for the deadline.
    upstreams["surfshark"].set("declared", size=2 * MiB)
    draco = start_draco(
        {**upstream_env(upstreams), "UPSTREAM_MAX_BYTES": str(MiB), "HTTP_TIMEOUT": "20"}
    )
    started = time.monotonic()
    assert httpx.get(draco.url("/api/surfshark/servers"), timeout=30).status_code == 503
    assert time.monotonic() - started < 5
    assert (
        httpx.get(draco.url("/health")).json()["providers"]["surfshark"]["last_failure"]
        == "oversized"
    )


@pytest.mark.parametrize(
    ("mode", "options"),
    [("status", {"status": 500}), ("status", {"status": 404}), ("refused", {}), ("html", {})],
)
def test_upstream_failure_on_a_cold_cache_is_a_bare_503(start_draco, upstreams, mode, options):
    upstreams["nordvpn"].set(mode, **options)
    draco = start_draco(upstream_env(upstreams))
    response = httpx.get(draco.url("/api/nordvpn/servers"))
    if mode == "html":  # a 200 that is not the list: a data error
        assert response.status_code == 500
        assert response.json() == {
            "error": "Internal Server Error",
            "message": "An internal error occurred.",
        }
    else:
        assert response.status_code == 503
        assert response.json()["error"] == "Service Unavailable"
    for secret in ("127.0.0.1", "/servers", "upstream failure", "maintenance", "Traceback"):
        assert secret not in response.text


def test_a_payload_of_the_wrong_shape_on_a_cold_cache_is_a_generic_500(start_draco, upstreams):
    upstreams["surfshark"].set("ok", body=json.dumps({"clusters": []}).encode())
    draco = start_draco(upstream_env(upstreams))
    response = httpx.get(draco.url("/api/surfshark/servers"))
    assert response.status_code == 500
    assert response.json() == {
        "error": "Internal Server Error",
        "message": "An internal error occurred.",
    }
    assert response.headers["cache-control"] == "no-store"


def test_a_payload_nested_past_the_decoders_depth_is_invalid_data_not_a_crash(
    start_draco, upstreams
):
    upstreams["nordvpn"].set("ok", body=b'[{"hostname":' + b"[" * 5000 + b"]" * 5000 + b"}]")
    draco = start_draco(upstream_env(upstreams))
    response = httpx.get(draco.url("/api/nordvpn/servers"))
    assert response.status_code == 500
    assert response.json()["message"] == "An internal error occurred."
    assert (
        httpx.get(draco.url("/health")).json()["providers"]["nordvpn"]["last_failure"]
        == "invalid_data"
    )
    assert "Traceback" not in draco.logs()
    assert "RecursionError" not in draco.logs()


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_slow_upstream_hits_the_deadline(start_draco, upstreams, mode):
    """HTTP_TIMEOUT bounds the whole exchange: a body sent a byte a second trips no
    per-read timeout, but is cut at the deadline all the same."""
    upstreams["nordvpn"].set(mode)
    draco = start_draco({**upstream_env(upstreams), "HTTP_TIMEOUT": "5"})
    started = time.monotonic()
    response = httpx.get(draco.url("/api/nordvpn/servers"), timeout=30)
    assert response.status_code == 503
    assert time.monotonic() - started < 8
    assert (
        httpx.get(draco.url("/health")).json()["providers"]["nordvpn"]["last_failure"] == "timeout"
    )
