"""The API-key ring: SHA-256 digests, a constant-time check over all keys, fingerprints.

Only digests are held. A presented key is hashed once and compared with every
digest, with no early exit, so the time taken does not depend on which key (if
any) matched. Logs name a key by its fingerprint, never by the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def fingerprint(key: str | bytes) -> str:
    if isinstance(key, str):
        key = key.encode()
    return hashlib.sha256(key).hexdigest()[:8]


class KeyRing:
    def __init__(self, keys: Iterable[str] = ()):
        self.replace(keys)

    def replace(self, keys: Iterable[str]) -> None:
        """Swap in a new set of keys; one assignment, so a request sees the old ring or the new."""
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    def __len__(self) -> int:
        return len(self._digests)

    def verify(self, presented: bytes) -> bool:
        digest = hashlib.sha256(presented).digest()
        matched = False
        for candidate in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched
