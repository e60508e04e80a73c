"""The store side of the transactional outbox, and of the inbox written in a
handler's own transaction.

Two kinds of work meet here:

* on the **user's connection**, inside the user's transaction: adding an
  envelope to the outbox table (:meth:`OutboxStore.insert`) and marking a
  message handled in the inbox table (:meth:`OutboxStore.record_handled`);
* on **connections of the relay's own** (:meth:`OutboxStore.relay`): reading
  the stored envelopes oldest first, deleting them once published, holding
  the named lease that lets one relay at a time publish, and waiting for new
  rows.

:class:`~flowkit.stores.SQLiteStore` and :class:`~flowkit.stores.PostgresStore`
have an outbox: their method ``outbox_ops()`` returns an :class:`OutboxStore`,
and :func:`outbox_of` asks for it. Another store offers one the same way; what
the two share is here too (:func:`row_headers`, :class:`Wakeable`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from ._base import StateStore

__all__ = ["OutboxRow", "OutboxStore", "RelaySession", "Wakeable", "outbox_of", "row_headers"]

logger = logging.getLogger("flowkit.outbox")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored envelope waiting to be published.

    Attributes:
        seq: its place in the outbox (the order it was written in).
        topic: the topic to publish to.
        key: the ordering key, if any.
        body: the encoded envelope.
        headers: the transport headers to publish with.
    """

    seq: int
    topic: str
    key: str | None
    body: bytes
    headers: Mapping[str, str]


def row_headers(seq: object, text: object) -> dict[str, str]:
    """The headers stored with the outbox row ``seq`` as JSON text; none (and a
    WARNING on the ``flowkit.outbox`` logger) if they are not an object of strings."""
    try:
        value = json.loads(str(text))
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return {str(k): v for k, v in value.items()}
    except ValueError:
        pass
    logger.warning("outbox row %s has unreadable headers; publishing it without them", seq)
    return {}


class RelaySession(Protocol):
    """A relay's own connection(s) to the store, open while the relay runs."""

    async def fetch(self, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` stored envelopes at most, oldest first."""
        ...

    async def delete(self, seqs: Sequence[int]) -> None:
        """Delete the envelopes of ``seqs`` (published)."""
        ...

    async def pending(self) -> int:
        """How many envelopes wait to be published."""
        ...

    async def hold_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take the lease ``name`` for ``owner``, or extend it, for ``seconds``.

        Returns:
            Whether ``owner`` holds it now (False: another owner's lease runs).
        """
        ...

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if ``owner`` holds it."""
        ...

    async def wait(self, timeout: float) -> None:
        """Wait until new rows may have been written, or ``timeout`` seconds."""
        ...

    def wake(self) -> None:
        """End a :meth:`wait` under way now (rows were written by this process)."""
        ...


class Wakeable:
    """The :meth:`~RelaySession.wait` and :meth:`~RelaySession.wake` of a relay session."""

    def __init__(self) -> None:
        self._woken = anyio.Event()

    async def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, less if :meth:`wake` is called."""
        with anyio.move_on_after(timeout):
            await self._woken.wait()
        if self._woken.is_set():
            self._woken = anyio.Event()

    def wake(self) -> None:
        """End the current :meth:`wait` now."""
        self._woken.set()


class OutboxStore(Protocol):
    """What the outbox and the relay need from a store."""

    #: What the user's connection must be, for error messages ("an asyncpg connection").
    connection_kind: str

    async def insert(
        self,
        conn: Any,
        topic: str,
        key: str | None,
        body: bytes,
        headers: Mapping[str, str],
    ) -> None:
        """Add an envelope to the outbox through ``conn``, in its open transaction.

        Raises:
            TypeError: if ``conn`` is not a connection of the right kind.
            StoreError: if ``conn`` has no open transaction, is connected to
                another database, or the database fails.
        """
        ...

    async def record_handled(self, conn: Any, consumer: str, message_id: str) -> bool:
        """Mark ``message_id`` done for ``consumer`` through ``conn``, in its transaction.

        Returns:
            True if it was not done before; False if it was already done.

        Raises:
            TypeError: if ``conn`` is not a connection of the right kind.
            StoreError: as for :meth:`insert`.
        """
        ...

    def relay(self) -> AbstractAsyncContextManager[RelaySession]:
        """Open the relay's own connection(s) for as long as the block lasts.

        Raises:
            StoreError: if the store is not open or cannot be reached.
        """
        ...


def _needs(store: object) -> StoreError:
    kind = type(store).__name__ if store is not None else "no store"
    return StoreError(
        f"the outbox needs SQLiteStore or PostgresStore: the outbox table lives in the "
        f"database your transaction writes to, and the bus has {kind}; "
        "pass store=SQLiteStore(...) or store=PostgresStore(...) to Choreography"
    )


def outbox_of(store: StateStore | None) -> OutboxStore:
    """The outbox operations of ``store``.

    Raises:
        StoreError: if ``store`` has no outbox (a MemoryStore, no store, an
            in-memory or read-only SQLite database).
    """
    if store is None:
        raise _needs(store)
    own = getattr(store, "outbox_ops", None)
    if not callable(own):
        raise _needs(store)
    ops: OutboxStore = own()
    return ops


def has_outbox(store: StateStore | None) -> bool:
    """Whether ``store`` has an outbox a relay can read."""
    try:
        outbox_of(store)
    except StoreError:
        return False
    return True
