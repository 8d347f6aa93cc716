"""draco: a security-first WireGuard VPN server-list API."""

__version__ = "0.1.0"
