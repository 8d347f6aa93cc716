"""The text draco writes for a client to run: a WireGuard peer, in each client's own
format. wg-quick reads every line of its file, and runs PreUp, PostUp and PostDown lines
as root, so a field that could start a line, a section or a command of its own is refused
here, whatever the checks before let through (`writable`). Every string a format carries
is then written in that format's own quoting (JSON, YAML, RouterOS, UCI), so no field can
end its string early either.

No format carries or asks for a private key: a placeholder named YOUR_... stands where
the client puts its own."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

import attrs
import msgspec

from draco.models import (
    Mihomo,
    MihomoProxy,
    Peer,
    Server,
    SingBox,
    SingBoxEndpoint,
    SingBoxPeer,
    encode,
)
from draco.providers import Provider

ALLOWED_IPS = ("0.0.0.0/0", "::/0")
PRIVATE_KEY = "YOUR_PRIVATE_KEY"
PRESHARED_KEY = "YOUR_PRESHARED_KEY"
TUNNEL_ADDRESS = "YOUR_TUNNEL_ADDRESS"
INTERFACE = "wg0"  # the client's WireGuard interface, named as its docs name it
PRESHARED_NOTE = "This provider also needs your account's PresharedKey, from its own config."
# A fully qualified name in letters, digits and hyphens: at least two labels, so that a
# client's resolver never completes it with a search domain of its own.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_QUALIFIED = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+")
_ROUTEROS_PLAIN = re.compile(r"[A-Za-z0-9 ,._:/+=-]")


class UnwritableError(Exception):
    """A server whose entry cannot be written as a client's config; says why."""


def writable(field: str, value: str) -> str:
    """`value`, if it holds no control character, no line break and no `[` (isprintable
    is false for every control, format and line or paragraph separator character)."""
    if "[" in value or not value.isprintable():
        raise UnwritableError(f"its {field} holds a character a config line cannot carry")
    return value


@attrs.frozen
class Peering:
    """What every format writes: whom to connect to, where, and with which key."""

    about: str  # "provider identifier, country": a name for the peer
    public_key: str
    host: str  # an IP address (IPv6 without brackets) or a fully qualified name
    port: int
    preshared_key: bool  # the client adds its account's own

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def host(server: Server, provider: Provider, family: str | None) -> str:
    """Where `server` is entered: its IPv6 address when asked, else its IPv4 address or,
    where the provider names it so, its fully qualified name; never a bare name."""
    try:
        if family == "ipv6":
            if server.ipv6 is None:
                raise UnwritableError("it has no IPv6 entry address")
            address = ipaddress.IPv6Address(server.ipv6)
            if address.scope_id:  # a zone names a link of the sender's own
                raise UnwritableError("its IPv6 address names a zone")
            return str(address)
        if provider.endpoint == "ipv4" and server.ipv4:
            return str(ipaddress.IPv4Address(server.ipv4))
    except ValueError:
        raise UnwritableError("its address is not an IP address") from None
    if _QUALIFIED.fullmatch(server.identifier):
        return server.identifier
    raise UnwritableError("it has neither an address nor a fully qualified name to connect to")


def peering(
    server: Server,
    provider: Provider,
    *,
    family: str | None = None,
    port: int | None = None,
    via: Server | None = None,
) -> Peering:
    """The peer for `server`; with `via`, a chain entered at `via` that leaves at `server`
    (IVPN's multi-hop: the entry's address, the exit's multi-hop port and key)."""
    about = f"{server.provider} {server.identifier}, {server.country}"
    if via is not None:
        if server.multihop_port is None:
            raise UnwritableError("it publishes no multi-hop port")
        about = f"{about}, via {via.identifier}"
        port = server.multihop_port
    return Peering(
        about=writable("name", about),
        public_key=writable("key", server.public_key),
        host=writable("endpoint", host(via or server, provider, family)),
        port=port or provider.wireguard_port,
        preshared_key=provider.preshared_key,
    )


def peer(peering: Peering) -> Peer:
    """The [Peer] fields as JSON."""
    return Peer(
        public_key=peering.public_key,
        endpoint=peering.endpoint,
        allowed_ips=", ".join(ALLOWED_IPS),
        note=PRESHARED_NOTE if peering.preshared_key else None,
    )


def wg_quick(peering: Peering) -> str:
    """The [Peer] section a client pastes under its own [Interface] (wg-quick(8))."""
    lines = [
        "[Peer]",
        f"# {peering.about}",
        f"PublicKey = {peering.public_key}",
        f"Endpoint = {peering.endpoint}",
        f"AllowedIPs = {', '.join(ALLOWED_IPS)}",
    ]
    if peering.preshared_key:
        lines.append(f"PresharedKey = {PRESHARED_KEY}")
    return "\n".join(lines) + "\n"


