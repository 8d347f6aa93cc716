"""The client address: the socket peer, or the rightmost untrusted X-Forwarded-For entry.
An address is its packed form, as inet_pton gives it: 4 bytes (IPv4) or 16 (IPv6)."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterable

Address = bytes
IPV6_SIZE = 16  # bytes of a packed IPv6 address
IPV6_PREFIX = 8  # bytes of the /64 that one IPv6 subscriber holds
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6
_PORT = re.compile(r"[0-9]{1,5}")


class TrustedHosts:
    """IP addresses and CIDR ranges (of the reverse proxies), each kept as integers."""

    def __init__(self, entries: Iterable[str]):
        networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]
        self._ranges = [
            (len(n.network_address.packed), int(n.network_address), int(n.netmask))
            for n in networks
        ]

    def __contains__(self, address: Address) -> bool:
        value = int.from_bytes(address)
        return any(
            len(address) == size and value & mask == network for size, network, mask in self._ranges
        )


def _host(text: str) -> str | None:
    """The address part of `text`: inside brackets, with an optional port after them, or
    before an IPv4 address's port. Anything else after the address is no address at all."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port_given, _, port = rest.partition(":")
        if not bracket or port_given or (rest and not _PORT.fullmatch(port)):
            return None
        return host
    if text.count(":") == 1:  # IPv4 with a port
        host, _, port = text.partition(":")
        return host if _PORT.fullmatch(port) else None
    return text


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: brackets, a port or an IPv6 zone may surround it.
    IPv4-mapped IPv6 is unmapped; the unspecified address (0.0.0.0, ::) is no client."""
    with contextlib.suppress(OSError, ValueError):  # what a proxy writes most: plain IPv4
        address = socket.inet_pton(socket.AF_INET, text)
        return address if any(address) else None
    host = _host(text.strip())
    if host is None:
        return None
    host = host.partition("%")[0]  # an IPv6 zone
    for family in (socket.AF_INET, socket.AF_INET6):
        # inet_pton is as strict as ipaddress: no leading zeros, no stray characters
        with contextlib.suppress(OSError, ValueError):
            address = socket.inet_pton(family, host)
            address = address[len(_MAPPED) :] if address.startswith(_MAPPED) else address
            return address if any(address) else None
    return None


def client_address(
    peer: str | None, forwarded: Iterable[str], trusted: TrustedHosts
) -> Address | None:
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
    """The canonical text of a packed address."""
    family = socket.AF_INET6 if len(address) == IPV6_SIZE else socket.AF_INET
    return socket.inet_ntop(family, address)


def rate_limit_key(host: str | None) -> str:
    """Whom the rate limit counts: an IPv4 client by its address, an IPv6 client by its
    /64 (what one subscriber holds), a unix-socket client without a proxy as "local"."""
    if host and ":" not in host:  # IPv4 as the scope holds it: already canonical
        return host
    address = parse_address(host) if host else None
    if address is None:
        return "local"
    if len(address) == IPV6_SIZE:
        return address_text(address[:IPV6_PREFIX] + bytes(IPV6_SIZE - IPV6_PREFIX)) + "/64"
    return address_text(address)
