"""`draco serve | check | keygen | snapshot`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import secrets
import signal
import sys
import tomllib
from typing import Any

from hypercorn.config import Config

from draco import __version__
from draco.logs import configure_logging
from draco.providers import REGISTRY
from draco.settings import ConfigError, Settings, installed, load, needs

PORTS = range(1, 65536)
_BIND = re.compile(r"(unix:.+|(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5})")


def _settings(args: argparse.Namespace) -> Settings:
    problems: list[str] = []
    try:
        settings = load(os.environ, args.env_file)
    except ConfigError as exc:
        problems = exc.problems
        settings = Settings()
    problems += _option_problems(args)
    if problems:
        for problem in problems:
            print(f"draco: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return settings


def _option_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.bind is not None and not _valid_bind(args.bind):
        problems.append("--bind: must be HOST:PORT with a port from 1 to 65535, or unix:PATH")
    for option, path in (("certfile", args.certfile), ("keyfile", args.keyfile)):
        if path and not os.access(path, os.R_OK):
            problems.append(f"--{option}: must name a readable file")
    if bool(args.certfile) != bool(args.keyfile):
        problems.append("--certfile and --keyfile: must be given together")
    if args.quic_bind and not (args.certfile and _valid_bind(args.quic_bind)):
        problems.append("--quic-bind: must be HOST:PORT, and HTTP/3 needs --certfile and --keyfile")
    if args.quic_bind and not installed("h3"):
        problems.append(needs("--quic-bind", "h3"))
    if args.config:
        try:
            _config_file(args.config)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _valid_bind(bind: str) -> bool:
    if bind.startswith("unix:"):
        return True
    return bool(_BIND.fullmatch(bind)) and int(bind.rpartition(":")[2]) in PORTS


# What draco sets itself: a config file may not.
_OWN = {
    "bind",
    "insecure_bind",
    "certfile",
    "keyfile",
    "include_server_header",
    "accesslog",
    "errorlog",
}


def _config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            values = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--config: cannot read {path}: {exc}") from None
    unknown = sorted(key for key in values if key in _OWN or not hasattr(Config, key))
    if unknown:
        raise ValueError(f"--config: not a hypercorn setting draco accepts: {', '.join(unknown)}")
    return values


def hypercorn_config(args: argparse.Namespace, settings: Settings) -> Config:
    config = Config.from_mapping(_config_file(args.config) if args.config else {})
    config.bind = [args.bind]
    if args.quic_bind:
        config.quic_bind = [args.quic_bind]
    config.include_server_header = False
    # The access log exists only in debug mode, as the original documented.
    config.accesslog = logging.getLogger("hypercorn.access") if settings.debug else None
    config.errorlog = logging.getLogger("hypercorn.error")
    if args.certfile:
        config.certfile = args.certfile
        config.keyfile = args.keyfile
    return config


def serve(args: argparse.Namespace) -> int:
    from hypercorn.asyncio import serve as hypercorn_serve

    from draco.app import create_app
    from draco.catalog import demo

    settings = _settings(args)
    configure_logging(settings)
    if args.demo:
        settings = demo.settings(settings)
        logging.getLogger("draco").warning(
            "demo mode: serving bundled SAMPLE data, not real servers"
        )
    app = create_app(settings, transport=demo.transport() if args.demo else None)
    config = hypercorn_config(args, settings)
    stopping = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stopping.set)
        await hypercorn_serve(app, config, shutdown_trigger=stopping.wait)  # type: ignore[arg-type]

    asyncio.run(run())
    if not stopping.is_set():  # hypercorn stops by itself only after max_requests
        logging.getLogger("draco").warning(
            "served max_requests: exiting for the supervisor to restart draco"
        )
    return 0


def snapshot(args: argparse.Namespace) -> int:
    """Fetch every provider once and write its last-known-good snapshot to SNAPSHOT_DIR."""
    from draco.catalog import demo
    from draco.catalog.cache import Catalog
    from draco.catalog.fetch import upstream_client

    settings = _settings(args)
    if not settings.snapshot_dir:
        print(
            "draco: configuration error: SNAPSHOT_DIR: must be set for `draco snapshot`",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings)
    if args.demo:
        settings = demo.settings(settings)

    async def run() -> bool:
        async with upstream_client(settings, demo.transport() if args.demo else None) as client:
            catalog = Catalog(settings, client)
            await catalog.restore()
            ok = True
            for name, status in catalog.status.items():
                outcome = await catalog.refresh(name)
                served = outcome in ("ok", "not_modified")
                ok &= served
                servers = len(status.data.servers) if status.data else 0
                print(f"{name}: {servers} servers" if served else f"{name}: failed ({outcome})")
            return ok

    return 0 if asyncio.run(run()) else 1


def check(args: argparse.Namespace) -> int:
    """The production checklist; exit 0 only when every item passes."""
    from draco.checklist import evaluate

    settings = _settings(args)
    items = evaluate(settings, bind=args.bind, tls=bool(args.certfile), env_file=args.env_file)
    for item in items:
        print(f"PASS  {item.what}" if item.passed else f"FAIL  {item.what}\n      fix: {item.fix}")
    return 0 if all(item.passed for item in items) else 1


def hold(args: argparse.Namespace) -> int:
    """`draco hold list`: the lists the churn budget holds. `draco hold accept|reject
    PROVIDER DIGEST`: the operator's word on one, left where the instances read it
    (SNAPSHOT_DIR, and the shared catalog), for that very list only."""
    from draco.catalog.holds import Desk

    settings = _settings(args)
    if not (settings.snapshot_dir or settings.catalog_storage != "memory"):
        print(
            "draco: SNAPSHOT_DIR or CATALOG_STORAGE must be set: holds are kept there",
            file=sys.stderr,
        )
        return 2

    unknown = sorted(set(args.providers) - set(REGISTRY))
    if unknown:
        print(f"draco: unknown provider: {', '.join(unknown)}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with Desk(settings) as desk:
            if args.action == "list":
                for line in await desk.listing(args.providers or list(REGISTRY)):
                    print(line)
                return 0
            said = await desk.decide(args.providers[0], args.digest, args.action)
            print(said.message, file=sys.stdout if said.given else sys.stderr)
            return 0 if said.given else 1

    return asyncio.run(run())


def keygen(args: argparse.Namespace) -> int:
    print("\n".join(secrets.token_hex(32) for _ in range(args.n)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="draco", description="A security-first WireGuard server-list API."
    )
    parser.add_argument("--version", action="version", version=f"draco {__version__}")
    parser.set_defaults(
        bind=None, certfile=None, keyfile=None, quic_bind=None, config=None
    )  # what a command lacks
    commands = parser.add_subparsers(dest="command", required=True)
    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument("--env-file", help="read settings from this file; the environment wins")
    listening = argparse.ArgumentParser(add_help=False)
    listening.add_argument(
        "--bind", default="127.0.0.1:8000", help="HOST:PORT or unix:PATH (default 127.0.0.1:8000)"
    )
    listening.add_argument("--certfile", help="TLS certificate (enables HTTP/2 over TLS with ALPN)")
    listening.add_argument("--keyfile", help="TLS private key")
    demo = argparse.ArgumentParser(add_help=False)
    demo.add_argument(
        "--demo", action="store_true", help="use the bundled sample data; no network needed"
    )

    p = commands.add_parser(
        "serve", parents=[configured, listening, demo], help="serve the API with hypercorn"
    )
    p.add_argument("--config", help="a hypercorn TOML file (see conf/hypercorn.toml)")
    p.add_argument(
        "--quic-bind", help="HOST:PORT for HTTP/3 over QUIC (needs the h3 extra and a certificate)"
    )
    p.set_defaults(run=serve)
    p = commands.add_parser(
        "check", parents=[configured, listening], help="evaluate the production checklist"
    )
    p.set_defaults(run=check)
    p = commands.add_parser(
        "snapshot", parents=[configured, demo], help="fetch every provider once into SNAPSHOT_DIR"
    )
    p.set_defaults(run=snapshot)
    p = commands.add_parser("hold", parents=[configured], help="lists held by the churn budget")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the held lists (all providers unless named)")
    listing.add_argument("providers", nargs="*", metavar="PROVIDER")
    for action in ("accept", "reject"):
        word = actions.add_parser(action, help=f"{action} the held list named by its digest")
        word.add_argument("providers", nargs=1, choices=list(REGISTRY), metavar="PROVIDER")
        word.add_argument("digest", help="as `draco hold list` and /health give it")
    p.set_defaults(run=hold)
    p = commands.add_parser("keygen", help="print new API keys (64 hex characters each)")
    p.add_argument(
        "-n", type=int, default=1, choices=range(1, 101), metavar="N", help="how many (1-100)"
    )
    p.set_defaults(run=keygen)

    args = parser.parse_args(argv)
    return int(args.run(args))