def sing_box(peering: Peering) -> str:
    remote = SingBoxPeer(
        address=peering.host,
        port=peering.port,
        public_key=peering.public_key,
        allowed_ips=list(ALLOWED_IPS),
        pre_shared_key=PRESHARED_KEY if peering.preshared_key else None,
    )
    endpoint = SingBoxEndpoint(
        type="wireguard",
        tag=peering.about,
        address=[TUNNEL_ADDRESS],
        private_key=PRIVATE_KEY,
        peers=[remote],
    )
    return encode(SingBox(endpoints=[endpoint])).decode() + "\n"


def yaml_string(value: str) -> str:
    """A YAML double-quoted scalar holding exactly `value`: printable ASCII as itself (but
    `"` and `\\`), every other character as a \\U escape."""
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif " " <= char <= "~":
            escaped.append(char)
        else:
            escaped.append(f"\\U{ord(char):08x}")
    return '"' + "".join(escaped) + '"'


def yaml_value(value: Any) -> str:
    """A YAML flow value: a string double-quoted, a list in brackets, a number or a bool
    as YAML writes it."""
    if isinstance(value, str):
        return yaml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(yaml_value, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"no YAML for {type(value).__name__}")


def mihomo(peering: Peering) -> str:
    """A proxy entry for mihomo (Clash Meta): `proxies` with one `type: wireguard`, its
    fields named and ordered by the struct that documents it."""
    proxy = MihomoProxy(
        name=peering.about,
        type="wireguard",
        server=peering.host,
        port=peering.port,
        ip=TUNNEL_ADDRESS,
        private_key=PRIVATE_KEY,
        public_key=peering.public_key,
        allowed_ips=list(ALLOWED_IPS),
        udp=True,
        pre_shared_key=PRESHARED_KEY if peering.preshared_key else None,
    )
    fields = msgspec.to_builtins(proxy)
    first, *rest = [f"{key}: {yaml_value(value)}" for key, value in fields.items()]
    return "proxies:\n  - " + first + "\n" + "".join(f"    {line}\n" for line in rest)


def routeros_string(value: str) -> str:
    """A RouterOS double-quoted string holding exactly `value`: letters, digits and
    ` ,._:/+=-` as themselves, every other byte of its UTF-8 as a \\HH escape (so no `$`,
    `"`, `\\`, `;` or line break is ever read as the script's own)."""
    escaped = (
        char if _ROUTEROS_PLAIN.fullmatch(char) else "".join(f"\\{b:02X}" for b in char.encode())
        for char in value
    )
    return '"' + "".join(escaped) + '"'


def routeros(peering: Peering) -> str:
    """RouterOS 7: one command that adds the peer to the client's WireGuard interface."""
    words = [
        "/interface wireguard peers add",
        f"interface={routeros_string(INTERFACE)}",
        f"public-key={routeros_string(peering.public_key)}",
        f"endpoint-address={routeros_string(peering.host)}",
        f"endpoint-port={peering.port}",
        f"allowed-address={routeros_string(','.join(ALLOWED_IPS))}",
        f"comment={routeros_string(peering.about)}",
    ]
    if peering.preshared_key:
        words.append(f"preshared-key={routeros_string(PRESHARED_KEY)}")
    return " ".join(words) + "\n"


def uci_string(value: str) -> str:
    """A UCI single-quoted string: a `'` is written '\\'' (end, escaped quote, reopen)."""
    return "'" + value.replace("'", "'\\''") + "'"


def uci(peering: Peering) -> str:
    """OpenWrt's /etc/config/network peer section for the interface named wg0."""
    lines = [
        f"config wireguard_{INTERFACE}",
        f"\toption description {uci_string(peering.about)}",
        f"\toption public_key {uci_string(peering.public_key)}",
        f"\toption endpoint_host {uci_string(peering.host)}",
        f"\toption endpoint_port {uci_string(str(peering.port))}",
        *(f"\tlist allowed_ips {uci_string(ips)}" for ips in ALLOWED_IPS),
        "\toption route_allowed_ips '1'",
    ]
    if peering.preshared_key:
        lines.append(f"\toption preshared_key {uci_string(PRESHARED_KEY)}")
    return "\n".join(lines) + "\n"


@attrs.frozen
class Format:
    write: Callable[[Peering], str]
    media: str  # its media type
    shape: Any = None  # the struct it writes (models.py), for the document; None: text


FORMATS = {
    "wg-quick": Format(wg_quick, "text/plain"),
    "json": Format(lambda p: encode(peer(p)).decode(), "application/json", Peer),
    "sing-box": Format(sing_box, "application/json", SingBox),
    "mihomo": Format(mihomo, "application/yaml", Mihomo),
    "routeros": Format(routeros, "text/plain"),
    "uci": Format(uci, "text/plain"),
}


def shapes() -> dict[str, tuple[Any, ...]]:
    """Each media type the formats are written in, and the structs written in it."""
    found: dict[str, tuple[Any, ...]] = {}
    for written in FORMATS.values():
        shape = () if written.shape is None else (written.shape,)
        found[written.media] = found.get(written.media, ()) + shape
    return found
