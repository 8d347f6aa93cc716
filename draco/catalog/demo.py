"""Demo mode: an in-process upstream serving the bundled SAMPLE payloads, in each
provider's own format (scripts/make_demo_data.py), so the real fetch, parse and serve
path runs with no network."""

from __future__ import annotations

from importlib import resources
from typing import Any

import attrs
import httpx

from draco.providers import REGISTRY
from draco.settings import Settings, api_url_field


def settings(base: Settings) -> Settings:
    """`base` with every provider's URL on the demo transport."""
    urls: dict[str, Any] = {
        api_url_field(name): f"https://{name}.demo.invalid/servers" for name in REGISTRY
    }
    return attrs.evolve(base, **urls)


def transport() -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        name = request.url.host.removesuffix(".demo.invalid")
        if name not in REGISTRY:
            return httpx.Response(404)
        body = (resources.files("draco") / "demo_data" / f"{name}.json").read_bytes()
        # streamed, as a real upstream's body is (content= would arrive already read)
        return httpx.Response(
            200, stream=httpx.ByteStream(body), headers={"Content-Type": "application/json"}
        )

    return httpx.MockTransport(handle)
