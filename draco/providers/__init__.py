"""The provider registry: adding a provider is one module and one line here."""

from draco.providers import ivpn, mullvad, nordvpn, surfshark
from draco.providers.base import Provider

__all__ = ["REGISTRY", "Provider"]

REGISTRY: dict[str, Provider] = {
    p.name: p for p in (nordvpn.PROVIDER, surfshark.PROVIDER, mullvad.PROVIDER, ivpn.PROVIDER)
}
