"""`draco serve` as users run it: demo mode, TLS with HTTP/2, logs."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import sys

import httpx
from conftest import KEY, upstream_env
from hypothesis import given
from hypothesis import strategies as st

from draco.logs import JsonFormatter, TextFormatter


def test_demo_mode_serves_sample_data_with_no_network(start_draco):
    # Upstream URLs point at a closed port: demo mode must never use them.
    draco = start_draco(
        {"NORDVPN_API_URL": "http://127.0.0.1:9/x", "SURFSHARK_API_URL": "http://127.0.0.1:9/y"},
        args=["--demo"],
    )
    for provider in ("nordvpn", "surfshark"):
        servers = httpx.get(draco.url(f"/api/{provider}/servers")).json()
        assert len(servers) > 10
        assert all(s["identifier"].endswith(".example") for s in servers)
    assert "SAMPLE data" in draco.logs()


def test_tls_serves_http2_by_alpn_and_http1_to_older_clients(start_draco, certificate):
    cert, key = certificate
    draco = start_draco(args=["--demo", "--certfile", str(cert), "--keyfile", str(key)])
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(http2=True, verify=context) as h2:
        response = h2.get(draco.url("/api/nordvpn/servers"))
        assert response.status_code == 200
        assert response.http_version == "HTTP/2"
    with httpx.Client(verify=context) as h1:
        assert h1.get(draco.url("/health")).http_version == "HTTP/1.1"


def test_json_logs_are_one_valid_object_per_line_whatever_the_message(start_draco, upstreams):
    env = {
        **upstream_env(upstreams),
        "LOG_FORMAT": "json",
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS": f'["{KEY}"]',
    }
    draco = start_draco(env)
    nasty = '/api/x"\n{"level": "CRITICAL"}\\ü€'
    httpx.get(draco.url("/api/nordvpn/servers"), headers={"X-API-Key": KEY})
    httpx.get(draco.url(nasty.replace("\n", "%0A")))
    draco.stop()
    lines = [line for line in draco.logs().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any(nasty in r["message"] for r in records)
    assert {"time", "level", "logger", "message"} <= set(records[0])


def test_text_logs_escape_line_breaks_from_clients(start_draco, upstreams):
    draco = start_draco(
        {**upstream_env(upstreams), "ENABLE_API_KEY_AUTH": "true", "API_KEYS": f'["{KEY}"]'}
    )
    httpx.get(draco.url("/api/forged%0A2026-01-01 CRITICAL fake line"))
    httpx.get(
        draco.url("/api/x%E2%80%A82026-12-04%2014:00:00,000%20CRITICAL%20draco.security:%20FORGED")
    )
    logs = draco.logs()
    assert "\\n2026-01-01 CRITICAL fake line" in logs
    assert "\\u20282026-12-04 14:00:00,000 CRITICAL" in logs
    assert not [
        line for line in logs.splitlines() if "CRITICAL" in line.split(":")[0]
    ]  # no forged record


def record(message: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(
        "draco.security", logging.WARNING, __file__, 1, "refused on %s", (message,), exc_info
    )


@given(st.text())
def test_whatever_a_client_sends_a_record_is_one_line_without_controls_in_both_formats(text):
    try:
        raise ValueError(text)
    except ValueError:
        failure = sys.exc_info()
    for made in (record(text), record(text, failure)):
        for formatter in (
            TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"),
            JsonFormatter(),
        ):
            line = formatter.format(made)
            assert len(line.splitlines()) == 1
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line)  # C0, DEL, C1
    assert json.loads(JsonFormatter().format(record(text)))["message"] == f"refused on {text}"


def test_keygen_prints_n_keys_of_64_hex_characters():
    result = subprocess.run(
        [sys.executable, "-m", "draco", "keygen", "-n", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    keys = result.stdout.split()
    assert len(keys) == 3
    assert len(set(keys)) == 3
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in keys)
