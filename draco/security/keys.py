"""The API-key ring and its key file, reloaded without a restart. Only SHA-256 digests
are held; a presented key is hashed once and compared with every digest, with no
early exit, so the time taken does not depend on which key (if any) matched. Logs
name a key by its fingerprint, never by the key."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("draco.security")


def fingerprint(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()[:8]


SHORTEST_KEY = 32  # characters


def _well_formed(key: str) -> bool:
    return len(key) >= SHORTEST_KEY and key.isascii() and key.isprintable() and " " not in key


def key_problems(keys: Sequence[str], *, required: bool) -> list[str]:
    """The rules for API keys, at start-up and when a key file is reloaded."""
    problems = []
    if not all(map(_well_formed, keys)):
        problems.append(
            "API_KEYS: every key must be at least 32 printable ASCII characters without spaces"
        )
    if required and not keys:
        problems.append(
            "ENABLE_API_KEY_AUTH: is true but no key is configured (API_KEYS or API_KEYS_FILE)"
        )
    return problems


def read_key_file(path: str) -> tuple[str, ...]:
    """One key per line; surrounding whitespace and blank lines are ignored."""
    return tuple(
        line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
    )


class KeyRing:
    def __init__(self, keys: Iterable[str] = ()):
        self.replace(keys)

    def replace(self, keys: Iterable[str]) -> None:
        """Swap in a new set of keys; one assignment, so a request sees the old ring or the new."""
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    def verify(self, presented: bytes) -> bool:
        digest = hashlib.sha256(presented).digest()
        matched = False
        for candidate in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched

    def reload(self, path: str, *, required: bool) -> bool:
        """Swap in the keys of `path`; a file that breaks the key rules keeps the keys in use."""
        try:
            keys = read_key_file(path)
            problems = key_problems(keys, required=required)
        except (OSError, UnicodeDecodeError) as exc:
            problems = [f"cannot read it ({type(exc).__name__})"]
        if problems:
            log.error("API_KEYS_FILE rejected, keeping the keys in use: %s", "; ".join(problems))
            return False
        self.replace(keys)
        log.warning("API keys reloaded: %s", ", ".join(map(fingerprint, keys)) or "none")
        return True


async def watch(path: str, ring: KeyRing, *, required: bool, every: float = 2.0) -> None:
    """Reload `ring` from `path` on SIGHUP, and when the file changes (checked every 2 s)."""
    hangup = asyncio.Event()
    with contextlib.suppress(
        NotImplementedError, RuntimeError, ValueError
    ):  # only in the main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup.set)

    def stamp() -> tuple[int, int, int] | None:
        with contextlib.suppress(OSError):
            found = os.stat(path)
            return found.st_mtime_ns, found.st_size, found.st_ino
        return None

    seen = stamp()
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await hangup.wait()
        if hangup.is_set() or stamp() != seen:
            hangup.clear()
            seen = stamp()
            ring.reload(path, required=required)
