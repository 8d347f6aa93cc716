"""The text draco writes for a client to run: wg-quick's [Peer] section. wg-quick reads
every line of it, and runs PreUp, PostUp and PostDown lines as root, so a field that
could start a line, a section or a command of its own is refused here, whatever the
checks before let through: never escaped, never written."""

from __future__ import annotations

import ipaddress
import re

from draco.models import Peer, Server
from draco.providers import Provider

ALLOWED_IPS = "0.0.0.0/0, ::/0"
# A fully qualified name in letters, digits and hyphens: at least two labels, so that a
# client's resolver never completes it with a search domain of its own.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_QUALIFIED = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+")


class UnwritableError(Exception):
    """A server whose entry cannot be written as a client's config; says why."""


def writable(field: str, value: str) -> str:
    """`value`, if it holds no control character, no line break and no `[` (isprintable
    is false for every control, format and line or paragraph separator character)."""
    if "[" in value or not value.isprintable():
        raise UnwritableError(f"its {field} holds a character a config line cannot carry")
    return value


def endpoint(server: Server, provider: Provider) -> str:
    """HOST:PORT, HOST an IP address or a fully qualified name, never a bare name."""
    if provider.endpoint == "ipv4" and server.ipv4:
        try:
            return f"{ipaddress.IPv4Address(server.ipv4)}:{provider.wireguard_port}"
        except ValueError:
            raise UnwritableError("its address is not an IPv4 address") from None
    if _QUALIFIED.fullmatch(server.identifier):
        return f"{server.identifier}:{provider.wireguard_port}"
    raise UnwritableError("it has neither an address nor a fully qualified name to connect to")


def peer(server: Server, provider: Provider) -> Peer:
    """The [Peer] fields, every one of them writable."""
    return Peer(
        public_key=writable("key", server.public_key),
        endpoint=writable("endpoint", endpoint(server, provider)),
        allowed_ips=ALLOWED_IPS,
        note=writable("note", provider.peer_note) if provider.peer_note else None,
    )


def wg_quick(server: Server, provider: Provider) -> str:
    """The [Peer] section a client pastes under its own [Interface]."""
    fields = peer(server, provider)
    about = f"{server.provider} {server.identifier}, {server.country}"
    lines = [
        "[Peer]",
        f"# {writable('name', about)}",
        f"PublicKey = {fields.public_key}",
        f"Endpoint = {fields.endpoint}",
        f"AllowedIPs = {fields.allowed_ips}",
    ]
    if fields.note:
        lines.append(f"# {fields.note}")
    return "\n".join(lines) + "\n"
