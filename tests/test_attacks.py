"""The attack suite: a real `draco serve --config conf/hypercorn.toml`, attacked as a
hostile client would, over raw sockets and raw HTTP/2 frames. After each attack a
normal client is still served promptly and the server's memory stays bounded.
Every attack is bounded in count and time, and sent to loopback only."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import hpack
import httpx
import pytest
from conftest import KEY, ROOT, upstream_env
from hyperframe.frame import ContinuationFrame, HeadersFrame, SettingsFrame

CONFIG = ["--config", str(ROOT / "conf" / "hypercorn.toml")]
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MiB = 1 << 20


def environment(upstreams, **extra: str) -> dict[str, str]:
    return {
        **upstream_env(upstreams),
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS": f'["{KEY}"]',
        "RATE_LIMIT_REQUESTS": "50",
        "CORS_ORIGINS": '["https://app.example.com"]',
        "TRUSTED_HOSTS": '["127.0.0.1"]',
        **extra,
    }


@pytest.fixture
def target(start_draco, upstreams):
    """A hardened draco with a warm catalog, and its resident memory before the attack."""
    draco = start_draco(environment(upstreams), args=CONFIG)
    assert (
        httpx.get(draco.url("/api/nordvpn/servers"), headers={"X-API-Key": KEY}).status_code == 200
    )
    draco.rss_before = rss_kb(draco)
    yield draco
    still_served(draco)


def rss_kb(draco) -> int:
    status = Path(f"/proc/{draco.proc.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def still_served(draco, growth_kb: int = 40 * 1024) -> None:
    """A normal client gets its list within a second; memory grew by less than `growth_kb`."""
    started = time.monotonic()
    with httpx.Client(
        timeout=5, transport=httpx.HTTPTransport(local_address="127.0.0.200")
    ) as client:
        response = client.get(draco.url("/api/nordvpn/countries"), headers={"X-API-Key": KEY})
    assert response.status_code == 200
    assert time.monotonic() - started < 1.0
    assert rss_kb(draco) - draco.rss_before < growth_kb


def exchange(draco, request: bytes, source: str = "127.0.0.60", wait: float = 3.0) -> bytes:
    """Send raw bytes and read until the server closes the connection or falls silent."""
    with socket.create_connection(
        (draco.host, draco.port), source_address=(source, 0), timeout=wait
    ) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
    return received


def statuses(raw: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1.1 (\d{3}) ", raw)]


# --- HTTP/1.1 over raw sockets --------------------------------------------------------------


def test_slowloris_holds_no_one_else_up(target):
    """200 connections each trickling an unfinished head, a byte every 0.2 s for 4 s."""
    sockets = []
    for i in range(200):
        sock = socket.create_connection(
            (target.host, target.port), source_address=(f"127.0.3.{i % 250 + 1}", 0)
        )
        sock.sendall(b"GET /api/nordvpn/servers HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sockets.append(sock)
    try:
        for _ in range(20):
            for sock in sockets:
                with contextlib.suppress(OSError):  # the server closed it: fine
                    sock.send(b"a")
            time.sleep(0.2)
        still_served(target)
    finally:
        for sock in sockets:
            sock.close()


def test_a_head_over_16_kib_in_one_read_is_a_431_in_the_envelope_and_the_connection_closes(target):
    request = (
        b"GET /api/nordvpn/servers HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * (20 * 1024)
        + b"\r\n\r\n"
    )
    answer = exchange(target, request)
    assert statuses(answer) == [431]
    assert answer.endswith(b"}")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert json.loads(body)["error"] == "Request Header Fields Too Large"
    assert b"x-frame-options: DENY" in head.lower().replace(b"deny", b"DENY")


@pytest.mark.parametrize(
    ("framing", "answered_by_draco"),
    [
        (
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            True,
        ),  # h11 lets it through: draco refuses
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", False),
    ],  # h11 refuses it itself, before draco
    ids=["TE with CL", "two CL"],
)
def test_ambiguous_framing_is_a_400_and_the_request_smuggled_behind_it_is_never_served(
    target, framing, answered_by_draco
):
    smuggled = (
        b"GET /api/nordvpn/countries HTTP/1.1\r\nHost: x\r\nX-API-Key: "
        + KEY.encode()
        + b"\r\n\r\n"
    )
    request = (
        b"POST /api/nordvpn/servers HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\n" + smuggled
    )
    answer = exchange(target, request)
    assert statuses(answer) == [400]
    assert b"<still open>" not in answer
    assert b"connection: close" in answer.lower()
    assert (b'"error":"Bad Request"' in answer) == answered_by_draco


def test_pipelined_requests_are_answered_in_order(target):
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    two = (
        b"GET /api/nordvpn/countries HTTP/1.1\r\nHost: x\r\nX-API-Key: "
        + KEY.encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    assert statuses(exchange(target, one + two)) == [200, 200]


def test_a_websocket_upgrade_reaches_no_route_and_is_refused_with_the_hardened_headers(target):
    """The layers judge HTTP requests and let a websocket scope pass: safe only while draco
    routes no websocket, so Starlette's router refuses every handshake. The refusal leaves
    through the security-headers layer like any answer: 403, hardened, in the envelope."""
    upgrade = (
        b"GET /api/nordvpn/servers HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-API-Key: "
    )
    answer = exchange(target, upgrade + KEY.encode() + b"\r\n\r\n", wait=1)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert statuses(answer) == [403]
    assert b"\r\nx-frame-options: DENY" in head
    assert b"\r\ncontent-security-policy: " in head
    assert b"\r\nserver:" not in head.lower()
    assert json.loads(body)["error"] == "Forbidden"


def test_connect_is_refused_and_opens_no_tunnel(target):
    answer = exchange(
        target, b"CONNECT victim.example:443 HTTP/1.1\r\nHost: victim.example:443\r\n\r\n", wait=1
    )
    assert statuses(answer)[0] in (400, 404, 405)


# --- HTTP/2 floods with raw frames ----------------------------------------------------------


class H2Attacker:
    """An h2c connection writing raw frames (hyperframe, the h2 project's framing layer) that
    the `h2` library itself refuses to send: headers never ended, streams past the limit."""

    def __init__(self, draco, source: str = "127.0.0.70"):
        self.sock = socket.create_connection(
            (draco.host, draco.port), source_address=(source, 0), timeout=5
        )
        self.sock.sendall(HTTP2_PREFACE + SettingsFrame(0).serialize())
        self.encoder = hpack.Encoder()
        self.closed = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            while self.sock.recv(1 << 16):
                pass
        except OSError:
            pass
        self.closed.set()

    def headers(self, stream: int, end_headers: bool = True, path: str = "/health") -> bytes:
        block = self.encoder.encode(
            [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
        )
        frame = HeadersFrame(stream, block)
        frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return frame.serialize()

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


def test_rapid_reset_of_2000_streams_holds_no_one_else_up(target):
    """CVE-2023-44487: open a stream and cancel it at once, again and again (the h2 library
    itself sends these: each stream is closed before the next opens)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    request = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", "/api/providers"),
    ]
    with socket.create_connection(
        (target.host, target.port), source_address=("127.0.0.71", 0), timeout=5
    ) as sock:
        for stream in range(1, 4001, 2):
            conn.send_headers(stream, request, end_stream=True)
            conn.reset_stream(stream, error_code=8)  # CANCEL
            if stream % 200 == 199:
                sock.sendall(conn.data_to_send())
        sock.sendall(conn.data_to_send())
        still_served(target)


