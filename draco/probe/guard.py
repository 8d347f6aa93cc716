"""The address guard: only globally reachable unicast addresses are ever probed.

It checks an explicit table instead of `ipaddress.is_global`, whose answer depends
on the Python patch level (CVE-2024-4032: before 3.11.10 and 3.12.4, most of
192.0.0.0/24 and all of 3fff::/20 count as global).
"""

from __future__ import annotations

import ipaddress

# IANA IPv4 Special-Purpose Address Registry (iana-ipv4-special-registry), every block
# whose "Globally Reachable" is False or N/A, and multicast (IANA IPv4 Multicast
# Address Space Registry, 224.0.0.0/4). All of 192.0.0.0/24 is refused, its two
# anycast /32s included.
IPV4_REFUSED = """
    0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24
    192.0.2.0/24 192.88.99.0/24 192.168.0.0/16 198.18.0.0/15 198.51.100.0/24 203.0.113.0/24
    224.0.0.0/4 240.0.0.0/4 255.255.255.255/32
"""
# IANA IPv6 Special-Purpose Address Registry (iana-ipv6-special-registry): outside
# 2000::/3, global unicast, nothing is probed (that covers ::/128, ::1/128,
# 64:ff9b::/96, 64:ff9b:1::/48, 100::/64, 100:0:0:1::/64, 5f00::/16, fc00::/7,
# fe80::/10 and multicast ff00::/8); inside it these blocks are refused: the IETF
# protocol assignments (2001::/23, Teredo 2001::/32 and benchmarking 2001:2::/48
# included, its few anycast blocks too), documentation (2001:db8::/32, 3fff::/20) and
# 6to4 (2002::/16), which embeds an IPv4 address that could be anything.
# ::ffff:0:0/96 (IPv4-mapped) is checked as the IPv4 address it carries.
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
IPV6_REFUSED = "2001::/23 2001:db8::/32 2002::/16 3fff::/20"
REFUSED = [ipaddress.ip_network(block) for block in (IPV4_REFUSED + IPV6_REFUSED).split()]


def probeable(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool = False
) -> bool:
    """Only globally reachable unicast; with allow_private (tests only), anything but
    multicast and the unspecified address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast or address.is_unspecified:
        return False
    if allow_private:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address not in GLOBAL_UNICAST:
        return False
    return not any(address in block for block in REFUSED)
