"""The address guard: only public unicast addresses are ever probed."""

from __future__ import annotations

import ipaddress

# IPv6 ranges that carry an IPv4 address (NAT64, 6to4, Teredo): refused, since the
# embedded address could be anything.
_EMBEDDING = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32")]


def probeable(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool = False) -> bool:
    """Only public unicast: never loopback, private, link-local, multicast, reserved,
    documentation or unspecified addresses (unless allow_private, for tests)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast or address.is_unspecified:
        return False
    if allow_private:
        return True
    embedded = isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _EMBEDDING)
    return address.is_global and not (address.is_reserved or address.is_link_local or embedded)
