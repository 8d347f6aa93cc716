"""Operations: the container, hypercorn's config, a real nginx in front, `draco check`,
key rotation without restart, /metrics, HTTP/3 and the systemd unit."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import KEY, OTHER_KEY, ROOT, eventually, need, upstream_env
from fake_upstream import free_port, wait_for_port

CONF = ROOT / "conf"


# --- the container ---------------------------------------------------------------------


def test_the_containerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Containerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_silenced_hadolint_rule_says_why():
    lines = (ROOT / "Containerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#"), "an ignore needs a reason above it"
            assert "hadolint" not in lines[i - 1], "an ignore needs a reason above it"


def test_the_container_runs_as_65532_with_the_production_defaults():
    text = (ROOT / "Containerfile").read_text()
    assert "USER 65532:65532" in text
    assert "--shell /usr/sbin/nologin" in text
    for setting in (
        "DEBUG=false",
        "ENABLE_API_KEY_AUTH=true",
        "ENABLE_SECURITY_HEADERS=true",
        "RATE_LIMIT_ENABLED=true",
        "LOG_LEVEL=WARNING",
    ):
        assert setting in text
    assert 'ENTRYPOINT ["draco", "serve", "--bind", "0.0.0.0:8000"' in text
    assert "HEALTHCHECK" in text
    assert "curl" not in text
    assert 'VOLUME ["/var/lib/draco"]' in text


def _engine() -> str | None:
    for engine in ("podman", "docker"):
        if (
            shutil.which(engine)
            and subprocess.run([engine, "info"], capture_output=True).returncode == 0
        ):
            return engine
    return None


def test_the_image_builds_and_serves_where_a_container_engine_runs():
    engine = _engine()
    if engine is None:
        pytest.skip(
            "no working container engine here "
            "(podman and docker cannot run containers on this machine)"
        )
    subprocess.run(
        [engine, "build", "-t", "draco-test", "-f", "Containerfile", "."], cwd=ROOT, check=True
    )
    result = subprocess.run(
        [engine, "run", "--rm", "draco-test", "--help"], capture_output=True, text=True
    )
    assert "serve" in result.stdout


def test_the_healthcheck_one_liner_works_against_a_running_draco(start_draco):
    draco = start_draco(args=["--demo"])
    command = re.search(
        r'CMD \["python", "-c", "(.+)"\]', (ROOT / "Containerfile").read_text()
    ).group(1)
    command = command.replace("http://127.0.0.1:8000", draco.base)
    assert subprocess.run([sys.executable, "-c", command]).returncode == 0
    draco.stop()
    assert subprocess.run([sys.executable, "-c", command], capture_output=True).returncode != 0


# --- hypercorn's configuration ---------------------------------------------------------------


def test_the_example_hypercorn_config_is_read(start_draco):
    draco = start_draco(args=["--demo", "--config", str(CONF / "hypercorn.toml")])
    assert httpx.get(draco.url("/health")).status_code == 200
    # h11_max_incomplete_size = 16384: a request head still incomplete past 16 KiB is refused.
    with socket.create_connection((draco.host, draco.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"x" * 20_000)
        assert sock.recv(1024).split(b" ")[1] in (b"400", b"431")


def test_a_root_path_in_the_config_routes_nothing_around_the_key_check(start_draco, tmp_path):
    """With hypercorn's root_path, /draco/api/... reaches the same routes as /api/..., and the
    same key check: a real hypercorn, the path prefixed and not."""
    config = tmp_path / "hypercorn.toml"
    config.write_text('root_path = "/draco"\n')
    keyed = {"ENABLE_API_KEY_AUTH": "true", "API_KEYS": f'["{KEY}"]'}
    draco = start_draco(keyed, args=["--demo", "--config", str(config)])
    for path in ("/draco/api/nordvpn/countries", "/api/nordvpn/countries"):
        assert httpx.get(draco.url(path)).status_code == 401
        assert httpx.get(draco.url(path), headers={"X-API-Key": KEY}).status_code == 200


def test_max_requests_ends_the_process_for_its_supervisor(start_draco, tmp_path):
    config = tmp_path / "hypercorn.toml"
    config.write_text("max_requests = 20\nmax_requests_jitter = 5\n")
    draco = start_draco(args=["--demo", "--config", str(config)])
    served = 0
    with httpx.Client() as client:
        while served < 40:
            try:
                client.get(draco.url("/health"), headers={"Connection": "close"})
            except httpx.TransportError:
                break
            served += 1
    assert 20 <= served <= 26
    assert draco.proc.wait(10) == 0
    assert "served max_requests" in draco.logs()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("keep_alive_timeout = ", "cannot read"),
        ("keep_alive_timout = 5", "keep_alive_timout"),
        ('bind = "0.0.0.0:80"', "bind"),
    ],
)
def test_a_bad_hypercorn_config_stops_start_up(tmp_path, content, problem):
    config = tmp_path / "bad.toml"
    config.write_text(content + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "draco", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--config:" in result.stderr
    assert problem in result.stderr


def test_http3_starts_on_the_quic_bind_and_answers(start_draco, certificate):
    cert, key = certificate
    port = free_port()
    draco = start_draco(
        args=[
            "--demo",
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
            "--quic-bind",
            f"127.0.0.1:{port}",
        ]
    )
    context = ssl.create_default_context(cafile=str(cert))
    assert (
        httpx.get(draco.url("/health"), verify=context).headers["alt-svc"]
        == f'h3=":{port}"; ma=3600'
    )
    client = need("gtlsclient")
    result = subprocess.run(
        [
            client,
            "--exit-on-all-streams-close",
            "127.0.0.1",
            str(port),
            f"https://127.0.0.1:{port}/health",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "[:status: 200]" in result.stdout + result.stderr


# --- a real reverse proxy --------------------------------------------------------------------


def _nginx_conf(prefix: Path, draco_port: int, https_port: int, http_port: int, cert, key) -> Path:
    text = (CONF / "nginx.conf").read_text()
    replacements = {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{draco_port};",
        "/etc/ssl/certs/api.example.com.pem": str(cert),
        "/etc/ssl/private/api.example.com.key": str(key),
        "/run/nginx-draco.pid": str(prefix / "nginx.pid"),
        "/var/log/nginx/draco.error.log": str(prefix / "error.log"),
        "/var/log/nginx/draco.access.log": str(prefix / "access.log"),
    }
    for old, new in replacements.items():
        assert old in text, f"conf/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


@pytest.fixture
def behind_nginx(start_draco, upstreams, certificate, tmp_path):
    nginx = need("nginx")
    cert, key = certificate
    env = {
        **upstream_env(upstreams),
        "TRUSTED_HOSTS": '["127.0.0.1"]',
        "RATE_LIMIT_REQUESTS": "10",
        "RATE_LIMIT_PERIOD": "60",
        "DEBUG": "true",  # /docs exists at draco: the proxy must hide it
    }
    draco = start_draco(env)
    https_port, http_port = free_port(), free_port()
    conf = _nginx_conf(tmp_path, draco.port, https_port, http_port, cert, key)
    tested = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stderr
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.PIPE
    )
    wait_for_port("127.0.0.1", https_port)
    yield (
        draco,
        f"https://127.0.0.1:{https_port}",
        ssl.create_default_context(cafile=str(cert)),
        tested,
    )
    proc.terminate()
    proc.wait(10)


def test_nginx_config_passes_nginx_t(behind_nginx):
    *_, tested = behind_nginx
    assert "syntax is ok" in tested.stderr
    assert "test is successful" in tested.stderr


def _through(base: str, context, source: str, headers=None) -> list[int]:
    transport = httpx.HTTPTransport(local_address=source, verify=context)
    with httpx.Client(transport=transport, base_url=base) as client:
        return [
            client.get("/api/nordvpn/countries", headers=headers).status_code for _ in range(11)
        ]


def test_through_nginx_each_client_has_its_own_limit_and_forging_changes_nothing(behind_nginx):
    _, base, context, _ = behind_nginx
    assert _through(base, context, "127.0.0.2") == [200] * 10 + [429]
    assert _through(base, context, "127.0.0.3")[:10] == [200] * 10  # another client, another window
    forged = _through(base, context, "127.0.0.2", {"X-Forwarded-For": "203.0.113.50"})
    assert forged == [429] * 11  # still 127.0.0.2: the forged entry stands left of nginx's own


def test_nginx_hides_the_docs_even_in_debug_mode(behind_nginx):
    draco, base, context, _ = behind_nginx
    assert httpx.get(draco.url("/docs")).status_code == 200  # draco serves it on loopback
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"):
        assert httpx.get(base + path, verify=context).status_code == 404


def test_the_caddyfile_adapts():
    caddy = need("caddy")
    result = subprocess.run(
        [caddy, "adapt", "--config", str(CONF / "Caddyfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert '"handler":"reverse_proxy"' in result.stdout.replace(" ", "")


# --- draco check --------------------------------------------------------------------------


def _keyfile(folder: Path, mode: int = 0o600) -> Path:
    path = folder / "api_keys"
    path.write_text(f"{KEY}\n")
    path.chmod(mode)
    return path


PASSING = {
    "DEBUG": "false",
    "ENABLE_API_KEY_AUTH": "true",
    "ENABLE_SECURITY_HEADERS": "true",
    "RATE_LIMIT_ENABLED": "true",
    "CORS_ORIGINS": '["https://app.example.com"]',
    "LOG_LEVEL": "WARNING",
    "TRUSTED_HOSTS": '["127.0.0.1"]',
}

FAILURES = [
    ({"DEBUG": "true"}, (), "DEBUG is off"),
    ({"ENABLE_API_KEY_AUTH": "false"}, (), "API key authentication is on"),
    ({"ENABLE_SECURITY_HEADERS": "false"}, (), "security headers are on"),
    ({"RATE_LIMIT_ENABLED": "false"}, (), "rate limiting is on"),
    ({"CORS_ORIGINS": '["http://app.example.com"]'}, (), "CORS origins are explicit https origins"),
    ({"LOG_LEVEL": "INFO"}, (), "LOG_LEVEL is WARNING or ERROR"),
    ({"TRUSTED_HOSTS": '["0.0.0.0/0"]'}, (), "TRUSTED_HOSTS names only your proxies"),
    ({"TRUSTED_HOSTS": '["::/0"]'}, (), "TRUSTED_HOSTS names only your proxies"),
    ({}, ("--bind", "0.0.0.0:8000"), "plain HTTP is served on loopback"),
    (
        {"CATALOG_STORAGE": "redis://127.0.0.1:6379/0"},
        (),
        "Redis, where used, is reached with a password",
    ),
    (
        {"RATE_LIMIT_STORAGE": "rediss://redis.internal/0"},
        (),
        "Redis, where used, is reached with a password",
    ),
    ({"LATENCY_ALLOW_PRIVATE": "true"}, (), "LATENCY_ALLOW_PRIVATE is off"),
]


def _check(env: dict, args=(), folder: Path | None = None, key_mode: int = 0o600):
    env = {"PATH": "/usr/bin:/bin", **PASSING, **env}
    if folder is not None:
        env["API_KEYS_FILE"] = str(_keyfile(folder, key_mode))
    return subprocess.run(
        [sys.executable, "-m", "draco", "check", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_check_passes_a_production_configuration(tmp_path):
    result = _check({}, folder=tmp_path)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == 11
    assert all(line.startswith("PASS") for line in lines)


@pytest.mark.parametrize(("env", "args", "item"), FAILURES)
def test_check_fails_each_item_with_its_fix(tmp_path, env, args, item):
    result = _check(env, args, folder=tmp_path)
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1
    assert item in failed[0]
    assert "fix:" in result.stdout


def test_check_fails_a_key_file_others_can_read(tmp_path):
    result = _check({}, folder=tmp_path, key_mode=0o644)
    assert result.returncode == 1
    assert "FAIL  files holding API keys" in result.stdout
    assert "chmod 600" in result.stdout


def test_check_looks_at_keys_in_an_env_file_too(tmp_path):
    env_file = tmp_path / "draco.env"
    env_file.write_text(f'API_KEYS=["{KEY}"]\n')
    env_file.chmod(0o644)
    env = {"PATH": "/usr/bin:/bin", **PASSING}
    result = subprocess.run(
        [sys.executable, "-m", "draco", "check", "--env-file", str(env_file)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "FAIL  files holding API keys" in result.stdout


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:6379/0",
        "rediss://draco:s3cret@redis.internal/0",
        "unix:///run/redis/redis.sock",
    ],
)
def test_check_accepts_redis_behind_a_password_or_a_socket(tmp_path, url):
    result = _check({"RATE_LIMIT_STORAGE": url, "CATALOG_STORAGE": url}, folder=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "s3cret" not in result.stdout + result.stderr


def test_check_accepts_tls_on_draco_itself(tmp_path, certificate):
    cert, key = certificate
    result = _check(
        {},
        ("--bind", "0.0.0.0:8443", "--certfile", str(cert), "--keyfile", str(key)),
        folder=tmp_path,
    )
    assert result.returncode == 0, result.stdout


def test_check_refuses_an_invalid_configuration_with_status_2():
    result = subprocess.run(
        [sys.executable, "-m", "draco", "check"],
        env={"PATH": "/usr/bin:/bin", "CACHE_TTL": "1"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "CACHE_TTL" in result.stderr


# --- key rotation -----------------------------------------------------------------------------


@pytest.fixture
def rotating(start_draco, upstreams, tmp_path):
    keys = _keyfile(tmp_path)
    env = {
        **upstream_env(upstreams),
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_REQUESTS": "1000",
    }
    return start_draco(env), keys


def _status(draco, key: str) -> int:
    return httpx.get(draco.url("/api/nordvpn/countries"), headers={"X-API-Key": key}).status_code


def test_sighup_swaps_the_key_ring_without_a_restart(rotating):
    draco, keys = rotating
    assert _status(draco, KEY) == 200
    assert _status(draco, OTHER_KEY) == 403
    keys.write_text(f"{OTHER_KEY}\n")
    draco.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: _status(draco, OTHER_KEY) == 200)
    assert _status(draco, KEY) == 403
    assert draco.proc.poll() is None
    assert "API keys reloaded" in draco.logs()
    assert OTHER_KEY not in draco.logs()


def test_a_changed_key_file_is_picked_up_by_itself(rotating):
    draco, keys = rotating
    keys.write_text(f"{KEY}\n{OTHER_KEY}\n")
    assert eventually(lambda: _status(draco, OTHER_KEY) == 200)
    assert _status(draco, KEY) == 200


def test_a_key_file_swapped_in_by_rename_is_picked_up_even_with_the_same_time_and_size(rotating):
    """As a Kubernetes secret is updated: a new file renamed over the old one. Its time and
    size may match the old file's; its inode does not."""
    draco, keys = rotating
    before = keys.stat()
    new = keys.with_name("api_keys.new")
    new.write_text(f"{OTHER_KEY}\n")  # as long as the old key
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(new, keys)
    assert eventually(lambda: _status(draco, OTHER_KEY) == 200)
    assert _status(draco, KEY) == 403


