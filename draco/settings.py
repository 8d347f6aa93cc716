"""Settings: one frozen class, each field named after its variable (lower case), read from
the environment and an optional env file. `load` raises one ConfigError listing every
problem, each naming the variable and its rule, never the value (it may be a secret)."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import cattrs

from draco import __version__
from draco.providers import REGISTRY
from draco.security.keys import key_problems, read_key_file


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _rule(text: str, check: Callable[[Any], bool], **kwargs: Any) -> Any:
    """A field whose value must pass `check`; `text` is the rule users are told."""

    def validate(_instance: Any, _attribute: Any, value: Any) -> None:
        if not check(value):
            raise ValueError(text)

    return attrs.field(validator=validate, metadata={"rule": text}, **kwargs)


HOUR = 3600
DAY = 24 * HOUR


def _between(lo: float, hi: float, default: float, kind: str = "an integer") -> Any:
    return _rule(f"must be {kind} from {lo} to {hi}", lambda v: lo <= v <= hi, default=default)


def _one_of(*choices: str) -> Any:
    return _rule(f"must be one of {', '.join(choices)}", lambda v: v in choices, default=choices[0])


def is_loopback(host: str | None) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _upstream_url(url: str) -> bool:
    parts = urlsplit(url)
    secure = parts.scheme == "https" and bool(parts.hostname)
    return secure or (parts.scheme == "http" and is_loopback(parts.hostname))


def _origin(origin: str) -> bool:
    """Exactly scheme://host[:port]: no path, pattern or credentials."""
    parts = urlsplit(origin)
    exact = f"{parts.scheme}://{parts.netloc}" == origin and not (parts.username or parts.password)
    web = parts.scheme in ("http", "https") and bool(parts.hostname)
    return web and "*" not in origin and exact


def _network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def _redis_url(url: str) -> bool:
    return url == "memory" or urlsplit(url).scheme in ("redis", "rediss", "unix")


def _upstream(default: str) -> Any:
    return _rule(
        "must be an https URL (http only to a loopback host)", _upstream_url, default=default
    )


def _storage() -> Any:
    # Not in repr: a Redis URL may carry a password.
    return _rule(
        "must be 'memory' or a redis://, rediss:// or unix:// URL",
        _redis_url,
        default="memory",
        repr=False,
    )


