"""The transport contract: what the bus and the orchestrator need from a broker.

A transport moves opaque bodies (JSON envelopes) with string headers between
services. It knows topics and consumer groups:

* every group subscribed to a topic gets every message published to it (fan-out);
* the consumers of one group compete: each message goes to one of them;
* a consumer acks a message when it is handled, or nacks it with a delay, after
  which it is delivered again (to any consumer of the group);
* a message delivered but neither acked nor nacked when its subscription closes
  (or its consumer dies) is delivered again;
* a group, once subscribed, keeps receiving messages while it has no consumer;
* every buffer is bounded: a transport says how it pushes back when one is
  full, and no publish waits without limit (it fails with
  :class:`~flowkit.TransportError` after a bounded time).

Delivery is at least once. Duplicates are possible; the bus deduplicates by
message id when it has a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

__all__ = ["Capabilities", "Delivery", "Subscription", "Transport"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport can do, declared by the transport and checked by the
    conformance suite.

    Attributes:
        crosses_processes: whether messages published in one process reach
            consumers in another (False for the in-memory transport). Commands
            that only make sense when another process hears them, such as
            ``flowkit dlq replay``, refuse a transport that does not.
    """

    crosses_processes: bool = True


@runtime_checkable
class Delivery(Protocol):
    """One delivery of one message to one consumer of a group."""

    @property
    def topic(self) -> str:
        """The topic the message was published to."""
        ...

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        ...

    @property
    def body(self) -> bytes:
        """The message body, as published."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers, as published."""
        ...

    @property
    def attempt(self) -> int:
        """How many times this message has been delivered to this group, this time included."""
        ...

    async def ack(self) -> None:
        """Mark the message handled; it is not delivered to this group again.

        Acking or nacking a delivery twice is a no-op.
        """
        ...

    async def nack(self, delay: float = 0.0) -> None:
        """Give the message back; it is delivered again after ``delay`` seconds."""
        ...


@runtime_checkable
class Subscription(Protocol):
    """A consumer attached to one group of one topic.

    Several tasks may call :meth:`receive` on one subscription at once; each
    delivery goes to one of them. Closing the subscription gives back every
    delivery not yet acked or nacked.
    """

    async def receive(self) -> Delivery:
        """Wait for the next delivery.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
        """
        ...

    async def receive_many(self, limit: int) -> Sequence[Delivery]:
        """Wait for at least one delivery, and return up to ``limit`` that are ready.

        A transport may always return a single delivery. The deliveries
        returned are this consumer's until acked, nacked or given back by
        closing the subscription.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
        """
        ...

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries of this subscription at once (one round trip
        where the broker allows it); the same as acking each.

        Raises:
            TransportError: if the broker refused or the connection failed.
        """
        ...

    async def aclose(self) -> None:
        """Detach the consumer; unacked deliveries go back to the group."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """A broker connection: publish to topics, subscribe consumer groups.

    A transport is opened with ``async with transport:``. It may be entered
    several times (several buses may share one); it closes when the last
    ``async with`` exits, or at once with :meth:`aclose`.
    """

    @property
    def capabilities(self) -> Capabilities:
        """What this transport can do."""
        ...

    async def publish(
        self, topic: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish one message to every group subscribed to ``topic``.

        May wait while the transport pushes back, but never without limit.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if the broker refused, the connection failed, or
                the message could not be taken within the transport's publish
                timeout.
        """
        ...

    async def backlog(self, topic: str, group: str) -> int:
        """How many messages ``group`` has not settled yet: ready for delivery,
        waiting out a nack delay, or delivered and neither acked nor nacked.

        Zero for a group that does not exist.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if the broker could not be asked.
        """
        ...

    async def subscribe(self, topic: str, group: str) -> Subscription:
        """Attach a consumer to ``group`` on ``topic``, creating the group if needed.

        Messages published after this call returns reach the group.

        Raises:
            TransportClosed: if the transport is not open.
        """
        ...

    async def aclose(self) -> None:
        """Close the transport and every subscription on it."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
