"""Settings: defaults, ranges, lists, the env file, and one error naming every problem."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import attrs
import pytest
from conftest import KEY, ROOT

from draco.providers import REGISTRY
from draco.settings import ConfigError, Settings, load

SECRET = "s3cr3t-" + "x" * 30

EN_DASH = "\N{EN DASH}"  # the README writes ranges as 60\N{EN DASH}3600


def test_defaults_match_the_original():
    s = load({})
    assert (
        s.cache_ttl,
        s.http_timeout,
        s.http_max_connections,
        s.http_max_keepalive_connections,
    ) == (300, 30, 100, 20)
    assert (s.nordvpn_server_limit, s.default_page_size, s.max_page_size) == (0, 100, 1000)
    assert (s.rate_limit_requests, s.rate_limit_period, s.rate_limit_enabled) == (100, 60, True)
    assert (s.enable_api_key_auth, s.enable_security_headers, s.debug) == (False, True, False)
    assert (s.log_level, s.log_format, s.cors_origins, s.trusted_hosts) == ("INFO", "text", (), ())
    assert s.upstream_max_bytes == 64 << 20
    assert s.nordvpn_api_url.startswith("https://")
    assert s.surfshark_api_url.startswith("https://")


RANGES = {
    "CACHE_TTL": (60, 3600),
    "HTTP_TIMEOUT": (5, 120),
    "HTTP_MAX_CONNECTIONS": (10, 500),
    "HTTP_MAX_KEEPALIVE_CONNECTIONS": (5, 100),
    "NORDVPN_SERVER_LIMIT": (0, 10000),
    "DEFAULT_PAGE_SIZE": (10, 500),
    "MAX_PAGE_SIZE": (100, 2000),
    "RATE_LIMIT_REQUESTS": (10, 10000),
    "RATE_LIMIT_PERIOD": (10, 3600),
}


@pytest.mark.parametrize("name", RANGES)
def test_integer_ranges_are_inclusive_and_enforced(name):
    lo, hi = RANGES[name]
    extra = {"MAX_PAGE_SIZE": "2000"} if name == "DEFAULT_PAGE_SIZE" else {}
    assert getattr(load({name: str(lo), **extra}), name.lower()) == lo
    assert getattr(load({name: str(hi), **extra}), name.lower()) == hi
    for bad in (str(lo - 1), str(hi + 1), "ten", "", "1e3"):
        with pytest.raises(ConfigError) as caught:
            load({name: bad})
        assert caught.value.problems == [
            f"{name}: must be {'a number' if name == 'HTTP_TIMEOUT' else 'an integer'} "
            f"from {lo} to {hi}"
        ]


def _written(value) -> str:
    """A setting's value as the README writes it."""
    if isinstance(value, bool | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_the_readmes_table_gives_every_variable_with_its_default_and_its_range():
    rows = re.findall(
        r"^\| `([A-Z_0-9]+)` \| (.*?) \|(.*)\|$", (ROOT / "README.md").read_text(), re.M
    )
    documented = {name for name, _, _ in rows} | {
        "APP_NAME",
        "APP_VERSION",
    }  # those two share a row
    assert documented == {field.name.upper() for field in attrs.fields(Settings)}
    defaults, number = Settings(), r"(\d+(?:\.\d+)?)"
    for name, default, rule in rows:
        value, shown = getattr(defaults, name.lower()), re.match(r"`([^`]*)`", default)
        assert shown[1] == _written(value) if shown else value in (None, tuple(REGISTRY)), name
        bounds = re.search(rf"(?<![\d.]){number}{EN_DASH}{number}(?![\d.])", rule)
        if bounds:  # both ends admitted, the values just outside refused
            step = 1 if "." not in bounds[0] else 0.01
            lo, hi = (type(value)(end) for end in bounds.groups())
            wide = {  # room for the rules across variables
                "MAX_PAGE_SIZE": "2000",
                "RATE_LIMIT_REQUESTS": "10000",
            }
            assert [getattr(load({**wide, name: str(v)}), name.lower()) for v in (lo, hi)] == [
                lo,
                hi,
            ], name
            for outside in (lo - step, hi + step):
                with pytest.raises(ConfigError):
                    load({**wide, name: str(outside)})


def test_lists_are_json_arrays_as_documented():
    s = load(
        {"API_KEYS": f'["{KEY}", "{KEY[::-1]}"]', "TRUSTED_HOSTS": '["10.0.0.1", "192.168.0.0/16"]'}
    )
    assert s.api_keys == (KEY, KEY[::-1])
    assert s.trusted_hosts == ("10.0.0.1", "192.168.0.0/16")


def test_booleans_accept_the_usual_spellings():
    assert load({"DEBUG": "TRUE"}).debug
    assert load({"DEBUG": "1"}).debug
    assert not load({"DEBUG": "off"}).debug
    with pytest.raises(ConfigError, match="DEBUG: must be true or false"):
        load({"DEBUG": "maybe"})


@pytest.mark.parametrize(
    "value",
    [
        '["*"]',
        '["null"]',
        '["https://*.example.com"]',
        '["example.com"]',
        '["https://a.example/path"]',
        "[1]",
        "[not json",
    ],
)
def test_cors_origins_refuse_wildcards_null_patterns_and_non_origins(value):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load({"CORS_ORIGINS": value})


def test_keys_must_be_at_least_32_characters_and_are_never_echoed():
    with pytest.raises(ConfigError) as caught:
        load({"API_KEYS": '["short-secret-value"]', "ENABLE_API_KEY_AUTH": "true"})
    assert caught.value.problems == [
        "API_KEYS: every key must be at least 32 printable ASCII characters without spaces"
    ]
    assert "short-secret-value" not in str(caught.value)
    assert load({"API_KEYS": f'["{"k" * 32}"]'}).api_keys == ("k" * 32,)  # 32 is enough
    with pytest.raises(ConfigError, match="at least 32"):
        load({"API_KEYS": f'["{"k" * 31}"]'})


@pytest.mark.parametrize(
    "key", ["k" * 20 + " " + "k" * 20, "k" * 40 + "\t", "k" * 40 + "é", "k" * 40 + "\x7f"]
)
def test_a_key_with_a_space_a_control_or_a_non_ascii_character_is_refused(key):
    with pytest.raises(ConfigError, match="printable ASCII characters without spaces"):
        load({"API_KEYS": json.dumps([key])})


def test_a_key_file_holds_one_key_per_line_trimmed_blank_lines_skipped(tmp_path):
    path = tmp_path / "keys"
    path.write_bytes(f"  {KEY}\t\r\n\n   \n{KEY[::-1]}\n".encode())
    assert load({"API_KEYS_FILE": str(path)}).api_keys == (KEY, KEY[::-1])


def test_auth_enabled_without_keys_is_an_error():
    with pytest.raises(ConfigError, match="ENABLE_API_KEY_AUTH"):
        load({"ENABLE_API_KEY_AUTH": "true"})


@pytest.mark.parametrize(
    "url", ["http://api.example.com/x", "ftp://127.0.0.1/", "https://", "not a url"]
)
def test_upstream_urls_must_be_https(url):
    with pytest.raises(ConfigError, match="NORDVPN_API_URL: must be an https URL"):
        load({"NORDVPN_API_URL": url})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://[::1]:9/x", "http://localhost/x", "https://a.example/x"]
)
def test_plain_http_is_allowed_to_loopback_only(url):
    assert load({"SURFSHARK_API_URL": url}).surfshark_api_url == url


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as caught:
        load(
            {
                "CACHE_TTL": "1",
                "LOG_FORMAT": "xml",
                "TRUSTED_HOSTS": '["not-an-ip"]',
                "LOG_LEVEL": "LOUD",
            }
        )
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "LOG_LEVEL",
        "LOG_FORMAT",
        "CACHE_TTL",
        "TRUSTED_HOSTS",
    ]


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / "draco.env"
    env_file.write_text(
        '# comment\nexport CACHE_TTL=120\nAPP_NAME="from file"\nRATE_LIMIT_PERIOD=30\n'
    )
    s = load({"RATE_LIMIT_PERIOD": "45"}, env_file)
    assert (s.cache_ttl, s.app_name, s.rate_limit_period) == (120, "from file", 45)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        load({}).debug = True  # type: ignore[misc]


