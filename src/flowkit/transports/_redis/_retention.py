"""Retention: trimming streams to what their groups still need.

Every ``every`` entries this process adds to a stream (publishes, and the
messages given back to a group), it runs the trim script on that stream: the
entries every group has settled go, those a group has not read or not settled
stay, unless the stream then holds more than ``max_len`` entries. Then the
oldest go anyway, and a WARNING says how many unsettled messages were dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..._errors import TransportError
from ._scripts import Scripts

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

    from ._batcher import Batcher

__all__ = ["Retention"]

logger = logging.getLogger("flowkit.transport.redis")

# Without max_len, how many entries added to a stream between two trims.
_EVERY = 1000


class Retention:
    """Counts the entries added to each stream, and trims it every so often.

    Args:
        batcher: runs the trim script.
        spawn: starts a background task of the transport.
        max_len: the most entries a stream keeps (None: no limit; only what
            every group has settled is trimmed).
    """

    __slots__ = ("_added", "_batcher", "_every", "_max_len", "_running", "_spawn")

    def __init__(
        self,
        batcher: Batcher,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        max_len: int | None,
    ) -> None:
        self._batcher = batcher
        self._spawn = spawn
        self._max_len = max_len
        # A tenth of max_len, so a stream never outgrows it by much between trims.
        self._every = _EVERY if max_len is None else max(1, min(_EVERY, max_len // 10))
        self._added: dict[bytes, int] = {}
        self._running: set[bytes] = set()

    @property
    def every(self) -> int:
        """How many entries added to a stream between two trims."""
        return self._every

    def note(self, stream: bytes, added: int = 1) -> None:
        """Count ``added`` entries added to ``stream``; trim it when its turn comes."""
        count = self._added.get(stream, 0) + added
        if count < self._every:
            self._added[stream] = count
            return
        self._added[stream] = 0
        if stream not in self._running:
            self._running.add(stream)
            self._spawn(self._trim(stream))

    async def _trim(self, stream: bytes) -> None:
        try:
            reply = await self._batcher.call(
                "trim",
                "EVALSHA",
                Scripts.trim,
                1,
                stream,
                -1 if self._max_len is None else self._max_len,
            )
        except TransportError as exc:
            logger.debug("could not trim %r: %s", stream, exc)
            return
        finally:
            self._running.discard(stream)
        dropped = int(reply[1])
        if dropped:
            logger.warning(
                "Redis stream %r held more than max_len=%d entries: dropped the %d oldest, "
                "which a consumer group had not read or not acked yet",
                stream.decode(errors="replace"),
                self._max_len,
                dropped,
            )