def test_a_continuation_flood_is_cut_off_at_the_header_size_limit(target):
    attacker = H2Attacker(target)
    try:
        sent = 0
        if attacker.send(attacker.headers(1, end_headers=False)):
            junk = ContinuationFrame(1, b"\x00" * 16_000).serialize()  # never END_HEADERS
            while sent < 16 * MiB and attacker.send(junk):
                sent += len(junk)
        attacker.closed.wait(5)
        assert attacker.closed.is_set()  # the server hung up instead of buffering
        still_served(target)
    finally:
        attacker.close()


def test_a_thousand_streams_at_once_are_refused_beyond_the_limit(target):
    attacker = H2Attacker(target)
    try:
        attacker.send(
            b"".join(
                attacker.headers(stream, path="/api/providers") for stream in range(1, 2001, 2)
            )
        )
        time.sleep(1)
        still_served(target)
    finally:
        attacker.close()


def test_a_normal_h2_client_is_served_between_floods(target):
    with httpx.Client(http1=False, http2=True, timeout=5) as client:
        assert client.get(target.url("/health")).http_version == "HTTP/2"


# --- schemathesis over the whole document -----------------------------------------------------


SCHEMATHESIS_TOML = """
[[operations]]
include-path-regex = "/changes$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409",
                                                     "410", "422", "429", "5xx"]

[[operations]]
include-path-regex = "/wireguard$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409",
                                                     "422", "429", "5xx"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429",
                     "431", "5xx"]
"""


