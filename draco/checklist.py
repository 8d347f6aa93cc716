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


def _narrow(entry: str) -> bool:
    network = ipaddress.ip_network(entry, strict=False)
    return network.prefixlen >= (8 if network.version == 4 else 32)


def _bind_is_private(bind: str, tls: bool) -> bool:
    return bind.startswith("unix:") or tls or is_loopback(bind.rpartition(":")[0].strip("[]"))


def evaluate(settings: Settings, *, bind: str, tls: bool = False, env_file: str | None = None) -> list[Item]:
    keys_in_env_file = env_file is not None and "API_KEYS" in read_env_file(env_file)
    key_files = [f for f in (settings.api_keys_file, env_file if keys_in_env_file else None) if f]
    return [
        Item(not settings.debug, "DEBUG is off", "set DEBUG=false: debug mode serves /docs and drops HSTS and CSP"),
        Item(settings.enable_api_key_auth and bool(settings.api_keys),
             "API key authentication is on, with keys of at least 32 characters",
             "set ENABLE_API_KEY_AUTH=true and API_KEYS_FILE (keys from `draco keygen`)"),
        Item(settings.enable_security_headers, "security headers are on", "set ENABLE_SECURITY_HEADERS=true"),
        Item(settings.rate_limit_enabled, "rate limiting is on", "set RATE_LIMIT_ENABLED=true"),
        Item(all(urlsplit(origin).scheme == "https" for origin in settings.cors_origins),
             "CORS origins are explicit https origins",
             'list only your frontends\' https origins in CORS_ORIGINS, e.g. ["https://app.example.com"]'),
        Item(settings.log_level in ("WARNING", "ERROR"), "LOG_LEVEL is WARNING or ERROR", "set LOG_LEVEL=WARNING"),
        Item(all(map(_narrow, settings.trusted_hosts)),
             "TRUSTED_HOSTS names only your proxies (nothing wider than a /8, or /32 for IPv6)",
             "list the reverse proxy's addresses in TRUSTED_HOSTS, never 0.0.0.0/0"),
        Item(all(map(_private_file, key_files)), "files holding API keys are readable by their owner only",
             f"chmod 600 {' '.join(key_files)}"),
        Item(all(url == "memory" or urlsplit(url).scheme == "unix" or bool(urlsplit(url).password)
                 for url in (settings.rate_limit_storage, settings.catalog_storage)),
             "Redis, where used, is reached with a password or over a unix socket",
             "who can write to it chooses the lists served: set RATE_LIMIT_STORAGE and CATALOG_STORAGE to "
             "rediss://:PASSWORD@HOST/0 (in the env file) or unix:///run/redis/redis.sock"),
        Item(_bind_is_private(bind, tls), "plain HTTP is served on loopback or a unix socket only",
             "bind to 127.0.0.1 behind your TLS-terminating proxy, or give --certfile and --keyfile "
             "(inside a container, bind 0.0.0.0 and publish the port to the proxy alone)"),
    ]  # fmt: skip
