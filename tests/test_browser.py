"""A real browser (headless Chromium) calling draco cross-origin with an API key."""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import KEY, need, upstream_env

PAGE = """<!doctype html><html><body data-result="pending"><script>
fetch("{api}/api/nordvpn/servers?page_size=3", {{headers: {{"X-API-Key": "{key}"}}}})
  .then(r => r.json().then(body => document.body.setAttribute("data-result",
        "status=" + r.status + " servers=" + body.length
        + " remaining=" + r.headers.get("X-RateLimit-Remaining"))))
  .catch(error => document.body.setAttribute("data-result", "refused:" + error.name));
</script></body></html>"""


class PageServer:
    """Serves one page from its own origin; `html` may be set after it starts."""

    def __init__(self, host: str):
        self.html = ""
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = page.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.origin = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def render(url: str) -> str:
    chromium = need("chromium")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    found = re.search(r'data-result="([^"]*)"', dom)
    assert found, dom
    return found.group(1)


@pytest.fixture
def origins(start_draco, upstreams):
    """A page on an allowed origin, one on another origin, and draco allowing only the first."""
    allowed, other = PageServer("127.0.0.1"), PageServer("127.0.0.2")
    draco = start_draco(
        {
            **upstream_env(upstreams),
            "ENABLE_API_KEY_AUTH": "true",
            "API_KEYS": f'["{KEY}"]',
            "CORS_ORIGINS": f'["{allowed.origin}"]',
            "RATE_LIMIT_REQUESTS": "50",
        }
    )
    allowed.html = other.html = PAGE.format(api=draco.base, key=KEY)
    yield allowed, other
    allowed.close()
    other.close()


def test_a_browser_on_an_allowed_origin_reads_the_list_and_the_limit_headers(origins):
    allowed, _ = origins
    assert render(allowed.origin) == "status=200 servers=3 remaining=49"


def test_a_browser_on_another_origin_is_refused(origins):
    _, other = origins
    assert render(other.origin) == "refused:TypeError"