def test_repr_never_shows_keys():
    assert KEY not in repr(load({"API_KEYS": f'["{KEY}"]'}))
    assert "api_keys=" not in repr(Settings())


INVALID = [
    ("CACHE_TTL", "59"),
    ("HTTP_TIMEOUT", "121"),
    ("HTTP_MAX_CONNECTIONS", "9"),
    ("HTTP_MAX_KEEPALIVE_CONNECTIONS", "101"),
    ("NORDVPN_SERVER_LIMIT", "-1"),
    ("DEFAULT_PAGE_SIZE", "9"),
    ("MAX_PAGE_SIZE", "2001"),
    ("CORS_ORIGINS", '["*"]'),
    ("CORS_ALLOW_CREDENTIALS", "perhaps"),
    ("ENABLE_API_KEY_AUTH", "yes please"),
    ("API_KEYS", f'["{SECRET[:20]}"]'),
    ("RATE_LIMIT_ENABLED", "2"),
    ("RATE_LIMIT_REQUESTS", "9"),
    ("RATE_LIMIT_PERIOD", "3601"),
    ("ENABLE_SECURITY_HEADERS", "x"),
    ("LOG_LEVEL", "VERBOSE"),
    ("LOG_FORMAT", "yaml"),
    ("DEBUG", "sometimes"),
    ("TRUSTED_HOSTS", '["10.0.0.0/33"]'),
    ("NORDVPN_API_URL", "http://example.com/"),
    ("SURFSHARK_API_URL", "file:///etc/passwd"),
    ("MULLVAD_API_URL", "http://10.0.0.1/relays"),
    ("IVPN_API_URL", "https://"),
    ("UPSTREAM_MAX_BYTES", "10"),
    ("API_KEYS_FILE", "/nonexistent/keys"),
    ("CACHE_MAX_STALE", "59"),
    ("CACHE_MAX_SHRINK", "1.5"),
    ("REFRESH_BACKOFF_MAX", "0"),
    ("SNAPSHOT_DIR", "/proc/draco"),
    ("RATE_LIMIT_MAX_CLIENTS", "10"),
    ("RATE_LIMIT_STORAGE", "http://127.0.0.1:6379"),
    ("RATE_LIMIT_REDIS_FAILURE", "maybe"),
    ("CATALOG_STORAGE", "memcached://x"),
    ("LATENCY_CONCURRENCY", "0"),
    ("LATENCY_TIMEOUT", "31"),
    ("LATENCY_DEADLINE", "0.5"),
    ("LATENCY_TTL", "-1"),
    ("LATENCY_WEIGHT", "1001"),
    ("LATENCY_TCP_PORT", "65536"),
    ("LATENCY_ALLOW_PRIVATE", "sure"),
    ("METRICS_ENABLED", "2"),
    ("METRICS_PUBLIC", "public"),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_serve_exits_2_naming_the_variable_before_binding(name, value):
    result = subprocess.run(
        [sys.executable, "-m", "draco", "serve", "--bind", "127.0.0.1:1"],
        env={"PATH": "/usr/bin:/bin", name: value},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{name}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET[:20] not in result.stderr


def test_serve_reports_a_bad_bind_and_a_missing_certificate_together():
    result = subprocess.run(
        [sys.executable, "-m", "draco", "serve", "--bind", "nowhere", "--certfile", "/nonexistent"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--bind:" in result.stderr
    assert "--certfile:" in result.stderr
    assert "--keyfile" in result.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("CACHE_MAX_SHRINK", "CACHE_MAX_CHURN"),
        ("CACHE_MAX_REKEY", "CACHE_MAX_CHURN"),
        ("CACHE_REKEY_CONFIRMATIONS", "CACHE_HOLD"),
    ],
)
def test_a_variable_the_churn_budget_replaced_is_refused_naming_its_successor(old, new):
    with pytest.raises(ConfigError) as refused:
        load({old: "0.5"})
    [problem] = refused.value.problems
    assert problem.startswith(f"{old}: no longer read; use {new} (")


@pytest.mark.parametrize("variable", ["CATALOG_STORAGE", "RATE_LIMIT_STORAGE"])
@pytest.mark.parametrize(
    ("url", "trusted", "refused"),
    [
        ("redis://redis.internal:6379/0", False, True),
        ("redis://10.0.0.5:6379/0", False, True),
        ("redis://redis.internal:6379/0", True, False),
        ("rediss://redis.internal:6379/0", False, False),
        ("redis://127.0.0.1:6379/0", False, False),
        ("redis://localhost:6379/0", False, False),
        ("redis://[::1]:6379/0", False, False),
        ("unix:///run/redis/redis.sock", False, False),
    ],
)
def test_plain_redis_to_a_host_that_is_not_loopback_needs_a_trusted_network(
    variable, url, trusted, refused
):
    env = {variable: url, "REDIS_TRUSTED_NETWORK": "true" if trusted else "false"}
    if refused:
        with pytest.raises(ConfigError, match=f"{variable}: a redis:// URL must name a loopback"):
            load(env)
    else:
        assert getattr(load(env), variable.lower()) == url