@attrs.frozen
class Settings:
    app_name: str = "draco"
    app_version: str = __version__
    debug: bool = False
    log_level: str = _one_of("INFO", "DEBUG", "WARNING", "ERROR", "CRITICAL")
    log_format: str = _one_of("text", "json")

    nordvpn_api_url: str = _upstream("https://api.nordvpn.com/v1/servers")
    surfshark_api_url: str = _upstream("https://api.surfshark.com/v4/server/clusters/generic")
    mullvad_api_url: str = _upstream("https://api.mullvad.net/app/v1/relays")
    ivpn_api_url: str = _upstream("https://api.ivpn.net/v5/servers.json")
    windscribe_api_url: str = _upstream(
        "https://assets.windscribe.com/serverlist/mob-v2/1/{unix-ts}"
    )
    airvpn_api_url: str = _upstream("https://airvpn.org/api/status/")
    nordvpn_server_limit: int = _between(0, 10_000, 0)
    http_timeout: float = _between(5, 120, 30.0, "a number")
    http_max_connections: int = _between(10, 500, 100)
    http_max_keepalive_connections: int = _between(5, 100, 20)
    upstream_max_bytes: int = _between(1 << 20, 1 << 30, 64 << 20)

    cache_ttl: int = _between(60, 3600, 300)
    cache_max_stale: int = _between(60, 30 * DAY, DAY)
    cache_max_churn: float = _between(0.0, 1.0, 0.2, "a fraction")
    cache_churn_window: int = _between(HOUR, 30 * DAY, DAY)
    cache_hold: int = _between(60, 30 * DAY, 6 * HOUR)
    refresh_backoff_max: int = _between(1, 3600, 300)
    changes_history: int = _between(2, 1024, 64)
    report_quarantine: int = _between(10, DAY, 600)
    snapshot_dir: str | None = None

    default_page_size: int = _between(10, 500, 100)
    max_page_size: int = _between(100, 2000, 1000)

    cors_origins: tuple[str, ...] = _rule(
        "must be a JSON array of origins like https://app.example.com "
        "('*', 'null' and patterns are refused)",
        lambda origins: all(map(_origin, origins)),
        default=(),
    )
    cors_allow_credentials: bool = False

    enable_api_key_auth: bool = False
    api_keys: tuple[str, ...] = attrs.field(
        default=(), repr=False, metadata={"rule": "must be a JSON array of keys"}
    )
    api_keys_file: str | None = None

    rate_limit_enabled: bool = True
    rate_limit_requests: int = _between(10, 10_000, 100)
    rate_limit_period: int = _between(10, 3600, 60)
    rate_limit_max_clients: int = _between(1000, 10_000_000, 100_000)
    rate_limit_storage: str = _storage()
    rate_limit_redis_failure: str = _one_of("local", "open", "closed")
    catalog_storage: str = _storage()
    redis_trusted_network: bool = False

    enable_security_headers: bool = True
    trusted_hosts: tuple[str, ...] = _rule(
        "must be a JSON array of IP addresses or CIDR ranges",
        lambda entries: all(map(_network, entries)),
        default=(),
    )

    latency_concurrency: int = _between(1, 4096, 256)
    latency_timeout: float = _between(0.05, 30, 1.0, "a number of seconds")
    latency_deadline: float = _between(1, 120, 10.0, "a number of seconds")
    latency_ttl: int = _between(0, 86400, 300)
    latency_weight: int = _between(1, 1000, 10)
    latency_allow_private: bool = False
    latency_tcp_port: int = _between(1, 65535, 443)

    ready_providers: tuple[str, ...] = _rule(
        f"must be a JSON array of provider names ({', '.join(REGISTRY)})",
        lambda names: bool(names) and set(names) <= set(REGISTRY),
        default=tuple(REGISTRY),
    )

    metrics_enabled: bool = False
    metrics_public: bool = False

    def api_url(self, provider: str) -> str:
        """The upstream URL of `provider`: its `<PROVIDER>_API_URL`."""
        url: str = getattr(self, api_url_field(provider))
        return url


attrs.resolve_types(Settings)


def api_url_field(provider: str) -> str:
    return f"{provider}_api_url"


# The optional parts: the extra that installs each, and the module it brings.
EXTRAS = {
    "redis": "redis",
    "metrics": "prometheus_client",
    "docs": "openapi_ui_bundles",
    "h3": "aioquic",
}


def installed(extra: str) -> bool:
    return importlib.util.find_spec(EXTRAS[extra]) is not None


def needs(variable: str, extra: str) -> str:
    return f"{variable}: needs the {extra} extra: pip install 'draco[{extra}]'"


def _problems(s: Settings) -> list[str]:
    """Rules that involve more than one variable, or that must never echo a value."""
    problems = key_problems(s.api_keys, required=s.enable_api_key_auth)
    if s.default_page_size > s.max_page_size:
        problems.append("DEFAULT_PAGE_SIZE: must not exceed MAX_PAGE_SIZE")
    if s.latency_weight > s.rate_limit_requests:
        problems.append("LATENCY_WEIGHT: must not exceed RATE_LIMIT_REQUESTS")
    storages = (
        ("RATE_LIMIT_STORAGE", s.rate_limit_storage),
        ("CATALOG_STORAGE", s.catalog_storage),
    )
    for variable, url in storages:
        if url != "memory" and not installed("redis"):
            problems.append(needs(variable, "redis"))
    if s.metrics_enabled and not installed("metrics"):
        problems.append(needs("METRICS_ENABLED", "metrics"))
    for variable, url in storages:
        if not (s.redis_trusted_network or _private_redis(url)):
            problems.append(
                f"{variable}: a redis:// URL must name a loopback host: use rediss:// (TLS), a "
                "unix:// socket, or set REDIS_TRUSTED_NETWORK=true if the network is yours alone"
            )
    return problems