@pytest.mark.parametrize("limit", ["off", "on"])
def test_schemathesis_finds_nothing_with_every_check(start_draco, upstreams, tmp_path, limit):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a test dependency"
    # With the limiter on, every answer carries its headers; the limit is set above what
    # the run sends, since over it a request without a key is (by design) a 429 before
    # any key is looked at, where schemathesis expects a 401.
    extra = (
        {"RATE_LIMIT_ENABLED": "false"}
        if limit == "off"
        else {"RATE_LIMIT_REQUESTS": "10000", "RATE_LIMIT_PERIOD": "10", "LATENCY_WEIGHT": "1"}
    )
    env = environment(upstreams, **extra)
    # A well-formed `since=` is a version only if this list had it: one older than the history
    # kept is 410 Gone, one it never had is 422 (both documented), as an unknown identifier is
    # 404 elsewhere.
    # A request whose head is over 16 KiB (schemathesis fills queries with long strings) is
    # refused with 431 (RFC 6585) before a parameter is read: a rejection, as a 422 is.
    # A peer asks what the server's provider must answer: a chain entering and leaving at
    # one server, or a family its list lacks, is a 422 only the server's lookup can tell.
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_TOML)
    # conf/hypercorn.toml, but with room for every request of the run in one worker's life
    hypercorn = (ROOT / "conf" / "hypercorn.toml").read_text()
    config = tmp_path / "hypercorn.toml"
    config.write_text(hypercorn.replace("max_requests = 10000", "max_requests = 100000"))
    schema = tmp_path / "openapi.json"
    schema.write_text(httpx.get(start_draco({**env, "DEBUG": "true"}).url("/openapi.json")).text)
    draco = start_draco(env, args=["--config", str(config)])
    run = subprocess.run(
        [
            st,
            "run",
            str(schema),
            "--url",
            draco.base,
            "--checks",
            "all",
            "--header",
            f"X-API-Key: {KEY}",
            "--max-examples",
            "30",
            "--request-timeout",
            "30",
            "--max-response-time",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


# --- what hypercorn answers itself, as the README says ----------------------------------------

HYPERCORN_ANSWERS = [
    (
        "a malformed request line or header, a missing `Host`",
        b"GET /api/nord vpn HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    ),
    ("a malformed request line or header, a missing `Host`", b"GET /health HTTP/1.1\r\n\r\n", 400),
    (
        "two `Content-Length` headers with different values",
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    (
        "a `Transfer-Encoding` other than `chunked`",
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    (
        "a request head still incomplete after 16 KiB",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17_000,
        431,
    ),
]


@pytest.mark.parametrize(("row", "request_bytes", "status"), HYPERCORN_ANSWERS)
def test_the_readme_names_each_error_hypercorn_answers_before_draco(
    target, row, request_bytes, status
):
    answer = exchange(target, request_bytes)
    assert statuses(answer) == [status]
    assert answer.endswith(b"\r\n\r\n")
    assert f"| {row}" in (ROOT / "README.md").read_text()
