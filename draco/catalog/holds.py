"""The operator's word on a held list, with no network surface of its own.

While a list is held, the instance publishes a notice of it (`HeldList`) where the
operator's tools can read it: `SNAPSHOT_DIR/<provider>.held.json`, and with a shared
catalog the Redis key `draco:catalog:<provider>:held`. `draco hold accept|reject
PROVIDER DIGEST` writes a `Verdict` beside it (`<provider>.verdict.json`, or
`draco:catalog:<provider>:verdict`), naming the held list by its digest; the instance
reads it within a few seconds and applies it to that list alone. A verdict names the
hold it answers and expires with it, so it can never settle a later one."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import attrs
import msgspec

from draco.catalog.guard import Hold
from draco.catalog.shared import SharedCatalog
from draco.catalog.snapshot import write_atomically
from draco.models import HeldList, encode
from draco.settings import Settings


class Verdict(msgspec.Struct, frozen=True):
    provider: str
    digest: str
    verdict: Literal["accept", "reject"]
    expires: float  # the hold's end: after it, the verdict answers nothing


def notice(hold: Hold) -> HeldList:
    """The notice of a held list: what /health shows, and what `draco hold` reads."""
    change = hold.churn
    return HeldList(
        digest=hold.digest,
        since=hold.since,
        until=hold.until,
        removed=change.removed,
        added=change.added,
        rekeyed=change.rekeyed,
        readdressed=change.readdressed,
        compared_with=change.compared_with,
    )


def held_path(directory: Path, provider: str) -> Path:
    return directory / f"{provider}.held.json"


def verdict_path(directory: Path, provider: str) -> Path:
    return directory / f"{provider}.verdict.json"


def publish(directory: Path, held: HeldList | None, provider: str) -> None:
    """The notice of `provider`'s hold, or none when nothing is held."""
    if held is None:
        with contextlib.suppress(FileNotFoundError):
            held_path(directory, provider).unlink()
    else:
        write_atomically(held_path(directory, provider), encode(held))


def read_notice(content: bytes | None) -> HeldList | None:
    return msgspec.json.decode(content, type=HeldList) if content else None


def read_verdict(content: bytes | None, provider: str, now: float) -> Verdict | None:
    """The verdict in `content` if it is one for `provider` that has not expired; a
    malformed one is no verdict."""
    if not content:
        return None
    try:
        verdict = msgspec.json.decode(content, type=Verdict)
    except msgspec.DecodeError:
        return None
    return verdict if verdict.provider == provider and now < verdict.expires else None


def file_content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def describe(provider: str, held: HeldList) -> str:
    def when(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))

    return (
        f"{provider} {held.digest}: held since {when(held.since)}, served at {when(held.until)} "
        f"if sent alike until then; {held.removed} removed, {held.added} added, "
        f"{held.rekeyed} rekeyed, {held.readdressed} readdressed of {held.compared_with}"
    )


@attrs.frozen
class Said:
    given: bool  # the verdict was left for the instances
    message: str


class Desk:
    """Where `draco hold` meets the instances: SNAPSHOT_DIR, and the shared catalog."""

    def __init__(self, settings: Settings):
        self.folder = Path(settings.snapshot_dir) if settings.snapshot_dir else None
        self.shared = None
        if settings.catalog_storage != "memory":
            self.shared = SharedCatalog(settings.catalog_storage, lease_seconds=0)

    async def __aenter__(self) -> Desk:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.shared is not None:
            await self.shared.close()

    async def notice(self, provider: str) -> HeldList | None:
        content = file_content(held_path(self.folder, provider)) if self.folder else None
        if content is None and self.shared is not None:
            content = await self.shared.notice(provider)
        try:
            return read_notice(content)
        except msgspec.DecodeError:
            return None

    async def listing(self, providers: list[str]) -> list[str]:
        lines = []
        for name in providers:
            held = await self.notice(name)
            if held is not None:
                lines.append(describe(name, held))
        return lines or ["nothing is held"]

    async def decide(self, provider: str, digest: str, action: str) -> Said:
        held = await self.notice(provider)
        if held is None or held.digest != digest:
            return Said(given=False, message=f"draco: no list {digest} of {provider} is held")
        verdict = Verdict(
            provider, digest, "accept" if action == "accept" else "reject", held.until
        )
        content = encode(verdict)
        if self.folder is not None:
            write_atomically(verdict_path(self.folder, provider), content)
        if self.shared is not None:
            await self.shared.give_verdict(
                provider, content, ttl=max(1.0, held.until - time.time())
            )
        return Said(given=True, message=f"{provider}: {action} {digest}; applied within seconds")
