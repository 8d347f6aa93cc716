"""The provider registry: adding a provider is one module and one line here."""

from draco.providers import airvpn, ivpn, mullvad, nordvpn, surfshark, windscribe
from draco.providers.base import Provider

__all__ = ["REGISTRY", "Provider"]

PROVIDERS = (nordvpn, surfshark, mullvad, ivpn, windscribe, airvpn)
REGISTRY: dict[str, Provider] = {module.PROVIDER.name: module.PROVIDER for module in PROVIDERS}