def _private_redis(url: str) -> bool:
    """Whoever can read or write the Redis of a shared catalog chooses the lists served:
    plain redis:// is for a loopback host only."""
    parts = urlsplit(url)
    return url == "memory" or parts.scheme != "redis" or is_loopback(parts.hostname)


# Variables of earlier versions, refused with what replaced them.
RENAMED = {
    "CACHE_MAX_SHRINK": "CACHE_MAX_CHURN (removed servers count toward it)",
    "CACHE_MAX_REKEY": "CACHE_MAX_CHURN (rekeyed servers count toward it)",
    "CACHE_REKEY_CONFIRMATIONS": "CACHE_HOLD (a held list waits in time, not in refreshes)",
}


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_BOOLS = dict.fromkeys(_TRUE, True) | dict.fromkeys(_FALSE, False)


def _strings(text: str, _type: Any) -> tuple[str, ...]:
    """A JSON array of strings, as the original documented; a comma list is accepted too."""
    text = text.strip()
    if not text.startswith("["):
        return tuple(item.strip() for item in text.split(",") if item.strip())
    items = json.loads(text)
    if not all(isinstance(item, str) for item in items):
        raise ValueError
    return tuple(items)


_converter = cattrs.Converter()
_converter.register_structure_hook(bool, lambda text, _: _BOOLS[text.strip().lower()])
_converter.register_structure_hook(int, lambda text, _: int(text.strip(), 10))
_converter.register_structure_hook(float, lambda text, _: float(text.strip()))
_converter.register_structure_hook(str, lambda text, _: text.strip())
_converter.register_structure_hook_func(
    lambda t: t == str | None, lambda text, _: text.strip() or None
)
_converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _strings)


def _writable_dir(path: Path) -> bool:
    """Create the directory if needed, and prove a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def read_env_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments, `export ` prefixes and surrounding quotes allowed."""
    values = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        values[key.strip()] = _unquoted(value.strip())
    return values


def _unquoted(value: str) -> str:
    quoted = len(value) > 1 and value[0] == value[-1] and value[0] in "'\""
    return value[1:-1] if quoted else value


def _converted(raw: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Each variable given, converted and checked by its field; a problem per bad one."""
    values: dict[str, Any] = {}
    for field in attrs.fields(Settings):
        name = field.name.upper()
        if name not in raw:
            continue
        try:
            value = _converter.structure(raw[name], field.type or str)
            if field.validator:
                field.validator(None, field, value)
        except Exception:  # whatever it was, the rule is what the user is told
            default_rule = "must be true or false" if field.type is bool else "is invalid"
            problems.append(f"{name}: {field.metadata.get('rule', default_rule)}")
            continue
        values[field.name] = value
    return values


def load(environ: Mapping[str, str], env_file: str | Path | None = None) -> Settings:
    raw: dict[str, str] = {}
    problems: list[str] = []
    if env_file is not None:
        try:
            raw.update(read_env_file(env_file))
        except (OSError, UnicodeDecodeError):
            problems.append(f"--env-file: cannot read {env_file}")
    raw.update(environ)  # the environment wins
    problems += [f"{old}: no longer read; use {new}" for old, new in RENAMED.items() if old in raw]
    values = _converted(raw, problems)
    if values.get("api_keys_file"):
        if "api_keys" in values:
            problems.append("API_KEYS_FILE: cannot be combined with API_KEYS; use one of them")
        try:
            values["api_keys"] = read_key_file(values["api_keys_file"])
        except (OSError, UnicodeDecodeError):
            problems.append("API_KEYS_FILE: must name a readable UTF-8 file with one key per line")
    if values.get("snapshot_dir") and not _writable_dir(Path(values["snapshot_dir"])):
        problems.append("SNAPSHOT_DIR: must be a directory draco can create and write to")
    settings = Settings(**values)
    problems += _problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings
