"""The transactional outbox: events written in the user's own transaction.

``await bus.outbox.publish(conn, event)`` encodes the event as
:meth:`Choreography.publish` would and adds it to the store's outbox table
through ``conn``, inside the transaction ``conn`` has open: the event exists
if and only if that transaction commits. The relay (``_relay``) publishes it
afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..stores._outbox import outbox_of
from ._observe import overriding, send_observed

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._events import Envelope, Event
    from ..stores._base import StateStore
    from ..stores._outbox import OutboxStore
    from ._bus import Choreography
    from ._relay import Relay

__all__ = ["Outbox"]


class Outbox:
    """Publishes events as part of a database transaction (``bus.outbox``).

    The event is stored in the outbox table of the bus's store, through the
    connection given, in that connection's open transaction; a relay running
    in a bus on the same store publishes it once the transaction has
    committed, and never if it rolled back. Needs a
    :class:`~flowkit.stores.SQLiteStore` (``conn`` is an ``sqlite3.Connection``
    to its file) or a :class:`~flowkit.stores.PostgresStore` (``conn`` is an
    ``asyncpg`` connection to its database). The bus need not be running.
    """

    __slots__ = ("_bus", "_ops", "_ops_store", "relay")

    def __init__(self, bus: Choreography) -> None:
        self._bus = bus
        self._ops: OutboxStore | None = None
        self._ops_store: StateStore | None = None
        #: The relay running in this process, woken by each publish.
        self.relay: Relay | None = None

    def _store_ops(self) -> OutboxStore:
        store = self._bus.store
        ops = self._ops
        if ops is None or self._ops_store is not store:
            ops = outbox_of(store)
            self._ops, self._ops_store = ops, store
        return ops

    async def publish(
        self,
        conn: Any,
        event: Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        message_id: str | None = None,
    ) -> Envelope:
        """Add ``event`` to the outbox in ``conn``'s open transaction.

        The envelope is encoded as :meth:`Choreography.publish` encodes it, and
        goes to the same topic. Nothing is sent now: the relay publishes it
        after the transaction commits (at least once), and never if it rolls
        back.

        Args:
            conn: the connection whose transaction the event joins: an
                ``asyncpg`` connection (or pool connection) for a
                PostgresStore, an ``sqlite3.Connection`` to the store's file
                for an SQLiteStore.
            event: the event.
            key: events of one key are published in the order they were
                written (and reach each consumer in that order where the
                transport declares ``ordered_by_key``).
            headers: string metadata carried in the envelope.
            correlation_id: the flow it belongs to. If omitted: the
                workflow's id when a workflow's step sends it, else a new
                flow named by the message's business key (``correlate_by``),
                else by its own id.
            causation_id: the id of the message that caused it.
            message_id: a given id, to make a re-send idempotent.

        Returns:
            The envelope that will be published.

        Raises:
            StoreError: if the bus's store has no outbox (a MemoryStore, or
                none), ``conn`` has no open transaction, is connected to
                another database, or the database fails.
            TypeError: if ``event`` is not an Event, or ``conn`` is not a
                connection of the store's kind.
            MessageTooLarge: if the encoded event is over ``max_message_size``.
        """
        ops = self._store_ops()
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a string or None, not {type(key).__name__}")
        running = self._bus._running
        return await send_observed(
            running.senders if running else overriding(self._bus.observers, "sending"),
            event,
            "outbox",
            lambda hdrs, flow, mid: self._insert(
                ops, conn, event, key, hdrs, flow, causation_id, mid
            ),
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            message_id=message_id,
        )

    async def _insert(
        self,
        ops: OutboxStore,
        conn: Any,
        event: Event,
        key: str | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
        message_id: str | None,
    ) -> Envelope:
        envelope, body = self._bus._encode_event(
            event,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            message_id=message_id,
        )
        # Signed as it is written, so the relay (in any process) publishes it as is,
        # and a row written into the table by other means carries no signature.
        signing = self._bus.signing
        headers_out = {} if signing is None else signing.signed(envelope.type, body)
        await ops.insert(conn, envelope.type, key, body, headers_out)
        relay = self.relay
        if relay is not None:
            relay.wake()
        return envelope

    def __repr__(self) -> str:
        return f"<Outbox of {self._bus!r}>"
