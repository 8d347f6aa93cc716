"""The client address: the socket peer, or the rightmost untrusted X-Forwarded-For entry.
An address is its packed form, as inet_pton gives it: 4 bytes (IPv4) or 16 (IPv6)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable

Address = bytes
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6


class TrustedHosts:
    """IP addresses and CIDR ranges (of the reverse proxies), each kept as integers."""

    def __init__(self, entries: Iterable[str]):
        networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]
        self._ranges = [(len(n.network_address.packed), int(n.network_address), int(n.netmask)) for n in networks]

    def __contains__(self, address: Address) -> bool:
        value = int.from_bytes(address)
        return any(len(address) == size and value & mask == network for size, network, mask in self._ranges)


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: brackets, a port or an IPv6 zone may surround it.
    IPv4-mapped IPv6 is unmapped; the unspecified address (0.0.0.0, ::) is no client."""
    try:  # what a proxy writes most: plain IPv4
        return socket.inet_pton(socket.AF_INET, text) if text != "0.0.0.0" else None
    except (OSError, ValueError):
        pass
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    text = text.partition("%")[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError, ValueError):  # inet_pton: as strict as ipaddress (no leading zeros)
            address = socket.inet_pton(family, text)
            address = address[12:] if address.startswith(_MAPPED) else address
            return address if any(address) else None
    return None


def client_address(peer: str | None, forwarded: Iterable[str], trusted: TrustedHosts) -> Address | None:
    """The socket peer, or, when the peer is a trusted proxy, the rightmost X-Forwarded-For
    entry that is not trusted (entries left of it are whatever the client chose to send).
    An unparsable entry where the client should stand, an empty header or an all-trusted
    chain fails closed to the peer. No peer (a unix socket) counts as the trusted proxy."""
    peer_address = parse_address(peer) if peer else None
    if peer and (peer_address is None or peer_address not in trusted):
        return peer_address
    for entry in reversed(",".join(forwarded).split(",")):  # every line's entries, in order
        address = parse_address(entry)
        if address is None:
            return peer_address
        if address not in trusted:
            return address
    return peer_address


def address_text(address: Address) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(address) == 16 else socket.AF_INET, address)  # canonical


def client_key(host: str | None) -> str:
    """Whom the rate limit counts: an IPv4 client by its address, an IPv6 client by its
    /64 (what one subscriber holds), a unix-socket client without a proxy as "local"."""
    if host and ":" not in host:  # IPv4 as the scope holds it: already canonical
        return host
    address = parse_address(host) if host else None
    if address is None:
        return "local"
    return address_text(address[:8] + bytes(8)) + "/64" if len(address) == 16 else address_text(address)
