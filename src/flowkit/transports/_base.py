"""The transport contract: what the bus and the orchestrator need from a broker.

A transport moves opaque bodies (JSON envelopes) with string headers between
services. It knows topics and consumer groups:

* every group subscribed to a topic gets every message published to it
  (fan-out), unless the publish names one group: then only that group gets it
  (a dead-letter replay goes to the consumer that gave up, and to no other);
* the consumers of one group compete: each message goes to one of them;
* a consumer acks a message when it is handled, or nacks it with a delay, after
  which it is delivered again to the same group (to any of its consumers). How
  the delay is kept is the transport's business: natively where the broker
  has it (NATS), or by the transport (Redis: a sorted set of due messages
  moved back by the transport; RabbitMQ: a TTL queue per delay with a
  dead-letter exchange; Kafka: retry topics). ``Capabilities.native_delay``
  says which;
* a message delivered but neither acked nor nacked when its subscription closes
  (or its consumer dies) is delivered again;
* ``Delivery.broker_id`` is the same on every delivery of one message to a
  group, and differs between messages published apart;
* ``Delivery.attempt`` counts the deliveries of a message to a group, this one
  included. Where the broker keeps no count (Kafka) or only flags a
  redelivery (RabbitMQ), the transport carries the count with the message
  when it delivers it again;
* a durable group, once subscribed, keeps receiving messages while it has no
  consumer; a group subscribed with ``durable=False`` (a reply inbox) exists
  only while it has a subscription, and closing its last subscription removes
  it and whatever it held from the broker;
* a message published with a ``key`` reaches each group in publish order
  relative to the other messages of that key where the transport declares
  ``Capabilities.ordered_by_key``; elsewhere the key is carried and ignored;
* every buffer is bounded, and backpressure is what each broker gives: a
  consumer holds a bounded number of unsettled deliveries (its prefetch, its
  batch), and no publish waits without limit (it fails with
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
        native_delay: whether the broker itself holds a nacked message for its
            delay (otherwise the transport does, as the contract describes).
        ordered_by_key: whether messages published with one ``key`` reach a
            group in publish order, one at a time, whichever consumer takes
            them.
        max_message_size: the largest body the broker accepts, in bytes (None:
            no limit of its own below the bus's ``max_message_size``).
    """

    crosses_processes: bool = True
    native_delay: bool = False
    ordered_by_key: bool = False
    max_message_size: int | None = None


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

    @property
    def broker_id(self) -> str | None:
        """The broker's id of this message in this group.

        Every delivery of one published message to a group has the same id:
        again after a nack, and after a consumer that held it closed or died.
        Two messages published apart never share one, even when their bodies
        and headers are equal. None where the broker gives a message no id (on
        RabbitMQ, one another program published without a ``message-id``).
        The bus names what it could not decode by this id, so that two
        consumers given the same message keep one dead letter of it.
        """
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
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
        group: str | None = None,
    ) -> None:
        """Publish one message to every group subscribed to ``topic``.

        May wait while the transport pushes back, but never without limit.

        Args:
            topic: where to publish.
            body: the message body.
            headers: string headers, delivered as given.
            key: orders the message among those of the same key, where the
                transport declares ``ordered_by_key``.
            group: deliver to this group of ``topic`` only (it must exist:
                a message to a group nobody ever subscribed is dropped).

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

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        """Attach a consumer to ``group`` on ``topic``, creating the group if needed.

        Messages published after this call returns reach the group.

        Args:
            topic: the topic to consume.
            group: the consumer group; its consumers share its messages.
            durable: False for a group that lives only while it has a
                subscription (a reply inbox): closing its last subscription
                removes it, and its messages, from the broker.

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