@pytest.mark.parametrize("content", ["short-key\n", "", "\n\n"])
def test_a_bad_new_key_file_keeps_the_old_ring_and_says_why(rotating, content):
    draco, keys = rotating
    keys.write_text(content)
    draco.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: "API_KEYS_FILE rejected" in draco.logs())
    assert _status(draco, KEY) == 200
    assert "short-key" not in draco.logs()


# --- /metrics ---------------------------------------------------------------------------------


def test_metrics_are_off_unless_enabled(service):
    assert httpx.get(service.url("/metrics")).status_code == 404


def test_metrics_need_the_key_unless_public(start_draco, upstreams):
    env = {
        **upstream_env(upstreams),
        "METRICS_ENABLED": "true",
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS": f'["{KEY}"]',
    }
    assert httpx.get(start_draco(env).url("/metrics")).status_code == 401
    assert (
        httpx.get(start_draco({**env, "METRICS_PUBLIC": "true"}).url("/metrics")).status_code == 200
    )


def test_metrics_count_requests_refusals_fetches_catalogs_and_clients(start_draco, upstreams):
    env = {
        **upstream_env(upstreams),
        "METRICS_ENABLED": "true",
        "ENABLE_API_KEY_AUTH": "true",
        "API_KEYS": f'["{KEY}"]',
        "RATE_LIMIT_REQUESTS": "10",
    }
    draco = start_draco(env)
    with httpx.Client(headers={"X-API-Key": KEY}) as client:
        client.get(draco.url("/api/surfshark/servers"))
        client.get(draco.url("/api/surfshark/servers/DE"))
        client.get(draco.url("/no/such/path/" + "x" * 50))
        client.request("BREW", draco.url("/api/surfshark/servers"))
        for _ in range(8):
            client.get(draco.url("/health"))
    httpx.get(draco.url("/api/surfshark/servers"))  # no key: 401
    httpx.get(draco.url("/api/surfshark/servers"), headers={"X-API-Key": "w" * 40})  # 403
    for _ in range(10):
        httpx.get(draco.url("/api/surfshark/countries"), headers={"X-API-Key": KEY})
    scraper = httpx.Client(
        transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )  # a client of its own
    text = scraper.get(draco.url("/metrics"), headers={"X-API-Key": KEY}).text
    assert (
        'draco_requests_total{method="GET",route="/api/{provider}/servers",status="200"} 1.0'
        in text
    )
    assert 'route="/api/{provider}/servers/{country_code}",status="200"' in text
    for status in ("401", "403", "429"):
        assert f'status="{status}"' in text
    assert 'route="unmatched",status="404"' in text
    assert 'method="other"' in text
    assert "xxxxx" not in text
    assert "BREW" not in text
    assert 'draco_upstream_fetches_total{outcome="ok",provider="surfshark"} 1.0' in text
    assert 'draco_catalog_servers{provider="surfshark"} 36.0' in text
    assert 'draco_catalog_stale{provider="surfshark"} 0.0' in text
    assert "draco_catalog_age_seconds" in text
    assert "draco_ratelimit_tracked_clients 2.0" in text


# --- systemd -----------------------------------------------------------------------------------


def test_the_systemd_unit_verifies(tmp_path):
    analyze = need("systemd-analyze")
    unit = tmp_path / "draco.service"
    unit.write_text(
        (CONF / "draco.service")
        .read_text()
        .replace("/opt/draco/bin/draco", str(Path(sys.executable).parent / "draco"))
    )
    result = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
