"""A fake provider API: a real HTTP/1.1 server on a loopback port, for tests and benchmarks.

One instance plays one provider. Its behaviour can be switched while it runs:

    ok         the configured body (200), honouring If-None-Match and
               If-Modified-Since (when a Last-Modified header is set) with 304
    delay      the same, after `delay` seconds
    status     an error status, optionally with Retry-After
    html       a 200 HTML maintenance page
    hang       accept the request and never answer (until stopped)
    truncated  declare the full length, send half the body, close
    huge       stream `size` bytes of a never-ending JSON array, no length declared
    declared   declare a length of `size` bytes, then send nothing (until stopped)
    trickle    send the body one byte a second
    refused    close the listening socket: connections are refused

It counts the requests it received (`hits`) and keeps their paths and headers (`requests`).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeUpstream:
    def __init__(self, body: bytes = b"[]", host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.hits = 0
        self.requests: list[tuple[str, dict]] = []  # (path with query, headers)
        self._configure("ok", body=body)
        self._server: _Server | None = self._listen(port)
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/servers"

    def set(self, mode: str, **options):
        """Switch behaviour (see the module docstring); body, status, headers, size as needed."""
        self._configure(mode, **options)
        if mode == "refused" and self._server is not None:
            self._stop_server()
        elif mode != "refused" and self._server is None:
            self._server = self._listen(self.port)

    def _configure(
        self,
        mode: str,
        *,
        body: bytes | None = None,
        status: int = 503,
        headers=None,
        size: int = 0,
        delay: float = 0,
    ):
        with self.lock:
            if body is not None:
                self.body = body
                self.etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            self.mode, self.status, self.headers, self.size = (
                mode,
                status,
                dict(headers or {}),
                size,
            )
            self.delay = delay

    def _listen(self, port: int) -> _Server:
        server = _Server((self.host, port), self._handler())
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return server

    def _stop_server(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._stop_server()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _handler(self):  # noqa: C901 - one handler class, a method per failure mode
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with upstream.lock:
                    upstream.hits += 1
                    upstream.requests.append((self.path, dict(self.headers)))
                    mode, body, etag, status = (
                        upstream.mode,
                        upstream.body,
                        upstream.etag,
                        upstream.status,
                    )
                    extra, size, delay = upstream.headers, upstream.size, upstream.delay
                if mode == "delay":
                    upstream.stopping.wait(delay)
                    mode = "ok"
                getattr(self, f"_{mode}")(
                    body=body, etag=etag, status=status, extra=extra, size=size
                )

            def _send(self, status: int, body: bytes, headers: dict, length: int | None = None):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def _ok(self, body, etag, extra, **_):
                headers = {"Content-Type": "application/json", "ETag": etag, **extra}
                modified = extra.get("Last-Modified")
                if self.headers.get("If-None-Match") == etag or (
                    modified and self.headers.get("If-Modified-Since") == modified
                ):
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._send(200, body, headers)

            def _status(self, status, extra, **_):
                self._send(
                    status,
                    b'{"error":"upstream failure"}',
                    {"Content-Type": "application/json", **extra},
                )

            def _html(self, **_):
                page = b"<html><body><h1>Down for maintenance</h1></body></html>"
                self._send(200, page, {"Content-Type": "text/html"})

            def _hang(self, **_):
                upstream.stopping.wait(300)
                self.close_connection = True

            def _truncated(self, body, **_):
                self._send(
                    200,
                    body[: len(body) // 2],
                    {"Content-Type": "application/json"},
                    length=len(body),
                )
                self.close_connection = True

            def _huge(self, size, **_):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b'{"hostname":"x.example","status":"online","load":1},' * 1000
                self.wfile.write(b"[")
                sent = 1
                try:
                    while sent < size and not upstream.stopping.is_set():
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except OSError:
                    pass  # the client hung up, as it should
                self.close_connection = True

            def _declared(self, size, **_):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.flush()
                upstream.stopping.wait(300)
                self.close_connection = True

            def _trickle(self, body, **_):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(len(body)):
                        if upstream.stopping.wait(1.0):
                            break
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True

        return Handler


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")
