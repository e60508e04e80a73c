"""Helpers of the outbox tests: a transport wrapper that records and fails, and events."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Self

import anyio

from flowkit import Event, TransportError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from flowkit.transports import Capabilities, Subscription, Transport


class Numbered(Event):
    """The n-th event of a key."""

    key: str
    n: int


class RecordingTransport:
    """Passes everything to ``inner``, recording each publish, failing while down.

    Attributes:
        published: (message id, key, n) of every publish the inner transport took.
        overlaps: how many times a publish started while another publish of the
            same message id was under way.
    """

    def __init__(
        self, inner: Transport, *, delay: float = 0.0, log_path: str | None = None
    ) -> None:
        self.inner = inner
        self.delay = delay
        self.published: list[tuple[str, str | None, int]] = []
        self.overlaps = 0
        self.failed = 0
        self._in_flight: Counter[str] = Counter()
        self._down_until = 0.0
        self._log = open(log_path, "a", buffering=1) if log_path else None

    def go_down(self, seconds: float) -> None:
        """Fail every publish for the next ``seconds``."""
        self._down_until = time.monotonic() + seconds

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def publish(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
        group: str | None = None,
    ) -> None:
        if time.monotonic() < self._down_until:
            self.failed += 1
            raise TransportError("the broker is down (test)")
        envelope = json.loads(body)
        mid = str(envelope["id"])
        self._in_flight[mid] += 1
        if self._in_flight[mid] > 1:
            self.overlaps += 1
        try:
            if self.delay:
                await anyio.sleep(self.delay)
            await self.inner.publish(topic, body, headers, key=key, group=group)
        finally:
            self._in_flight[mid] -= 1
        n = int(envelope["payload"].get("n", -1))
        self.published.append((mid, key, n))
        if self._log is not None:
            self._log.write(json.dumps([mid, key, n]) + "\n")
            self._log.flush()
            os.fsync(self._log.fileno())

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        return await self.inner.subscribe(topic, group, durable=durable)

    async def backlog(self, topic: str, group: str) -> int:
        return await self.inner.backlog(topic, group)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)


def read_log(path: str) -> list[tuple[str, str | None, int]]:
    """The publishes a :class:`RecordingTransport` logged to ``path``."""
    if not os.path.exists(path):
        return []
    entries: list[tuple[str, str | None, int]] = []
    with open(path) as log:
        for line in log:
            if line.endswith("\n"):
                mid, key, n = json.loads(line)
                entries.append((mid, key, n))
    return entries


def first_seen_in_order(entries: list[tuple[str, str | None, int]]) -> dict[str, list[int]]:
    """Per key, the numbers in the order first seen (what an inbox lets through)."""
    seen: set[str] = set()
    per_key: dict[str, list[int]] = {}
    for mid, key, n in entries:
        if mid in seen:
            continue
        seen.add(mid)
        per_key.setdefault(str(key), []).append(n)
    return per_key
