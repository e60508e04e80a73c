"""The pauses between attempts when a broker cannot be reached.

Every broker transport waits the same way before it tries again through a
lost connection (a read, a publish, a reconnection, a group created again):
50 ms first, doubled at each failure, at most 2 s, back to 50 ms once an
attempt works. A caller with a deadline asks :attr:`Backoff.pause` whether the
next pause still fits before it.
"""

from __future__ import annotations

import asyncio

__all__ = ["Backoff"]


class Backoff:
    """Growing pauses between attempts: 50 ms, doubled each time, at most 2 s."""

    __slots__ = ("_next",)

    FIRST = 0.05
    LAST = 2.0

    def __init__(self) -> None:
        self._next = self.FIRST

    @property
    def pause(self) -> float:
        """The pause the next :meth:`sleep` waits, in seconds."""
        return self._next

    def reset(self) -> None:
        """Start again from the shortest pause."""
        self._next = self.FIRST

    async def sleep(self) -> None:
        """Wait the next pause."""
        pause = self._next
        self._next = min(pause * 2, self.LAST)
        await asyncio.sleep(pause)
