"""The context a handler receives."""

from __future__ import annotations

import hashlib
import logging
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import AlreadyHandled, StoreError
from .._events import Command, Envelope, Event, Message
from ._headers import IDEMPOTENCY_KEY

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._bus import Choreography
    from ._handlers import HandlerSpec

__all__ = ["UNSIGNED", "Context", "derive_message_id"]

R = TypeVar("R", bound=Message)

_bus_logger = logging.getLogger("flowkit.bus")

#: Appended to the message id of an unsigned message accepted in a bus's
#: migration mode, in the inbox and wherever an id is derived from it, so that
#: such a message cannot take the place of a signed one with the same id.
UNSIGNED = "/unsigned"

#: The most (handler, event type) pairs warned about per bus: each is warned once.
UNDECLARED_EMITS_WARNED = 1000
_undeclared: weakref.WeakKeyDictionary[Choreography, set[tuple[str, str]]] = (
    weakref.WeakKeyDictionary()
)


def derive_message_id(cause_id: str, consumer: str, index: int) -> str:
    """A deterministic message id for the ``index``-th message a consumer publishes
    while handling ``cause_id``.

    A retried handler publishes the same ids again, so consumers with an inbox
    drop the duplicates. The id has the UUIDv7 layout, with a timestamp one
    millisecond after the cause's, so it sorts after the message that caused it.
    """
    digest = hashlib.blake2b(f"{cause_id}|{consumer}|{index}".encode(), digest_size=10).digest()
    try:
        cause_ms = int(cause_id.replace("-", "")[:12], 16)
    except ValueError:  # a cause id that is not a UUIDv7 (set by hand): no time to keep
        cause_ms = 0
    rand = int.from_bytes(digest, "big")
    value = (
        ((cause_ms + 1) << 80)
        | (0x7 << 76)
        | ((rand >> 68) & 0xFFF) << 64
        | (0b10 << 62)
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Context:
    """What a handler knows about the message it handles, and how it sends more.

    Attributes:
        envelope: the envelope being handled (ids, correlation, causation, headers).
        attempt: which delivery attempt this is (1 for the first).
        service: the service the handler belongs to.
        handler: the handler's name.
        signed: None on a bus that does not sign; True if the message's
            signature verified; False for an unsigned message accepted in
            the migration mode (``Signing(required=False)``), whose flowkit
            headers are ignored.
    """

    __slots__ = (
        "_bus",
        "_inbox_key",
        "_logger",
        "_published",
        "_spec",
        "attempt",
        "envelope",
        "signed",
    )

    def __init__(
        self,
        bus: Choreography,
        spec: HandlerSpec,
        envelope: Envelope,
        attempt: int,
        inbox_key: str | None = None,
        *,
        signed: bool | None = None,
    ) -> None:
        self._bus = bus
        self._spec = spec
        self._inbox_key = inbox_key
        self.signed = signed
        self._published = 0
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self.envelope = envelope
        self.attempt = attempt

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (``flowkit.service.<service>``) whose records carry the
        service, handler, message and correlation ids and the attempt as
        ``flowkit_*`` attributes, as the bus's own records do."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                logging.getLogger(f"flowkit.service.{self._spec.service}"),
                {
                    "flowkit_service": self._spec.service,
                    "flowkit_handler": self._spec.name,
                    "flowkit_message_id": self.envelope.message_id,
                    "flowkit_correlation_id": self.envelope.correlation_id,
                    "flowkit_attempt": self.attempt,
                },
            )
        return self._logger

    @property
    def service(self) -> str:
        return self._spec.service

    @property
    def handler(self) -> str:
        return self._spec.name

    @property
    def idempotency_key(self) -> str:
        """A key stable across redeliveries of this message to this handler.

        The sender's ``flowkit-idempotency-key`` header when it set one (an
        orchestrator's remote step does), else ``consumer:message_id``. On a
        bus that signs, the header of an unsigned message (accepted in the
        migration mode) is ignored, and its key is ``consumer:message_id/unsigned``.
        """
        if self.signed is False:
            return f"{self._spec.consumer}:{self.envelope.message_id}{UNSIGNED}"
        return self.envelope.headers.get(IDEMPOTENCY_KEY) or (
            f"{self._spec.consumer}:{self.envelope.message_id}"
        )

    @property
    def message_key(self) -> str:
        """The message's id as this handler's deduplication knows it: the
        message id, with ``/unsigned`` appended for an unsigned message
        accepted in a signing bus's migration mode (so that it cannot stand
        for a signed message of the same id)."""
        mid = self.envelope.message_id
        return mid + UNSIGNED if self.signed is False else mid

    def _next_id(self) -> str:
        self._published += 1
        return derive_message_id(self.message_key, self._spec.consumer, self._published)

    def _check_emits(self, event: Event) -> None:
        """Warn, once per handler and event type, of an event left out of ``emits=``."""
        emits = self._spec.emits
        if emits is None or isinstance(event, emits):
            return
        seen = _undeclared.setdefault(self._bus, set())
        key = (self._spec.consumer, type(event).__flowkit_type__)
        if key in seen or len(seen) >= UNDECLARED_EMITS_WARNED:
            return
        seen.add(key)
        declared = ", ".join(sorted(t.__name__ for t in emits)) or "nothing"
        _bus_logger.warning(
            "handler %s declared emits=[%s] but published %s; add it to emits= "
            "(the flow graph, flowkit lint and the AsyncAPI document read it)",
            self._spec.consumer,
            declared,
            type(event).__name__,
            extra={
                "flowkit_service": self._spec.service,
                "flowkit_handler": self._spec.name,
                "flowkit_message_id": self.envelope.message_id,
                "flowkit_correlation_id": self.envelope.correlation_id,
                "flowkit_event_type": key[1],
            },
        )

    async def outbox_publish(
        self,
        conn: Any,
        event: Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Publish an event caused by this message, in ``conn``'s open transaction.

        Same as :meth:`Outbox.publish <flowkit.Outbox.publish>` on the bus's
        outbox, carrying this flow's correlation id, this message's id as
        causation id, and a derived id as :meth:`publish` does: a retried
        handler writes the same ids again.

        A handler that declared ``emits=[...]`` without this type logs a
        warning (once per type), and the event is written all the same.

        Raises:
            StoreError, TypeError, MessageTooLarge: as :meth:`Outbox.publish
                <flowkit.Outbox.publish>` raises them.
        """
        self._check_emits(event)
        return await self._bus.outbox.publish(
            conn,
            event,
            key=key,
            headers=headers,
            correlation_id=self.envelope.correlation_id,
            causation_id=self.envelope.message_id,
            message_id=self._next_id(),
        )

    async def record_handled(self, conn: Any) -> None:
        """Record this message as handled, in ``conn``'s open transaction.

        Call it in the transaction that holds the handler's effects, on the
        database of the bus's store: the message is marked done in this
        handler's inbox if and only if the transaction commits. If it is
        already done (a duplicate delivery, handled meanwhile by another
        process), :class:`~flowkit.AlreadyHandled` is raised: let it escape,
        so that the transaction rolls back and the bus acks the duplicate.
        With PostgreSQL, a concurrent duplicate waits for this transaction and
        then gets ``AlreadyHandled`` if it committed.

        Args:
            conn: an ``asyncpg`` connection for a PostgresStore, an
                ``sqlite3.Connection`` to the store's file for an SQLiteStore.

        Raises:
            AlreadyHandled: if this handler has already handled the message.
            StoreError: if the bus's store has no outbox tables (a
                MemoryStore, or none), the handler answers commands, ``conn``
                has no open transaction or is connected to another database,
                or the database fails.
            TypeError: if ``conn`` is not a connection of the store's kind.
        """
        if self._spec.kind != "event":
            raise StoreError(
                f"record_handled() is for event handlers; command handler "
                f"{self._spec.consumer} answers every copy of a request: pass "
                "ctx.idempotency_key on instead"
            )
        ops = self._bus.outbox._store_ops()
        key = self._inbox_key or self.envelope.message_id
        if not await ops.record_handled(conn, self._spec.consumer, key):
            raise AlreadyHandled(
                f"{self._spec.consumer} has already handled message {self.envelope.message_id}"
            )

    async def publish(self, event: Event, *, headers: Mapping[str, str] | None = None) -> Envelope:
        """Publish an event caused by the message being handled.

        The new envelope carries this flow's correlation id and this message's
        id as its causation id. Its own id is derived from both, so a retried
        handler republishes the same ids and inboxes drop the duplicates.

        A handler that declared ``emits=[...]`` without this type logs a
        warning on ``flowkit.bus`` (once per type), and the event is
        published all the same.
        """
        self._check_emits(event)
        return await self._bus.publish(
            event,
            headers=headers,
            correlation_id=self.envelope.correlation_id,
            causation_id=self.envelope.message_id,
            message_id=self._next_id(),
        )

    async def request(
        self,
        command: Command[R],
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> R:
        """Send a command to the service that handles it and await its reply.

        Same as :meth:`Choreography.request`, carrying this flow's correlation.
        """
        return await self._bus.request(
            command,
            timeout=timeout,
            headers=headers,
            correlation_id=self.envelope.correlation_id,
            causation_id=self.envelope.message_id,
        )

    def __repr__(self) -> str:
        return (
            f"Context(service={self.service!r}, handler={self.handler!r}, "
            f"message_id={self.envelope.message_id!r}, attempt={self.attempt})"
        )
