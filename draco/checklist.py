"""The production checklist of the original security document, evaluated against the
effective configuration. `draco check` prints it; every item says how to fix it."""

from __future__ import annotations

import ipaddress
import os
import stat
from urllib.parse import urlsplit

import attrs

from draco.settings import Settings, is_loopback, read_env_file


@attrs.frozen
class Item:
    passed: bool
    what: str
    fix: str


def _private_file(path: str | None) -> bool:
    """Neither group nor others may read it (nor write it)."""
    return path is None or not os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO)


NARROWEST_TRUST = {4: 8, 6: 32}  # the widest prefix TRUSTED_HOSTS should hold, by IP version


def _narrow(entry: str) -> bool:
    network = ipaddress.ip_network(entry, strict=False)
    return network.prefixlen >= NARROWEST_TRUST[network.version]


def _bind_is_private(bind: str, *, tls: bool) -> bool:
    return bind.startswith("unix:") or tls or is_loopback(bind.rpartition(":")[0].strip("[]"))


def _redis_is_private(url: str) -> bool:
    return url == "memory" or urlsplit(url).scheme == "unix" or bool(urlsplit(url).password)


def evaluate(
    settings: Settings, *, bind: str, tls: bool = False, env_file: str | None = None
) -> list[Item]:
    keys_in_env_file = env_file is not None and "API_KEYS" in read_env_file(env_file)
    key_files = [f for f in (settings.api_keys_file, env_file if keys_in_env_file else None) if f]
    storages = (settings.rate_limit_storage, settings.catalog_storage)
    return [
        Item(
            passed=not settings.debug,
            what="DEBUG is off",
            fix="set DEBUG=false: debug mode serves /docs and drops HSTS and CSP",
        ),
        Item(
            passed=settings.enable_api_key_auth and bool(settings.api_keys),
            what="API key authentication is on, with keys of at least 32 characters",
            fix="set ENABLE_API_KEY_AUTH=true and API_KEYS_FILE (keys from `draco keygen`)",
        ),
        Item(
            passed=settings.enable_security_headers,
            what="security headers are on",
            fix="set ENABLE_SECURITY_HEADERS=true",
        ),
        Item(
            passed=settings.rate_limit_enabled,
            what="rate limiting is on",
            fix="set RATE_LIMIT_ENABLED=true",
        ),
        Item(
            passed=all(urlsplit(origin).scheme == "https" for origin in settings.cors_origins),
            what="CORS origins are explicit https origins",
            fix="list only your frontends' https origins in CORS_ORIGINS, "
            'e.g. ["https://app.example.com"]',
        ),
        Item(
            passed=settings.log_level in ("WARNING", "ERROR"),
            what="LOG_LEVEL is WARNING or ERROR",
            fix="set LOG_LEVEL=WARNING",
        ),
        Item(
            passed=all(map(_narrow, settings.trusted_hosts)),
            what="TRUSTED_HOSTS names only your proxies (nothing wider than a /8, or /32 for IPv6)",
            fix="list the reverse proxy's addresses in TRUSTED_HOSTS, never 0.0.0.0/0",
        ),
        Item(
            passed=all(map(_private_file, key_files)),
            what="files holding API keys are readable by their owner only",
            fix=f"chmod 600 {' '.join(key_files)}",
        ),
        Item(
            passed=all(map(_redis_is_private, storages)),
            what="Redis, where used, is reached with a password or over a unix socket",
            fix="who can write to it chooses the lists served: set RATE_LIMIT_STORAGE and "
            "CATALOG_STORAGE to rediss://:PASSWORD@HOST/0 (in the env file) or "
            "unix:///run/redis/redis.sock",
        ),
        Item(
            passed=_bind_is_private(bind, tls=tls),
            what="plain HTTP is served on loopback or a unix socket only",
            fix="bind to 127.0.0.1 behind your TLS-terminating proxy, or give --certfile and "
            "--keyfile (inside a container, bind 0.0.0.0 and publish the port to the proxy alone)",
        ),
        Item(
            passed=not settings.latency_allow_private,
            what="LATENCY_ALLOW_PRIVATE is off (a switch for tests: probes of private addresses)",
            fix="unset LATENCY_ALLOW_PRIVATE: with it on, a list can steer latency probes into "
            "your own network",
        ),
    ]
